"""attnlab's cache for members that carry a fixed-size state (alone, or beside their keys and values).

transformers' `generate()` hands the model an empty `DynamicCache` on the first call and afterwards takes whatever
cache the model returned in `past_key_values`, so stateful members swap in `AttnlabCache` on their first forward
(hf-integration-guide.md, section 1.6). Beam search reorders it through `reorder_cache`.
"""

import torch
from transformers.cache_utils import Cache, DynamicLayer


class AttnlabCacheLayer(DynamicLayer):
    """One layer: optional keys and values (grown by `update`, as in DynamicLayer) plus named state tensors.

    Every stateful mixer calls `update_state` exactly once per forward; that call advances the token count, which
    `get_seq_length` reports whether or not the layer also keeps keys.
    """

    is_croppable = False  # a state cannot be rolled back, so no assisted or speculative decoding

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.states: dict[str, torch.Tensor] = {}
        self.seen_tokens = 0

    def update_state(self, num_new_tokens: int, **states: torch.Tensor) -> None:
        self.states = states
        self.seen_tokens += num_new_tokens

    def get_seq_length(self) -> int:
        return self.seen_tokens

    def _apply(self, fn) -> None:
        if self.keys is not None and self.keys.numel():
            self.keys, self.values = fn(self.keys), fn(self.values)
        self.states = {name: fn(tensor) for name, tensor in self.states.items()}

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._apply(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._apply(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._apply(lambda t: t[indices])

    def offload(self) -> None:
        self._apply(lambda t: t.to("cpu", non_blocking=True))

    def prefetch(self) -> None:
        if self.states or self.keys is not None:
            device = self.device if self.is_initialized else next(iter(self.states.values())).device
            self._apply(lambda t: t.to(device, non_blocking=True))

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove:
            raise ValueError("attnlab's recurrent states cannot be cropped (assisted decoding is not supported)")

    def reset(self) -> None:
        super().reset()
        self.states, self.seen_tokens = {}, 0


class AttnlabCache(Cache):
    """One `AttnlabCacheLayer` per decoder layer."""

    def __init__(self, config=None, num_layers: int | None = None):
        num_layers = num_layers if num_layers is not None else config.num_hidden_layers
        super().__init__(layers=[AttnlabCacheLayer() for _ in range(num_layers)])

    def get_state(self, layer_idx: int) -> dict[str, torch.Tensor]:
        """The layer's state tensors; empty before the first token."""
        return self.layers[layer_idx].states

    def update_state(self, layer_idx: int, num_new_tokens: int, **states: torch.Tensor) -> None:
        self.layers[layer_idx].update_state(num_new_tokens, **states)
