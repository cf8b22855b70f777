"""Configuration of the triple-product (Gram determinant) attention member, seed 003."""

from huggingface_hub.dataclasses import strict

from .configuration_common import AttnlabConfig


@strict(accept_kwargs=True)
class TripleProductConfig(AttnlabConfig):
    r"""A decoder whose attention score is the negative squared volume spanned by (q_i, k_j, r_i):
    score_ij = -det Gram(q_i, k_j, r_i) * head_dim^-1.5, with RoPE applied to q, k and r at the same position.

    `query_chunk_size` is the number of queries whose scores are materialised at once.
    `recompute_scores_above_mb` (MiB, default 128): in training, while a layer's whole fp32 score tensor
    [batch, heads, T, T] fits in this budget, autograd keeps every chunk's scores (the fastest path; what it keeps is
    a few times the score tensor); above it, each chunk is recomputed in the backward pass, so training memory grows
    linearly with sequence length instead of quadratically, for about half a backward pass more. 0 always
    recomputes.
    """

    model_type = "triple_product"

    query_chunk_size: int = 256
    recompute_scores_above_mb: int = 128

    def check_values(self):
        super().check_values()
        if self.head_dim % 2:
            raise ValueError(f"TripleProductConfig: head_dim ({self.head_dim}) must be even for RoPE")
        if isinstance(self.query_chunk_size, bool) or self.query_chunk_size <= 0:
            raise ValueError(f"TripleProductConfig: query_chunk_size must be a positive integer, got {self.query_chunk_size!r}")
        if isinstance(self.recompute_scores_above_mb, bool) or self.recompute_scores_above_mb < 0:
            raise ValueError(f"TripleProductConfig: recompute_scores_above_mb must be an integer >= 0, "
                             f"got {self.recompute_scores_above_mb!r}")


__all__ = ["TripleProductConfig"]
