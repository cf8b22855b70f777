"""evolving against the seed's literal per-position loop, and the scan's chunking, carry and long-sequence numerics."""

import pytest
import torch

from attnlab import EvolvingConfig, EvolvingForCausalLM
from attnlab.workbench.audit import decode_gap, left_padding_gap
from attnlab.modeling_evolving import EvolvingAttention, leaky_scan
from attnlab.workbench.seed_reference.seed_000_evolving import SeedEvolvingAttention

WIDTH, HEADS = 32, 4


def paired_modules(decay_mode, memory_decay=0.85, chunk_size=7, layer_idx=2):
    config = EvolvingConfig(hidden_size=WIDTH, num_attention_heads=HEADS, decay_mode=decay_mode,
                            memory_decay=memory_decay, scan_chunk_size=chunk_size)
    torch.manual_seed(0)
    ours = EvolvingAttention(config, layer_idx)
    seed = SeedEvolvingAttention(config, layer_idx)
    ours.load_state_dict(seed.state_dict())
    return seed, ours


@pytest.mark.parametrize("decay_mode, memory_decay", [("constrained", 0.85), ("raw", 0.85), ("raw", -0.6)])
def test_matches_the_seed_loop(decay_mode, memory_decay):
    seed, ours = paired_modules(decay_mode, memory_decay)
    x = torch.randn(2, 50, WIDTH)
    positions = torch.arange(50)[None].expand(2, -1)
    torch.testing.assert_close(ours(x, position_ids=positions), seed(x), atol=1e-5, rtol=0)


def test_gradients_match_the_seed_loop():
    seed, ours = paired_modules("constrained")
    x = torch.randn(2, 40, WIDTH)
    seed(x).square().sum().backward()
    ours(x, position_ids=torch.arange(40)[None].expand(2, -1)).square().sum().backward()
    for name, parameter in ours.named_parameters():
        reference = dict(seed.named_parameters())[name].grad
        torch.testing.assert_close(parameter.grad, reference, atol=1e-4, rtol=1e-4, msg=name)


def sequential_scan(u, decay, memory=None):
    """The recurrence one position at a time, in float64: the ground truth for the scan."""
    state = torch.zeros_like(u[:, :, 0], dtype=torch.float64) if memory is None else memory.double()
    out = []
    for t in range(u.shape[2]):
        state = decay * state + u[:, :, t].double()
        out.append(state)
    return torch.stack(out, dim=2)


@pytest.mark.parametrize("chunk_size", [1, 3, 8, 64, 1000])
def test_chunk_size_never_changes_the_result(chunk_size):
    u, memory = torch.randn(2, 3, 37, 5), torch.randn(2, 3, 5)
    decay = torch.tensor(0.9)
    expected = sequential_scan(u, 0.9, memory).float()
    torch.testing.assert_close(leaky_scan(u, decay, memory, chunk_size), expected, atol=1e-5, rtol=1e-5)


def test_scan_continues_from_a_carried_memory():
    u, decay = torch.randn(1, 2, 30, 4), torch.tensor(0.8)
    first = leaky_scan(u[:, :, :13], decay, None, 4)
    second = leaky_scan(u[:, :, 13:], decay, first[:, :, -1], 4)
    torch.testing.assert_close(torch.cat([first, second], dim=2), leaky_scan(u, decay, None, 4), atol=1e-5, rtol=0)


@pytest.mark.parametrize("decay", [0.85, 0.999, 0.99999])
def test_long_sequences_stay_accurate_for_decay_near_one(decay):
    u = torch.randn(1, 1, 8192, 4)
    expected = sequential_scan(u, decay)
    ours = leaky_scan(u, torch.tensor(decay), None, 64).double()
    assert torch.isfinite(ours).all()
    scale = expected.abs().max()
    assert ((ours - expected).abs().max() / scale) < 1e-4


def tiny_model(**overrides):
    torch.manual_seed(0)
    config = EvolvingConfig(vocab_size=50, hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=HEADS, max_position_embeddings=128, scan_chunk_size=5, **overrides)
    return EvolvingForCausalLM(config).eval()


@pytest.mark.parametrize("overrides", [dict(qk_norm=True), dict(decay_mode="raw", memory_decay=1.02)])
def test_variants_decode_like_their_full_forward_and_pad_exactly(overrides):
    model = tiny_model(**overrides)
    ids = torch.randint(3, 50, (2, 23))
    assert decode_gap(model, ids, prefill=6, step=2) < 1e-4
    assert left_padding_gap(model, ids[:1, :9], 5, pad_token_id=0) < 1e-5


def test_sine_phases_stay_fp32_under_bf16_autocast():
    attention = tiny_model().model.layers[1].self_attn
    positions = torch.tensor([[4095]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w = attention.temporal_weights(positions)
    assert w.dtype == torch.float32
    expected = torch.sin(4096 * attention.phase_scale * attention.evolution_weights.double())
    torch.testing.assert_close(w[0, :, 0].double(), expected, atol=1e-3, rtol=0)


@pytest.mark.parametrize("bad, match", [
    (dict(decay_mode="sigmoid"), "decay_mode"),
    (dict(memory_decay=1.0), "memory_decay"),
    (dict(memory_decay=0.0), "memory_decay"),
    (dict(evolution_rate=0.0), "evolution_rate"),
    (dict(scan_chunk_size=0), "scan_chunk_size"),
])
def test_bad_config_values_are_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        EvolvingConfig(**bad)


def test_raw_mode_accepts_any_decay():
    assert EvolvingConfig(decay_mode="raw", memory_decay=1.5).memory_decay == 1.5


def test_sdpa_is_accepted_where_sdpa_is_what_runs():
    """evolving's attention is SDPA, so attn_implementation="sdpa" (which pipelines and harnesses pass) is accepted;
    triple_product's Gram scores are not SDPA, and transformers refuses the request by name."""
    from transformers import AutoModelForCausalLM

    from attnlab.members import MEMBERS

    model = AutoModelForCausalLM.from_config(MEMBERS["evolving"].test_config(), attn_implementation="sdpa")
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="scaled_dot_product_attention"):
        AutoModelForCausalLM.from_config(MEMBERS["triple_product"].test_config(), attn_implementation="sdpa")
