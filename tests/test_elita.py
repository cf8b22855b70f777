"""elita against the seed's literal modules, and the scan's exactness, stability and decoding state."""

import pytest
import torch

from attnlab import ElitaConfig, ElitaForCausalLM
from attnlab.workbench.audit import decode_gap, generate_agrees_with_and_without_cache, left_padding_gap
from attnlab.members import MEMBERS
from attnlab.modeling_elita import ElitaAttention, ElitaFeedForward, cumulative_softmax
from attnlab.workbench.seed_reference.seed_001_elita import Attention2, FeedForward2

WIDTH, HEADS, POSITION_WIDTH, MAX_POSITIONS = 32, 4, 6, 256


def paired_attention(chunk_size):
    """The seed's Attention2 and ours with the same weights; position parameters large enough to matter."""
    torch.manual_seed(0)
    seed = Attention2(WIDTH, HEADS, WIDTH // HEADS, POSITION_WIDTH)
    with torch.no_grad():
        for name in ("k1", "k2", "k3"):
            getattr(seed, name).normal_(0, 0.3)
        for name in ("a1", "a2"):
            getattr(seed, name).normal_(0, 40.0)  # n_i stays in [0, 1]: frequencies of tens of radians
        for name in ("b1", "b2", "c"):
            getattr(seed, name).normal_(0, 1.0)
    config = ElitaConfig(hidden_size=WIDTH, num_attention_heads=HEADS, position_width=POSITION_WIDTH,
                         max_position_embeddings=MAX_POSITIONS, scan_chunk_size=chunk_size)
    ours = ElitaAttention(config, layer_idx=0)
    with torch.no_grad():
        ours.key_proj.weight.copy_(torch.cat([seed.k1, seed.k2, seed.k3]))
        ours.v_proj.weight.copy_(seed.value_weight.permute(0, 2, 1).reshape(WIDTH, WIDTH))  # rows (head, a)
        ours.o_proj.weight.copy_(seed.output_weight.permute(1, 0, 2).reshape(WIDTH, WIDTH))  # columns (head, a)
        ours.position_frequency.copy_(torch.stack([seed.a1, seed.a2]).squeeze(-1))
        ours.position_phase.copy_(torch.stack([seed.b1, seed.b2]).squeeze(-1))
        ours.position_amplitude.copy_(seed.c.squeeze(-1))
    return seed, ours, config.position_step


@pytest.mark.parametrize("chunk_size", [7, 128])
def test_attention_matches_the_seed_with_the_fixed_step(chunk_size):
    seed, ours, step = paired_attention(chunk_size)
    x = torch.randn(2, 50, WIDTH)
    positions = torch.arange(50)[None]
    expected = seed(x, t=(50 - 1) * step)
    assert expected.abs().max() > 0.1  # the clip is inactive: logits here are a few units at most
    torch.testing.assert_close(ours(x, position_ids=positions), expected, atol=1e-5, rtol=0)

    x.requires_grad_(True)
    seed(x, t=(50 - 1) * step).square().sum().backward()
    seed_grad, x.grad = x.grad, None
    ours(x, position_ids=positions).square().sum().backward()
    torch.testing.assert_close(x.grad, seed_grad, atol=1e-5, rtol=1e-4)
    # Every parameter's gradient, laid out as paired_attention lays out the weights.
    expected = {
        "key_proj.weight": torch.cat([seed.k1.grad, seed.k2.grad, seed.k3.grad]),
        "v_proj.weight": seed.value_weight.grad.permute(0, 2, 1).reshape(WIDTH, WIDTH),
        "o_proj.weight": seed.output_weight.grad.permute(1, 0, 2).reshape(WIDTH, WIDTH),
        "position_frequency": torch.stack([seed.a1.grad, seed.a2.grad]).squeeze(-1),
        "position_phase": torch.stack([seed.b1.grad, seed.b2.grad]).squeeze(-1),
        "position_amplitude": seed.c.grad.squeeze(-1),
    }
    assert set(expected) == {name for name, _ in ours.named_parameters()}
    for name, parameter in ours.named_parameters():
        assert expected[name].abs().max() > 0, name
        torch.testing.assert_close(parameter.grad, expected[name], atol=1e-4, rtol=1e-4, msg=name)


def test_feed_forward_matches_the_seed_einsum():
    torch.manual_seed(0)
    seed = FeedForward2(WIDTH, 8)
    ours = ElitaFeedForward(ElitaConfig(hidden_size=WIDTH, num_attention_heads=HEADS, linear_factor=8))
    with torch.no_grad():
        seed.b1.normal_(), seed.b2.normal_(), seed.b3.normal_()
        ours.up_proj.weight.copy_(seed.w1.T), ours.up_proj.bias.copy_(seed.b1)
        ours.factor_proj.weight.copy_(seed.w2.T), ours.factor_proj.bias.copy_(seed.b2)
        ours.down_proj.weight.copy_(seed.w3.reshape(WIDTH * 8, WIDTH).T), ours.down_proj.bias.copy_(seed.b3)
    x = torch.randn(2, 9, WIDTH)
    torch.testing.assert_close(ours(x), seed(x), atol=1e-5, rtol=0)


def empty_state(batch, heads, dim):
    return torch.full((batch, heads), float("-inf")), torch.zeros(batch, heads), torch.zeros(batch, heads, dim)


def exact_scan(cross, values):
    """log S_i and A_i in float64 by an explicit causal softmax (quadratic; small sizes only)."""
    cross, values = cross.double(), values.double()
    length = cross.shape[-1]
    scores = cross[..., None, :].expand(*cross.shape, length).clone()
    scores = scores.masked_fill(~torch.ones(length, length, dtype=torch.bool).tril(), float("-inf"))
    return scores.logsumexp(-1), scores.softmax(-1) @ values


def test_chunked_scan_is_exact_across_chunk_boundaries_and_split_calls():
    torch.manual_seed(0)
    cross, values = 5 * torch.randn(2, 3, 61), torch.randn(2, 3, 61, 4)
    log_sum, average = exact_scan(cross, values)
    for chunk_size in (1, 7, 64):
        ours_log_sum, ours_average, state = cumulative_softmax(cross, values, empty_state(2, 3, 4), chunk_size)
        torch.testing.assert_close(ours_log_sum.double(), log_sum, atol=1e-5, rtol=1e-6)
        torch.testing.assert_close(ours_average.double(), average, atol=1e-5, rtol=0)
        # continuing from the state after 23 tokens gives the same as one call over everything
        _, _, middle = cumulative_softmax(cross[..., :23], values[..., :23, :], empty_state(2, 3, 4), chunk_size)
        rest_log_sum, rest_average, end = cumulative_softmax(cross[..., 23:], values[..., 23:, :], middle, chunk_size)
        torch.testing.assert_close(rest_log_sum, ours_log_sum[..., 23:], atol=1e-5, rtol=1e-6)
        torch.testing.assert_close(rest_average, ours_average[..., 23:, :], atol=1e-5, rtol=0)
        for got, want in zip(end, state):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_huge_logits_stay_finite_exact_and_never_leak_the_future():
    """Logits in the thousands (the seed clips at 20 and a global max would underflow early outputs)."""
    torch.manual_seed(0)
    cross, values = 300 * torch.randn(1, 2, 300), torch.randn(1, 2, 300, 4)
    cross[..., 250] = 5000.0
    cross.requires_grad_(True)
    log_sum, average, _ = cumulative_softmax(cross, values, empty_state(1, 2, 4), chunk_size=32)
    exact_log_sum, exact_average = exact_scan(cross.detach(), values)
    torch.testing.assert_close(log_sum.double(), exact_log_sum, atol=1e-3, rtol=1e-6)
    torch.testing.assert_close(average.double(), exact_average, atol=1e-5, rtol=0)
    (log_sum.sum() + average.sum()).backward()
    assert torch.isfinite(cross.grad).all()

    future = cross.detach().clone()
    future[..., 200:] = 1e4  # later tokens that dwarf every earlier one
    early_log_sum, early_average, _ = cumulative_softmax(future, values, empty_state(1, 2, 4), chunk_size=32)
    assert torch.equal(early_log_sum[..., :200], log_sum.detach()[..., :200])
    assert torch.equal(early_average[..., :200, :], average.detach()[..., :200, :])


def tiny_model(**overrides):
    torch.manual_seed(0)
    return ElitaForCausalLM(MEMBERS["elita"].test_config(**overrides)).eval()


def test_decoding_state_is_fixed_size_and_padding_leaves_it_untouched():
    model = tiny_model()
    prompt = torch.randint(3, 97, (1, 40))
    with torch.no_grad():
        short = model(prompt[:, :10], use_cache=True).past_key_values
        long = model(prompt, use_cache=True).past_key_values
        padded = torch.cat([torch.zeros(1, 6, dtype=torch.long), prompt], dim=1)
        mask = torch.ones_like(padded)
        mask[:, :6] = 0
        padded_cache = model(padded, attention_mask=mask, use_cache=True).past_key_values
    shapes = [(1, 4), (1, 4), (1, 4, 8)]  # running max, sum of e^(cross - max), sum of e^(cross - max) v, per head
    for slot in range(model.config.num_hidden_layers):
        for state in range(3):
            assert short.layers[slot].recurrent_states[state].shape == long.layers[slot].recurrent_states[state].shape \
                == shapes[state]
            torch.testing.assert_close(padded_cache.layers[slot].recurrent_states[state],
                                       long.layers[slot].recurrent_states[state], atol=1e-5, rtol=1e-5)
    # No keys or values are kept, only slot 0's one placeholder byte per token that lets the cache report its length.
    assert long.layers[0].keys.shape == (1, 1, 40, 1) and long.layers[0].keys.dtype == torch.bool
    assert all(not hasattr(layer, "keys") for layer in long.layers[1:])
    assert long.get_seq_length() == 40


def test_wrap_and_logit_feed_forward_train_decode_and_generate_with_the_cache(tmp_path):
    model = tiny_model(num_hidden_layers=6, num_wraps=3, logit_ffn_size=16)
    ids = torch.randint(3, 97, (2, 20))
    with torch.no_grad():
        cache = model(ids, use_cache=True).past_key_values
    assert len(model.model.layers) == 2 and len(cache.layers) == 6  # 2 layers applied 3 times: 6 slots
    assert decode_gap(model, ids, prefill=6) < 1e-4
    assert left_padding_gap(model, ids[:1, :9], 4, pad_token_id=0) < 1e-5
    for kwargs in (dict(do_sample=False), dict(do_sample=False, num_beams=3, num_return_sequences=2)):
        assert generate_agrees_with_and_without_cache(model, ids[:, :5], 6, pad_token_id=0, **kwargs)

    model.train()
    model(ids, labels=ids, use_cache=False).loss.backward()
    assert model.model.wrap_bias.grad.abs().sum() > 0 and model.logit_ffn.up_proj.weight.grad.abs().sum() > 0
    model.save_pretrained(tmp_path)
    reloaded = ElitaForCausalLM.from_pretrained(tmp_path).eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, atol=0, rtol=0)


def test_position_step_defaults_to_the_training_grid_and_is_saved():
    config = ElitaConfig(max_position_embeddings=257)
    assert config.position_step == 1 / 256
    assert ElitaConfig(max_position_embeddings=257, position_step=0.5).position_step == 0.5
    assert ElitaConfig.from_dict(config.to_dict()).position_step == 1 / 256


@pytest.mark.parametrize("field, value", [("position_width", 0), ("linear_factor", 0), ("scan_chunk_size", 0),
                                          ("num_wraps", 0), ("logit_ffn_size", -1), ("position_step", 0.0),
                                          ("position_step", -0.1)])
def test_bad_config_values_are_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        ElitaConfig(**{field: value})


def test_logit_feed_forward_is_a_residual_correction():
    model = tiny_model(logit_ffn_size=16)
    ids = torch.randint(3, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = model.lm_head(model.model(ids).last_hidden_state)
        ffn = model.logit_ffn
        correction = ffn.down_proj(torch.nn.functional.silu(ffn.up_proj(plain)))
        assert correction.abs().max() > 1e-3
        torch.testing.assert_close(model(ids).logits, plain + correction)
        ffn.down_proj.weight.zero_()
        ffn.down_proj.bias.zero_()
        torch.testing.assert_close(model(ids).logits, plain, atol=0, rtol=0)  # no correction: the logits themselves
