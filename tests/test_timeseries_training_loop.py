"""The time-series trainer runs in the workbench's training loop (training.training_loop), so it has what that loop
gives the language-model trainer: checkpoints that appear only complete and resume on the same loss curve,
non-finite losses that stop the run naming the step (or are skipped on request), a resume check of the checkpoint's
model config and readability, and a finished checkpoint that resumes to nothing more. Tiny runs, one thread."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from attnlab.modeling_vqlnmlp import VQLNMLPForPrediction
from attnlab.workbench import training
from attnlab.workbench.timeseries import TimeSeriesTrainArgs, train_timeseries
from attnlab.workbench.training import TRAINER_STATE, RESUME_FREE_KEYS, TrainArgs, resume_keys, train


class Interrupt(Exception):
    pass


@pytest.fixture
def ts_args(tmp_path):
    # 570 training windows at batch 64: 9 steps per epoch.
    return TimeSeriesTrainArgs(context_length=16, prediction_length=8, d_model=8, codebook_size=16, num_heads=2,
                               position_code="rope", use_attention=True, batch_size=64, num_epochs=1, save_every=0,
                               output_dir=str(tmp_path / "run"), num_threads=1)


def run_ts(args, **kwargs):
    return train_timeseries(args, progress=False, **kwargs)


def test_a_time_series_checkpoint_appears_only_when_complete_and_resumes_on_the_same_curve(ts_args, fail_second_save):
    full = run_ts(replace(ts_args, output_dir=ts_args.output_dir + "-full"))
    written, restore_saving = fail_second_save()
    with pytest.raises(OSError, match="No space left"):
        run_ts(replace(ts_args, save_every=3))
    assert written == ["checkpoint-3.tmp", "checkpoint-6.tmp"]  # written under a temporary name
    assert training.last_checkpoint(ts_args.output_dir).name == "checkpoint-3"  # renamed only when complete
    assert not (Path(ts_args.output_dir) / "checkpoint-6").exists()
    assert (Path(ts_args.output_dir) / "checkpoint-3" / "model.safetensors").is_file()
    restore_saving()
    resumed = run_ts(replace(ts_args, save_every=3, resume=True))
    assert resumed["steps"] == full["steps"] == 9
    assert resumed["train_loss"] == full["train_loss"]
    assert resumed["final_eval"] == full["final_eval"]
    assert not list(Path(ts_args.output_dir).glob("checkpoint-*"))


def poison_time_series(monkeypatch, training_calls):
    """Make the time-series loss NaN on the given training forwards (1-based)."""
    forward, calls = VQLNMLPForPrediction.forward, [0]

    def poisoned(self, *args, **kwargs):
        output = forward(self, *args, **kwargs)
        if self.training:
            calls[0] += 1
            if calls[0] in training_calls:
                output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(VQLNMLPForPrediction, "forward", poisoned)


def test_a_non_finite_time_series_loss_stops_the_run_naming_the_step(ts_args, monkeypatch):
    poison_time_series(monkeypatch, training_calls=(3,))
    with pytest.raises(ValueError, match=r"^step 3: the training loss is nan \(not finite\); checkpoint-2 is kept "
                                         r"for --resume; .*--skip_nonfinite"):
        run_ts(replace(ts_args, save_every=2))


def test_skip_nonfinite_skips_only_that_time_series_step(ts_args, monkeypatch):
    clean = run_ts(replace(ts_args, output_dir=ts_args.output_dir + "-clean", num_epochs=1))
    poison_time_series(monkeypatch, training_calls=(2,))
    skipped = run_ts(replace(ts_args, skip_nonfinite=True))
    assert skipped["skipped_steps"] == 1 and clean["skipped_steps"] == 0
    assert skipped["steps"] == 9
    assert skipped["train_loss"][0] == clean["train_loss"][0]
    assert skipped["train_loss"][1] != skipped["train_loss"][1]  # NaN, recorded
    # The weights were left alone on step 2, so step 3 is clean's step 2 on another batch: finite, and the run goes on.
    assert all(loss == loss for loss in skipped["train_loss"][2:])


def test_a_time_series_resume_checks_the_model_config_and_the_checkpoint(ts_args, tmp_path):
    data = tmp_path / "series.csv"
    values = [f"{i},{(i % 24) + 0.1 * i}" for i in range(300)]
    data.write_text("t,value\n" + "\n".join(values) + "\n")
    args = replace(ts_args, csv_file=str(data), time_limit=0.0)
    run_ts(args)  # stops after step 1 with a checkpoint
    # The same options on a file edited in place: another standardisation, refused by the model config.
    data.write_text("t,value\n" + "\n".join(f"{i},{10 * (i % 24)}" for i in range(300)) + "\n")
    with pytest.raises(ValueError, match=r"--resume: .*checkpoint-1 was trained with the model config scaling_loc="):
        run_ts(replace(args, resume=True))
    state = Path(args.output_dir) / "checkpoint-1" / TRAINER_STATE
    state.write_text(state.read_text()[:20])
    with pytest.raises(ValueError, match=r"--resume: .*trainer_state.json is missing or unreadable"):
        run_ts(replace(args, resume=True))


def test_the_time_series_resume_check_covers_every_option_that_shapes_the_run():
    shaping = {"model", "csv_file", "column", "fill", "split", "validation_fraction", "context_length",
               "prediction_length", "d_model", "codebook_size", "num_heads", "position_code", "trainable_codebook",
               "use_attention", "config_overrides", "batch_size", "num_epochs", "max_steps", "learning_rate", "max_grad_norm",
               "seed"}
    assert set(resume_keys(TimeSeriesTrainArgs)) == shaping
    assert set(TimeSeriesTrainArgs.__dataclass_fields__) - shaping <= set(RESUME_FREE_KEYS)


@pytest.fixture
def lm_args(text_files, tmp_path):
    train_files, validation_files = text_files
    return TrainArgs(model="triple_product", preset="tiny", train_files=train_files, validation_files=validation_files,
                     block_size=32, batch_size=4, max_steps=3, eval_every=0, eval_blocks=2, save_every=0,
                     output_dir=str(tmp_path / "lm"), num_threads=1)


@pytest.mark.parametrize("trainer", ["time_series", "language_model"])
def test_a_finished_checkpoint_resumes_to_nothing_more(trainer, request, monkeypatch):
    """A run whose time limit struck at its last step, then stopped before its final save, leaves a checkpoint of
    max_steps: resuming it trains no step past max_steps."""
    if trainer == "time_series":
        args, run, steps = request.getfixturevalue("ts_args"), run_ts, 9
    else:
        args, run, steps = request.getfixturevalue("lm_args"), train, 3
    out_of_time, calls = training.out_of_time_everywhere, [0]

    def at_the_last_step(*arguments):
        calls[0] += 1
        return calls[0] == steps

    def crash_after_the_last_checkpoint(step, loss):
        if step == steps:
            raise Interrupt

    monkeypatch.setattr(training, "out_of_time_everywhere", at_the_last_step)
    with pytest.raises(Interrupt):
        run(replace(args, time_limit=60.0), on_step=crash_after_the_last_checkpoint)
    assert training.last_checkpoint(args.output_dir).name == f"checkpoint-{steps}"
    monkeypatch.setattr(training, "out_of_time_everywhere", out_of_time)
    # The time limit bounds a loop that would otherwise run past max_steps without end.
    metrics = run(replace(args, resume=True, time_limit=3.0))
    assert metrics["steps"] == steps and len(metrics["train_loss"]) == steps
    assert not list(Path(args.output_dir).glob("checkpoint-*"))  # finished: the checkpoint goes


def test_a_time_series_run_refuses_an_earlier_finished_run_and_overwrite_replaces_only_its_files(ts_args):
    first = run_ts(ts_args)
    folder = Path(ts_args.output_dir)
    assert "model.safetensors" in first["files"] and "metrics.json" in first["files"]
    with pytest.raises(ValueError, match="already holds an earlier run; pass --resume .*--overwrite_output_dir"):
        run_ts(ts_args)
    (folder / "notes.txt").write_text("mine")  # not the run's: --overwrite_output_dir leaves it
    (folder / "model.safetensors").write_bytes(b"stale")
    second = run_ts(replace(ts_args, overwrite_output_dir=True, seed=1))
    assert (folder / "notes.txt").read_text() == "mine"
    assert second["final_eval"] != first["final_eval"]
    assert VQLNMLPForPrediction.from_pretrained(folder).config.d_model == 8  # the new weights, not the stale bytes
    with pytest.raises(ValueError, match="pass one"):
        run_ts(replace(ts_args, overwrite_output_dir=True, resume=True))


def test_time_series_max_steps_caps_the_epochs(ts_args):
    capped = run_ts(replace(ts_args, num_epochs=3, max_steps=5))
    assert capped["steps"] == capped["max_steps"] == 5  # 3 epochs would be 27 steps
    with pytest.raises(ValueError, match="--max_steps must be 0"):
        run_ts(replace(ts_args, max_steps=-1, output_dir=ts_args.output_dir + "-bad"))
