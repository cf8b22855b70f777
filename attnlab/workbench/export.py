"""Export an attnlab causal LM as a `torch.export` program or an ONNX graph whose sequence length is symbolic.

`export_program(model)` exports the no-cache forward (input_ids [batch, seq] -> logits [batch, seq, vocab]);
`export_program(model, decoding_step=True)` exports one cached decoding step, whose cache travels as plain tensors
(`decoding_state` builds them from a prefill); `export_onnx(model, path)` writes the no-cache forward as ONNX through
`torch.onnx.export(dynamo=True)`. The sequence length (and the past length of a decoding step) is a dynamic
dimension from 2 to `max_length`; the batch size is fixed at the example's. Options a member cannot honour are
refused with the reason before anything is traced.
"""

import json
import os
import tempfile
import zipfile
from importlib.util import find_spec
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
                program: torch.export.ExportedProgram | None = None, metadata: dict[str, str] | None = None) -> Path:
    """Write the no-cache forward (input_ids -> logits) as an ONNX graph with a symbolic sequence length; returns
    the path. `program`, a no-cache `export_program` of the model, saves exporting it again; `metadata` goes into
    the graph's metadata_props. Needs the `onnx` and `onnxscript` packages (onnxruntime runs the graph)."""
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
    program.model.metadata_props.update(metadata or {})
    program.save(str(path))
    return path


# ---------------------------------------------------------------------------------------------------------------
# Command line: attnlab export FOLDER --format onnx|torch --output FILE [--length N]

FORMATS = ("onnx", "torch")
EXPORT_RECORD = "attnlab_export"  # every exported file carries it: ONNX metadata_props, an extra file of a .pt2
TOLERANCE = 1e-4


def export_record(path: Path) -> dict | None:
    """The record `attnlab export` wrote into an exported file, or None for any other file."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [name for name in archive.namelist() if name.endswith(f"/extra/{EXPORT_RECORD}.json")]
                return json.loads(archive.read(names[0])) if names else None
        if find_spec("onnx") is None:
            return None
        import onnx

        properties = {entry.key: entry.value for entry in onnx.load(str(path), load_external_data=False).metadata_props}
        return json.loads(properties[EXPORT_RECORD]) if EXPORT_RECORD in properties else None
    except Exception:  # not a zip archive nor an ONNX model (or a damaged one): not a file attnlab export wrote
        return None


def check_lengths(length: int, max_length: int) -> list[int]:
    """Two sequence lengths other than the export length, within [2, max_length]: a longer one (2N+1, odd, so not
    a multiple of the members' chunk sizes) and a shorter one (N/2+1) where they fit."""
    chosen = []
    for candidate in (2 * length + 1, length // 2 + 1, length + 1, length - 1, 3, 2):
        if 2 <= candidate <= max_length and candidate != length and candidate not in chosen:
            chosen.append(candidate)
    return chosen[:2]


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


def export_folder(folder: str, format: str, output: str, length: int = 16, tolerance: float = TOLERANCE,
                  trust_remote_code: bool = False) -> dict:
    """Export a saved member or hybrid (its no-cache forward, input_ids [1, seq] -> logits) as a torch.export
    program (.pt2, `torch.export.save`) or an ONNX graph, traced at `length` with the length dynamic, then check the
    written file against the eager model at two other lengths. The file appears at `output` only once it passed
    (max abs logit difference <= tolerance); an existing `output` is replaced only if attnlab export wrote it."""
    from ..members import TIME_SERIES_MEMBERS
    from .evaluation import load_pretrained

    if format not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    folder_path, output = Path(folder), Path(output)
    if not (folder_path / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a model folder (no config.json); pass a folder saved by attnlab "
                                "train or save_pretrained")
    try:
        model_type = json.loads((folder_path / "config.json").read_text()).get("model_type")
    except (ValueError, AttributeError) as error:
        raise ValueError(f"{folder}/config.json is not a JSON object: {error}") from None
    if model_type in TIME_SERIES_MEMBERS:
        raise ValueError(f"{folder} holds the time-series member {model_type!r}; attnlab export exports the causal "
                         "language models (the members and hybrids)")
    if output.is_dir():
        raise ValueError(f"--output {output} is a folder; pass a file path")
    if format == "torch" and output.suffix != ".pt2":
        raise ValueError(f"--output {output}: a torch.export program is a .pt2 file (torch.export.load reads only "
                         f"those); pass {output.with_suffix('.pt2')}")
    if output.exists() and export_record(output) is None:
        raise ValueError(f"--output {output} exists and was not written by attnlab export; it is left alone: choose "
                         "another path or delete it")
    if format == "onnx":
        missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if find_spec(name) is None]
        if missing:
            raise ValueError(f"--format onnx needs {', '.join(missing)} (exporting, and checking the graph): pip "
                             "install onnx onnxscript onnxruntime, or attnlab's dev extra")
    model = load_pretrained(str(folder_path), trust_remote_code=trust_remote_code, dtype=torch.float32).eval()
    if not hasattr(model.config, "mixer_types"):
        raise ValueError(f"{folder} holds a {model_type!r} model ({type(model).__name__}); attnlab export exports "
                         "attnlab members and hybrids")
    max_length = check_options(model, length, None, False, None, decoding_step=False)
    lengths = check_lengths(length, max_length)
    if len(lengths) < 2:
        raise ValueError(f"--length {length}: max_position_embeddings={max_length} leaves no two other lengths to "
                         "check the export at")
    record = json.dumps(dict(folder=str(folder), model_type=model_type, format=format, length=length))
    output.parent.mkdir(parents=True, exist_ok=True)
    # Written in a temporary folder beside the output (same file system, so the move is a rename), under its final
    # name (an ONNX graph's external weights, if any, are named after it), and moved only once checked.
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".attnlab-export-") as scratch:
        written = Path(scratch) / output.name
        try:
            if format == "torch":
                torch.export.save(export_program(model, example_length=length), written,
                                  extra_files={f"{EXPORT_RECORD}.json": record})
                run = torch.export.load(written).module()  # the file as written, not the program in memory
            else:
                import onnxruntime

                export_onnx(model, written, example_length=length, metadata={EXPORT_RECORD: record})
                session = onnxruntime.InferenceSession(str(written))

                def run(input_ids):
                    return torch.from_numpy(session.run(None, {"input_ids": input_ids.numpy()})[0])
        except Exception as error:  # torch.export and the ONNX exporter fail in many ways: one line, the first
            raise ValueError(f"{model_type} cannot be exported as {format}: {_first_line(error)}") from None
        generator = torch.Generator().manual_seed(0)
        differences = {}
        for check in lengths:
            input_ids = torch.randint(3, model.config.vocab_size, (1, check), generator=generator)
            with torch.no_grad():
                eager = model(input_ids=input_ids, use_cache=False).logits
                difference = (run(input_ids) - eager).abs().max().item()
            differences[check] = difference
            if not difference <= tolerance:  # NaN too
                raise ValueError(f"the exported {format} program differs from the eager model by {difference:.3g} "
                                 f"at length {check} (tolerance {tolerance:g}); nothing was written to {output}")
        others = [path for path in Path(scratch).iterdir() if path.name != output.name]
        for path in others:
            if (output.parent / path.name).exists():
                raise ValueError(f"{output.parent / path.name} (the export's external weights) exists; choose "
                                 "another --output")
        for path in [written, *others]:
            os.replace(path, output.parent / path.name)
    return dict(output=str(output), format=format, model_type=model_type, length=length, max_length=max_length,
                differences=differences, files=[str(output.parent / path.name) for path in [written, *others]])


def export_command(args):
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the loading bar would bury the result (and a one-line error)
    if args.num_threads is not None:
        if args.num_threads < 1:
            raise ValueError(f"--num_threads must be >= 1, got {args.num_threads}")
        torch.set_num_threads(args.num_threads)
    result = export_folder(args.folder, args.format, args.output, args.length, args.tolerance, args.trust_remote_code)
    print(f"exported {args.folder} ({result['model_type']}) as {result['format']} to {result['output']}: traced at "
          f"length {result['length']}, the sequence length dynamic in [2, {result['max_length']}]")
    print("max abs logit difference to the eager model: " + " | ".join(
        f"length {length}: {difference:.2e}" for length, difference in result["differences"].items()))


def add_command(commands) -> None:
    parser = commands.add_parser("export", help="export a saved member or hybrid as ONNX or a torch.export program, "
                                                "checked against the eager model")
    parser.add_argument("folder", help="a folder saved by attnlab train (or save_pretrained)")
    parser.add_argument("--format", required=True, help="onnx (an ONNX graph, run by onnxruntime) or torch (a .pt2 "
                                                        "program: torch.export.load)")
    parser.add_argument("--output", required=True, help="the file to write; an existing one only if attnlab export "
                                                        "wrote it")
    parser.add_argument("--length", type=int, default=16, help="the sequence length the export is traced at (the "
                                                               "length stays dynamic)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help="largest max abs logit difference to eager the check accepts")
    parser.add_argument("--trust_remote_code", action="store_true",
                        help="run the modeling code a folder ships (attnlab's own members need no remote code)")
    parser.add_argument("--num_threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.set_defaults(func=export_command)


__all__ = ["decoding_state", "export_folder", "export_onnx", "export_program"]
