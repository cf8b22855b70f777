"""The benchmark suite (attnlab/workbench/bench.py): the task definitions its numbers rest on, the equal-size and
state-size bookkeeping, and `attnlab bench all --quick` end to end (the CI smoke test; its numbers mean nothing)."""

import json
import re

import pytest
import torch

from attnlab.members import HYBRIDS, MEMBERS
from attnlab.workbench import bench, bench_common, bench_copy, bench_mqar, bench_speed
from attnlab.workbench.benchmarking import PeakMemory, _reset_peak_rss
from attnlab.workbench.cli import main as cli_main


def test_mqar_follows_zoology_definition():
    vocab, seq_len, kv = 512, 256, 16
    inputs, labels = bench_mqar.mqar_examples(200, seq_len, kv, vocab, seed=0)
    assert inputs.shape == labels.shape == (200, seq_len)
    gaps = []
    for row_inputs, row_labels in zip(inputs.tolist(), labels.tolist()):
        keys, values = row_inputs[0:2 * kv:2], row_inputs[1:2 * kv:2]
        assert len(set(keys)) == kv and all(1 <= k < vocab // 2 for k in keys)
        assert all(vocab // 2 <= v < vocab for v in values)
        pairs = dict(zip(keys, values))
        queried = [i for i, label in enumerate(row_labels) if label != bench_common.IGNORE_INDEX]
        # Every key is queried once, at an even offset of the query region, labelled with its own value ...
        assert sorted(row_inputs[i] for i in queried) == sorted(keys)
        assert all((i - 2 * kv) % 2 == 0 and i >= 2 * kv for i in queried)
        assert all(row_labels[i] == pairs[row_inputs[i]] for i in queried)
        # ... and the rest of the query region is zeros (zoology's Figure 2 setting).
        assert all(row_inputs[i] == 0 for i in range(2 * kv, seq_len) if i not in queried)
        gaps += [(i - 2 * kv) // 2 for i in queried]
    # Power-law gaps: far more queries near the context than uniform slots would put there (a quarter).
    space = (seq_len - 2 * kv) // 2
    assert sum(g < space // 4 for g in gaps) / len(gaps) > 0.4
    noisy, noisy_labels = bench_mqar.mqar_examples(20, seq_len, kv, vocab, seed=0, random_non_queries=True)
    assert torch.equal(noisy_labels, labels[:20]) and (noisy[:, 2 * kv:] != 0).float().mean() > 0.9
    with pytest.raises(ValueError, match="vocab_size"):
        bench_mqar.mqar_examples(1, 64, 4, 64, seed=0)


def fixed_offset_accuracy(inputs, scored, offset):
    """Accuracy of the head that predicts the token `offset` positions back, on the scored positions."""
    predictions = torch.roll(inputs, offset, dims=1)
    keep = scored != bench_common.IGNORE_INDEX
    keep[:, :offset] = False
    return (predictions[keep] == scored[keep]).float().mean().item()


def test_short_convolution_is_causal_trained_and_counted():
    values = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                  max_position_embeddings=32)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    for name in ("llama", "elita", "depth_recurrent"):
        model = bench_common.build_model(name, values).eval()
        with torch.no_grad():  # depth_recurrent zero-initialises its mixers' outputs: move every weight off its init
            for parameter in model.parameters():
                parameter.add_(0.02 * torch.randn_like(parameter))
        plain = model(input_ids=ids).logits
        added = bench_mqar.add_short_convolutions(model, 4)
        assert added == 3 * 16 * model.config.num_hidden_layers  # one state per mixer application
        # Zero-initialised: the model is unchanged until it learns the taps ...
        assert torch.equal(model(input_ids=ids).logits, plain)
        # ... once learnt they change the output, and only from the past: a later token leaves earlier logits alone ...
        convs = [layer.short_conv.conv.weight for layer in model.model.layers]
        with torch.no_grad():
            for w in convs:
                w.normal_()
        changed = model(input_ids=ids).logits
        assert not torch.allclose(changed, plain, atol=1e-4)
        later = ids.clone()
        later[:, 8] = (later[:, 8] + 1) % 64
        assert torch.allclose(model(input_ids=later).logits[:, :8], changed[:, :8], atol=1e-5)
        assert not torch.allclose(model(input_ids=later).logits[:, 8:], changed[:, 8:], atol=1e-4)
        # ... and the taps are the model's own parameters, trained with it.
        assert all(any(w is p for p in model.parameters()) for w in convs)
        model(input_ids=ids).logits.pow(2).mean().backward()
        assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in convs)
    model = bench_common.build_model("llama", values)
    del model.model.layers[1].self_attn
    with pytest.raises(ValueError, match="layer 1 .* no self_attn"):
        bench_mqar.add_short_convolutions(model, 4)


def test_copy_task_forms():
    generator = torch.Generator().manual_seed(0)
    inputs, targets, scored = bench_copy.copy_batch(64, 64, 32, "fixed", generator)
    assert inputs.shape == targets.shape == scored.shape == (64, 63)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    # The seed's form: the copied half (targets from position half - 1 on) is solved by a fixed offset.
    assert (scored[:, :31] == bench_common.IGNORE_INDEX).all() and (scored[:, 31:] != bench_common.IGNORE_INDEX).all()
    assert fixed_offset_accuracy(inputs, scored, 31) == 1.0
    inputs, targets, scored = bench_copy.copy_batch(64, 64, 32, "variable", generator)
    for row_inputs, row_scored in zip(inputs, scored):
        m = int((row_inputs == 0).nonzero()[0])  # the separator follows the segment
        assert torch.equal(row_scored[row_scored != bench_common.IGNORE_INDEX], row_inputs[:m])
    # No single offset solves the variable form.
    assert max(fixed_offset_accuracy(inputs, scored, offset) for offset in range(1, 40)) < 0.5


def test_decoding_state_floats():
    values = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  max_position_embeddings=128)
    llama = bench_common.build_model("llama", values)
    # Keys and values of every layer and position.
    assert bench_common.decoding_state_floats(llama, 40) == 2 * 2 * 32 * 40
    elita = bench_common.build_model("elita", values)
    assert bench_common.decoding_state_floats(elita, 16) == bench_common.decoding_state_floats(elita, 64) > 0


def test_llama_matched_to_the_mean_and_shallow_hybrids_keep_attention():
    values = dict(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  max_position_embeddings=64)
    models = [*MEMBERS, *HYBRIDS, "llama"]
    overrides, counts = bench_common.shape_overrides(models, values, "params")
    mean = sum(counts[name] for name in models if name != "llama") / (len(models) - 1)
    assert abs(counts["llama"] - mean) / mean < 0.01
    for name in HYBRIDS:  # the registry's layout rule, at the benchmark's depth
        assert bench_common.build_config(name, {**values, **overrides[name]}).mixer_types == [name.split("_")[0], "attention"]
        assert bench_common.build_config(name, {**values, **overrides[name]}).mixer_types[-1] == "attention"
    # A grid split across runs: Llama beside two of the models, matched to all of them, is the same Llama.
    split_overrides, split_counts = bench_common.shape_overrides(["llama", *list(MEMBERS)[:2]], values, "params",
                                                                 match_to=models)
    assert set(split_counts) == {"llama", *list(MEMBERS)[:2]}
    assert split_overrides["llama"] == overrides["llama"] and split_counts["llama"] == counts["llama"]
    assert bench_common.shape_overrides(["llama", *list(MEMBERS)[:2]], values, "params")[1]["llama"] != counts["llama"]


def test_quick_suite_through_the_cli(tmp_path):
    cli_main(["bench", "all", "--quick", "--output-dir", str(tmp_path)])
    for section in bench.SECTIONS:
        report = json.loads((tmp_path / f"{section}-quick.json").read_text())
        assert report["info"]["quick"] and report["info"]["command"].startswith("attnlab bench")
        assert report["info"]["machine"] and report["info"]["date"]
        assert "Smoke test" in (tmp_path / f"{section}-quick.md").read_text()
    speed = json.loads((tmp_path / "speed-quick.json").read_text())
    assert {r["model"] for r in speed["records"]} == {*MEMBERS, *HYBRIDS, "llama"}
    assert {r["kind"] for r in speed["records"]} == {"train", "forward", "decode"}
    lm = json.loads((tmp_path / "lm-quick.json").read_text())
    assert len(lm["sweep"]) == 2 * len(bench_common.DEFAULT_MODELS)
    assert set(lm["best_lr"]) == set(bench_common.DEFAULT_MODELS)
    mqar = json.loads((tmp_path / "mqar-quick.json").read_text())
    for name in bench_common.DEFAULT_MODELS:  # the rate sweep at the first seed, the second seed at the best rate
        runs = [r for r in mqar["runs"] if r["model"] == name]
        best = next(r for r in mqar["best"] if r["model"] == name)
        assert sorted((r["seed"], r["lr"]) for r in runs) == [(0, 1e-3), (0, 3e-3), (1, best["lr"])]
        assert best["seed"] == 0 and best["accuracy"] == max(r["accuracy"] for r in runs if r["seed"] == 0)
    text = (tmp_path / "mqar-quick.md").read_text()
    assert "## Best accuracy" in text and "## Seeds at the best rate" in text
    assert (tmp_path / "mqar-quick.png").exists() and (tmp_path / "speed-quick-tiny-fp32.png").exists()


def test_speed_compares_compiled_with_eager(tmp_path):
    # The eager backend (dynamo's capture only) keeps this fast; inductor is what the real runs use.
    report = bench.main(["speed", "--models", "llama", "elita", "--presets", "tiny", "--kinds", "train",
                         "--train-lengths", "32", "--linear-lengths", "--rounds", "1", "--repeats", "1",
                         "--precisions", "fp32", "--compile", "--compile-backend", "eager", "--no-isolate",
                         "--output-dir", str(tmp_path)])
    text = report.read_text()
    assert "eager against torch.compile" in text and "| elita +compile |" in text
    records = json.loads(report.with_suffix(".json").read_text())["records"]
    assert {(r["label"], r["compile_s"] is not None) for r in records} == {
        ("llama", False), ("elita", False), ("llama +compile", True), ("elita +compile", True)}


def test_only_fixed_state_stacks_run_past_the_quadratic_lengths():
    assert bench_speed.is_linear("elita", "tiny") and bench_speed.is_linear("elita", "small")
    # A 2-layer elita hybrid has an attention layer (its last), so it is not measured at the long lengths.
    assert not bench_speed.is_linear("elita_attention", "tiny") and not bench_speed.is_linear("elita_attention", "small")
    assert not any(bench_speed.is_linear(name, "small") for name in ("triple_product", "evolving", "llama"))


@pytest.mark.skipif(not _reset_peak_rss(), reason="needs Linux's /proc/self/clear_refs")
def test_cpu_peak_memory_is_that_of_the_measured_work_not_of_earlier_peaks():
    """A larger peak earlier in the process (the warm-up step, a compilation) must not hide the measured one."""
    earlier = torch.ones(100 * 2**20)  # 400 MiB, touched, then freed
    del earlier
    with PeakMemory(torch.device("cpu")) as memory:
        measured = torch.ones(50 * 2**20)  # 200 MiB
        del measured
    assert 150 < memory.peak_mb < 300


def test_mqar_and_copy_show_progress_while_training(tmp_path, capsys):
    bench.main(["mqar", "--models", "llama", "--widths", "32", "--slices", "32x2", "--lrs", "1e-3", "--vocab-size",
                "64", "--train-examples", "64", "--test-examples", "16", "--epochs", "2", "--batch-size", "16",
                "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert "mqar d=32 L=32 kv=2 llama lr 0.001" in err and "/8 " in err, err  # 2 epochs of 64 / 16 = 8 steps
    bench.main(["copy", "--models", "llama", "--forms", "fixed", "--width", "32", "--seq-len", "16", "--steps", "3",
                "--lrs", "1e-3", "--test-examples", "8", "--batch-size", "4", "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert "copy fixed llama lr 0.001" in err and "/3 " in err, err


def test_speed_arithmetic_from_hand_made_medians(monkeypatch):
    from types import SimpleNamespace

    from attnlab.workbench import benchmarking

    def record(label, kind, T, median_s, tokens_per_s=None, round_index=0):
        return dict(label=label, model=label, kind=kind, seq_len=T, median_s=median_s, tokens_per_s=tokens_per_s,
                    peak_memory_mb=10.0 * T, compile_s=None, preset="tiny", precision="fp32", round=round_index)

    # Three rounds each: the median round is kept, not the mean or the fastest.
    records = [record("llama", "decode", 64, s, round_index=i) for i, s in enumerate([0.030, 0.010, 0.020])]
    records += [record("elita", "decode", 64, s, round_index=i) for i, s in enumerate([0.005, 0.009, 0.001])]
    records += [record("llama", "train", 64, 0.5, tokens_per_s=1000.0), record("elita", "train", 64, 0.25,
                                                                             tokens_per_s=2500.0)]
    medians = bench_speed.median_rounds(records)
    decode = {r["label"]: r["median_s"] for r in medians if r["kind"] == "decode"}
    assert decode == {"llama": 0.020, "elita": 0.005}
    args = SimpleNamespace(batch_size=4, rounds=3, repeats=5, decode_tokens=8, isolate=False, presets=["tiny"],
                           kinds=["train", "decode"])
    text = "\n".join(bench_speed.speed_tables(args, {"parameters": {"tiny": {"llama": 1, "elita": 1}}}, medians, ["fp32"]))
    assert "| elita | 5.00 (0.25x) |" in text and "| llama | 20.00 (1.00x) |" in text  # ms per token, time ratio
    assert "| elita | 2500 (2.50x) |" in text  # training: tokens per second and its ratio

    # A decode measurement's tokens per second: batch rows per median step (one new token each), not batch x length.
    monkeypatch.setitem(benchmarking.MEASURES, "decode", lambda *args: (0.02, 1.0))
    measured = benchmarking.measure("decode", "llama", "tiny", batch_size=4, seq_len=16, vocab_size=64)
    assert measured.median_s == 0.02 and measured.tokens_per_s == pytest.approx(200.0)
    monkeypatch.setitem(benchmarking.MEASURES, "train", lambda *args: (0.5, 1.0))
    assert benchmarking.measure("train", "llama", "tiny", batch_size=4, seq_len=16,
                                vocab_size=64).tokens_per_s == pytest.approx(4 * 16 / 0.5)


def test_lm_model_lrs_replace_the_sweep_for_the_named_models(tmp_path):
    bench.main(["lm", "--quick", "--models", "llama", "elita", "--model-lrs", "elita=0.02", "--seeds", "0",
                "--output-dir", str(tmp_path), "--name", "lm-rates"])
    record = json.loads((tmp_path / "lm-rates.json").read_text())
    assert sorted((r["model"], r["lr"]) for r in record["sweep"]) == [("elita", 0.02), ("llama", 0.001),
                                                                       ("llama", 0.003)]
    assert record["best_lr"]["elita"] == 0.02
    assert "elita: [0.02] given by --model-lrs" in (tmp_path / "lm-rates.md").read_text()


@pytest.mark.parametrize("item, message", [("gpt=0.01", "NAME one of the run's models"), ("elita=-1", "positive"),
                                           ("elita", "expected NAME=LR")])
def test_lm_model_lrs_refuses_a_bad_entry(tmp_path, item, message):
    with pytest.raises(ValueError, match=message):
        bench.main(["lm", "--quick", "--models", "llama", "elita", "--model-lrs", item,
                    "--output-dir", str(tmp_path)])


def test_lm_continues_from_the_runs_it_finished_and_refuses_other_folders(tmp_path, monkeypatch, capsys):
    from attnlab.workbench import bench_lm

    argv = ["lm", "--quick", "--models", "llama", "--model-lrs", "llama=0.01", "--seeds", "0",
            "--output-dir", str(tmp_path)]
    first = json.loads(bench.main(argv).with_suffix(".json").read_text())

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("attnlab.workbench.training.train", no_training)
    second = json.loads(bench.main(argv).with_suffix(".json").read_text())
    assert "reusing the finished run" in capsys.readouterr().out
    assert second["sweep"][0]["final"] == first["sweep"][0]["final"]
    assert not first["sweep"][0]["reused"] and second["sweep"][0]["reused"]
    assert "2 of 2 runs were finished by an earlier invocation" in (tmp_path / "lm-quick.md").read_text()
    run = next((tmp_path / "bench-lm-runs").glob("llama-*"))
    (run / bench_lm.RUN_MARK).write_text(json.dumps({"library": "older code"}))
    with pytest.raises(ValueError, match="holds another run"):
        bench.main(argv)


def test_mqar_keeps_a_partial_record_when_cut_short(tmp_path, monkeypatch):
    # Every model runs the first rate before any runs the second, and the record is rewritten after every run: a run
    # stopped after two trainings still compares both models at the first rate.
    real_train_task, calls = bench_mqar.train_task, []

    def train_task(*args, **kwargs):
        calls.append(kwargs["desc"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_train_task(*args, **kwargs)

    monkeypatch.setattr(bench_mqar, "train_task", train_task)
    with pytest.raises(KeyboardInterrupt):
        bench.main(["mqar", "--quick", "--models", "llama", "elita",
                    "--output-dir", str(tmp_path), "--name", "cut"])
    record = json.loads((tmp_path / "cut.json").read_text())
    assert [(r["model"], r["lr"]) for r in record["runs"]] == [("llama", 1e-3), ("elita", 1e-3)]  # --quick: 1e-3 first
    assert record["info"]["partial"] == "2 of 6 runs"
    text = (tmp_path / "cut.md").read_text()
    assert "Partial record: 2 of 6 runs" in text and "| llama | 32 |" in text and "| elita | 32 |" in text


def mqar_record(path, runs, commit, date, **settings):
    """A hand-made MQAR record: the settings of the calibrated budget (overridable) and the given runs."""
    budget = dict(vocab_size=8192, train_examples=40000, test_examples=500, epochs=2, batch_size=32, power_a=0.01,
                  evaluations=20, stop_at=0.99, short_conv=4, layers=2, heads=2, mlp_ratio=2, llama_match="params",
                  lrs=[3e-3, 1e-3])
    full_runs = [dict(dict(width=64, lr=3e-3, seed=0, parameters=1000, state_floats=100, steps=2500, steps_run=2500,
                           history=[], seconds=1.0), **run) for run in runs]
    path.write_text(json.dumps(dict(info=dict(command="attnlab bench mqar ...", git_commit=commit, date=date,
                                              machine="test machine"),
                                    settings={**budget, **settings}, runs=full_runs)))
    return str(path)


def test_mqar_merge_makes_one_grid_of_several_records(tmp_path):
    short = mqar_record(tmp_path / "short.json", [dict(model="llama", seq_len=64, num_kv_pairs=4, accuracy=0.99),
                                                  dict(model="elita", seq_len=64, num_kv_pairs=4, accuracy=0.25)],
                        commit="aaaaaaa", date="2026-12-01 10:00 UTC")
    long = mqar_record(tmp_path / "long.json", [dict(model="llama", seq_len=256, num_kv_pairs=16, accuracy=0.98),
                                                dict(model="llama", seq_len=64, num_kv_pairs=4, seed=1, accuracy=0.97)],
                       commit="bbbbbbb", date="2026-12-02 10:00 UTC")
    bench.main(["mqar", "--merge", short, long, "--output-dir", str(tmp_path), "--name", "grid"])
    record = json.loads((tmp_path / "grid.json").read_text())
    assert len(record["runs"]) == 4
    assert record["info"]["git_commit"] == "aaaaaaa"  # the oldest source's: its age is the oldest code's
    assert record["settings"]["slices"] == ["64x4", "256x16"] and record["settings"]["seeds"] == [0, 1]
    text = (tmp_path / "grid.md").read_text()
    assert "| llama | 64 | 1,000 | 0.990 (0.003) | 0.980 (0.003) |" in text
    assert "| elita | 64 | 1,000 | 0.250 (0.003) | - |" in text
    assert "0.990 / 0.970" in text  # the second record's seed 1 joins the first's seed 0 at the best rate
    assert "No run was trained for this record" in text and "short.md" in text
    assert (tmp_path / "grid.png").exists()


def test_mqar_merge_refuses_records_that_do_not_compare(tmp_path):
    base = [dict(model="llama", seq_len=64, num_kv_pairs=4, accuracy=0.99)]
    first = mqar_record(tmp_path / "a.json", base, "aaaaaaa", "2026-12-01 10:00 UTC")
    other_budget = mqar_record(tmp_path / "b.json", [dict(model="llama", seq_len=128, num_kv_pairs=8, accuracy=0.9)],
                               "bbbbbbb", "2026-12-01 11:00 UTC", epochs=8)
    with pytest.raises(SystemExit, match="epochs is 8 in .*b.json but 2 in .*a.json"):
        bench.main(["mqar", "--merge", first, other_budget, "--output-dir", str(tmp_path)])
    other_llama = mqar_record(tmp_path / "c.json", [dict(model="llama", seq_len=128, num_kv_pairs=8, accuracy=0.9,
                                                         parameters=2000)], "ccccccc", "2026-12-01 12:00 UTC")
    with pytest.raises(SystemExit, match="llama at width 64 has 2,000 parameters"):
        bench.main(["mqar", "--merge", first, other_llama, "--output-dir", str(tmp_path)])
    again = mqar_record(tmp_path / "d.json", base, "ddddddd", "2026-12-01 13:00 UTC")
    with pytest.raises(SystemExit, match="appears twice"):
        bench.main(["mqar", "--merge", first, again, "--output-dir", str(tmp_path)])
    (tmp_path / "e.json").write_text("{not json")
    with pytest.raises(SystemExit, match="e.json: cannot read it as a record"):
        bench.main(["mqar", "--merge", first, str(tmp_path / "e.json"), "--output-dir", str(tmp_path)])
    (tmp_path / "f.json").write_text(json.dumps(dict(settings={}, runs=[dict(model="llama")])))
    with pytest.raises(SystemExit, match="f.json: not an MQAR record"):
        bench.main(["mqar", "--merge", first, str(tmp_path / "f.json"), "--output-dir", str(tmp_path)])
    (tmp_path / "g.json").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(SystemExit, match="g.json: cannot read it as a record"):
        bench.main(["mqar", "--merge", first, str(tmp_path / "g.json"), "--output-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="missing.json: cannot read it as a record"):
        bench.main(["mqar", "--merge", first, str(tmp_path / "missing.json"), "--output-dir", str(tmp_path)])


@pytest.mark.parametrize("options, message", [
    (["--llama-match", "shape", "--llama-match-to", "elita"], "needs --llama-match params"),
    (["--llama-match-to", "llama"], "name the models \\(other than llama\\)"),
    (["--llama-match-to", "nosuch"], "unknown model 'nosuch'"),
])
@pytest.mark.parametrize("section", ["mqar", "lm"])  # lm --quick writes its small text files only once accepted
def test_llama_match_to_where_it_cannot_apply_is_one_line(tmp_path, capsys, options, message, section):
    with pytest.raises(SystemExit):
        cli_main(["bench", section, "--quick", "--models", "llama", "elita", "--output-dir", str(tmp_path), *options])
    out, err = capsys.readouterr()
    assert re.search(message, err) and "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert not out  # the error alone: not even the subnormal-flush line of a run that starts
    assert not list(tmp_path.iterdir())  # refused before any work
