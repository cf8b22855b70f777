"""Retention (RetNet, Sun et al. 2023, "Retentive Network: A Successor to Transformer for Large Language Models"),
written outside attnlab as a mixer: a linear attention with a fixed per-head decay, trained in its chunkwise form
and decoded in its recurrent form with an O(1) state per token.

For head h with decay gamma_h = 1 - 2^(-5 - h), queries and keys rotated by RoPE, keys scaled by d^-1/2:

    recurrent:   S_n = gamma * S_{n-1} + k_n^T v_n,        o_n = q_n S_n            (S: [d_k, d_v] per head)
    parallel:    o_n = sum_{m <= n} gamma^(n - m) (q_n . k_m) v_m
    chunkwise:   o = (Q K^T * D) V  +  (gamma^(i+1) Q) S_prev,   S_next = gamma^C S_prev + (K * gamma^(C-1-j))^T V

then a per-head group norm, a swish gate and the output projection. Padded positions get k = 0, so they never
enter S (the stack counts positions over real tokens only, so RoPE and the decay see the unpadded sequence).
"""

import torch
from torch import nn
from torch.nn import functional as F

from attnlab.modeling_common import apply_rotary, merge_heads, read_recurrent_states, split_heads, write_recurrent_states


def retention_chunkwise(q, k, v, gamma, state, chunk_size: int):
    """q, k [B, H, T, Dk], v [B, H, T, Dv], gamma [H], state [B, H, Dk, Dv] or None -> (o [B, H, T, Dv], state)."""
    batch, heads = q.shape[:2]
    log_gamma = gamma.log()[None, :, None]                                                  # [1, H, 1]
    if state is None:
        state = q.new_zeros(batch, heads, q.shape[-1], v.shape[-1])
    outputs = []
    # split, not slicing: the backward of each slice would write a zero-filled gradient of the whole length
    for qc, kc, vc in zip(q.split(chunk_size, dim=2), k.split(chunk_size, dim=2), v.split(chunk_size, dim=2)):
        size = qc.shape[2]
        index = torch.arange(size, device=q.device, dtype=q.dtype)
        distance = index[:, None] - index[None, :]
        decay = torch.exp(distance[None] * log_gamma[..., None]).masked_fill(distance[None] < 0, 0.0)  # D [1, H, C, C]
        inner = (qc @ kc.transpose(-1, -2) * decay) @ vc
        cross = (qc * torch.exp((index + 1)[None, None, :, None] * log_gamma[..., None])) @ state
        outputs.append(inner + cross)
        key_decay = torch.exp((size - 1 - index)[None, None, :, None] * log_gamma[..., None])
        state = torch.exp(size * log_gamma)[..., None] * state + (kc * key_decay).transpose(-1, -2) @ vc
    return torch.cat(outputs, dim=2), state


class Retention(nn.Module):
    """Multi-scale retention with a swish gate: one recurrent state [d_k, d_v] per head."""

    cache_kind = "linear_attention"
    num_recurrent_states = 1
    supports_state_rollback = True  # it gives the state after every token while the cache records (assisted decoding)

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.chunk_size = getattr(config, "retention_chunk_size", 64)
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.g_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.group_norm = nn.GroupNorm(self.num_heads, config.hidden_size, affine=False, eps=config.rms_norm_eps)
        self.register_buffer("gamma", 1 - 2.0 ** (-5.0 - torch.arange(self.num_heads, dtype=torch.float32)),
                             persistent=False)

    def init_mixer_weights(self):
        # a non-persistent buffer is not in the checkpoint: recompute it when the model is built on the meta device
        self.gamma.copy_(1 - 2.0 ** (-5.0 - torch.arange(self.num_heads, dtype=torch.float32)))

    def forward(self, hidden_states, position_embeddings, token_mask=None, cache=None, cache_idx=None, **kwargs):
        batch, length, width = hidden_states.shape
        cos, sin = position_embeddings
        q = apply_rotary(split_heads(self.q_proj(hidden_states), self.num_heads), cos, sin)
        k = apply_rotary(split_heads(self.k_proj(hidden_states), self.num_heads), cos, sin) * q.shape[-1] ** -0.5
        v = split_heads(self.v_proj(hidden_states), self.num_heads).float()
        if token_mask is not None:  # padding never enters the state
            k = k * token_mask[:, None, -length:, None]
        state = read_recurrent_states(cache, cache_idx, 1)
        start = state[0] if state else None
        out, state = retention_chunkwise(q.float(), k.float(), v, self.gamma.float(), start, self.chunk_size)

        def states_after_each_token():  # the recurrent form, token by token: only while assisted decoding verifies
            s, states = start if start is not None else torch.zeros_like(state), []
            for t in range(length):
                s = self.gamma[None, :, None, None] * s + k[:, :, t, :, None].float() * v[:, :, t, None, :]
                states.append(s)
            return [torch.stack(states, dim=1)]

        write_recurrent_states(cache, cache_idx, [state], states_after_each_token)
        out = self.group_norm(merge_heads(out).reshape(batch * length, width)).view(batch, length, width)
        return self.o_proj(F.silu(self.g_proj(hidden_states)) * out.to(hidden_states.dtype))
