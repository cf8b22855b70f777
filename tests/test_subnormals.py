"""Subnormal counting in SDPA attention, the bench's subnormal check, machine facts and FLOP counts."""

import math

import pytest
import torch
from torch.nn import functional as F

from attnlab.workbench import bench_subnormal
from attnlab.workbench.bench_common import build_model
from attnlab.workbench.benchmarking import _sdpa_flops, machine_facts, training_flops
from attnlab.workbench.subnormals import (LOG_TINY, count_attention_subnormals, count_subnormal,
                                          counting_attention_subnormals, flush_denormal, flush_denormal_enabled)

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=64,
            max_position_embeddings=64)


def ids(length=48):
    return torch.randint(0, 64, (1, length), generator=torch.Generator().manual_seed(0))


def llama_made_subnormal():
    """Llama whose query and key projections are scaled up so that scores spread far beyond 87 in every row."""
    model = build_model("llama", TINY)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(40)
            layer.self_attn.k_proj.weight.mul_(40)
    return model


def test_subnormal_check_flags_a_model_that_makes_subnormals_and_passes_llama():
    # Timing is left out here (max_change=inf): whether subnormals are slow depends on the CPU, and a shared CI
    # machine's noise exceeds 20 %; the counts flag the cause on any CPU.
    bad = bench_subnormal.check(llama_made_subnormal(), ids(), rounds=1, repeats=1, max_change=math.inf)
    good = bench_subnormal.check(build_model("llama", TINY), ids(), rounds=1, repeats=1, max_change=math.inf)
    assert bad["subnormals"]["subnormal_probabilities"] > 0 and bad["subnormals"]["subnormal_score_gradients"] > 0
    assert any("probabilities are subnormal" in flag for flag in bad["flags"])
    assert good["flags"] == [] and good["subnormals"]["subnormal_probabilities"] == 0
    assert good["subnormals"]["calls"] == TINY["num_hidden_layers"]


def test_timing_flag_fires_on_a_change_above_the_threshold_either_way():
    counts = dict(probability_fraction=0.0, score_gradient_fraction=0.0)
    assert bench_subnormal.flags_for(0.19, counts) == []
    assert bench_subnormal.flags_for(-0.19, counts) == []
    assert "step time changes by +21%" in bench_subnormal.flags_for(0.21, counts)[0]
    assert bench_subnormal.flags_for(-0.3, counts)
    assert bench_subnormal.flags_for(0.0, dict(counts, score_gradient_fraction=1e-3))


def test_probability_count_matches_a_direct_count_and_ignores_the_flush_setting():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 8, generator=generator) * 6 for _ in range(3))
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    with flush_denormal(False):  # an earlier test's `attnlab train` may have left this thread flushing
        probabilities = torch.softmax(scores.masked_fill(~torch.ones(16, 16, dtype=torch.bool).tril(), -math.inf), -1)
    expected = count_subnormal(probabilities)
    assert expected > 0
    for flushed in (False, True):
        with flush_denormal(flushed), counting_attention_subnormals() as counts:
            F.scaled_dot_product_attention(q, k, v, is_causal=True)
        assert counts.subnormal_probabilities == expected
        assert counts.probabilities == 2 * 16 * 17 // 2
    assert F.scaled_dot_product_attention is torch._C._nn.scaled_dot_product_attention  # restored


def test_score_gradient_count_matches_the_autograd_gradient_of_the_scores():
    generator = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 1, 12, 4, generator=generator) * 5 for _ in range(3))
    grad_out = torch.randn(1, 1, 12, 4, generator=generator)
    scores = ((q @ k.transpose(-1, -2)) / 2).masked_fill(~torch.ones(12, 12, dtype=torch.bool).tril(), -math.inf)
    scores.requires_grad_(True)
    with flush_denormal(False):
        (torch.softmax(scores.double(), -1) @ v.double()).backward(grad_out.double())
    # fp32 subnormal range, from the exact (float64) gradient
    log_ds = scores.grad.abs().log()
    expected = int(((log_ds >= math.log(2.0**-150)) & (log_ds < LOG_TINY)).sum())
    assert expected > 0
    qg = q.clone().requires_grad_(True)
    with flush_denormal(False), counting_attention_subnormals() as counts:
        F.scaled_dot_product_attention(qg, k, v, is_causal=True).backward(grad_out)
    assert abs(counts.subnormal_score_gradients - expected) <= 1  # rounding at the range's edges


def test_evolving_makes_subnormals_and_qk_norm_removes_them():
    # head_dim 64 as at the small preset: the evolved q.k/sqrt(d) grows with the head's width
    shape = {**TINY, "hidden_size": 128, "max_position_embeddings": 128}
    evolving = count_attention_subnormals(build_model("evolving", shape), ids(128))
    normed = count_attention_subnormals(build_model("evolving", {**shape, "qk_norm": True}), ids(128))
    assert evolving.subnormal_probabilities > 0
    assert normed.subnormal_probabilities == 0 and normed.subnormal_score_gradients == 0


def test_flush_denormal_restores_the_previous_mode():
    before = flush_denormal_enabled()
    with flush_denormal(not before):
        assert flush_denormal_enabled() is (not before)
    assert flush_denormal_enabled() is before


def test_machine_facts_name_the_cpu_threads_subnormals_and_versions():
    facts = machine_facts()
    for key in ("cpu_model", "cpu_vendor", "cpu_count", "torch_threads", "subnormals", "torch_version",
                "transformers_version"):
        assert facts[key] not in (None, "")
    assert facts["subnormals"] in ("flushed", "kept", "partial")


def test_training_flops_count_matmuls_and_sdpa_from_shapes():
    model = build_model("llama", TINY)
    length = 32
    total = training_flops(model, ids(length))
    q = torch.zeros(1, TINY["num_attention_heads"], length, TINY["hidden_size"] // TINY["num_attention_heads"])
    sdpa = 3 * _sdpa_flops(q, q, True) * TINY["num_hidden_layers"]  # forward + twice that backward
    linear = 3 * 2 * length * sum(p.numel() for n, p in model.named_parameters() if n.endswith("proj.weight"))
    head = 3 * 2 * length * TINY["hidden_size"] * TINY["vocab_size"]
    assert total == pytest.approx(sdpa + linear + head, rel=0.02)


def test_computed_counts_fall_to_zero_when_subnormals_are_flushed():
    model = llama_made_subnormal()
    with flush_denormal(False):
        kept = count_attention_subnormals(model, ids())
    with flush_denormal(True):
        flushed = count_attention_subnormals(model, ids())
    assert kept.computed_subnormal_probabilities > 0 and kept.computed_subnormal_score_gradients > 0
    assert flushed.computed_subnormal_probabilities == 0 and flushed.computed_subnormal_score_gradients == 0
    # the cause, counted in log space, does not depend on the setting
    assert flushed.subnormal_probabilities == kept.subnormal_probabilities > 0


@pytest.mark.parametrize("keep", [False, True])
def test_training_flushes_subnormals_with_a_logged_line_unless_kept(text_files, tmp_path, capsys, keep):
    from attnlab.workbench.training import TrainArgs, train

    train_files, validation_files = text_files
    args = TrainArgs(model="triple_product", preset="tiny", train_files=train_files, validation_files=validation_files,
                     block_size=16, batch_size=2, max_steps=1, eval_every=0, eval_blocks=1, final_eval_blocks=1,
                     save_every=0, output_dir=str(tmp_path / "run"), num_threads=1, keep_subnormals=keep)
    with flush_denormal(False):
        metrics = train(args)
        assert flush_denormal_enabled() is False  # the caller's mode is back once the run returns
    log = capsys.readouterr().out
    assert metrics["subnormals"] == ("kept" if keep else "flushed")  # measured during the run, in its threads
    assert ("subnormal floats kept" in log) is keep and ("flushing subnormal floats to zero" in log) is not keep


def test_speed_measurements_state_flops_peak_fraction_and_the_subnormal_setting():
    from attnlab.workbench.benchmarking import measure

    result = measure("train", "llama", "tiny", 1, 32, repeats=1, warmup=0, autocast=False, device="cpu",
                     vocab_size=64, flush_denormal=False)
    model = build_model("llama", {**TINY, "hidden_size": 64, "intermediate_size": 192, "num_attention_heads": 4})
    assert result.flops == pytest.approx(training_flops(model, ids(32)), rel=1e-6)
    assert result.matmul_peak_flops_per_s > 0 and result.subnormals == "kept"
    assert result.peak_fraction == pytest.approx(result.flops / result.median_s / result.matmul_peak_flops_per_s)
