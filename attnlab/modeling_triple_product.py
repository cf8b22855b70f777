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


def chunk_scores(st, row_weight, k, key_norm2, token_mask, query_start: int):
    """The chunk's masked scores (s.k)^2 + (t.k)^2 - row_weight |k|^2 [B, H, C, S] and the projections (s.k, t.k)
    [B, H, 2, C, S] they are squares of; `st` is s and t stacked, [B, H, 2, C, D]."""
    projections = st @ k.transpose(-1, -2).unsqueeze(2)
    allowed = causal_padding_mask(token_mask, query_start, st.shape[3], k.shape[2], st.device)
    scores = torch.addcmul(-row_weight * key_norm2, projections[:, :, 0], projections[:, :, 0])
    scores.addcmul_(projections[:, :, 1], projections[:, :, 1]).masked_fill_(~allowed, float("-inf"))
    return scores, projections


class ChunkAttention(torch.autograd.Function):
    """softmax(chunk_scores) @ v for one chunk of queries, with the backward pass written out. Autograd's generic
    one keeps and re-reads a dozen [C, S] intermediates (the squares, their sum, the masked copy, a zero-filled gradient
    per mask) where a few passes suffice. With `keep_scores` the projections and probabilities are kept for the
    backward pass; without, only each row's log normaliser is, and the backward pass recomputes the scores from it
    (as flash attention does), so no [C, S] tensor outlives its chunk."""

    @staticmethod
    def forward(ctx, st, row_weight, k, v, key_norm2, token_mask, query_start: int, keep_scores: bool):
        scores, projections = chunk_scores(st, row_weight, k, key_norm2, token_mask, query_start)
        if keep_scores:
            probabilities = torch.softmax(scores, dim=-1)
            kept = (projections, probabilities)
        else:
            log_normaliser = torch.logsumexp(scores, dim=-1, keepdim=True)
            probabilities = scores.sub_(log_normaliser).exp_()
            kept = (token_mask, log_normaliser)
        out = probabilities @ v
        ctx.keep_scores, ctx.query_start = keep_scores, query_start
        ctx.save_for_backward(st, row_weight, k, v, key_norm2, out, *kept)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        st, row_weight, k, v, key_norm2, out, *kept = ctx.saved_tensors
        if ctx.keep_scores:
            projections, probabilities = kept
        else:
            token_mask, log_normaliser = kept
            scores, projections = chunk_scores(st, row_weight, k, key_norm2, token_mask, ctx.query_start)
            probabilities = scores.sub_(log_normaliser).exp_()
        grad_v = probabilities.transpose(-1, -2) @ grad_out
        # softmax's backward, P (dP - sum_j P dP) with sum_j P dP = grad_out . out; zero where masked (P = 0 there)
        grad_scores = (grad_out @ v.transpose(-1, -2)).sub_((grad_out * out).sum(-1, keepdim=True)).mul_(probabilities)
        # scores = a^2 + b^2 - w n, so d/d(a, b) = 2 (a, b) grad_scores; the 2 is applied to the small products
        half_grad_projections = projections * grad_scores.unsqueeze(2)
        grad_st = 2 * (half_grad_projections @ k.unsqueeze(2))
        grad_k = 2 * (half_grad_projections.transpose(-1, -2) @ st).sum(2)
        grad_row_weight = -(grad_scores @ key_norm2.transpose(-1, -2))
        grad_key_norm2 = -(row_weight.transpose(-1, -2) @ grad_scores)
        return grad_st, grad_row_weight, grad_k, grad_v, grad_key_norm2, None, None, None


def triple_product_attention(q, k, r, v, token_mask, scale: float, chunk_size: int,
                             recompute_above_bytes: float = 0) -> torch.Tensor:
    """q, r [B, H, T, D] at positions past..past+T-1; k, v [B, H, S, D] with S = past + T. Returns [B, H, T, D] fp32.

    Queries are processed in chunks that only see the keys up to their own position. When gradients are needed and
    the layer's whole fp32 score tensor [B, H, T, S] would take more than `recompute_above_bytes`, each chunk's
    scores are recomputed in its backward pass, so no [T, S] tensor outlives its chunk and memory grows linearly with
    T; below that, they are kept, which saves the recomputation (a third of the backward pass).
    """
    with fp32_region(q):
        q, k, r, v = q.float(), k.float(), r.float(), v.float()
        s, t, row_weight = query_plane(q, r, scale)
        st = torch.stack((s, t), dim=2)
        key_norm2 = (k * k).sum(-1)[..., None, :]
        num_queries, past = q.shape[2], k.shape[2] - q.shape[2]
        if not isinstance(num_queries, int):
            # A symbolic length (torch.export): a graph cannot hold a length-dependent number of chunks, so all
            # queries are one chunk, the whole [T, S] score tensor of the layer.
            return ChunkAttention.apply(st, row_weight, k, v, key_norm2, token_mask, past, False)
        keep_scores = 4 * q.shape[0] * q.shape[1] * num_queries * k.shape[2] <= recompute_above_bytes
        outputs = []
        for start in range(0, num_queries, chunk_size):
            end = min(start + chunk_size, num_queries)
            visible = past + end
            outputs.append(ChunkAttention.apply(st[:, :, :, start:end], row_weight[:, :, start:end], k[:, :, :visible],
                                                v[:, :, :visible], key_norm2[..., :visible], token_mask, past + start,
                                                keep_scores))
        return torch.cat(outputs, dim=2)


class TripleProductAttention(nn.Module):
    cache_kind = "full_attention"  # keys and values; r is query-side
    num_recurrent_states = 0

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
    # Its Gram scores are not a dot product, so it is not SDPA: attention layers in its stack run eager.
    _supports_sdpa = False


class TripleProductModel(TripleProductPreTrainedModel, AttnlabModel):
    mixer_class = TripleProductAttention


class TripleProductForCausalLM(TripleProductPreTrainedModel, AttnlabForCausalLM):
    base_model_class = TripleProductModel


register_for_auto_classes(TripleProductConfig, TripleProductModel, TripleProductForCausalLM)

__all__ = ["TripleProductForCausalLM", "TripleProductModel", "TripleProductPreTrainedModel"]
