"""Deliberately broken copies of the example retention mixer, for the tests of the contract and the audit."""

import torch

from retention import Retention


class NextTokenLeakRetention(Retention):
    """Adds the next token's input to each position: the seeds' future-token leak."""

    def forward(self, hidden_states, *args, **kwargs):
        shifted = torch.cat([hidden_states[:, 1:], torch.zeros_like(hidden_states[:, :1])], dim=1)
        return super().forward(hidden_states + shifted, *args, **kwargs)


class StaleStateRetention(Retention):
    """Decodes from a state that forgets the last chunk: its cached decoding differs from its full forward."""

    def forward(self, hidden_states, *args, cache=None, cache_idx=None, **kwargs):
        out = super().forward(hidden_states, *args, cache=cache, cache_idx=cache_idx, **kwargs)
        if cache is not None:
            layer = cache.layers[cache_idx]
            layer.recurrent_states[0] = layer.recurrent_states[0] * 0.5
        return out


class NoRollbackRetention(Retention):
    """Keeps its state but does not declare that it gives per-token states: no assisted decoding."""

    supports_state_rollback = False


class NoCacheDeclared(torch.nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()


class WrongConstructor(torch.nn.Module):
    cache_kind = None

    def __init__(self, config):
        super().__init__()
