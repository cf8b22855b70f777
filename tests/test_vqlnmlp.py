"""The vqlnmlp time-series member (seed 004) and its workbench: model contracts, data, training, CLI, baselines.

Tiny sizes throughout (context 16, width 16, 32 codes), fp32 on CPU.
"""

import json
import math
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoModelForTimeSeriesPrediction

import attnlab  # noqa: F401  (registers the Auto classes)
from attnlab import VQLNMLPConfig, VQLNMLPForPrediction, VQLNMLPModel
from attnlab.workbench import cli, timeseries
from attnlab.workbench.timeseries import (
    TimeSeriesTrainArgs,
    fit_linear_ar,
    fit_lstm,
    load_series,
    make_windows,
    mean_forecaster,
    model_forecaster,
    one_step_mse,
    persistence_forecaster,
    sliding_rollout,
    split_series,
    train_timeseries,
    window_overlap,
)

CODES = ["none", "randn", "sinusoidal", "rope"]
TINY = dict(context_length=16, prediction_length=5, d_model=16, codebook_size=32, max_position_embeddings=64)


def tiny_model(seed=0, **overrides) -> VQLNMLPForPrediction:
    torch.manual_seed(seed)
    return VQLNMLPForPrediction(VQLNMLPConfig(**{**TINY, **overrides})).eval()


def series(batch=2, length=16, channels=1, seed=0):
    return torch.randn(batch, length, channels, generator=torch.Generator().manual_seed(seed))


def predictions(model, values, **kwargs):
    with torch.no_grad():
        return model(past_values=values, **kwargs).prediction_outputs


# The model ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_shapes(channels):
    model = tiny_model(num_input_channels=channels, scaling_loc=[1.0] * channels, scaling_scale=[2.0] * channels)
    values = series(channels=channels)
    out = model(past_values=values, future_values=series(length=1, channels=channels, seed=1))
    assert out.prediction_outputs.shape == (2, 16, channels)
    assert out.loc.shape == out.scale.shape == (2, 1, channels)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert model.model(past_values=values).last_hidden_state.shape == (2, channels, 16, 16)
    assert model.generate(values, prediction_length=7).sequences.shape == (2, 1, 7, channels)
    assert model.generate(values).sequences.shape == (2, 1, 5, channels)  # config.prediction_length
    if channels == 1:  # [batch, time] is accepted for one channel
        torch.testing.assert_close(predictions(model, values[..., 0]), predictions(model, values))


def test_channels_are_independent():
    model = tiny_model(num_input_channels=2)
    values = series(channels=2)
    alone = predictions(tiny_model(), values[..., :1])
    torch.testing.assert_close(predictions(model, values)[..., :1], alone, atol=1e-6, rtol=0)


def test_seed_parameter_counts():
    """The spec's arithmetic: 321 trained parameters single-head at width 64, 209 with 8 heads; codes frozen."""
    for heads, expected in [(1, 321), (8, 209)]:
        model = VQLNMLPForPrediction(VQLNMLPConfig(num_heads=heads, position_code="rope"))
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
        assert model.model.codebook.shape == (heads, 512, 64 // heads) and not model.model.codebook.requires_grad
    trainable = VQLNMLPForPrediction(VQLNMLPConfig(trainable_codebook=True))
    assert trainable.model.codebook.requires_grad


def seed_reference(model: VQLNMLPForPrediction, values: torch.Tensor) -> torch.Tensor:
    """A literal transcription of the seed's forward (standardised values [B, T, 1] -> [B, T, 1]) from the spec:
    simplepe's sinusoidal table (sin even, cos odd) and RoPE on consecutive pairs, one LayerNorm of the head size,
    a codebook per head, softmax scale 1/sqrt(d_model)."""
    config, inner = model.config, model.model
    batch, length, _ = values.shape
    d, heads = config.d_model, config.num_heads
    size = d // heads
    h = inner.in_proj(values)
    if config.position_code == "randn":
        h = h + inner.position_table[:length]
    h = h.view(batch, length, heads, size).transpose(1, 2)  # B, nh, T, hs
    t = torch.arange(length, dtype=torch.float32)[:, None]
    if config.position_code == "sinusoidal":
        pe = torch.zeros(length, size)
        div = torch.exp(torch.arange(0, size, 2).float() * (-math.log(10000.0) / size))
        pe[:, 0::2], pe[:, 1::2] = torch.sin(t * div), torch.cos(t * div)
        h = h + pe
    elif config.position_code == "rope":
        freqs = 1.0 / (10000.0 ** (torch.arange(0, size, 2).float() / size))
        rotation = torch.polar(torch.ones(length, size // 2), t * freqs)
        h = torch.view_as_real(torch.view_as_complex(h.reshape(batch, heads, length, size // 2, 2)) * rotation)
        h = h.flatten(-2)
    h = torch.nn.functional.layer_norm(h, (size,), inner.norm.weight, inner.norm.bias, config.layer_norm_eps)
    p = torch.softmax(h @ inner.codebook.unsqueeze(0).transpose(-1, -2) / math.sqrt(d), dim=-1)
    z = (p @ inner.codebook.unsqueeze(0)).transpose(1, 2).reshape(batch, length, d)
    return model.out_proj(z)


@pytest.mark.parametrize("heads", [1, 4])
@pytest.mark.parametrize("code", CODES)
def test_matches_the_seed_forward(code, heads):
    model = tiny_model(position_code=code, num_heads=heads)
    values = series()
    with torch.no_grad():
        torch.testing.assert_close(predictions(model, values), seed_reference(model, values), atol=1e-5, rtol=1e-5)


def test_scaling_round_trip():
    values = series(channels=2) * 40 + 900
    loc, scale = [3.0, -2.0], [7.0, 0.5]
    model = tiny_model(num_input_channels=2, scaling_loc=loc, scaling_scale=scale)
    scaled, got_loc, got_scale = model.model.scaler(values)
    torch.testing.assert_close(scaled * got_scale + got_loc, values)
    torch.testing.assert_close(got_loc[0, 0], torch.tensor(loc))
    # The same weights with identity scaling, fed the standardised series, give the standardised predictions.
    plain = tiny_model(num_input_channels=2)
    plain.load_state_dict(model.state_dict())
    standard = (values - torch.tensor(loc)) / torch.tensor(scale)
    torch.testing.assert_close((predictions(model, values) - torch.tensor(loc)) / torch.tensor(scale),
                               predictions(plain, standard), atol=1e-4, rtol=1e-4)
    # Window scalers (forecast-only): statistics per row and channel, undone on the way out.
    for scaling in ("std", "mean"):
        windowed = tiny_model(num_input_channels=2, scaling=scaling)
        scaled, got_loc, got_scale = windowed.model.scaler(values)
        torch.testing.assert_close(scaled * got_scale + got_loc, values)
        if scaling == "std":
            torch.testing.assert_close(scaled.mean(1), torch.zeros(2, 2), atol=1e-4, rtol=0)


def test_training_split_statistics_are_stored_with_the_model(tmp_path):
    data, _ = load_series()
    split = split_series(data, 96)
    head = data[:split.tail_start, 0]
    assert split.loc == pytest.approx([head.mean()]) and split.scale == pytest.approx([head.std()])
    model = VQLNMLPForPrediction(VQLNMLPConfig(scaling_loc=split.loc, scaling_scale=split.scale))
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForTimeSeriesPrediction.from_pretrained(tmp_path)
    assert reloaded.config.scaling_loc == pytest.approx(split.loc)
    assert reloaded(past_values=torch.tensor(data[None, :96], dtype=torch.float32)).loc.item() == pytest.approx(split.loc[0])


@pytest.mark.parametrize("attention", [False, True])
@pytest.mark.parametrize("code", CODES)
def test_changing_later_values_leaves_earlier_predictions_unchanged(code, attention):
    model = tiny_model(position_code=code, use_attention=attention, num_heads=2)
    values = series()
    for split in (1, 7, 15):
        changed = values.clone()
        changed[:, split:] = series(length=16 - split, seed=split)
        assert (predictions(model, values)[:, :split] - predictions(model, changed)[:, :split]).abs().max() < 1e-6


@pytest.mark.parametrize("rollout", ["absolute", "sliding"])
def test_rollout_is_deterministic(rollout):
    model = tiny_model(position_code="rope", use_attention=True)
    values = series()
    first = model.generate(values, prediction_length=20, rollout=rollout).sequences
    assert torch.equal(first, model.generate(values, prediction_length=20, rollout=rollout).sequences)
    assert torch.equal(first, tiny_model(position_code="rope", use_attention=True).generate(
        values, prediction_length=20, rollout=rollout).sequences)


@pytest.mark.parametrize("code", CODES)
def test_cached_and_uncached_rollouts_are_equal_with_attention(code):
    model = tiny_model(position_code=code, use_attention=True)
    values = series(channels=1, length=10)
    cached = model.generate(values, prediction_length=30, rollout="absolute", use_cache=True).sequences
    uncached = model.generate(values, prediction_length=30, rollout="absolute", use_cache=False).sequences
    torch.testing.assert_close(cached, uncached, atol=1e-5, rtol=1e-5)
    # The first forecast step is the full forward's last prediction; the rollout really uses the attention.
    torch.testing.assert_close(cached[:, 0, 0], predictions(model, values)[:, -1], atol=1e-6, rtol=0)
    assert not torch.allclose(cached, tiny_model(position_code=code).generate(values, prediction_length=30, rollout="absolute").sequences)


def test_prefill_then_steps_with_the_cache_equals_the_full_forward():
    model = tiny_model(position_code="rope", use_attention=True)
    values = series(length=12)
    with torch.no_grad():
        out = model(past_values=values[:, :5], use_cache=True)
        pieces, cache = [out.prediction_outputs], out.cache
        for start in range(5, 12, 3):
            out = model(past_values=values[:, start:start + 3], cache=cache)
            pieces.append(out.prediction_outputs)
    torch.testing.assert_close(torch.cat(pieces, dim=1), predictions(model, values), atol=1e-5, rtol=0)
    assert cache.get_seq_length() == 12


def test_sliding_generate_is_the_evaluation_rollout():
    model = tiny_model(position_code="sinusoidal", use_attention=True, scaling_loc=[2.0], scaling_scale=[3.0])
    context = series(batch=1, length=16)[0]
    generated = model.generate(context[None], prediction_length=12, rollout="sliding").sequences[0, 0]
    evaluated = sliding_rollout(model_forecaster(model), context.numpy(), 12, window=16)
    np.testing.assert_allclose(generated.numpy(), evaluated, atol=1e-5)


def test_randn_positions_never_overflow_silently():
    model = tiny_model(position_code="randn", context_length=16, max_position_embeddings=20)
    values = series()
    model.generate(values, prediction_length=5, rollout="absolute")  # positions 0..19: inside the table
    with pytest.raises(ValueError, match="past the randn position table"):
        model.generate(values, prediction_length=6, rollout="absolute")
    assert model.generate(values, prediction_length=50, rollout="sliding").sequences.shape[2] == 50


def test_loss_is_the_seeds_aligned_next_step_mse():
    model = tiny_model(scaling_loc=[1.0], scaling_scale=[2.0])
    values, after = series(), series(length=1, seed=3)
    out = model(past_values=values, future_values=after)
    targets = torch.cat([values[:, 1:], after], dim=1)
    expected = (((out.prediction_outputs - targets) / 2.0) ** 2).mean()
    torch.testing.assert_close(out.loss, expected, atol=1e-6, rtol=1e-6)
    # Several future values: teacher forcing over past ++ future, like labels in a causal LM.
    longer = model(past_values=values[:, :10], future_values=values[:, 10:])
    torch.testing.assert_close(longer.prediction_outputs, predictions(model, values[:, :15]))


def test_every_trained_parameter_gets_a_gradient():
    model = tiny_model(use_attention=True, position_code="rope", num_heads=2, trainable_codebook=True).train()
    model(past_values=series(), future_values=series(length=1, seed=1)).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing


# Round trip ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", [False, True])
def test_save_and_load(tmp_path, attention):
    model = tiny_model(position_code="randn", num_heads=2, use_attention=attention, scaling_loc=[5.0],
                       scaling_scale=[2.0])
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"model.safetensors", "config.json", "modeling_vqlnmlp.py", "configuration_vqlnmlp.py"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files)
    config = AutoConfig.from_pretrained(tmp_path)
    assert set(config.auto_map) == {"AutoConfig", "AutoModel", "AutoModelForTimeSeriesPrediction"}
    assert config.layer_types == (["full_attention"] if attention else []) and config.num_hidden_layers == len(config.layer_types)
    reloaded = AutoModelForTimeSeriesPrediction.from_pretrained(tmp_path).eval()
    assert type(reloaded) is VQLNMLPForPrediction
    assert not reloaded.model.codebook.requires_grad  # a frozen codebook stays frozen
    values = series()
    torch.testing.assert_close(predictions(reloaded, values), predictions(model, values), atol=0, rtol=0)
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base) is VQLNMLPModel
    torch.testing.assert_close(base(past_values=values).last_hidden_state,
                               model.model(past_values=values).last_hidden_state, atol=0, rtol=0)


REMOTE_LOAD = textwrap.dedent("""
    import sys
    sys.modules["attnlab"] = None  # make any import of attnlab fail: only the folder's own code may be used
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoModelForTimeSeriesPrediction
    folder = sys.argv[1]
    expected = load_file(sys.argv[2])
    model = AutoModelForTimeSeriesPrediction.from_pretrained(folder, trust_remote_code=True).eval()
    assert "transformers_modules" in type(model).__module__, type(model).__module__
    AutoModel.from_pretrained(folder, trust_remote_code=True)
    AutoConfig.from_pretrained(folder, trust_remote_code=True)
    with torch.no_grad():
        outputs = model(past_values=expected["values"]).prediction_outputs
    torch.testing.assert_close(outputs, expected["predictions"], atol=0, rtol=0)
    cached = model.generate(expected["values"], prediction_length=6, rollout="absolute").sequences
    uncached = model.generate(expected["values"], prediction_length=6, rollout="absolute", use_cache=False).sequences
    torch.testing.assert_close(cached, uncached, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.generate(expected["values"], prediction_length=6).sequences,
                               expected["forecast"], atol=1e-5, rtol=1e-5)
    print("remote-ok")
""")


def test_remote_code_loads_where_attnlab_is_not_importable(tmp_path):
    model = tiny_model(position_code="rope", use_attention=True, num_heads=2, scaling_loc=[3.0], scaling_scale=[2.0])
    folder = tmp_path / "hub"
    model.save_pretrained(folder)
    values = series()
    save_file({"values": values, "predictions": predictions(model, values),
               "forecast": model.generate(values, prediction_length=6).sequences}, tmp_path / "expected.safetensors")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", REMOTE_LOAD, str(folder), str(tmp_path / "expected.safetensors")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "remote-ok" in result.stdout, result.stderr[-3000:]


# Bad input ---------------------------------------------------------------------------------------------------------


def test_bad_tensors_get_clear_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match="NaN or infinite"):
        model(past_values=torch.tensor([[1.0, float("nan"), 2.0]]))
    with pytest.raises(ValueError, match="must have the shape of past_values"):
        model(past_values=series(), past_observed_mask=torch.ones(2, 15, 1))
    with pytest.raises(ValueError, match="more than context_length=16"):
        model(past_values=series(length=17))
    with pytest.raises(ValueError, match="more than context_length=16"):
        model.generate(series(length=17))
    with pytest.raises(ValueError, match=r"past_values must be \[batch, time, 1\]"):
        model(past_values=series(channels=2))
    with pytest.raises(ValueError, match="float tensor"):
        model(past_values=torch.ones(2, 16, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="for forecasting"):
        tiny_model(scaling="std")(past_values=series(), future_values=series(length=1))
    with pytest.raises(ValueError, match="keeps no cache"):
        from transformers import DynamicCache
        model(past_values=series(), cache=DynamicCache())


def test_bad_configs_get_clear_errors():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        VQLNMLPConfig(d_model=10, num_heads=4)
    with pytest.raises(ValueError, match="position_code"):
        VQLNMLPConfig(position_code="alibi")
    with pytest.raises(ValueError, match="one value per channel"):
        VQLNMLPConfig(num_input_channels=2, scaling_loc=[0.0])
    with pytest.raises(ValueError, match="even head size"):
        VQLNMLPConfig(d_model=12, num_heads=4, position_code="rope")


def write_csv(path, rows, header="time,value"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return str(path)


def test_bad_csv_files_get_clear_errors(tmp_path):
    good = [f"{i},{math.sin(i / 5):.4f}" for i in range(40)]
    with pytest.raises(ValueError, match="no column 'load'.*'time', 'value'"):
        load_series(write_csv(tmp_path / "a.csv", good), ["load"])
    with pytest.raises(ValueError, match="not numeric at row 4"):
        load_series(write_csv(tmp_path / "b.csv", good[:2] + ["2,abc"] + good[3:]))
    with pytest.raises(ValueError, match="empty at row 3.*--fill"):
        load_series(write_csv(tmp_path / "c.csv", good[:1] + ["1,"] + good[2:]), fill="none")
    with pytest.raises(ValueError, match="'inf' at row 2"):
        load_series(write_csv(tmp_path / "d.csv", ["0,inf"] + good[1:]))
    with pytest.raises(ValueError, match="--fill must be one of"):
        load_series(write_csv(tmp_path / "d.csv", good), fill="zero")
    with pytest.raises(FileNotFoundError, match="no CSV file"):
        load_series(str(tmp_path / "missing.csv"))
    values, columns = load_series(write_csv(tmp_path / "e.csv", good))
    assert values.shape == (40, 1) and columns == ["value"]
    with pytest.raises(ValueError, match="too short.*--context_length 7 is the largest that fits"):
        split_series(values, context_length=16)  # a 20% tail of 40 points holds 8, not 17
    assert len(split_series(values, context_length=7).validation) == 1


def test_gaps_are_kept_as_missing_or_filled_only_when_asked(tmp_path):
    rows = ["0,1", "1,", "2,NA", "3,4", "4,5"]
    masked_values, _ = load_series(write_csv(tmp_path / "g.csv", rows))
    assert np.isnan(masked_values[1:3, 0]).all() and masked_values[3, 0] == 4  # never silently interpolated
    np.testing.assert_array_equal(load_series(str(tmp_path / "g.csv"), fill="ffill")[0][:, 0], [1, 1, 1, 4, 5])
    np.testing.assert_array_equal(load_series(str(tmp_path / "g.csv"), fill="linear")[0][:, 0], [1, 2, 3, 4, 5])
    assert timeseries.read_series(str(tmp_path / "g.csv")).missing == 2


def test_an_unsorted_or_irregular_time_index_is_refused_naming_the_row(tmp_path):
    with pytest.raises(ValueError, match="not increasing at row 4"):
        load_series(write_csv(tmp_path / "u.csv", ["0,1", "1,2", "0.5,3", "3,4"]))
    with pytest.raises(ValueError, match="irregular at row 4"):
        load_series(write_csv(tmp_path / "i.csv", ["0,1", "1,2", "3,3", "4,4"]))
    with pytest.raises(ValueError, match="irregular at row 4"):
        load_series(write_csv(tmp_path / "m.csv", ["2000-01-01,1", "2000-02-01,2", "2000-04-01,3"], "date,value"))
    monthly = write_csv(tmp_path / "ok.csv", ["2000-01-31,1", "2000-02-29,2", "2000-03-31,3"], "date,value")
    assert timeseries.read_series(monthly).frequency == "M"
    quarterly = write_csv(tmp_path / "q.csv", ["2000-01-01,1", "2000-04-01,2", "2000-07-01,3"], "date,value")
    assert timeseries.read_series(quarterly).frequency == "Q"
    hourly = write_csv(tmp_path / "h.csv", ["2000-01-01T00:00,1", "2000-01-01T01:00,2", "2000-01-01T02:00,3"],
                       "date,value")
    assert timeseries.read_series(hourly).frequency == "h"


def test_training_with_a_gap_keeps_the_gap_out_of_the_loss(tmp_path):
    values = np.sin(np.arange(120) / 4)[:, None]
    values[30:33] = np.nan
    split = split_series(values, 16)
    batch = split.train.select(torch.arange(8, 20))  # windows that hold the gap
    assert torch.isnan(batch.inputs).any()
    model = tiny_model(scaling_loc=split.loc, scaling_scale=split.scale)
    loss = model(**timeseries.masked(batch.inputs), future_values=batch.targets.nan_to_num(),
                 future_observed_mask=torch.isfinite(batch.targets)).loss
    assert torch.isfinite(loss)
    result = timeseries.one_step_mse(timeseries.persistence_forecaster, batch, split.loc, split.scale)
    assert math.isfinite(result["mse"]) and result["values"] < batch.inputs.numel()


@pytest.mark.parametrize("argv", [
    ["train", "--model", "vqlnmlp", "--column", "nope"],
    ["train", "--model", "vqlnmlp", "--csv_file", "/no/such.csv"],
    ["train", "--model", "vqlnmlp", "--split", "shuffled"],
    ["train", "--model", "vqlnmlp", "--context_length", "700"],
    ["train", "--model", "vqlnmlp", "--position_code", "alibi"],
])
def test_cli_answers_bad_input_with_one_line(argv, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv + ["--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("attnlab train: error:") and "\n" not in error and "Traceback" not in error


# Data and splits -----------------------------------------------------------------------------------------------


def test_embedded_series_is_the_seeds():
    values, columns = load_series()
    assert values.shape == (733, 1) and columns == ["formaldehyde(ug/m³)"]
    assert values.mean() == pytest.approx(1255.59, abs=0.01) and values.std() == pytest.approx(270.06, abs=0.01)
    other, _ = load_series(str(timeseries.embedded_csv(timeseries.TRANSFER_SERIES)))
    assert other.shape == (728, 1)


def test_windows_have_next_step_targets():
    data = np.arange(30, dtype=np.float64)[:, None]
    windows = make_windows(data, 8)
    assert len(windows) == 22
    assert windows.inputs[5, :, 0].tolist() == list(range(5, 13)) and windows.targets[5, 0, 0].item() == 13


def test_contiguous_split_has_no_overlap_and_the_seeds_split_leaks():
    data, _ = load_series()
    honest = split_series(data, 96, "tail")
    assert window_overlap(honest) == 0
    assert max(honest.train.points()) < honest.tail_start <= min(honest.validation.points())
    assert (len(honest.train), len(honest.validation)) == (490, 51)
    leaky = split_series(data, 96, "random")
    assert (len(leaky.train), len(leaky.validation)) == (509, 128)  # the seed's counts
    assert window_overlap(leaky) >= 0.95 * len(leaky.validation.points())
    assert leaky.loc == pytest.approx([data.mean()])  # the seed's whole-series z-score


# Baselines and evaluation --------------------------------------------------------------------------------------


def test_baselines():
    generator = np.random.default_rng(0)
    data = np.zeros((400, 1))
    for t in range(2, 400):  # a known AR(2)
        data[t] = 0.6 * data[t - 1] + 0.3 * data[t - 2] + 0.1 * generator.standard_normal()
    split = split_series(data, 16)
    ar = fit_linear_ar(split.train, split.loc, split.scale, order=4)
    windows = split.validation
    assert one_step_mse(persistence_forecaster, windows, split.loc, split.scale)["mse"] == pytest.approx(
        ((windows.inputs[:, 1:] - windows.inputs[:, :-1]) ** 2).sum().item() / windows.inputs.numel()
        + ((windows.targets - windows.inputs[:, -1:]) ** 2).sum().item() / windows.inputs.numel(), rel=1e-5)
    ar_mse = one_step_mse(ar, windows, split.loc, split.scale)["mse"]
    assert ar_mse < one_step_mse(persistence_forecaster, windows, split.loc, split.scale)["mse"]
    assert ar_mse == pytest.approx(0.01, rel=0.35)  # near the noise variance
    assert torch.equal(mean_forecaster([2.0])(windows.inputs), torch.full_like(windows.inputs, 2.0))
    lstm = fit_lstm(split.train, split.loc, split.scale, epochs=2, hidden_size=8)
    assert one_step_mse(lstm, windows, split.loc, split.scale)["mse"] < one_step_mse(
        mean_forecaster(split.loc), windows, split.loc, split.scale)["mse"]
    # Causal: a forecaster's prediction at t ignores later values.
    changed = windows.inputs.clone()
    changed[:, 10:] += 5
    for forecaster in (ar, lstm):
        torch.testing.assert_close(forecaster(changed)[:, :10], forecaster(windows.inputs)[:, :10])


# Training, resume and the CLI ----------------------------------------------------------------------------------


def tiny_args(tmp_path, **overrides) -> TimeSeriesTrainArgs:
    values = dict(context_length=16, prediction_length=8, d_model=8, codebook_size=16, num_heads=2,
                  position_code="rope", use_attention=True, batch_size=64, num_epochs=3, save_every=4,
                  output_dir=str(tmp_path / "run"), num_threads=1)
    return TimeSeriesTrainArgs(**{**values, **overrides})


def test_resume_continues_exactly(tmp_path):
    full = train_timeseries(tiny_args(tmp_path, output_dir=str(tmp_path / "full")), progress=False)

    def interrupt(step, loss):
        if step == 9:  # after the checkpoint of step 8
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_timeseries(tiny_args(tmp_path), progress=False, on_step=interrupt)
    resumed = train_timeseries(tiny_args(tmp_path, resume=True), progress=False)
    assert resumed["steps"] == full["steps"] == full["max_steps"]
    assert resumed["train_loss"][:8] == full["train_loss"][:8]
    np.testing.assert_allclose(resumed["train_loss"], full["train_loss"], rtol=1e-6)
    assert resumed["final_eval"]["mse"] == pytest.approx(full["final_eval"]["mse"], rel=1e-6)
    assert not list((tmp_path / "run").glob("checkpoint-*"))  # finished: no pickles left
    with pytest.raises(ValueError, match="was trained with num_heads=2"):
        train_timeseries(tiny_args(tmp_path, output_dir=str(tmp_path / "other"), time_limit=0.0), progress=False)
        train_timeseries(tiny_args(tmp_path, output_dir=str(tmp_path / "other"), num_heads=4, resume=True),
                         progress=False)


def test_cli_train_eval_forecast(tmp_path, capsys):
    folder = tmp_path / "vq"
    cli.main(["train", "--model", "vqlnmlp", "--context_length", "16", "--d_model", "8", "--codebook_size", "16",
              "--num_epochs", "1", "--batch_size", "128", "--output_dir", str(folder), "--num_threads", "1"])
    assert json.loads((folder / "metrics.json").read_text())["final_eval"]["mse_standardised"] > 0
    assert "AutoModelForTimeSeriesPrediction" in (folder / "README.md").read_text()
    cli.main(["eval", str(folder), "--output_json", str(tmp_path / "eval.json")])
    report = json.loads((tmp_path / "eval.json").read_text())
    assert set(report["results"]) == {"model", "persistence", "mean", "linear_ar"}
    assert report["results"]["model"]["rollout_steps"] == 147
    assert set(report["field_metrics"]) == {"model", "persistence", "seasonal_naive", "linear_ar"}
    assert report["field_metrics"]["seasonal_naive"]["mase_ratio_to_seasonal_naive"] == 1
    assert report["field_metrics"]["persistence"]["points_per_horizon"] == 147
    cli.main(["eval", str(folder), "--horizon", "3", "--season", "30", "--output_json", str(tmp_path / "eval3.json")])
    per_horizon = json.loads((tmp_path / "eval3.json").read_text())["field_metrics"]["model"]["per_horizon"]
    assert [m["points"] for m in per_horizon] == [147, 147, 147]
    cli.main(["forecast", str(folder), "--horizon", "12", "--output", str(tmp_path / "fc")])
    rows = (tmp_path / "fc.csv").read_text().splitlines()
    assert len(rows) == 13 and rows[0].startswith("index,forecast_")
    assert (tmp_path / "fc.png").stat().st_size > 1000
    capsys.readouterr()
    for bad, message in [(["--horizon", "720"], "shorter than context_length \\+ horizon = 16 \\+ 720"),
                         (["--start", "5"], "--start 5 must leave context_length=16 values"),
                         (["--column", "nope"], "no column 'nope'")]:
        with pytest.raises(SystemExit):
            cli.main(["forecast", str(folder), *bad, "--output", str(tmp_path / "bad")])
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and re.search(message, error[0]), error
    sine = write_csv(tmp_path / "sine.csv", [f"{i},{math.sin(i / 5):.4f}" for i in range(200)])
    with pytest.warns(UserWarning, match=r"far outside the training statistics: 'value' has mean .* std 0\.7"):
        cli.main(["forecast", str(folder), "--csv_file", sine, "--horizon", "4", "--output", str(tmp_path / "s")])


# Missing values ----------------------------------------------------------------------------------------------------


def test_a_gap_never_enters_the_loss_or_the_prediction():
    model = tiny_model()
    values, future = series(), series(length=1)
    mask = torch.ones(2, 16, 1)
    mask[0, 5] = 0
    holed = values.clone()
    holed[0, 5] = float("nan")
    loss = model(past_values=holed, past_observed_mask=mask, future_values=future).loss
    assert torch.isfinite(loss)
    # Whatever the missing value was, nothing changes: it is neither read nor scored.
    other = values.clone()
    other[0, 5] = 1e6
    assert torch.equal(loss, model(past_values=other, past_observed_mask=mask, future_values=future).loss)
    # The loss counts a prediction only where its input and its target are observed: by hand.
    out = model(past_values=values, future_values=future)
    targets = (torch.cat([values, future], 1)[:, 1:] - out.loc) / out.scale
    standard = (out.prediction_outputs - out.loc) / out.scale
    counted = torch.ones(2, 16, 1, dtype=torch.bool)
    counted[0, 4] = counted[0, 5] = False  # position 4 predicts the gap, position 5 reads it
    by_hand = (standard - targets).pow(2)[counted].mean()
    masked = model(past_values=other, past_observed_mask=mask, future_values=future)
    torch.testing.assert_close(masked.loss, by_hand)
    # The missing input holds the last observed value (after scaling): its prediction equals its neighbour's.
    assert masked.prediction_outputs[0, 5].item() == pytest.approx(masked.prediction_outputs[0, 4].item())
    # A missing future target is excluded too.
    future_mask = torch.zeros(2, 1, 1)
    with_future_gap = model(past_values=values, future_values=torch.full((2, 1, 1), float("nan")),
                            future_observed_mask=future_mask).loss
    assert torch.isfinite(with_future_gap)


def test_window_scalers_ignore_missing_values():
    model = tiny_model(scaling="std")
    values = series()
    mask = torch.ones(2, 16, 1)
    mask[:, 8:] = 0
    holed = values.clone()
    holed[:, 8:] = float("nan")
    out = model.model(past_values=holed, past_observed_mask=mask)
    expected = values[:, :8].mean(1, keepdim=True)
    torch.testing.assert_close(out.loc, expected)
    forecast = model.generate(holed, past_observed_mask=mask, prediction_length=3).sequences
    assert torch.isfinite(forecast).all()
