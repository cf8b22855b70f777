"""triple_product against the seed's literal module, and the numerics and memory claims of its docstring."""

import pytest
import torch

from attnlab import TripleProductConfig
from attnlab.modeling_common import AttnlabRotaryEmbedding, causal_padding_mask
from attnlab.modeling_triple_product import TripleProductAttention, query_plane, triple_product_attention
from attnlab.workbench.seed_reference.seed_003_triple_product import TripleProductAttention as SeedTripleProductAttention

WIDTH, HEADS = 32, 4


def paired_modules(chunk_size):
    """The seed module and ours with the same weights.

    The seed's RoPE rotates interleaved pairs (2m, 2m+1); ours (Llama's convention) rotates (m, m + d/2). Permuting
    the q, k, r output rows of every head maps one pairing onto the other; inner products, and so the scores, are
    unchanged by a permutation applied to all three.
    """
    torch.manual_seed(0)
    seed = SeedTripleProductAttention(WIDTH, HEADS, max_len=128)
    config = TripleProductConfig(hidden_size=WIDTH, num_attention_heads=HEADS, query_chunk_size=chunk_size)
    ours = TripleProductAttention(config, layer_idx=0)
    rows = rotary_rows()
    with torch.no_grad():
        ours.q_proj.weight.copy_(seed.W_q.weight[rows])
        ours.k_proj.weight.copy_(seed.W_k.weight[rows])
        ours.r_proj.weight.copy_(seed.W_r.weight[rows])
        ours.v_proj.weight.copy_(seed.W_v.weight)
        ours.o_proj.weight.copy_(seed.W_o.weight)
    rotary = AttnlabRotaryEmbedding(WIDTH // HEADS, 10000.0)
    return seed, ours, rotary


def rotary_rows():
    """Our q, k, r row i is the seed's row rotary_rows()[i]: per head, the even dimensions, then the odd ones."""
    head_dim = WIDTH // HEADS
    per_head = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    return torch.cat([h * head_dim + per_head for h in range(HEADS)])


@pytest.mark.parametrize("chunk_size", [7, 256])
def test_matches_the_seed_module(chunk_size):
    seed, ours, rotary = paired_modules(chunk_size)
    x = torch.randn(2, 50, WIDTH)
    positions = torch.arange(50)[None].expand(2, -1)
    torch.testing.assert_close(ours(x, position_embeddings=rotary(positions)), seed(x), atol=1e-5, rtol=0)


def test_gradients_match_the_seed_module():
    seed, ours, rotary = paired_modules(chunk_size=9)
    x = torch.randn(2, 40, WIDTH)
    seed(x).square().sum().backward()
    ours(x, position_embeddings=rotary(torch.arange(40)[None].expand(2, -1))).square().sum().backward()
    rows = rotary_rows()
    expected = {"q_proj.weight": seed.W_q.weight.grad[rows], "k_proj.weight": seed.W_k.weight.grad[rows],
                "r_proj.weight": seed.W_r.weight.grad[rows], "v_proj.weight": seed.W_v.weight.grad,
                "o_proj.weight": seed.W_o.weight.grad}
    assert set(expected) == {name for name, _ in ours.named_parameters()}
    for name, parameter in ours.named_parameters():
        assert expected[name].abs().max() > 0, name
        torch.testing.assert_close(parameter.grad, expected[name], atol=1e-4, rtol=1e-4, msg=name)


def sarrus_scores(q, k, r, scale):
    a, b, g = (q * q).sum(-1, keepdim=True), (r * r).sum(-1, keepdim=True), (q * r).sum(-1, keepdim=True)
    kk = (k * k).sum(-1)[..., None, :]
    qk, rk = q @ k.transpose(-1, -2), r @ k.transpose(-1, -2)
    return -(a * kk * b + 2 * qk * rk * g - a * rk**2 - kk * g**2 - b * qk**2) * scale


def projection_scores(q, k, r, scale):
    s, t, row_weight = query_plane(q, r, scale)
    return (s @ k.transpose(-1, -2)) ** 2 + (t @ k.transpose(-1, -2)) ** 2 - row_weight * (k * k).sum(-1)[..., None, :]


def test_projection_form_is_accurate_where_the_sarrus_expansion_cancels():
    """q and r nearly parallel (a thin query plane) and keys near the plane: Sarrus loses the score to rounding."""
    torch.manual_seed(0)
    q = 3 * torch.randn(1, 1, 64, 32, dtype=torch.float64)
    r = q + 0.01 * torch.randn_like(q)
    mix = torch.randn(1, 1, 64, 2, dtype=torch.float64)
    k = mix[..., :1] * q + mix[..., 1:] * r + 0.1 * torch.randn_like(q)
    scale = 32**-1.5
    exact = sarrus_scores(q, k, r, scale)  # float64: accurate enough to be the reference
    error_sarrus = (sarrus_scores(q.float(), k.float(), r.float(), scale) - exact).abs().median()
    error_ours = (projection_scores(q.float(), k.float(), r.float(), scale) - exact).abs().median()
    assert error_ours * 100 < error_sarrus


def test_degenerate_query_planes_give_a_uniform_causal_average():
    q = torch.randn(1, 1, 6, 8)
    for r in (torch.zeros_like(q), 2 * q):  # no plane at all, or q parallel to r
        k, v = torch.randn(1, 1, 6, 8), torch.randn(1, 1, 6, 8)
        out = triple_product_attention(q, k, r, v, None, scale=8**-1.5, chunk_size=4)
        expected = v.cumsum(2) / torch.arange(1, 7)[:, None]
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def saved_bytes_for_backward(seq_len, chunk_size, recompute_above_bytes=0):
    """Bytes autograd keeps from the forward pass of the attention core (what training memory holds per layer)."""
    storages = {}  # views of one tensor share its storage: count each storage once

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    q, k, r, v = (torch.randn(1, 2, seq_len, 16, requires_grad=True) for _ in range(4))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        triple_product_attention(q, k, r, v, None, scale=16**-1.5, chunk_size=chunk_size,
                                 recompute_above_bytes=recompute_above_bytes).sum()
    return sum(storages.values())


def test_training_memory_grows_linearly_with_sequence_length():
    short, long = saved_bytes_for_backward(512, 64), saved_bytes_for_backward(2048, 64)
    assert long / short < 4.5  # quadratic storage would be 16x
    assert long < 2048 * 2048 * 2 * 4  # less than one fp32 [T, T] score matrix per head


def test_scores_are_kept_below_the_budget_and_recomputed_above_it_with_correct_gradients():
    """Both backward passes (kept probabilities; scores recomputed from the log normalisers, with padding) against
    autograd through the plain float64 formula."""
    torch.manual_seed(0)
    q, k, r, v = (torch.randn(2, 2, 40, 8, dtype=torch.float64, requires_grad=True) for _ in range(4))
    token_mask = torch.ones(2, 40, dtype=torch.bool)
    token_mask[1, :7] = False
    scores = projection_scores(q, k, r, 8**-1.5)
    scores = scores.masked_fill(~causal_padding_mask(token_mask, 0, 40, 40, "cpu"), float("-inf"))
    expected = torch.autograd.grad((torch.softmax(scores, -1) @ v).square().sum(), (q, k, r, v))
    for budget in (0, 2**20):  # the scores take 2 * 2 * 40 * 40 * 4 = 25.6 kB: recomputed, then kept
        inputs = [x.detach().float().requires_grad_() for x in (q, k, r, v)]
        out = triple_product_attention(*inputs, token_mask, scale=8**-1.5, chunk_size=16, recompute_above_bytes=budget)
        for gradient, reference in zip(torch.autograd.grad(out.square().sum(), inputs), expected):
            torch.testing.assert_close(gradient.double(), reference, atol=1e-5 * reference.abs().max().item(), rtol=0)
    kept_bytes, recomputed_bytes = saved_bytes_for_backward(256, 64, 2**30), saved_bytes_for_backward(256, 64, 0)
    assert kept_bytes > 256 * 256 * 2 * 4 > recomputed_bytes  # kept: at least the [T, T] scores of both heads
