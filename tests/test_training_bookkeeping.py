"""What a training run records and guarantees, each checked by its effect: non-finite losses stop the run (or are
skipped on request), each epoch reshuffles, checkpoints appear only complete, tokens per step, warmup rounding, and
a resumed run's clock. Tiny runs, one thread."""

import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from attnlab.workbench import training
from attnlab.workbench.training import TRAINER_STATE, TrainArgs, build_optimizer, train


@pytest.fixture
def args(text_files, tmp_path):
    train_files, validation_files = text_files
    return TrainArgs(model="triple_product", preset="tiny", train_files=train_files, validation_files=validation_files,
                     block_size=32, batch_size=4, max_steps=4, eval_every=0, eval_blocks=2, save_every=0,
                     output_dir=str(tmp_path / "run"), num_threads=1)


def poison(monkeypatch, training_calls=(), in_eval=False) -> list:
    """Make the model's logits NaN on the given training forwards (1-based), or on every evaluation forward; returns
    a list that receives the model once built."""
    built = []
    build_model = training.build_model

    def build_poisoned(*a, **k):
        model = build_model(*a, **k)
        calls = [0]

        def hook(module, inputs, output):
            if module.training:
                calls[0] += 1
                if calls[0] in training_calls:
                    return output * float("nan")
            elif in_eval:
                return output * float("nan")
            return output

        model.lm_head.register_forward_hook(hook)
        built.append(model)
        return model

    monkeypatch.setattr(training, "build_model", build_poisoned)
    return built


def test_a_non_finite_training_loss_stops_the_run_naming_the_step(args, monkeypatch):
    poison(monkeypatch, training_calls=(3,))
    with pytest.raises(ValueError, match=r"^step 3: the training loss is nan \(not finite\); checkpoint-2 is kept "
                                         r"for --resume; .*--skip_nonfinite"):
        train(replace(args, save_every=2))


def test_skip_nonfinite_skips_only_that_step(args, monkeypatch):
    built = poison(monkeypatch, training_calls=(2,))
    snapshots = {}
    train(replace(args, skip_nonfinite=True),
          on_step=lambda step, loss: snapshots.__setitem__(step, built[0].lm_head.weight.detach().clone()))
    metrics = json.loads((Path(args.output_dir) / "metrics.json").read_text())
    assert metrics["skipped_steps"] == 1 and metrics["steps"] == 4
    assert math.isnan(metrics["train_loss"][1]) and all(math.isfinite(x) for x in metrics["train_loss"][2:])
    torch.testing.assert_close(snapshots[2], snapshots[1])  # the skipped step left the weights alone
    assert not torch.equal(snapshots[3], snapshots[2])
    assert all(torch.isfinite(p).all() for p in built[0].parameters())


def test_a_non_finite_held_out_loss_in_training_names_the_step(args, monkeypatch):
    poison(monkeypatch, in_eval=True)
    with pytest.raises(ValueError, match=r"^step 2: the held-out evaluation failed: the loss is not finite"):
        train(replace(args, eval_every=2))


def test_checkpoints_do_not_warn_about_the_declared_tie(args, caplog, capfd):
    with caplog.at_level("WARNING"):
        train(replace(args, save_every=1))
    assert "Removed shared tensor" not in caplog.text + capfd.readouterr().err
    # An alias the model does not declare still warns.
    quiet = training._DeclaredTiesFilter({"lm_head.weight", "model.embed_tokens.weight"})
    record = lambda names: __import__("logging").LogRecord("accelerate.utils.other", 30, "", 0,
                                                           f"Removed shared tensor {names} while saving.", None, None)
    assert not quiet.filter(record({"lm_head.weight"}))
    assert quiet.filter(record({"model.layers.0.mlp.up_proj.weight"}))


def record_training_inputs(monkeypatch) -> list:
    """The input_ids of every training forward, in order."""
    seen = []
    build_model = training.build_model

    def build_recording(*a, **k):
        model = build_model(*a, **k)
        model.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(kwargs["input_ids"].clone()) if module.training else None,
            with_kwargs=True)
        return model

    monkeypatch.setattr(training, "build_model", build_recording)
    return seen


def test_each_epoch_reshuffles(args, monkeypatch):
    seen = record_training_inputs(monkeypatch)
    # 62 blocks of 32 bytes at batch 16: 3 batches per epoch (drop_last), so 6 steps are two epochs.
    train(replace(args, batch_size=16, max_steps=6))
    first, second = torch.cat(seen[:3]), torch.cat(seen[3:6])
    rows = lambda blocks: [tuple(row.tolist()) for row in blocks]
    assert len(set(rows(first))) == len(first) and len(set(rows(second))) == len(second)  # no repeats in an epoch
    assert rows(first) != rows(second)  # another order (and here another dropped remainder)
    assert sorted(rows(first)) != rows(first)  # shuffled at all


def test_tokens_per_step_count_gradient_accumulation(args, monkeypatch):
    seen = record_training_inputs(monkeypatch)
    metrics = train(replace(args, gradient_accumulation_steps=3, max_steps=2))
    assert len(seen) == 6  # three micro-batches per optimizer step
    assert metrics["tokens"] == 2 * 3 * 4 * 32 and metrics["steps"] == 2


def test_warmup_steps_round_up():
    model = torch.nn.Linear(2, 2)
    # 5% of 30 steps is 1.5: two warmup steps, reaching the peak after the second.
    _, schedule = build_optimizer(model, TrainArgs(max_steps=30, warmup_ratio=0.05, learning_rate=1.0))
    rates = []
    for _ in range(3):
        rates.append(schedule.get_last_lr()[0])
        schedule.optimizer.step()
        schedule.step()
    assert rates == pytest.approx([0.0, 0.5, 1.0])
    _, schedule = build_optimizer(model, TrainArgs(max_steps=30, warmup_ratio=0.0, learning_rate=1.0))
    assert schedule.get_last_lr()[0] == pytest.approx(1.0)  # no warmup: the peak at once


class Interrupt(Exception):
    pass


def test_a_checkpoint_appears_only_when_complete(args, fail_second_save):
    written, restore_saving = fail_second_save()
    with pytest.raises(OSError, match="No space left"):
        train(replace(args, save_every=1))
    assert written == ["checkpoint-1.tmp", "checkpoint-2.tmp"]  # written under a temporary name
    assert training.last_checkpoint(args.output_dir).name == "checkpoint-1"  # renamed only when complete
    assert not (Path(args.output_dir) / "checkpoint-2").exists()
    restore_saving()
    assert train(replace(args, resume=True))["steps"] == 4


def test_a_resumed_run_continues_its_training_clock(args):
    def slow_then_stop(step, loss):
        if step == 1:
            time.sleep(2.0)  # inside the timed loop: counted in train_seconds
        if step == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(replace(args, save_every=2), on_step=slow_then_stop)
    before = json.loads((Path(args.output_dir) / "checkpoint-2" / TRAINER_STATE).read_text())["train_seconds"]
    assert before >= 2.0
    start = time.perf_counter()
    metrics = train(replace(args, save_every=2, resume=True))
    resumed_wall = time.perf_counter() - start
    assert metrics["steps"] == 4
    assert before < metrics["train_seconds"] <= before + resumed_wall + 0.1
