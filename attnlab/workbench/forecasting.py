"""Forecast evaluation as the field reports it, and the classical baselines every time-series member is judged by.

Protocol. A series [T, C] (NaN where a value is missing) is split at `tail_start`: forecasters are fitted on
series[:tail_start] and scored on the held-out tail. For every forecast origin o (the index of the first unknown
value) from tail_start - H + 1 to T - 1, each forecaster reads the `context` values before o and forecasts H steps;
at horizon h the forecast of series[o + h - 1] is scored only where that index lies in the tail. So each tail point
is counted exactly once at each horizon 1..H, whatever H is. A missing tail value is excluded from every score and
counted in the report.

Metrics (per horizon, then the mean over horizons):
  MAE, MSE in the data's units; sMAPE = 200 * mean |y - f| / (|y| + |f|) (a 0 / 0 term counts 0);
  MASE = MAE / the in-sample seasonal naive MAE of the training part, mean |y_t - y_{t-m}| (m = 1 where the
  training part is not longer than the season); WQL (forecasters giving quantiles) = the mean over quantile levels
  q of 2 * sum pinball_q(y, f_q) / sum |y|. Across series the field reports the geometric mean of the ratio of each
  forecaster's MASE to Seasonal Naive's (GIFT-Eval, Chronos, fev); `geometric_mean` does that.

Forecasters take contexts [N, L, C] (NaN where missing) and return [N, H, C]; those with `quantiles` also return
[N, H, C, Q] for the levels they are given. Their input treatment of gaps: the last observed value stands in for a
missing one (the classical baselines); vqlnmlp gets past_observed_mask (see its docstring).
"""

import math
from dataclasses import dataclass

import numpy as np

QUANTILE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

# Seasonal period per pandas-style frequency: the period of the usual cycle (a day of hours, a week of days, a
# year of weeks, months and quarters); yearly data has none (1), the convention of the M4 / GIFT-Eval scorers.
SEASONS = {"min": 60, "h": 24, "D": 7, "W": 52, "M": 12, "Q": 4, "Y": 1}
FREQUENCY_SECONDS = {"min": 60, "h": 3600, "D": 86400, "W": 7 * 86400}


def season_of(frequency: str) -> int:
    """The seasonal period of a frequency ("h", "D", "W", "M", "Q", "Y", or "Nmin" / "Nh" for N-minute or N-hour
    steps: the steps in a day)."""
    digits = "".join(ch for ch in frequency if ch.isdigit())
    unit = frequency[len(digits):]
    if unit not in SEASONS:
        raise ValueError(f"unknown frequency {frequency!r}; use one of {sorted(SEASONS)} (optionally with a multiple, "
                         "e.g. 2min), or give the season with --season")
    multiple = int(digits) if digits else 1
    if unit in ("min", "h"):
        return max(1, 86400 // (multiple * FREQUENCY_SECONDS[unit]))
    if multiple != 1:
        raise ValueError(f"frequency {frequency!r}: multiples are only understood for min and h; give --season")
    return SEASONS[unit]


def forward_fill(values: np.ndarray) -> np.ndarray:
    """[..., T, C]: each NaN takes the last finite value before it along T; leading NaNs stay NaN."""
    values = np.array(values, dtype=np.float64)
    shape = values.shape
    flat = np.moveaxis(values.reshape(-1, shape[-2], shape[-1]), 1, 2).reshape(-1, shape[-2])  # [N*C, T]
    index = np.where(np.isfinite(flat), np.arange(flat.shape[1]), -1)
    index = np.maximum.accumulate(index, axis=1)
    filled = np.take_along_axis(flat, np.maximum(index, 0), axis=1)
    filled[index < 0] = np.nan
    return np.moveaxis(filled.reshape(-1, shape[-1], shape[-2]), 1, 2).reshape(shape)


# ---------------------------------------------------------------------------------------------------------------
# Metrics


def seasonal_scale(train: np.ndarray, season: int) -> np.ndarray:
    """MASE's denominator per channel: the in-sample seasonal naive MAE, mean |y_t - y_{t-m}| over pairs with both
    values observed (m = 1 when the training part is not longer than the season)."""
    season = season if len(train) > season else 1
    differences = np.abs(train[season:] - train[:-season])
    scale = np.nanmean(differences, axis=0)
    if not np.all(np.isfinite(scale)) or np.any(scale == 0):
        raise ValueError(f"the training part has no non-zero seasonal difference at lag {season} in some channel "
                         "(constant or too sparse), so MASE is undefined")
    return scale


def smape_terms(truth: np.ndarray, forecast: np.ndarray) -> np.ndarray:
    denominator = np.abs(truth) + np.abs(forecast)
    with np.errstate(invalid="ignore", divide="ignore"):
        terms = 200 * np.abs(truth - forecast) / denominator
    return np.where(denominator == 0, 0.0, terms)


def point_metrics(truth: np.ndarray, forecast: np.ndarray, scale: np.ndarray) -> dict:
    """truth, forecast [..., C] (truth NaN where missing; those points are left out); scale [C]."""
    observed = np.isfinite(truth)
    if not observed.any():
        return dict(mae=math.nan, mse=math.nan, smape=math.nan, mase=math.nan, points=0)
    error = np.where(observed, forecast - truth, np.nan)
    flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731
    mae_channel = np.nanmean(flat(np.abs(error)), axis=0)
    return dict(mae=float(np.nanmean(np.abs(error))), mse=float(np.nanmean(error ** 2)),
                smape=float(np.mean(smape_terms(truth, forecast)[observed])),
                mase=float(np.nanmean(mae_channel / scale)), points=int(observed.sum()))


def weighted_quantile_loss(truth: np.ndarray, quantiles: np.ndarray, levels=QUANTILE_LEVELS) -> float:
    """truth [..., C], quantiles [..., C, Q]: mean over q of 2 * sum pinball_q / sum |y| (observed points only)."""
    observed = np.isfinite(truth)
    y = truth[observed]
    losses = []
    for index, level in enumerate(levels):
        f = quantiles[..., index][observed]
        losses.append(2 * np.sum(np.maximum(level * (y - f), (level - 1) * (y - f))))
    total = np.sum(np.abs(y))
    return float(np.mean(losses) / total) if total > 0 else math.nan


def geometric_mean(values) -> float:
    values = np.asarray(list(values), dtype=np.float64)
    if len(values) == 0 or np.any(~np.isfinite(values)) or np.any(values <= 0):
        return math.nan
    return float(np.exp(np.mean(np.log(values))))


# ---------------------------------------------------------------------------------------------------------------
# Baselines


class Persistence:
    """The last observed value, at every horizon."""

    name = "persistence"

    def fit(self, train: np.ndarray):
        return self

    def predict(self, contexts: np.ndarray, horizon: int) -> np.ndarray:
        last = forward_fill(contexts)[:, -1:]
        return np.repeat(last, horizon, axis=1)


class SeasonalNaive:
    """The value one season before: f_{o+h-1} = y_{o-m+((h-1) mod m)}; a missing one is replaced by the same
    season further back, then by the last observed value. Season 1 is persistence."""

    name = "seasonal_naive"

    def __init__(self, season: int):
        if season < 1:
            raise ValueError(f"the season must be a positive number of steps, got {season}")
        self.season = season

    def fit(self, train: np.ndarray):
        return self

    def predict(self, contexts: np.ndarray, horizon: int) -> np.ndarray:
        season, length = self.season, contexts.shape[1]
        if length < season:
            raise ValueError(f"seasonal naive with season {season} needs a context of at least {season} values, "
                             f"got {length}")
        steps = np.arange(horizon) % season
        forecast = np.full((len(contexts), horizon, contexts.shape[2]), np.nan)
        for back in range(1, length // season + 1):  # one season back, then two, ...
            index = length - back * season + steps
            valid = index >= 0
            candidate = np.full_like(forecast, np.nan)
            candidate[:, valid] = contexts[:, index[valid]]
            forecast = np.where(np.isnan(forecast), candidate, forecast)
        fallback = Persistence().predict(contexts, horizon)
        return np.where(np.isnan(forecast), fallback, forecast)


def ar_max_order(season: int, context: int, highest: int = 0) -> int:
    """The highest AR order tried: `highest` when given, else 12, or one season and a step when that is more, so the
    autoregression can see what Seasonal Naive sees (hourly, weekly series); never more than the context the
    forecaster is given."""
    return max(1, min(highest or max(12, season + 1), context))


class LinearAR:
    """Least-squares AR(p) with intercept per channel, the order chosen on the training part by AIC among
    1..max_order; rolled out recursively for H steps. Quantiles are Gaussian with the h-step variance of the
    fitted process (sigma^2 * sum of squared psi weights)."""

    name = "linear_ar"

    def __init__(self, max_order: int = 12):
        self.max_order = max_order

    def fit(self, train: np.ndarray):
        self.coefficients, self.sigma, self.order = [], [], []
        for channel in range(train.shape[1]):
            y = train[:, channel]
            best = None
            top = max(1, min(self.max_order, len(y) // 4))
            # Every order is scored on the same targets (those after max lag) so the AICs compare.
            for order in range(1, top + 1):
                design, target = self.lag_matrix(y, order, top)
                if len(target) <= order + 1:
                    break
                solution = np.linalg.lstsq(design, target, rcond=None)[0]
                residual = target - design @ solution
                variance = float(np.mean(residual ** 2))
                aic = len(target) * math.log(max(variance, 1e-300)) + 2 * (order + 1)
                if best is None or aic < best[0]:
                    best = (aic, order, solution, math.sqrt(variance))
            if best is None:
                raise ValueError(f"the training part ({len(y)} points) is too short to fit an autoregression")
            self.order.append(best[1])
            self.coefficients.append(best[2])
            self.sigma.append(best[3])
        return self

    @staticmethod
    def lag_matrix(y: np.ndarray, order: int, skip: int) -> tuple[np.ndarray, np.ndarray]:
        rows = [np.concatenate([y[t - order:t][::-1], [1.0]]) for t in range(skip, len(y))]
        target = y[skip:]
        rows, target = np.array(rows).reshape(-1, order + 1), np.asarray(target)
        complete = np.isfinite(rows).all(1) & np.isfinite(target)
        return rows[complete], target[complete]

    def predict(self, contexts: np.ndarray, horizon: int) -> np.ndarray:
        filled = forward_fill(contexts)
        forecast = np.empty((len(contexts), horizon, contexts.shape[2]))
        for channel, (solution, order) in enumerate(zip(self.coefficients, self.order)):
            history = list(np.moveaxis(filled[:, -order:, channel], 1, 0))  # order arrays of [N]
            for step in range(horizon):
                lags = np.stack(history[::-1][:order], axis=1)  # [N, order], newest first
                value = lags @ solution[:-1] + solution[-1]
                forecast[:, step, channel] = value
                history.append(value)
        return forecast

    def quantiles(self, contexts: np.ndarray, horizon: int, levels=QUANTILE_LEVELS) -> np.ndarray:
        from statistics import NormalDist

        mean = self.predict(contexts, horizon)
        z = np.array([NormalDist().inv_cdf(level) for level in levels])
        spread = np.empty((horizon, contexts.shape[2]))
        for channel, (solution, order) in enumerate(zip(self.coefficients, self.order)):
            phi, psi = solution[:-1], [1.0]
            for step in range(1, horizon):
                psi.append(sum(phi[lag] * psi[step - 1 - lag] for lag in range(min(order, step))))
            spread[:, channel] = self.sigma[channel] * np.sqrt(np.cumsum(np.square(psi)))
        return mean[..., None] + spread[None, :, :, None] * z


# ---------------------------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class Origins:
    """The forecast origins of a tail evaluation and their contexts."""

    origins: np.ndarray   # [N] index of the first forecast value
    contexts: np.ndarray  # [N, context, C]


def tail_origins(series: np.ndarray, tail_start: int, horizon: int, context: int) -> Origins:
    first = tail_start - horizon + 1
    if first < context:
        raise ValueError(f"a context of {context} values and horizon {horizon} need a training part of at least "
                         f"{context + horizon - 1} points before the tail; it has {tail_start} (largest context "
                         f"that fits: {tail_start - horizon + 1})")
    origins = np.arange(first, len(series))
    index = origins[:, None] - context + np.arange(context)[None, :]
    return Origins(origins, series[index])


def forecast_targets(series: np.ndarray, origins: np.ndarray, tail_start: int, horizon: int) -> np.ndarray:
    """[N, H, C] truth for each origin and horizon; NaN outside the tail (not scored) and where missing."""
    index = origins[:, None] + np.arange(horizon)[None, :]
    inside = (index >= tail_start) & (index < len(series))
    truth = np.full((len(origins), horizon, series.shape[1]), np.nan)
    truth[inside] = series[index[inside]]
    return truth


def score_forecasts(series: np.ndarray, tail_start: int, origins: np.ndarray, forecast: np.ndarray, season: int,
                    quantiles: np.ndarray | None = None, levels=QUANTILE_LEVELS) -> dict:
    """Per-horizon and overall metrics of forecasts [N, H, C] from `origins` (see the module docstring)."""
    horizon = forecast.shape[1]
    truth = forecast_targets(series, origins, tail_start, horizon)
    scale = seasonal_scale(series[:tail_start], season)
    per_horizon = []
    for h in range(horizon):
        metrics = point_metrics(truth[:, h], forecast[:, h], scale)
        if quantiles is not None:
            metrics["wql"] = weighted_quantile_loss(truth[:, h], quantiles[:, h], levels)
        per_horizon.append(metrics)
    overall = {key: float(np.mean([m[key] for m in per_horizon]))
               for key in per_horizon[0] if key != "points"}
    tail = series[tail_start:]
    return dict(**overall, per_horizon=per_horizon, tail_points=int(tail.size),
                missing_tail_points=int(np.isnan(tail).sum()), points_per_horizon=per_horizon[0]["points"],
                mase_scale=scale.tolist(), season=season if tail_start > season else 1)


def evaluate(forecaster, series: np.ndarray, tail_start: int, horizon: int, season: int, context: int) -> dict:
    """Fit on series[:tail_start] (if the forecaster has `fit`) and score it on the tail."""
    windows = tail_origins(series, tail_start, horizon, context)
    forecast = np.asarray(forecaster.predict(windows.contexts, horizon), dtype=np.float64)
    quantiles = forecaster.quantiles(windows.contexts, horizon) if hasattr(forecaster, "quantiles") else None
    return score_forecasts(series, tail_start, windows.origins, forecast, season, quantiles)
