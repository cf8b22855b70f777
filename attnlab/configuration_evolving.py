"""Configuration of the evolving attention member (TrueEvolving V2), seed 000."""

from huggingface_hub.dataclasses import strict

from .configuration_common import AttnlabConfig

DECAY_MODES = ("constrained", "raw")


@strict(accept_kwargs=True)
class EvolvingConfig(AttnlabConfig):
    r"""Softmax attention on a query and key evolved by a leaky memory of past queries plus a per-layer sine term:

        w_t  = sin(evolution_rate * (t+1) * (l+1) * evolution_weights)      (t from position_ids, l the layer)
        q~_t = q_t + w_t + decay * m_{t-1},   k~_t = k_t + w_t + 0.5 * decay * m_{t-1},   m_t = q~_t,  m_{-1} = 0

    There is no other position embedding. Defaults are the seed's (6 layers, 8 heads, width 256, FFN 1024).

    - `decay_mode`: "constrained" (default) learns decay = sigmoid(theta), so 0 < decay < 1 and the memory stays
      bounded (|q~| <= max|q + w| / (1 - decay)); "raw" learns decay itself, as the seed appears to, and the
      memory grows like decay^T if training pushes |decay| above 1. Both start at `memory_decay`.
    - `qk_norm`: RMS-normalise q~ and k~ (per head) before the softmax; the memory itself stays un-normalised.
    - `scan_chunk_size`: positions per chunk of the parallel scan that computes q~ (a decay-matrix product inside
      each chunk, another across chunk ends); it changes the speed, never the result beyond rounding.
    """

    model_type = "evolving"
    num_hidden_layers: int = 6
    num_attention_heads: int = 8
    hidden_size: int = 256
    intermediate_size: int = 1024
    evolution_rate: float = 0.1
    memory_decay: float = 0.85
    decay_mode: str = "constrained"
    qk_norm: bool = False
    scan_chunk_size: int = 64

    def check_values(self):
        super().check_values()
        if self.decay_mode not in DECAY_MODES:
            raise ValueError(f"EvolvingConfig: decay_mode must be one of {DECAY_MODES}, got {self.decay_mode!r}")
        if self.decay_mode == "constrained" and not 0 < self.memory_decay < 1:
            raise ValueError(
                f"EvolvingConfig: memory_decay must be in (0, 1) with decay_mode='constrained' (it is a sigmoid), "
                f"got {self.memory_decay!r}; use decay_mode='raw' for other values"
            )
        if not self.evolution_rate > 0:
            raise ValueError(f"EvolvingConfig: evolution_rate must be positive, got {self.evolution_rate!r}")
        if isinstance(self.scan_chunk_size, bool) or self.scan_chunk_size <= 0:
            raise ValueError(
                f"EvolvingConfig: scan_chunk_size must be a positive integer, got {self.scan_chunk_size!r}"
            )


__all__ = ["EvolvingConfig"]
