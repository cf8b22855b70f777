"""Export an attnlab causal LM as a `torch.export` program or an ONNX graph whose sequence length is symbolic.

`export_program(model)` exports the no-cache forward (input_ids [batch, seq] -> logits [batch, seq, vocab]);
`export_program(model, decoding_step=True)` exports one cached decoding step, whose cache travels as plain tensors
(`decoding_state` builds them from a prefill); `export_onnx(model, path)` writes the no-cache forward as ONNX through
`torch.onnx.export(dynamo=True)`. The sequence length (and the past length of a decoding step) is a dynamic
dimension from 2 to `max_length`; the batch size is fixed at the example's. Options a member cannot honour are
refused with the reason before anything is traced.
"""

from pathlib import Path

import torch
from torch import nn
from torch.export import Dim
from transformers.cache_utils import DynamicCache, DynamicLayer, LinearAttentionCacheLayerMixin

CACHE_KINDS = ("dynamic",)


class LogitsForward(nn.Module):
    """The model's no-cache forward as a function of input_ids (and the 0/1 attention_mask when given)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def cache_layout(cache) -> list[tuple[bool, list[int]]]:
    """For each slot of a filled cache: (whether it holds keys and values, the indices of its recurrent states)."""
    return [(isinstance(layer, DynamicLayer) and layer.is_initialized,
             [i for i, ready in layer.is_recurrent_states_initialized.items() if ready]
             if isinstance(layer, LinearAttentionCacheLayerMixin) else [])
            for layer in cache.layers]


def flatten_cache(cache: DynamicCache, layout) -> list[torch.Tensor]:
    """The cache as a flat list of tensors: each slot's keys and values (if it holds them), then its states."""
    tensors = []
    for layer, (has_keys, states) in zip(cache.layers, layout):
        if has_keys:
            tensors += [layer.keys, layer.values]
        tensors += [layer.recurrent_states[i] for i in states]
    return tensors


def unflatten_cache(config, layout, tensors) -> DynamicCache:
    cache, position = DynamicCache(config=config), 0
    for cache_idx, (has_keys, states) in enumerate(layout):
        if has_keys:
            cache.update(tensors[position], tensors[position + 1], cache_idx)
            position += 2
        for state_idx in states:
            cache.layers[cache_idx].update_recurrent_state(tensors[position], state_idx)
            position += 1
    return cache


class DecodingStep(nn.Module):
    """One cached forward of new tokens: (input_ids, *cache tensors) -> (logits, *updated cache tensors), for the
    cache layout a prefill of this model leaves."""

    def __init__(self, model: nn.Module, layout):
        super().__init__()
        self.model, self.layout = model, layout

    def forward(self, input_ids: torch.Tensor, *cache_tensors: torch.Tensor):
        cache = unflatten_cache(self.model.config, self.layout, cache_tensors)
        logits = self.model(input_ids=input_ids, cache=cache, use_cache=True).logits
        return (logits, *flatten_cache(cache, self.layout))


def prefill(model: nn.Module, input_ids: torch.Tensor) -> DynamicCache:
    with torch.no_grad():
        return model(input_ids=input_ids, use_cache=True).cache


def decoding_state(model: nn.Module, input_ids: torch.Tensor) -> list[torch.Tensor]:
    """The cache after a prefill of `input_ids`, as the flat tensors a decoding-step program takes."""
    cache = prefill(model, input_ids)
    return flatten_cache(cache, cache_layout(cache))


def check_options(model: nn.Module, example_length: int, max_length: int | None, padding: bool, cache: str | None,
                  decoding_step: bool) -> int:
    """Refuse what the member cannot honour, with the reason; returns the maximum length."""
    config = model.config
    limit = config.max_position_embeddings
    max_length = limit if max_length is None else max_length
    if not 2 <= max_length <= limit:
        raise ValueError(f"max_length must be in [2, max_position_embeddings={limit}], got {max_length}: positions "
                         "beyond max_position_embeddings are refused by the model")
    if not 2 <= example_length <= max_length:
        raise ValueError(f"example_length must be in [2, max_length={max_length}], got {example_length}: "
                         "torch.export specialises a dimension traced at size 0 or 1")
    if cache is not None and cache not in CACHE_KINDS:
        raise ValueError(f"cache={cache!r} cannot be exported: attnlab members decode with DynamicCache only (a "
                         "static cache returns keys padded to its maximum length, which these mixers do not take); "
                         f"choose one of {CACHE_KINDS} or None")
    if padding:
        raise ValueError("padding (an attention_mask input) cannot be exported: the padded forward reads the mask's "
                         "values to choose its path; export the unpadded forward and feed each row unpadded")
    if cache is not None and not decoding_step:
        raise ValueError("cache= is an option of the decoding step: pass decoding_step=True, or no cache for the "
                         "no-cache forward")
    if not isinstance(model, nn.Module) or not hasattr(config, "mixer_types"):
        raise TypeError(f"expected an attnlab causal LM, got {type(model).__name__}")
    return max_length


def export_program(model: nn.Module, example_length: int = 16, batch_size: int = 1, max_length: int | None = None,
                   padding: bool = False, decoding_step: bool = False, cache: str | None = None,
                   past_length: int | None = None) -> torch.export.ExportedProgram:
    """A `torch.export` program of the model's forward with a symbolic sequence length in [2, max_length].

    Without `decoding_step` it maps input_ids [batch, seq] to logits [batch, seq, vocab]. With it, it maps
    (input_ids [batch, seq], *cache tensors) to (logits, *updated cache tensors), the cache as `decoding_state`
    returns it after a prefill, and the past length of every key and value tensor symbolic too.
    """
    max_length = check_options(model, example_length, max_length, padding, cache, decoding_step)
    model.eval()
    input_ids = torch.randint(3, model.config.vocab_size, (batch_size, example_length), device=model.device)
    seq = Dim("seq", min=2, max=max_length)
    if not decoding_step:
        with torch.no_grad():
            return torch.export.export(LogitsForward(model), (input_ids,), dynamic_shapes={"input_ids": {1: seq}})
    past_length = example_length if past_length is None else past_length
    if not 2 <= past_length <= max_length - 2:
        raise ValueError(f"past_length must be in [2, max_length - 2 = {max_length - 2}], got {past_length}")
    cache = prefill(model, input_ids[:, :1].repeat(1, past_length))
    layout = cache_layout(cache)
    past = Dim("past", min=2, max=max_length - 2)
    state_shapes = []
    for has_keys, states in layout:
        state_shapes += [{2: past}, {2: past}] if has_keys else []
        state_shapes += [None] * len(states)
    new = torch.randint(3, model.config.vocab_size, (batch_size, 2), device=model.device)
    new_seq = Dim("new", min=1, max=max_length)
    with torch.no_grad():
        return torch.export.export(DecodingStep(model, layout), (new, *flatten_cache(cache, layout)),
                                   dynamic_shapes=({1: new_seq}, tuple(state_shapes)))


def cummax_from_masked_max(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """aten.cummax from operations ONNX has: for each position i, the max over j <= i (an [n, n] masked max) and
    the last j that attains it, as cummax returns it."""
    x = x.movedim(dim, -1)
    index = torch.arange(x.shape[-1], device=x.device)
    earlier = index[None, :] <= index[:, None]  # [i, j]: j <= i
    candidates = x[..., None, :].masked_fill(~earlier, float("-inf") if x.is_floating_point() else
                                             torch.iinfo(x.dtype).min)
    values = candidates.amax(-1)
    at_max = (candidates == values[..., None]) & earlier
    indices = torch.where(at_max, index, -1).amax(-1)
    return values.movedim(-1, dim), indices.movedim(-1, dim)


def export_onnx(model: nn.Module, path: str | Path, example_length: int = 16, batch_size: int = 1,
                max_length: int | None = None, padding: bool = False, cache: str | None = None,
                program: torch.export.ExportedProgram | None = None) -> Path:
    """Write the no-cache forward (input_ids -> logits) as an ONNX graph with a symbolic sequence length; returns
    the path. `program`, a no-cache `export_program` of the model, saves exporting it again. Needs the `onnx` and
    `onnxscript` packages (onnxruntime runs the graph)."""
    check_options(model, example_length, max_length, padding, cache, decoding_step=False)
    if program is None:
        program = export_program(model, example_length, batch_size, max_length)
    # ONNX has no cumulative max (elita's running max): it becomes a masked max over the positions so far.
    program = program.run_decompositions({torch.ops.aten.cummax.default: cummax_from_masked_max})
    path = Path(path)
    program = torch.onnx.export(program, dynamo=True, input_names=["input_ids"], output_names=["logits"],
                                verbose=False)
    # The exporter can lose a symbolic dimension without an error; a graph fixed at the example length is refused.
    length_dim = program.model.graph.inputs[0].shape[1]
    if isinstance(length_dim, int):
        raise RuntimeError(f"the ONNX graph came out fixed at length {length_dim}: some operation specialised the "
                           "sequence length")
    program.save(str(path))
    return path


__all__ = ["decoding_state", "export_onnx", "export_program"]
