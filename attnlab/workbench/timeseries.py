"""Time-series members (vqlnmlp, seed 004) in the workbench: series from CSV, windows with next-step targets,
honest and leaky splits, training with accelerate, evaluation, forecasts, and the baselines they are judged by.

    attnlab train --model vqlnmlp [--csv_file data.csv --column value] --output_dir outputs/vq
    attnlab eval outputs/vq                      # one-step and rollout MSE on the held-out tail, with baselines
    attnlab forecast outputs/vq --horizon 96     # forecast CSV + PNG of history, truth and forecast

Splits. "tail" (the default) holds out the last `validation_fraction` of the series: training windows lie wholly
before it and validation windows wholly inside it, and the standardisation comes from the training part only.
"random" is the seed's: z-score with the whole series' statistics, then a random 80/20 split of overlapping windows
(a validation window shares all but one point with its neighbours in training); it exists to measure that leak.

Every forecaster (the model or a baseline) is a callable mapping windows [N, T, C] in the data's units to the
next-step predictions at every position, [N, T, C], causal: one evaluation code scores them all.
"""

import csv
import json
import math
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from transformers import HfArgumentParser
from transformers.utils import logging as transformers_logging

from ..configuration_vqlnmlp import VQLNMLPConfig
from ..members import TIME_SERIES_MEMBERS
from ..modeling_vqlnmlp import VQLNMLPForPrediction
from .training import (
    METRICS_FILE,
    comparable_config,
    file_stamps,
    last_checkpoint,
    parse_overrides,
    prepare_output_dir,
    resume_state,
    training_loop,
)

DEFAULT_SERIES = "formaldehyde_y+w.csv"   # the seed's training series (733 points, every 2 minutes for 24.4 h)
TRANSFER_SERIES = "formaldehyde_w+y.csv"  # the second experiment (728 points), the seed's transfer test

Forecaster = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------------------------
# Data


def embedded_csv(name: str = DEFAULT_SERIES) -> Path:
    return Path(str(resources.files("attnlab.workbench").joinpath(f"corpus/{name}")))


MISSING_CELLS = {"", "na", "nan", "null", "none", "?"}
FILLS = ("mask", "ffill", "linear", "none")


@dataclass
class Series:
    values: np.ndarray          # [time, channels], NaN where missing (unless filled)
    columns: list[str]
    frequency: str | None       # "min", "h", "D", "W", "M", "Q", "Y" (with a multiple, e.g. "2min"), from the index
    missing: int                # values missing in the file (before any --fill)
    time_column: str | None = None


def read_series(csv_file: str | None = None, columns: list[str] | None = None, fill: str = "mask",
                time_column: str | None = None) -> Series:
    """The columns of a CSV file with a header row (default: the embedded formaldehyde series, default columns:
    the last one). An empty, NA or NaN cell is a missing value: with fill "mask" it stays NaN (the model gets
    past_observed_mask, scores skip it), "ffill" / "linear" fill it explicitly, "none" refuses it. The time index
    (`time_column`, default: the first column when it is not modelled) must be sorted and regular; a calendar one
    (ISO dates) gives the frequency. Errors name the file, column and row."""
    if fill not in FILLS:
        raise ValueError(f"--fill must be one of {FILLS}, got {fill!r}")
    path = Path(csv_file) if csv_file else embedded_csv()
    if not path.is_file():
        raise FileNotFoundError(f"no CSV file at {path}")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if len(rows) < 2:
        raise ValueError(f"{path} needs a header row and at least one data row")
    header = [name.strip() for name in rows[0]]
    columns = list(columns) if columns else [header[-1]]
    missing = [name for name in columns if name not in header]
    if missing or (time_column and time_column not in header):
        raise ValueError(f"{path} has no column {(missing or [time_column])[0]!r}; its columns are {header}")
    values = np.empty((len(rows) - 1, len(columns)))
    for channel, name in enumerate(columns):
        index = header.index(name)
        for row, cells in enumerate(rows[1:], start=2):  # row numbers as a spreadsheet shows them
            cell = cells[index].strip() if index < len(cells) else ""
            if cell.lower() in MISSING_CELLS:
                if fill == "none":
                    raise ValueError(f"{path}: column {name!r} is empty at row {row} ({cell!r}); pass --fill mask "
                                     "(the model skips it), ffill or linear")
                values[row - 2, channel] = np.nan
                continue
            try:
                values[row - 2, channel] = float(cell)
            except ValueError:
                raise ValueError(f"{path}: column {name!r} is not numeric at row {row} ({cell!r})") from None
            if not math.isfinite(values[row - 2, channel]):
                raise ValueError(f"{path}: column {name!r} holds {cell!r} at row {row}; the series must be finite")
    count = int(np.isnan(values).sum())
    if np.isnan(values).all(axis=0).any():
        raise ValueError(f"{path}: a column has no observed value")
    if time_column is None and header[0] not in columns:
        time_column = header[0]
    frequency = None
    if time_column is not None:
        frequency = check_time_index(path, time_column, [cells[header.index(time_column)].strip() if
                                                          header.index(time_column) < len(cells) else ""
                                                          for cells in rows[1:]])
    if fill == "ffill":
        values = fill_forward(values)
    elif fill == "linear":
        values = fill_linear(values)
    return Series(values, columns, frequency, count, time_column)


def load_series(csv_file: str | None = None, columns: list[str] | None = None,
                fill: str = "mask") -> tuple[np.ndarray, list[str]]:
    """read_series' values [time, channels] and column names."""
    series = read_series(csv_file, columns, fill)
    return series.values, series.columns


def fill_forward(values: np.ndarray) -> np.ndarray:
    """--fill ffill: the last observed value; before the first one, the first observed value."""
    from .forecasting import forward_fill

    filled = forward_fill(values)
    first = np.array([column[np.isfinite(column)][0] for column in values.T])
    return np.where(np.isnan(filled), first, filled)


def fill_linear(values: np.ndarray) -> np.ndarray:
    """--fill linear: straight lines between the observed neighbours (constant past either end)."""
    filled = values.copy()
    steps = np.arange(len(values))
    for channel in range(values.shape[1]):
        known = np.isfinite(values[:, channel])
        filled[:, channel] = np.interp(steps, steps[known], values[known, channel])
    return filled


def check_time_index(path: Path, name: str, cells: list[str]) -> str | None:
    """Refuse an unsorted or irregular time index naming the row; return the frequency of a calendar index
    (None for a numeric one, whose unit is unknown). A number or an ISO date / datetime per row."""
    try:
        times = np.array([float(cell) for cell in cells])
        calendar = False
    except ValueError:
        try:
            times = np.array(cells, dtype="datetime64[s]")
            calendar = True
        except ValueError:
            return None  # not a time index (a label column): nothing to check
    steps = np.diff(times.astype(np.float64) if not calendar else times.astype("int64"))
    if not len(steps):
        return None
    for index, step in enumerate(steps):
        if step <= 0:
            raise ValueError(f"{path}: the time index {name!r} is not increasing at row {index + 3} "
                             f"({cells[index + 1]!r} after {cells[index]!r}); sort the file")
    if not calendar or (np.all(steps == steps[0]) and steps[0] < 28 * 86400):  # months differ in length
        irregular = np.flatnonzero(np.abs(steps - steps[0]) > 1e-6 * abs(steps[0]))
        if len(irregular):
            row = irregular[0]
            raise ValueError(f"{path}: the time index {name!r} is irregular at row {row + 3} (a step of "
                             f"{steps[row]:g} after steps of {steps[0]:g}); insert empty rows for missing times")
        if not calendar:
            return None
        seconds = int(steps[0])
        for unit, size in (("W", 7 * 86400), ("D", 86400), ("h", 3600), ("min", 60)):
            if seconds % size == 0:
                multiple = seconds // size
                return unit if multiple == 1 else (f"{multiple}{unit}" if unit in ("h", "min") else None)
        return None
    # Calendar months: the same day of the month and a constant number of months between rows.
    months = times.astype("datetime64[M]")
    days = (times.astype("datetime64[D]") - months.astype("datetime64[D]")).astype(int)
    month_ends = ((months + 1).astype("datetime64[D]") - times.astype("datetime64[D]")).astype(int) == 1
    if month_ends.all():  # month-end dates (31 Jan, 28 Feb, ...) are regular too
        days = np.zeros_like(days)
    month_steps = np.diff(months.astype(int))
    for index in range(len(month_steps)):
        if month_steps[index] != month_steps[0] or days[index + 1] != days[0]:
            raise ValueError(f"{path}: the time index {name!r} is irregular at row {index + 3} ({cells[index + 1]!r} "
                             f"after {cells[index]!r}); insert empty rows for missing times")
    return {1: "M", 3: "Q", 12: "Y"}.get(int(month_steps[0]))


@dataclass
class Windows:
    """Windows of a series: inputs [N, T, C] and the value after each, targets [N, 1, C] (data units), and where
    each window starts in the series, starts [N]. With the model's aligned targets, position t of window i is
    trained to predict inputs[i, t + 1] (the last position: targets[i])."""

    inputs: torch.Tensor
    targets: torch.Tensor
    starts: torch.Tensor

    def __len__(self):
        return len(self.inputs)

    def select(self, index: torch.Tensor) -> "Windows":
        return Windows(self.inputs[index], self.targets[index], self.starts[index])

    def points(self) -> set[int]:
        """The series indices these windows read or predict."""
        length = self.inputs.shape[1] + 1
        return set((self.starts[:, None] + torch.arange(length)).flatten().tolist())


def make_windows(series: np.ndarray, length: int, offset: int = 0) -> Windows:
    """Every window of `length` values of series [T, C] that has a next value; `offset` is the index of series[0]
    in the full series (for `starts`)."""
    if len(series) < length + 1:
        raise ValueError(f"a series of {len(series)} points is shorter than one window of {length} values plus "
                         f"its next value; the largest window that fits is {len(series) - 1}")
    count = len(series) - length
    index = np.arange(length)[None, :] + np.arange(count)[:, None]
    values = torch.tensor(series, dtype=torch.float32)
    return Windows(values[index], values[index[:, -1] + 1].unsqueeze(1), torch.arange(count) + offset)


@dataclass
class SeriesSplit:
    train: Windows
    validation: Windows
    loc: list[float]    # the standardisation (per channel): the training part's mean and population std, or the
    scale: list[float]  # whole series' in the leaky "random" mode, as the seed did
    mode: str
    tail_start: int | None = None  # "tail": index of the first held-out point


def split_series(series: np.ndarray, context_length: int, mode: str = "tail", validation_fraction: float = 0.2,
                 seed: int = 42) -> SeriesSplit:
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be between 0 and 1, got {validation_fraction}")
    if mode == "tail":
        tail = round(validation_fraction * len(series))
        start = len(series) - tail
        if min(start, tail) < context_length + 1:
            fits = min(start, tail) - 1
            advice = f"--context_length {fits} is the largest that fits" if fits >= 1 else "use a longer series"
            raise ValueError(f"a series of {len(series)} points is too short for a {validation_fraction:g} tail split "
                             f"with context_length {context_length}: each part needs at least {context_length + 1} "
                             f"points (the training part has {start}, the tail {tail}); {advice}")
        head = series[:start]
        return SeriesSplit(make_windows(head, context_length), make_windows(series[start:], context_length, start),
                           loc=np.nanmean(head, 0).tolist(), scale=np.nanstd(head, 0).tolist(), mode=mode,
                           tail_start=start)
    if mode == "random":
        windows = make_windows(series, context_length)
        train_size = int((1 - validation_fraction) * len(windows))
        order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(seed))
        return SeriesSplit(windows.select(order[:train_size]), windows.select(order[train_size:]),
                           loc=np.nanmean(series, 0).tolist(), scale=np.nanstd(series, 0).tolist(), mode=mode)
    raise ValueError(f"split must be 'tail' (held-out end of the series) or 'random' (the seed's leaky split), "
                     f"got {mode!r}")


def window_overlap(split: SeriesSplit) -> int:
    """How many series points validation windows share with training windows (inputs or targets): 0 for the tail
    split; nearly all of them for the seed's random split."""
    return len(split.train.points() & split.validation.points())


# ---------------------------------------------------------------------------------------------------------------
# Forecasters: the model and the four baselines


def model_forecaster(model: VQLNMLPForPrediction) -> Forecaster:
    def forecast(values):
        with torch.no_grad():
            return model(**masked(values)).prediction_outputs
    return forecast


def masked(values: torch.Tensor) -> dict:
    """past_values with NaN (missing) as past_observed_mask; the missing values themselves are never read."""
    observed = torch.isfinite(values)
    return dict(past_values=values.nan_to_num(), past_observed_mask=observed)


def persistence_forecaster(values: torch.Tensor) -> torch.Tensor:
    """Tomorrow as today: the prediction of x_{t+1} is x_t."""
    return values


def mean_forecaster(loc: list[float]) -> Forecaster:
    """The training mean at every step."""
    return lambda values: torch.tensor(loc, dtype=values.dtype).expand_as(values)


def lagged(values: torch.Tensor, order: int) -> torch.Tensor:
    """[N, T, C] -> [N, T, C, order]: x_t, x_{t-1}, ... x_{t-order+1}, padding before the window's start with its
    first value (so every position has a prediction and none reads the future)."""
    padded = torch.cat([values[:, :1].expand(-1, order - 1, -1), values], dim=1)
    return torch.stack([padded[:, order - 1 - lag: padded.shape[1] - lag] for lag in range(order)], dim=-1)


def fit_linear_ar(train: Windows, loc: list[float], scale: list[float], order: int = 8) -> Forecaster:
    """Least-squares AR(order) with intercept on standardised values, shared by the channels, fitted on every
    (lags, next value) pair of the training windows."""
    loc_t, scale_t = torch.tensor(loc), torch.tensor(scale)
    inputs = (train.inputs - loc_t) / scale_t
    targets = torch.cat([inputs[:, 1:], (train.targets - loc_t) / scale_t], dim=1)
    features = lagged(inputs, order)[:, order - 1:].reshape(-1, order).double()  # only full lag vectors
    design = torch.cat([features, torch.ones(len(features), 1, dtype=torch.float64)], dim=1)
    coefficients = torch.linalg.lstsq(design, targets[:, order - 1:].reshape(-1, 1).double()).solution.squeeze(1)

    def forecast(values):
        standard = lagged((values - loc_t) / scale_t, order).double()
        return ((standard @ coefficients[:-1] + coefficients[-1]).float() * scale_t + loc_t)
    return forecast


class VQLNMLPTailForecaster:
    """A vqlnmlp model for forecasting.evaluate: contexts [N, L, C] with NaN gaps -> [N, H, C] through generate()
    (rolled out: the model predicts one step ahead), reading the last context_length values."""

    name = "vqlnmlp"

    def __init__(self, model: VQLNMLPForPrediction, rollout: str = "sliding", batch_size: int = 512):
        self.model, self.rollout, self.batch_size = model, rollout, batch_size

    def predict(self, contexts: np.ndarray, horizon: int) -> np.ndarray:
        values = torch.tensor(contexts[:, -self.model.config.context_length:], dtype=torch.float32)
        out = [self.model.generate(**masked(values[start:start + self.batch_size]), prediction_length=horizon,
                                   rollout=self.rollout).sequences[:, 0]
               for start in range(0, len(values), self.batch_size)]
        return torch.cat(out).double().numpy()


class LSTMForecaster(nn.Module):
    """The small LSTM baseline: standardised value -> LSTM -> Linear, a next-step prediction at every position."""

    def __init__(self, loc: list[float], scale: list[float], hidden_size: int = 32):
        super().__init__()
        self.register_buffer("loc", torch.tensor(loc))
        self.register_buffer("scale", torch.tensor(scale))
        self.lstm = nn.LSTM(1, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, 1)

    def standardised(self, standard: torch.Tensor) -> torch.Tensor:
        batch, length, channels = standard.shape
        flat = standard.transpose(1, 2).reshape(batch * channels, length, 1)
        return self.head(self.lstm(flat)[0]).view(batch, channels, length).transpose(1, 2)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.standardised((values - self.loc) / self.scale) * self.scale + self.loc


def fit_lstm(train: Windows, loc: list[float], scale: list[float], epochs: int, batch_size: int = 32,
             learning_rate: float = 7e-3, seed: int = 0, hidden_size: int = 32) -> LSTMForecaster:
    """Trained like the model: Adam, the standardised next-step MSE at every position, same windows and epochs."""
    torch.manual_seed(seed)
    model = LSTMForecaster(loc, scale, hidden_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    inputs = (train.inputs - model.loc) / model.scale
    targets = torch.cat([inputs[:, 1:], (train.targets - model.loc) / model.scale], dim=1)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(inputs), generator=generator).split(batch_size):
            loss = nn.functional.mse_loss(model.standardised(inputs[batch]), targets[batch])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# Evaluation, the same for every forecaster


def one_step_mse(forecaster: Forecaster, windows: Windows, loc: list[float], scale: list[float],
                 batch_size: int = 256) -> dict:
    """Next-step MSE at every position of every window (the seed's aligned targets): standardised with (loc, scale)
    as the seed reported it, and in the data's units."""
    scale_t, squared, count = torch.tensor(scale, dtype=torch.float64), 0.0, 0
    squared_standard = 0.0
    for start in range(0, len(windows), batch_size):
        inputs, after = windows.inputs[start:start + batch_size], windows.targets[start:start + batch_size]
        error = (forecaster(inputs).double() - torch.cat([inputs[:, 1:], after], dim=1).double())
        error = error[torch.isfinite(inputs).all(-1)]  # [points, C]: a prediction read from a gap is not scored
        error = error[torch.isfinite(error).all(-1)]  # nor one of a gap
        squared += error.pow(2).sum().item()
        squared_standard += (error / scale_t).pow(2).sum().item()
        count += error.numel()
    if count == 0:
        raise ValueError("no observed next-step pair to score (every window holds a gap)")
    return dict(mse_standardised=squared_standard / count, mse=squared / count, values=count)


def sliding_rollout(forecaster: Forecaster, context: np.ndarray, horizon: int, window: int) -> np.ndarray:
    """The seed's multi-step protocol: predict from the last `window` values, append the prediction, repeat.
    context [T, C] -> forecast [horizon, C], data units."""
    history = torch.tensor(np.asarray(context), dtype=torch.float32)
    for _ in range(horizon):
        step = forecaster(history[-window:].unsqueeze(0))[0, -1:]
        history = torch.cat([history, step])
    return history[len(context):].numpy().astype(np.float64)


def rollout_mse(forecaster: Forecaster, series: np.ndarray, start: int, window: int,
                horizon: int | None = None) -> dict:
    """Roll out from the `window` values before `start` over series[start:start + horizon] (default: to the end);
    MSE in the data's units."""
    horizon = len(series) - start if horizon is None else horizon
    if start < window or start + horizon > len(series):
        raise ValueError(f"a rollout of {horizon} steps from index {start} with a {window}-value context needs a "
                         f"series of at least {start + horizon} points starting {window} before it; it has "
                         f"{len(series)}")
    forecast = sliding_rollout(forecaster, series[start - window:start], horizon, window)
    return dict(rollout_mse=float(np.mean((forecast - series[start:start + horizon]) ** 2)), steps=horizon,
                forecast=forecast)


# ---------------------------------------------------------------------------------------------------------------
# Training


@dataclass
class TimeSeriesTrainArgs:
    """A time-series training run; `attnlab train --model vqlnmlp` exposes each field as `--name`. The defaults are
    the seed's (window 96, codebook 512, width 64, Adam at 7e-3, batch 32, 50 epochs), on the honest split."""

    model: str = field(default="vqlnmlp", metadata={"help": "time-series member: vqlnmlp"})
    csv_file: str | None = field(default=None, metadata={
        "help": "CSV file with a header row (default: the embedded formaldehyde series of seed 004)"})
    column: list[str] | None = field(default=None, metadata={
        "help": "column(s) to model, one channel each (default: the last column)"})
    fill: str = field(default="mask", metadata={
        "help": "missing values: 'mask' (past_observed_mask; never in the loss), 'ffill', 'linear', or 'none' (refuse)"})
    split: str = field(default="tail", metadata={
        "help": "'tail': hold out the end of the series (honest); 'random': the seed's random split of overlapping "
                "windows with whole-series statistics (leaks; for comparison only)"})
    validation_fraction: float = field(default=0.2, metadata={"help": "share of the series (tail) or windows (random) held out"})
    context_length: int = field(default=96, metadata={"help": "window length (time steps the model reads)"})
    prediction_length: int = field(default=96, metadata={"help": "default forecast horizon saved in the config"})
    d_model: int = field(default=64, metadata={"help": "width"})
    codebook_size: int = field(default=512, metadata={"help": "codes per head"})
    num_heads: int = field(default=1, metadata={"help": "codebook heads (1: VQLNMLP, more: MHVQLNMLP)"})
    position_code: str = field(default="none", metadata={"help": "none, randn, sinusoidal or rope"})
    trainable_codebook: bool = field(default=False, metadata={"help": "train the codebook (the seed froze it)"})
    use_attention: bool = field(default=False, metadata={"help": "add the causal self-attention over time"})
    config_overrides: list[str] = field(default_factory=list, metadata={
        "help": "other VQLNMLPConfig values as key=value, e.g. attention_heads=2"})
    batch_size: int = field(default=32, metadata={"help": "windows per step, per process"})
    num_epochs: int = field(default=50, metadata={"help": "passes over the training windows"})
    max_steps: int = field(default=0, metadata={
        "help": "stop after this many optimizer steps if the epochs would take more (0: the epochs decide)"})
    learning_rate: float = field(default=7e-3, metadata={"help": "Adam learning rate (constant, as in the seed)"})
    max_grad_norm: float = field(default=0.0, metadata={"help": "clip the gradient norm to this (0: no clipping)"})
    eval_every: int = field(default=0, metadata={"help": "validation MSE every N steps (0: only at the end)"})
    save_every: int = field(default=200, metadata={"help": "checkpoint every N steps (0: only at the time limit)"})
    time_limit: float | None = field(default=None, metadata={"help": "stop after this many seconds, checkpoint"})
    skip_nonfinite: bool = field(default=False, metadata={
        "help": "skip an optimizer step whose training loss is NaN or infinite (counted in metrics.json's "
                "skipped_steps) instead of stopping the run with an error"})
    output_dir: str = field(default="outputs/vqlnmlp", metadata={"help": "where checkpoints, the model and metrics go"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in output_dir"})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "train into an output_dir that holds an earlier run: its files (as listed in its metrics.json) and "
                "checkpoints are deleted first; other files are left alone"})
    seed: int = field(default=0, metadata={"help": "seed for initialisation (codebook included) and data order"})
    num_threads: int | None = field(default=None, metadata={"help": "CPU threads per process (1 suits tiny models)"})


def build_config(args: TimeSeriesTrainArgs, split: SeriesSplit, channels: int) -> VQLNMLPConfig:
    if args.model not in TIME_SERIES_MEMBERS:
        raise ValueError(f"unknown time-series model {args.model!r}; choose one of {sorted(TIME_SERIES_MEMBERS)}")
    config_class = TIME_SERIES_MEMBERS[args.model].config_class
    overrides = parse_overrides(args.config_overrides)
    unknown = sorted(set(overrides) - set(config_class().to_dict()))
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} key(s) in --config_overrides: {unknown}")
    values = dict(context_length=args.context_length, prediction_length=args.prediction_length,
                  num_input_channels=channels, scaling="stored", scaling_loc=split.loc, scaling_scale=split.scale,
                  d_model=args.d_model, codebook_size=args.codebook_size, num_heads=args.num_heads,
                  position_code=args.position_code, trainable_codebook=args.trainable_codebook,
                  use_attention=args.use_attention)
    return config_class(**{**values, **overrides})


def train_timeseries(args: TimeSeriesTrainArgs, progress: bool = True,
                     on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train on the split, evaluate, save a Hub-ready folder; returns the metrics also written to metrics.json.
    The steps run in the workbench's training loop (training.training_loop): checkpoints every `save_every` steps
    and at the time limit, which `resume=True` continues exactly, and the guard against non-finite losses."""
    output_dir = Path(args.output_dir)
    if args.resume and args.overwrite_output_dir:
        raise ValueError("--resume continues the run in output_dir and --overwrite_output_dir deletes it; pass one")
    if args.max_steps < 0:
        raise ValueError(f"--max_steps must be 0 (the epochs decide) or positive, got {args.max_steps}")
    series, columns = load_series(args.csv_file, args.column, args.fill)
    split = split_series(series, args.context_length, args.split, args.validation_fraction)
    accelerator = Accelerator(dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True,
                                                                        data_seed=args.seed))
    prepare_output_dir(args, accelerator)
    set_seed(args.seed)
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    config = build_config(args, split, series.shape[1])
    model = TIME_SERIES_MEMBERS[args.model].prediction_class(config)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.learning_rate)
    loader = DataLoader(TensorDataset(split.train.inputs, split.train.targets), batch_size=args.batch_size,
                        shuffle=True)
    model_config = comparable_config(model)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    max_steps = args.num_epochs * len(loader)
    if args.max_steps:
        max_steps = min(max_steps, args.max_steps)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    accelerator.print(f"{args.model} ({config.num_heads} head(s), position code {config.position_code}"
                      f"{', attention' if config.use_attention else ''}): {trainable:,} trained parameters | "
                      f"{len(split.train)} training and {len(split.validation)} validation windows of "
                      f"{args.context_length} ({args.split} split) | {max_steps} steps")
    state = dict(step=0, batches=0, train_seconds=0.0, train_loss=[], eval=[], args=asdict(args),
                 num_processes=accelerator.num_processes, config=model_config)
    if args.resume:
        state = resume_state(args, accelerator, model_config)
        accelerator.print(f"resumed from step {state['step']} of {max_steps}")

    def evaluate():
        return one_step_mse(model_forecaster(accelerator.unwrap_model(model).eval()), split.validation,
                            split.loc, split.scale)

    def periodic_evaluation():
        result = evaluate()
        return result, f"validation MSE {result['mse_standardised']:.5f} (standardised)"

    def loss_of(batch):
        inputs, targets = batch
        return model(**masked(inputs), future_values=targets.nan_to_num(),
                     future_observed_mask=torch.isfinite(targets)).loss

    training_loop(accelerator, model, optimizer, loader, state, loss_of, max_steps=max_steps, output_dir=output_dir,
                  max_grad_norm=args.max_grad_norm, skip_nonfinite=args.skip_nonfinite, eval_every=args.eval_every,
                  evaluate=periodic_evaluation, save_every=args.save_every, time_limit=args.time_limit,
                  on_step=on_step, progress=progress)

    unwrapped = accelerator.unwrap_model(model).eval()
    final = evaluate()
    metrics = dict(model=args.model, columns=columns, trained_parameters=trainable, steps=state["step"],
                   max_steps=max_steps, train_seconds=round(state["train_seconds"], 2), split=args.split,
                   train_windows=len(split.train), validation_windows=len(split.validation), final_eval=final,
                   eval=state["eval"], train_loss=state["train_loss"], args=asdict(args),
                   num_processes=accelerator.num_processes, skipped_steps=state.get("skipped_steps", 0))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        before = file_stamps(output_dir)
        unwrapped.save_pretrained(output_dir)
        (output_dir / "README.md").write_text(model_card(unwrapped.config, metrics))
        # What --overwrite_output_dir may later delete: the files this run wrote, as attnlab train lists them.
        after = file_stamps(output_dir)
        metrics["files"] = sorted({name for name, stamp in after.items() if before.get(name) != stamp} | {METRICS_FILE})
        (output_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
        if state["step"] == max_steps and last_checkpoint(output_dir) is not None:
            # Complete: the checkpoint's pickles (optimizer, RNG states) go, leaving a folder ready for the Hub.
            shutil.rmtree(last_checkpoint(output_dir), ignore_errors=True)
    accelerator.wait_for_everyone()
    return metrics


def model_card(config: VQLNMLPConfig, metrics: dict) -> str:
    final = metrics["final_eval"]
    return f"""---
library_name: transformers
tags: [attnlab, vqlnmlp, time-series-forecasting, custom_code]
---

# vqlnmlp

An attnlab `vqlnmlp` forecaster (seed 004): {config.num_heads} codebook head(s) of {config.codebook_size} codes,
width {config.d_model}, position code `{config.position_code}`{", causal attention over time" if config.use_attention else ""}; it reads
windows of {config.context_length} values of {config.num_input_channels} channel(s) ({", ".join(metrics["columns"])}).
The modeling code ships in this folder, so it loads without attnlab (transformers >= 5.23, < 6):

```python
from transformers import AutoModelForTimeSeriesPrediction

model = AutoModelForTimeSeriesPrediction.from_pretrained("path-or-repo", trust_remote_code=True)
forecast = model.generate(past_values, prediction_length=24).sequences  # [batch, 1, 24, channels]
```

Trained with `attnlab train` for {metrics["steps"]} steps on {metrics["train_windows"]} windows ({metrics["split"]} split);
{metrics["trained_parameters"]:,} trained parameters. Validation next-step MSE: {final["mse_standardised"]:.5f}
(standardised with the training split's statistics), {final["mse"]:.1f} in the data's units.
"""


# ---------------------------------------------------------------------------------------------------------------
# Evaluation and forecasts of a saved folder


def load_forecaster_folder(folder: str | Path) -> VQLNMLPForPrediction:
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} has no config.json; pass a folder saved by attnlab train --model vqlnmlp")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type not in TIME_SERIES_MEMBERS:
        raise ValueError(f"{folder} holds a {model_type!r} model, not a time-series member")
    return TIME_SERIES_MEMBERS[model_type].prediction_class.from_pretrained(folder).eval()


def scale_warning(series: np.ndarray, config: VQLNMLPConfig, columns: list[str]) -> str | None:
    """A warning naming the numbers when the data lies far outside the training statistics stored in the config
    (a mean more than 10 training stds away, or a std 10 times smaller or larger): the model has never seen such
    values, and its forecasts mean little."""
    if config.scaling != "stored":
        return None
    problems = []
    for channel, name in enumerate(columns):
        mean, std = np.nanmean(series[:, channel]), np.nanstd(series[:, channel])
        loc, scale = config.scaling_loc[channel], config.scaling_scale[channel]
        if abs(mean - loc) > 10 * scale or not 0.1 <= std / scale <= 10:
            problems.append(f"{name!r} has mean {mean:.4g} and std {std:.4g}; the model was trained on mean {loc:.4g} "
                            f"and std {scale:.4g}")
    if not problems:
        return None
    return "the data is far outside the training statistics: " + "; ".join(problems) + " (forecasts will be poor)"


def training_args_of(folder: str | Path) -> dict:
    """The data options the folder was trained with (defaults for eval and forecast), if it has metrics.json."""
    metrics = Path(folder) / METRICS_FILE
    return json.loads(metrics.read_text()).get("args", {}) if metrics.is_file() else {}


def evaluate_folder(folder: str, csv_file: str | None = None, column: list[str] | None = None,
                    split: str | None = None, validation_fraction: float | None = None, horizon: int = 1,
                    season: int | None = None) -> dict:
    """Validation one-step MSE and the rollout over the held-out tail, for the model and the cheap baselines;
    with the tail split also the field's metrics (forecasting.evaluate: MASE, sMAPE, MAE, MSE per horizon 1..H)
    for the model, persistence, seasonal naive and the AIC-order autoregression."""
    from . import forecasting

    model = load_forecaster_folder(folder)
    trained = training_args_of(folder)
    csv_file = csv_file if csv_file is not None else trained.get("csv_file")
    column = column if column is not None else trained.get("column")
    split_mode = split or trained.get("split", "tail")
    fraction = validation_fraction or trained.get("validation_fraction", 0.2)
    loaded = read_series(csv_file, column)
    series, columns = loaded.values, loaded.columns
    season = season or (forecasting.season_of(loaded.frequency) if loaded.frequency else 1)
    if series.shape[1] != model.config.num_input_channels:
        raise ValueError(f"{folder} models {model.config.num_input_channels} channel(s); {len(columns)} column(s) "
                         "were given")
    warning = scale_warning(series, model.config, columns)
    if warning:
        warnings.warn(warning, stacklevel=2)
    data = split_series(series, model.config.context_length, split_mode, fraction)
    # The model's own (stored) standardisation scores everyone, so the numbers compare with training's.
    loc, scale = model.config.scaling_loc, model.config.scaling_scale
    forecasters = {"model": model_forecaster(model), "persistence": persistence_forecaster,
                   "mean": mean_forecaster(data.loc), "linear_ar": fit_linear_ar(data.train, data.loc, data.scale)}
    results = {}
    for name, forecaster in forecasters.items():
        results[name] = one_step_mse(forecaster, data.validation, loc, scale)
        if data.tail_start is not None:
            rollout = rollout_mse(forecaster, series, data.tail_start, model.config.context_length)
            results[name]["rollout_mse"] = rollout["rollout_mse"]
            results[name]["rollout_steps"] = rollout["steps"]
    field_metrics = {}
    if data.tail_start is not None:
        train = series[:data.tail_start]
        context = min(model.config.context_length, data.tail_start - horizon + 1)
        context = max(context, min(season, data.tail_start - horizon + 1))
        tail_forecasters = {"model": VQLNMLPTailForecaster(model), "persistence": forecasting.Persistence(),
                            "seasonal_naive": forecasting.SeasonalNaive(season),
                            "linear_ar": forecasting.LinearAR(forecasting.ar_max_order(season, context)).fit(train)}
        for name, forecaster in tail_forecasters.items():
            field_metrics[name] = forecasting.evaluate(forecaster, series, data.tail_start, horizon, season, context)
        reference = field_metrics["seasonal_naive"]["mase"]
        for metrics in field_metrics.values():
            metrics["mase_ratio_to_seasonal_naive"] = metrics["mase"] / reference
    return dict(folder=str(folder), columns=columns, split=split_mode, validation_windows=len(data.validation),
                results=results, warning=warning, horizon=horizon, season=season, field_metrics=field_metrics)


def forecast_to_files(folder: str, output: str, csv_file: str | None = None, column: list[str] | None = None,
                      horizon: int | None = None, start: int | None = None, rollout: str = "sliding") -> dict:
    """Forecast `horizon` steps from the `context_length` values before `start` (default: the last `horizon` points
    are held out as the truth) and write OUTPUT.csv and OUTPUT.png (history, truth, forecast)."""
    model = load_forecaster_folder(folder)
    trained = training_args_of(folder)
    series, columns = load_series(csv_file if csv_file is not None else trained.get("csv_file"),
                                  column if column is not None else trained.get("column"))
    warning = scale_warning(series, model.config, columns)
    if warning:
        warnings.warn(warning, stacklevel=2)
    context_length = model.config.context_length
    horizon = model.config.prediction_length if horizon is None else horizon
    if horizon <= 0:
        raise ValueError(f"--horizon must be positive, got {horizon}")
    if start is None:
        start = len(series) - horizon
        if start < context_length:
            raise ValueError(f"a series of {len(series)} points is shorter than context_length + horizon = "
                             f"{context_length} + {horizon}; forecast fewer steps, or pass --start {len(series)} to "
                             "forecast past its end")
    if not context_length <= start <= len(series):
        raise ValueError(f"--start {start} must leave context_length={context_length} values before it and lie "
                         f"within the series ({len(series)} points)")
    context = torch.tensor(series[start - context_length:start], dtype=torch.float32).unsqueeze(0)
    forecast = model.generate(**masked(context), prediction_length=horizon,
                              rollout=rollout).sequences[0, 0].double().numpy()
    truth = series[start:start + horizon]
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", *[f"forecast_{name}" for name in columns], *[f"truth_{name}" for name in columns]])
        for step in range(horizon):
            known = step < len(truth)
            writer.writerow([start + step, *forecast[step].tolist(), *(truth[step].tolist() if known else [""] * len(columns))])
    plot_forecast(output.with_suffix(".png"), series, start, forecast, columns, context_length)
    result = dict(csv=str(output.with_suffix(".csv")), png=str(output.with_suffix(".png")), start=start,
                  horizon=horizon, truth_steps=len(truth), warning=warning)
    if len(truth):
        result["mse"] = float(np.nanmean((forecast[:len(truth)] - truth) ** 2))
    return result


def plot_forecast(path: Path, series: np.ndarray, start: int, forecast: np.ndarray, columns: list[str],
                  context_length: int):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("the forecast plot needs matplotlib: pip install 'attnlab[plot]'") from None
    figure, axes = plt.subplots(len(columns), 1, figsize=(9, 3.2 * len(columns)), squeeze=False)
    for channel, (axis, name) in enumerate(zip(axes[:, 0], columns)):
        axis.plot(np.arange(start), series[:start, channel], color="0.45", lw=1, label="history")
        axis.axvspan(start - context_length, start, color="0.9", label="context")
        if start < len(series):
            axis.plot(np.arange(start, len(series)), series[start:, channel], color="black", lw=1, label="truth")
        axis.plot(np.arange(start, start + len(forecast)), forecast[:, channel], color="tab:red", lw=1.5,
                  label="forecast")
        axis.set_ylabel(name)
        axis.legend(loc="best", fontsize=8)
    axes[-1, 0].set_xlabel("time step")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ---------------------------------------------------------------------------------------------------------------
# Command line: `attnlab train --model vqlnmlp ...` and `attnlab eval <vqlnmlp folder>` come here; `attnlab
# forecast` is a subcommand of the main parser.


def is_time_series_command(argv: list[str]) -> bool:
    """Whether the main CLI should hand these arguments to this module."""
    if not argv:
        return False
    if argv[0] == "train":
        for index, item in enumerate(argv):
            if item == "--model" and index + 1 < len(argv):
                return argv[index + 1] in TIME_SERIES_MEMBERS
            if item.startswith("--model="):
                return item.partition("=")[2] in TIME_SERIES_MEMBERS
        return False
    if argv[0] == "eval" and len(argv) > 1:
        config = Path(argv[1]) / "config.json"
        try:
            return json.loads(config.read_text()).get("model_type") in TIME_SERIES_MEMBERS
        except (OSError, ValueError):
            return False
    return False


def train_command(args):
    train_args = TimeSeriesTrainArgs(**{name: getattr(args, name) for name in TimeSeriesTrainArgs.__dataclass_fields__})
    metrics = train_timeseries(train_args)
    final = metrics["final_eval"]
    print(f"saved the model and metrics.json to {Path(train_args.output_dir).resolve()}")
    print(f"validation next-step MSE {final['mse_standardised']:.5f} (standardised) | {final['mse']:.2f} (data units)")


def eval_command(args):
    transformers_logging.disable_progress_bar()  # the loading bar would bury the results
    report = evaluate_folder(args.folder, args.csv_file, args.column, args.split, args.validation_fraction,
                             args.horizon, args.season)
    print(f"{report['split']} split, {report['validation_windows']} validation windows ({', '.join(report['columns'])})")
    for name, result in report["results"].items():
        rollout = (f" | rollout MSE over the tail ({result['rollout_steps']} steps) {result['rollout_mse']:.1f}"
                   if "rollout_mse" in result else "")
        print(f"{name:>12}: next-step MSE {result['mse_standardised']:.5f} standardised, {result['mse']:.1f} in "
              f"data units{rollout}")
    if report["field_metrics"]:
        print(f"held-out tail, horizons 1..{report['horizon']}, season {report['season']} (each tail point once per "
              "horizon):")
        for name, metrics in report["field_metrics"].items():
            print(f"{name:>14}: MASE {metrics['mase']:.3f} ({metrics['mase_ratio_to_seasonal_naive']:.3f} x seasonal "
                  f"naive) | sMAPE {metrics['smape']:.2f} | MAE {metrics['mae']:.4g} | MSE {metrics['mse']:.4g}")
        missing = next(iter(report["field_metrics"].values()))["missing_tail_points"]
        if missing:
            print(f"{missing} missing value(s) in the tail are excluded from the scores")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(report, indent=1))


def forecast_command(args):
    transformers_logging.disable_progress_bar()
    result = forecast_to_files(args.folder, args.output, args.csv_file, args.column, args.horizon, args.start,
                               args.rollout)
    truth = f"; MSE against the {result['truth_steps']} known values {result['mse']:.1f}" if "mse" in result else ""
    print(f"forecast of {result['horizon']} steps from index {result['start']}: {result['csv']} and {result['png']}"
          f"{truth}")


def add_data_arguments(parser):
    parser.add_argument("--csv_file", default=None, help="CSV file (default: the one the model was trained on)")
    parser.add_argument("--column", nargs="+", default=None, help="column(s) (default: the training columns)")


def add_forecast_command(commands):
    forecast = commands.add_parser("forecast", help="forecast with a saved vqlnmlp folder: CSV and PNG")
    forecast.add_argument("folder", help="a folder saved by attnlab train --model vqlnmlp")
    add_data_arguments(forecast)
    forecast.add_argument("--horizon", type=int, default=None, help="steps to forecast (default: prediction_length)")
    forecast.add_argument("--start", type=int, default=None,
                          help="index of the first forecast step (default: the last HORIZON points are the truth; the "
                               "series length forecasts past its end)")
    forecast.add_argument("--rollout", choices=["sliding", "absolute"], default="sliding",
                          help="sliding: the trained window slides (the seed's protocol); absolute: positions grow "
                               "past it, with the KV cache when the model has attention")
    forecast.add_argument("--output", default="forecast", help="output path without suffix: writes .csv and .png")
    forecast.set_defaults(func=forecast_command)


def build_parser(prog: str = "attnlab") -> HfArgumentParser:
    parser = HfArgumentParser([], prog=prog, description="attnlab time-series members")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("train", help="train a time-series member",
                        dataclass_types=[TimeSeriesTrainArgs]).set_defaults(func=train_command)
    evaluate = commands.add_parser("eval", help="next-step and rollout MSE of a saved vqlnmlp folder, with baselines")
    evaluate.add_argument("folder", help="a folder saved by attnlab train --model vqlnmlp")
    add_data_arguments(evaluate)
    evaluate.add_argument("--split", choices=["tail", "random"], default=None, help="default: the training split")
    evaluate.add_argument("--validation_fraction", type=float, default=None, help="default: the training one")
    evaluate.add_argument("--output_json", default=None, help="also write the results to this JSON file")
    evaluate.add_argument("--horizon", type=int, default=1, help="score horizons 1..H on the held-out tail")
    evaluate.add_argument("--season", type=int, default=None,
                          help="seasonal period for seasonal naive and MASE (default: from the time index, else 1)")
    evaluate.set_defaults(func=eval_command)
    add_forecast_command(commands)
    return parser


def main(argv: list[str]):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as error:  # bad input: one line naming the problem, not a traceback
        parser.exit(2, f"attnlab {args.command}: error: {error}\n")
