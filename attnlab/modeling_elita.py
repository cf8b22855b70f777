"""ELiTA, Efficient Linear-Time Attention (seed 001): Attention2 and FeedForward2.

Attention2, per head, with scalar logits for token x_i at position n_i = i * position_step:

    p_{1,i} = c . sin(a_1 n_i + b_1)        p_{2,i} = c . sin(a_2 n_i + b_2)        (c shared by both)
    cross_j = k_1 . x_j + p_{1,j}           d_i = k_2 . x_i           g_i = k_3 . x_i + p_{2,i}
    y_i = (e^{d_i} V x_i + e^{g_i} sum_{j<=i} e^{cross_j} V x_j) / (e^{d_i} + e^{g_i} sum_{j<=i} e^{cross_j})

which is a gate between the token's own value and a causal softmax average of all values so far:

    y_i = sigma_i A_i + (1 - sigma_i) V x_i,   A_i = sum_{j<=i} e^{cross_j} V x_j / S_i,   S_i = sum_{j<=i} e^{cross_j},
    sigma_i = sigmoid(g_i + log S_i - d_i).

The seed clips every logit to [-20, 20] and takes plain cumulative sums of exponentials. We compute the same
quantities exactly and without the clip: a scan over chunks of tokens carries (running max m, S e^{-m}, U e^{-m}),
and inside a chunk each token's sums are taken relative to its own running max (a masked [chunk, chunk] product),
so no exponential overflows and nothing after token i enters its output. (A per-sequence max would be exact in
real arithmetic but lets a large later logit underflow earlier outputs: a numerical leak of the future.) That
carried triple, per layer and head, is also the decoding state (three recurrent states of a transformers
`linear_attention` cache layer): each new token costs the same whatever the context.
The logits, the scan and the gate run in fp32, also under bf16 autocast.

FeedForward2: y = W_3 (swish(W_1 x + b_1) outer swish(W_2 x + b_2)) + b_3 with a d x d x l kernel W_3, computed as
one [d*l -> d] matmul on the flattened outer product.

The seed's "wrap" (the whole stack run `num_wraps` times, each pass adding its own learned bias) and its
feed-forward over the tied head's logits (`logit_ffn_size`) are config options, off by default.
"""

import torch
from torch import nn
from transformers import initialization as init

from .configuration_elita import ElitaConfig
from .modeling_common import (
    AttnlabForCausalLM,
    AttnlabModel,
    AttnlabPreTrainedModel,
    fp32_region,
    merge_heads,
    read_recurrent_states,
    register_for_auto_classes,
    split_heads,
    write_recurrent_states,
)


def cumulative_softmax(cross: torch.Tensor, values: torch.Tensor, state: tuple, chunk_size: int):
    """log S_i and A_i for every token, continuing from the state of the tokens before.

    cross [B, H, T] (-inf at padding, which then changes nothing), values [B, H, T, D], both fp32; state is
    (m [B, H], s [B, H], u [B, H, D]): the running max of cross and the sums of e^{cross - m} and e^{cross - m} v.
    Returns log S [B, H, T], A [B, H, T, D] and the state after the last token.
    """
    running_max, sums, value_sums = state
    length = cross.shape[-1]
    # A symbolic length (torch.export) is one chunk, taken whole: a graph cannot hold a length-dependent number of
    # chunks, so an exported graph holds the [T, T] product.
    symbolic = not isinstance(length, int)
    chunk_size = length if symbolic else min(chunk_size, length)
    index = torch.arange(chunk_size, device=cross.device)
    causal = index[:, None] >= index[None, :]
    tiny = torch.finfo(cross.dtype).tiny
    log_sums, averages = [], []
    for start in [0] if symbolic else range(0, length, chunk_size):
        x, v = (cross, values) if symbolic else (cross[..., start:start + chunk_size],
                                                 values[..., start:start + chunk_size, :])
        size = x.shape[-1]
        # Every result is independent of the reference it is computed against, so the max needs no gradient.
        with torch.no_grad():
            new_max = torch.maximum(running_max[..., None], x.cummax(-1).values)
            reference = torch.where(new_max.isneginf(), 0.0, new_max)  # rows with only padding so far
        # Mask before exp: e^{x_j - m_i} for j > i may overflow, and inf * 0 would poison the backward pass.
        weights = (x[..., None, :] - reference[..., :, None]).masked_fill(~causal[:size, :size], float("-inf")).exp()
        carry = (running_max[..., None] - reference).exp()
        s = carry * sums[..., None] + weights.sum(-1)
        u = carry[..., None] * value_sums[..., None, :] + weights @ v
        # s >= 1 once a real token was seen (its max term is e^0); the clamp only keeps padding rows finite.
        s_safe = s.clamp_min(tiny)
        log_sums.append(reference + s_safe.log())
        averages.append(u / s_safe[..., None])
        running_max, sums, value_sums = new_max[..., -1], s[..., -1], u[..., -1, :]
    return torch.cat(log_sums, -1), torch.cat(averages, -2), (running_max, sums, value_sums)


def per_token_states(running_max, cross, log_sum, average) -> list[torch.Tensor]:
    """The (m, s, u) state after every token, token axis at dim 1, for rolling a cache back. The state is defined up
    to a common shift of m (s and u scale by e^-shift), so each token's is taken relative to m = log S: s = 1 and
    u = A; before the first real token it is the empty state (-inf, 0, 0)."""
    seen = torch.maximum(running_max[..., None], cross.cummax(-1).values) > float("-inf")
    m = torch.where(seen, log_sum, float("-inf"))
    return [m.movedim(-1, 1), seen.to(log_sum.dtype).movedim(-1, 1), average.movedim(2, 1)]


class ElitaAttention(nn.Module):
    """Attention2, multi-head, with the output projection."""

    # Decoding state per head: the running max of the cross logits, and the sums of e^{cross - max} and of
    # e^{cross - max} v (recurrent states 0, 1, 2 of a transformers linear-attention cache layer).
    cache_kind = "linear_attention"
    num_recurrent_states = 3
    supports_state_rollback = True  # per-token states for assisted decoding (write_recurrent_states)

    def __init__(self, config: ElitaConfig, layer_idx: int):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.position_step = config.position_step
        self.chunk_size = config.scan_chunk_size
        # k_1, k_2, k_3 of every head as one projection to 3 * heads scalars (cross, self, gate logits).
        self.key_proj = nn.Linear(config.hidden_size, 3 * self.num_heads, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        # (a_1, a_2) frequencies and (b_1, b_2) phases of p_1 and p_2; c, the amplitudes, is shared by both.
        self.position_frequency = nn.Parameter(torch.empty(2, self.num_heads, config.position_width))
        self.position_phase = nn.Parameter(torch.empty(2, self.num_heads, config.position_width))
        self.position_amplitude = nn.Parameter(torch.empty(self.num_heads, config.position_width))

    def init_mixer_weights(self):
        """The seed's initialiser for a, b, c: U(-0.05, 0.05)."""
        for parameter in (self.position_frequency, self.position_phase, self.position_amplitude):
            init.uniform_(parameter, -0.05, 0.05)

    def position_terms(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """c . p_1 and c . p_2 for every head and token: two [batch, heads, seq] tensors."""
        n = (position_ids.float() * self.position_step)[:, None, None, :, None]  # [B, 1, 1, T, 1]
        angles = n * self.position_frequency[:, :, None, :] + self.position_phase[:, :, None, :]  # [B, 2, H, T, P]
        terms = (angles.sin() * self.position_amplitude[:, None, :]).sum(-1)
        return terms[:, 0], terms[:, 1]

    def empty_state(self, batch: int, head_dim: int, device: torch.device) -> tuple:
        max_ = torch.full((batch, self.num_heads), float("-inf"), device=device)
        return max_, torch.zeros(batch, self.num_heads, device=device), torch.zeros(batch, self.num_heads, head_dim,
                                                                                      device=device)

    def forward(self, hidden_states, position_ids, token_mask=None, cache=None, cache_idx=None, **kwargs):
        batch, seq, _ = hidden_states.shape
        values = split_heads(self.v_proj(hidden_states), self.num_heads)
        with fp32_region(hidden_states):
            logits = nn.functional.linear(hidden_states.float(), self.key_proj.weight.float())
            cross, self_logit, gate = logits.view(batch, seq, 3, self.num_heads).permute(2, 0, 3, 1)  # [B, H, T]
            p1, p2 = self.position_terms(position_ids)
            cross, gate = cross + p1, gate + p2
            if token_mask is not None:  # padding never enters the sums (nor, so, the decoding state)
                cross = cross.masked_fill(~token_mask[:, None, -seq:], float("-inf"))
            values = values.float()

            state = read_recurrent_states(cache, cache_idx, 3) or self.empty_state(batch, values.shape[-1], values.device)
            log_sum, average, new_state = cumulative_softmax(cross, values, tuple(state), self.chunk_size)
            write_recurrent_states(cache, cache_idx, list(new_state),
                                   lambda: per_token_states(state[0], cross, log_sum, average))

            history = torch.sigmoid(gate + log_sum - self_logit)[..., None]  # the self gate sigma_i
            out = history * average + (1 - history) * values
        return self.o_proj(merge_heads(out).to(hidden_states.dtype))


class ElitaFeedForward(nn.Module):
    """FeedForward2: the kernel W_3 [d, l, d] is stored flattened as down_proj [d*l -> d]."""

    def __init__(self, config: ElitaConfig):
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, config.hidden_size)  # W_1, b_1
        self.factor_proj = nn.Linear(config.hidden_size, config.linear_factor)  # W_2, b_2
        self.down_proj = nn.Linear(config.hidden_size * config.linear_factor, config.hidden_size)  # W_3, b_3

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        up = nn.functional.silu(self.up_proj(hidden_states))
        factor = nn.functional.silu(self.factor_proj(hidden_states))
        return self.down_proj((up[..., :, None] * factor[..., None, :]).flatten(-2))


class ElitaLogitFeedForward(nn.Module):
    """The seed's feed-forward over the logits (vocab -> size -> vocab, swish), added to them as a correction."""

    def __init__(self, config: ElitaConfig):
        super().__init__()
        self.up_proj = nn.Linear(config.vocab_size, config.logit_ffn_size)
        self.down_proj = nn.Linear(config.logit_ffn_size, config.vocab_size)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits + self.down_proj(nn.functional.silu(self.up_proj(logits)))


class ElitaPreTrainedModel(AttnlabPreTrainedModel):
    config_class = ElitaConfig
    # A fixed-size state per layer, which transformers' cache cannot roll back; attnlab's cache layers can
    # (modeling_common's rollback layers), so assisted decoding is allowed.
    _is_stateful = False

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, ElitaModel) and module.wrap_bias is not None:
            init.zeros_(module.wrap_bias)


class ElitaModel(ElitaPreTrainedModel, AttnlabModel):
    mixer_class = ElitaAttention
    mlp_class = ElitaFeedForward
    uses_rotary = False  # positions enter through the learned sin terms p_1, p_2

    def __init__(self, config: ElitaConfig):
        super().__init__(config)
        self.wrap_bias = nn.Parameter(torch.zeros(config.num_wraps, config.hidden_size)) if config.num_wraps > 1 else None
        self.post_init()

    @property
    def num_distinct_layers(self) -> int:
        return self.config.num_distinct_layers

    def run_layers(self, hidden_states, all_hidden_states, **layer_kwargs):
        """The stack, `num_wraps` times, each wrap starting with its bias; each application has its own cache slot."""
        for cache_idx in range(self.config.num_hidden_layers):
            wrap, layer_idx = divmod(cache_idx, len(self.layers))
            if layer_idx == 0 and self.wrap_bias is not None:
                hidden_states = hidden_states + self.wrap_bias[wrap]
            if all_hidden_states is not None:
                all_hidden_states.append(hidden_states)
            hidden_states = self.layers[layer_idx](hidden_states, cache_idx, **layer_kwargs)
        return hidden_states


class ElitaForCausalLM(ElitaPreTrainedModel, AttnlabForCausalLM):
    base_model_class = ElitaModel

    def __init__(self, config: ElitaConfig):
        super().__init__(config)
        self.logit_ffn = ElitaLogitFeedForward(config) if config.logit_ffn_size else None
        self.post_init()

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden_states)
        return self.logit_ffn(logits) if self.logit_ffn is not None else logits


register_for_auto_classes(ElitaConfig, ElitaModel, ElitaForCausalLM)

__all__ = ["ElitaForCausalLM", "ElitaModel", "ElitaPreTrainedModel"]
