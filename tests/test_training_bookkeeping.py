"""What a training run records and guarantees, each checked by its effect: non-finite losses stop the run (or are
skipped on request), each epoch reshuffles, checkpoints appear only complete, tokens per step, warmup rounding, and
a resumed run's clock. Tiny runs, one thread."""

import json
import math
import os
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
