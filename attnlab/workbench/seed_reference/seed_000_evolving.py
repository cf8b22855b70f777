"""Seed 000, literal: TrueEvolving V2's per-position loop (README of HF dataset eyad-silx/scaling, commit f01ea7c).

The V2 source is not public; only the loop below is (seed-variants-spec.md 0.1). Around it we put the plainest
attention module consistent with the spec: q, k, v, o projections, the loop verbatim, then causal softmax
attention written out. Parameter names equal attnlab's `EvolvingAttention`, so weights load across with
`load_state_dict` and the module is constructed the same way, `SeedEvolvingAttention(config, layer_idx)`; the
benchmark swaps it in as the mixer of a whole model. It ignores position_ids, padding and caches: it is the
reference for unpadded training-style forwards only.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def seed_evolution(q, k, evolution_weights, evolution_rate, layer_idx, memory_decay):
    """The seed's loop verbatim (names as in its README), over q, k [B, H, T, D]; returns the evolved q and k."""
    B, n_heads, seq_len, d_head = q.shape
    current_memory = torch.zeros(B, n_heads, d_head, device=q.device, dtype=q.dtype)
    evolved_q, evolved_k = [], []

    # TEMPORAL EVOLUTION (RECURRENT) - replaces position embeddings
    for pos in range(seq_len):
        evolution_factor = evolution_rate * (pos + 1) * (layer_idx + 1)
        temporal_weight = torch.sin(evolution_factor * evolution_weights)

        # Recurrent memory update
        pos_q = q[:, :, pos, :] + temporal_weight + memory_decay * current_memory
        pos_k = k[:, :, pos, :] + temporal_weight + memory_decay * current_memory * 0.5

        # Update memory for next position
        current_memory = pos_q
        evolved_q.append(pos_q)
        evolved_k.append(pos_k)
    return torch.stack(evolved_q, dim=2), torch.stack(evolved_k, dim=2)


class SeedEvolvingAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.num_attention_heads
        self.d_head = config.head_dim
        self.evolution_rate = config.evolution_rate
        self.decay_mode = config.decay_mode
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.evolution_weights = nn.Parameter(torch.randn(config.num_attention_heads, config.head_dim))
        decay = torch.tensor([config.memory_decay])  # shape (1,) as attnlab stores it, so weights load across
        self.decay_parameter = nn.Parameter(torch.logit(decay) if self.decay_mode == "constrained" else decay)

    def forward(self, hidden_states, **kwargs):
        B, T, C = hidden_states.shape
        q = self.q_proj(hidden_states).view(B, T, self.n_heads, self.d_head).transpose(1, 2)
        k = self.k_proj(hidden_states).view(B, T, self.n_heads, self.d_head).transpose(1, 2)
        v = self.v_proj(hidden_states).view(B, T, self.n_heads, self.d_head).transpose(1, 2)
        constrained = self.decay_mode == "constrained"
        memory_decay = torch.sigmoid(self.decay_parameter) if constrained else self.decay_parameter
        q, k = seed_evolution(q, k, self.evolution_weights, self.evolution_rate, self.layer_idx, memory_decay)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_head)
        mask = torch.tril(torch.ones(T, T, device=hidden_states.device)).view(1, 1, T, T)
        scores = scores.masked_fill(mask == 0, float("-inf"))
        y = F.softmax(scores, dim=-1) @ v
        return self.o_proj(y.transpose(1, 2).contiguous().view(B, T, C))
