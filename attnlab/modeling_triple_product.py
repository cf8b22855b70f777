"""Triple-product attention (seed 003): softmax over -det Gram(q_i, k_j, r_i).

The determinant of the Gram matrix of (q, k, r) is the squared volume of the parallelepiped they span. Writing
delta_i = |q_i|^2 |r_i|^2 - (q_i.r_i)^2 (the squared area of the query plane) it factors as

    det_ij = delta_i * dist^2(k_j, span(q_i, r_i)) = delta_i * (|k_j|^2 - |proj_i k_j|^2),

so a key scores 0 when it lies in the plane of its query pair and is pushed down quadratically by its distance
from it. We compute it in that projection form rather than the seed's Sarrus expansion: Sarrus sums five terms of
size |q|^2 |k|^2 |r|^2 whose result is delta |k|^2 sin^2(k, plane), so its rounding error is larger by the factor
|q|^2 |r|^2 / delta = 1 / sin^2(q, r) (unbounded as q and r align); ours is bounded by delta |k|^2. Both are computed
in fp32, also under bf16 autocast. With q_perp = q - (q.r / |r|^2) r, s = sqrt(scale) |r| q_perp and
t = sqrt(scale) |q_perp| r:

    -scale * det_ij = (s_i . k_j)^2 + (t_i . k_j)^2 - scale * delta_i * |k_j|^2

two [T, S] products of the key matrix (linear in q k^T and r k^T) plus a per-row and a per-column term.
r is query-side, so the KV cache is transformers' DynamicCache of rotated k and v.
"""

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .configuration_triple_product import TripleProductConfig
from .modeling_common import (
    AttnlabForCausalLM,
    AttnlabModel,
    AttnlabPreTrainedModel,
    apply_rotary,
    causal_padding_mask,
    fp32_region,
    merge_heads,
    register_for_auto_classes,
    split_heads,
)


def query_plane(q: torch.Tensor, r: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(s, t, scale * delta) for each query: the scaled orthogonal basis of span(q, r) and the row weight."""
    r_norm2 = (r * r).sum(-1, keepdim=True)
    q_perp = q - (q * r).sum(-1, keepdim=True) / r_norm2.clamp_min(torch.finfo(r.dtype).tiny) * r
    q_perp_norm2 = (q_perp * q_perp).sum(-1, keepdim=True)
    s = (scale * r_norm2).sqrt() * q_perp
    t = (scale * q_perp_norm2).sqrt() * r
    return s, t, scale * r_norm2 * q_perp_norm2


def _chunk_attention(s, t, row_weight, k, v, key_norm2, token_mask, query_start: int):
    scores = (s @ k.transpose(-1, -2)).square() + (t @ k.transpose(-1, -2)).square() - row_weight * key_norm2
    allowed = causal_padding_mask(token_mask, query_start, s.shape[2], k.shape[2], s.device)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def triple_product_attention(q, k, r, v, token_mask, scale: float, chunk_size: int,
                             recompute_above_bytes: float = 0) -> torch.Tensor:
    """q, r [B, H, T, D] at positions past..past+T-1; k, v [B, H, S, D] with S = past + T. Returns [B, H, T, D] fp32.

    Queries are processed in chunks that only see the keys up to their own position. When gradients are needed and
    the layer's whole fp32 score tensor [B, H, T, S] would take more than `recompute_above_bytes`, each chunk is
    recomputed in the backward pass, so no [T, S] tensor outlives its chunk and memory grows linearly with T;
    below that, autograd keeps the scores, which saves the recomputation (about half the backward pass).
    """
    with fp32_region(q):
        q, k, r, v = q.float(), k.float(), r.float(), v.float()
        s, t, row_weight = query_plane(q, r, scale)
        key_norm2 = (k * k).sum(-1)[..., None, :]
        num_queries, past = q.shape[2], k.shape[2] - q.shape[2]
        score_bytes = 4 * q.shape[0] * q.shape[1] * num_queries * k.shape[2]
        recompute = (torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, r, v))
                     and score_bytes > recompute_above_bytes)
        outputs = []
        for start in range(0, num_queries, chunk_size):
            end = min(start + chunk_size, num_queries)
            visible = past + end
            args = (s[:, :, start:end], t[:, :, start:end], row_weight[:, :, start:end],
                    k[:, :, :visible], v[:, :, :visible], key_norm2[..., :visible], token_mask, past + start)
            outputs.append(checkpoint(_chunk_attention, *args, use_reentrant=False) if recompute
                           else _chunk_attention(*args))
        return torch.cat(outputs, dim=2)


class TripleProductAttention(nn.Module):
    def __init__(self, config: TripleProductConfig, layer_idx: int):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.scale = config.head_dim**-1.5
        self.query_chunk_size = config.query_chunk_size
        self.recompute_above_bytes = config.recompute_scores_above_mb * 2**20
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.r_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, hidden_states, position_embeddings, token_mask=None, cache=None, cache_idx=None, **kwargs):
        cos, sin = position_embeddings
        q = apply_rotary(split_heads(self.q_proj(hidden_states), self.num_heads), cos, sin)
        k = apply_rotary(split_heads(self.k_proj(hidden_states), self.num_heads), cos, sin)
        r = apply_rotary(split_heads(self.r_proj(hidden_states), self.num_heads), cos, sin)
        v = split_heads(self.v_proj(hidden_states), self.num_heads)
        if cache is not None:
            k, v = cache.update(k, v, cache_idx)
        out = triple_product_attention(q, k, r, v, token_mask, self.scale, self.query_chunk_size,
                                       self.recompute_above_bytes)
        return self.o_proj(merge_heads(out).to(hidden_states.dtype))


class TripleProductPreTrainedModel(AttnlabPreTrainedModel):
    config_class = TripleProductConfig


class TripleProductModel(TripleProductPreTrainedModel, AttnlabModel):
    mixer_class = TripleProductAttention


class TripleProductForCausalLM(TripleProductPreTrainedModel, AttnlabForCausalLM):
    base_model_class = TripleProductModel


register_for_auto_classes(TripleProductConfig, TripleProductModel, TripleProductForCausalLM)

__all__ = ["TripleProductForCausalLM", "TripleProductModel", "TripleProductPreTrainedModel"]
