"""Evolving attention (seed 000, "TrueEvolving V2"): softmax attention on queries and keys evolved by a leaky memory.

At layer l and position t the seed runs, one position at a time,

    w_t  = sin(evolution_rate * (t+1) * (l+1) * evolution_weights)
    q~_t = q_t + w_t + decay * m_{t-1}
    k~_t = k_t + w_t + 0.5 * decay * m_{t-1}
    m_t  = q~_t                                  (m_{-1} = 0)

and then causal softmax attention on (q~, k~, v). The recurrence is linear, q~_t = sum_{s<=t} decay^(t-s) (q_s + w_s),
so we compute it for the whole sequence at once with a chunked scan (`leaky_scan`): a [C, C] decay-matrix product
inside every chunk of C positions, an [N, N] one across the N chunk ends. Only non-negative powers of decay appear,
so nothing overflows for decay near 1 or long sequences (the unchunked closed form, cumsum(decay^-s u_s) * decay^t,
overflows in fp32 after a few hundred positions at decay 0.85). The scan and the sine phases (thousands of radians
at long contexts) run in fp32, also under bf16 autocast.

Positions come from `position_ids` and padded positions contribute nothing to the memory, so a left-padded row
evolves exactly like the same row unpadded. Decoding keeps k~ and v as the keys and values of a transformers `hybrid`
cache layer (k~_t never changes once written) and the memory m_{t-1} as its recurrent state.

Subnormals on CPU: the memory sums the sine terms (RMS 0.7, against 0.32 for the projected q and k at init and width
256) with a gain of up to 1 / (1 - decay), so q~ and k~ are 6-13x larger than Llama's q and k at init and the scores
q~.k~/sqrt(d) of one row span well over 100 at head_dim 64. About a tenth of the softmax probabilities (and more of the score gradients)
then fall below 1.2e-38, into fp32's subnormal range: they change no result, but on many Intel CPUs each operation on
one is ~100x slower, which makes a training step several times slower. On a CPU, call `torch.set_flush_denormal(True)`
at the start of the process, before torch starts its threads (`attnlab train` and `attnlab bench` do this, logged,
unless told `--keep_subnormals` / `--keep-subnormals`), or use `qk_norm=True`, which bounds the scores (a different
model). Details and counts: docs/subnormals.md.
"""

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init

from .configuration_evolving import EvolvingConfig
from .modeling_common import (
    AttnlabForCausalLM,
    AttnlabModel,
    AttnlabPreTrainedModel,
    AttnlabRMSNorm,
    causal_attention,
    fp32_region,
    read_recurrent_states,
    register_for_auto_classes,
    split_heads,
    write_recurrent_states,
)


def decay_powers(decay: torch.Tensor, size: int, offset: int, step: int) -> torch.Tensor:
    """[size, size] lower-triangular: decay^(step * (i - j - offset)) where i - j >= offset, else 0."""
    index = torch.arange(size, device=decay.device)
    exponent = index[:, None] - index[None, :] - offset
    powers = decay ** (step * exponent.clamp(min=0)).to(decay.dtype)
    return torch.where(exponent >= 0, powers, torch.zeros((), dtype=decay.dtype, device=decay.device))


def leaky_scan(u: torch.Tensor, decay: torch.Tensor, memory: torch.Tensor | None, chunk_size: int) -> torch.Tensor:
    """y_t = decay * y_{t-1} + u_t for u [B, H, T, D], with y_{-1} = memory [B, H, D] (or 0). Returns y [B, H, T, D]."""
    batch, heads, length, dim = u.shape
    # A symbolic length (torch.export) is one chunk: a graph cannot hold a length-dependent number of chunks, and one
    # [T, T] product costs what the attention that follows costs anyway.
    size = min(chunk_size, length) if isinstance(length, int) else length
    num_chunks = -(-length // size)
    chunks = F.pad(u, (0, 0, 0, num_chunks * size - length)).view(batch, heads, num_chunks, size, dim)
    # Within each chunk, from a zero start: local_i = sum_{j<=i} decay^(i-j) u_j.
    local = decay_powers(decay, size, offset=0, step=1) @ chunks
    # The value entering chunk n: E_n = sum_{m<n} decay^(size*(n-1-m)) local_end_m + decay^(size*n) memory.
    entering = decay_powers(decay, num_chunks, offset=1, step=size) @ local[:, :, :, -1]
    if memory is not None:
        chunk_starts = size * torch.arange(num_chunks, device=u.device, dtype=u.dtype)
        entering = entering + (decay ** chunk_starts)[:, None] * memory[:, :, None]
    carry_in = decay ** torch.arange(1, size + 1, device=u.device, dtype=u.dtype)[:, None]
    scanned = local + carry_in * entering[:, :, :, None]
    return scanned.view(batch, heads, num_chunks * size, dim)[:, :, :length]


def evolve(q, k, w, decay, memory=None, chunk_size: int = 64, real=None) -> tuple[torch.Tensor, torch.Tensor]:
    """q~, k~ [B, H, T, D] from q, k, w [B, H, T, D], the memory m_{-1} [B, H, D] (None = 0) and `real`, a mask
    broadcastable to q that is False on padded positions: those must not feed the memory."""
    u = q + w
    if real is not None:
        u = u * real.to(u.dtype)
    q_evolved = leaky_scan(u, decay, memory, chunk_size)
    start = memory if memory is not None else torch.zeros_like(u[:, :, 0])
    previous = torch.cat([start[:, :, None], q_evolved], dim=2)[:, :, :-1]  # m_{t-1}
    return q_evolved, k + w + 0.5 * decay * previous


class EvolvingAttention(nn.Module):
    # Keys and values of the evolved keys, plus the memory m_{t-1} as recurrent state 0: a hybrid cache layer.
    cache_kind = "hybrid"
    num_recurrent_states = 1
    supports_state_rollback = True  # per-token states for assisted decoding (write_recurrent_states)

    def __init__(self, config: EvolvingConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.num_key_value_groups = 1
        self.is_causal = True
        self.phase_scale = config.evolution_rate * (layer_idx + 1)
        self.decay_mode = config.decay_mode
        self.initial_decay = config.memory_decay
        self.scan_chunk_size = config.scan_chunk_size
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.evolution_weights = nn.Parameter(torch.empty(config.num_attention_heads, config.head_dim))
        # decay itself ("raw") or its logit ("constrained"); see initial_decay_parameter. One element rather than
        # a 0-dim tensor, which FSDP2's fully_shard cannot shard.
        self.decay_parameter = nn.Parameter(torch.empty(1))
        if config.qk_norm:
            self.q_norm = AttnlabRMSNorm(config.head_dim, eps=config.rms_norm_eps)
            self.k_norm = AttnlabRMSNorm(config.head_dim, eps=config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def init_mixer_weights(self):
        init.normal_(self.evolution_weights, mean=0.0, std=1.0)
        init.constant_(self.decay_parameter, self.initial_decay_parameter())

    def initial_decay_parameter(self) -> float:
        decay = torch.tensor(self.initial_decay, dtype=torch.float64)
        return float(torch.logit(decay)) if self.decay_mode == "constrained" else float(decay)

    def decay(self) -> torch.Tensor:
        parameter = self.decay_parameter.float()[0]
        return torch.sigmoid(parameter) if self.decay_mode == "constrained" else parameter

    def temporal_weights(self, position_ids: torch.Tensor) -> torch.Tensor:
        """w_t [B, H, T, D] in fp32: sin(evolution_rate * (t+1) * (l+1) * evolution_weights)."""
        phase = (position_ids.float() + 1) * self.phase_scale
        return torch.sin(phase[:, None, :, None] * self.evolution_weights.float()[None, :, None, :])

    def forward(self, hidden_states, position_ids, token_mask=None, cache=None, cache_idx=None, past_length: int = 0,
                **kwargs):
        length = hidden_states.shape[1]
        q = split_heads(self.q_proj(hidden_states), self.num_heads)
        k = split_heads(self.k_proj(hidden_states), self.num_heads)
        v = split_heads(self.v_proj(hidden_states), self.num_heads)
        memory = read_recurrent_states(cache, cache_idx, 1)
        real = token_mask[:, None, -length:, None] if token_mask is not None else None
        with fp32_region(hidden_states):
            decay = self.decay()
            w = self.temporal_weights(position_ids)
            q_evolved, k_evolved = evolve(q.float(), k.float(), w, decay, memory[0] if memory else None,
                                          self.scan_chunk_size, real)
        write_recurrent_states(cache, cache_idx, [q_evolved[:, :, -1]], lambda: [q_evolved.movedim(2, 1)])
        query, key = q_evolved.to(v.dtype), k_evolved.to(v.dtype)
        if self.q_norm is not None:
            query, key = self.q_norm(query), self.k_norm(key)
        if cache is not None:
            key, v = cache.update(key, v, cache_idx)
        return self.o_proj(causal_attention(self, query, key, v, token_mask, past_length))


class EvolvingPreTrainedModel(AttnlabPreTrainedModel):
    config_class = EvolvingConfig
    # The memory is rolled back by modeling_common's rollback cache layers, so assisted decoding is allowed.
    _is_stateful = False


class EvolvingModel(EvolvingPreTrainedModel, AttnlabModel):
    mixer_class = EvolvingAttention
    uses_rotary = False


class EvolvingForCausalLM(EvolvingPreTrainedModel, AttnlabForCausalLM):
    base_model_class = EvolvingModel


register_for_auto_classes(EvolvingConfig, EvolvingModel, EvolvingForCausalLM)

__all__ = ["EvolvingForCausalLM", "EvolvingModel", "EvolvingPreTrainedModel"]
