"""The forecast metrics, baselines and tail protocol of attnlab.workbench.forecasting, against hand computations."""

import math

import numpy as np
import pytest

from attnlab.workbench.forecasting import (
    LinearAR,
    ar_max_order,
    Persistence,
    SeasonalNaive,
    evaluate,
    forward_fill,
    geometric_mean,
    point_metrics,
    score_forecasts,
    season_of,
    seasonal_scale,
    smape_terms,
    tail_origins,
    weighted_quantile_loss,
)


def column(*values):
    return np.array(values, dtype=np.float64)[:, None]


def test_point_metrics_by_hand():
    truth, forecast = column(1, 2, 4), column(2, 2, 1)
    # errors 1, 0, -3; sMAPE terms 200*1/3, 0, 200*3/5; MASE scale 2 -> MAE 4/3 / 2
    metrics = point_metrics(truth, forecast, np.array([2.0]))
    assert metrics["mae"] == pytest.approx(4 / 3)
    assert metrics["mse"] == pytest.approx(10 / 3)
    assert metrics["smape"] == pytest.approx((200 / 3 + 120) / 3)
    assert metrics["mase"] == pytest.approx(2 / 3)
    assert metrics["points"] == 3
    assert smape_terms(np.zeros(1), np.zeros(1))[0] == 0  # 0 / 0 counts 0


def test_missing_truth_is_left_out_of_every_metric():
    truth, forecast = column(1, np.nan, 4), column(2, 1000, 1)
    metrics = point_metrics(truth, forecast, np.array([1.0]))
    assert metrics["mae"] == pytest.approx(2) and metrics["mse"] == pytest.approx(5) and metrics["points"] == 2


def test_seasonal_scale_by_hand():
    train = column(1, 5, 2, 6, 4)
    # lag 2: |2-1|, |6-5|, |4-2| -> 4/3; a season not shorter than the training part falls back to lag 1
    assert seasonal_scale(train, 2)[0] == pytest.approx(4 / 3)
    assert seasonal_scale(train, 5)[0] == pytest.approx((4 + 3 + 4 + 2) / 4)
    with pytest.raises(ValueError, match="MASE is undefined"):
        seasonal_scale(column(3, 3, 3), 1)


def test_weighted_quantile_loss_by_hand():
    truth = column(2, 4)
    quantiles = np.array([[[1.0, 3.0]], [[4.0, 5.0]]])  # [2 points, 1 channel, 2 levels]
    # q=0.1: pinball(2,1)=0.1, pinball(4,4)=0 -> 2*0.1; q=0.9: pinball(2,3)=0.1, pinball(4,5)=0.1 -> 2*0.2
    expected = (0.2 + 0.4) / 2 / 6
    assert weighted_quantile_loss(truth, quantiles, levels=(0.1, 0.9)) == pytest.approx(expected)


def test_geometric_mean():
    assert geometric_mean([0.5, 2.0, 1.0]) == pytest.approx(1.0)
    assert math.isnan(geometric_mean([1.0, 0.0]))


def test_seasonal_naive_takes_the_value_one_season_back():
    contexts = np.arange(1.0, 9.0).reshape(1, 8, 1)  # 1..8
    forecast = SeasonalNaive(3).predict(contexts, 5)[0, :, 0]
    np.testing.assert_array_equal(forecast, [6, 7, 8, 6, 7])
    np.testing.assert_array_equal(SeasonalNaive(1).predict(contexts, 2)[0, :, 0], [8, 8])
    # a missing value one season back is taken a season further back
    holed = contexts.copy()
    holed[0, 5] = np.nan
    np.testing.assert_array_equal(SeasonalNaive(3).predict(holed, 2)[0, :, 0], [3, 7])
    with pytest.raises(ValueError, match="at least 3 values"):
        SeasonalNaive(3).predict(contexts[:, :2], 1)


def test_season_from_the_frequency():
    assert season_of("M") == 12 and season_of("Q") == 4 and season_of("Y") == 1 and season_of("W") == 52
    assert season_of("h") == 24 and season_of("2min") == 720 and season_of("D") == 7
    with pytest.raises(ValueError, match="unknown frequency"):
        season_of("fortnight")


def test_persistence_holds_the_last_observed_value():
    contexts = column(1, 2, np.nan)[None]
    np.testing.assert_array_equal(Persistence().predict(contexts, 2)[0, :, 0], [2, 2])
    np.testing.assert_array_equal(forward_fill(column(np.nan, 1, np.nan, 3))[:, 0], [np.nan, 1, 1, 3])


def test_each_tail_point_is_counted_once_per_horizon():
    series = column(*range(10))
    windows = tail_origins(series, tail_start=6, horizon=3, context=2)
    np.testing.assert_array_equal(windows.origins, [4, 5, 6, 7, 8, 9])
    forecast = Persistence().predict(windows.contexts, 3)
    result = score_forecasts(series, 6, windows.origins, forecast, season=1)
    assert [m["points"] for m in result["per_horizon"]] == [4, 4, 4]  # tail 6..9 at every horizon
    # persistence on a line: error h at horizon h; MASE scale (lag-1 MAE of 0..5) is 1
    assert [m["mae"] for m in result["per_horizon"]] == [1, 2, 3]
    assert result["mase"] == pytest.approx(2)
    with pytest.raises(ValueError, match="largest context that fits: 4"):
        tail_origins(series, tail_start=6, horizon=3, context=5)


def test_a_gap_in_the_tail_is_excluded_and_counted():
    series = column(*range(10))
    series[8] = np.nan
    result = evaluate(Persistence(), series, tail_start=6, horizon=1, season=1, context=2)
    assert result["missing_tail_points"] == 1 and result["points_per_horizon"] == 3
    # forecasts of 6, 7, 9 from 5, 6, 7 (7 held over the gap): errors 1, 1, 2
    assert result["mae"] == pytest.approx(4 / 3)


def test_linear_ar_recovers_an_ar1_and_picks_a_low_order():
    rng = np.random.default_rng(0)
    y = np.zeros(600)
    for t in range(1, 600):
        y[t] = 0.8 * y[t - 1] + rng.normal()
    model = LinearAR(max_order=6).fit(y[:, None])
    assert model.order[0] <= 2 and model.coefficients[0][0] == pytest.approx(0.8, abs=0.06)
    forecast = model.predict(np.array([[[0.0], [10.0]]]), 2)[0, :, 0]
    assert forecast[1] == pytest.approx(forecast[0] * model.coefficients[0][0] + model.coefficients[0][-1], rel=0.2)
    quantiles = model.quantiles(np.array([[[0.0], [10.0]]]), 3)
    widths = quantiles[0, :, 0, -1] - quantiles[0, :, 0, 0]
    assert np.all(np.diff(widths) > 0)  # uncertainty grows with the horizon


def test_the_autoregression_may_reach_one_season_back_within_the_context():
    assert ar_max_order(1, 96) == 12 and ar_max_order(12, 96) == 13 and ar_max_order(24, 96) == 25
    assert ar_max_order(52, 40) == 40 and ar_max_order(24, 0) == 1  # never beyond the context it is given
    assert ar_max_order(24, 96, highest=6) == 6 and ar_max_order(1, 4, highest=6) == 4  # --max-ar-order, capped too
    # A daily cycle of 24 steps plus noise: only an order that reaches lag 24 sees it, and AIC then takes it.
    rng = np.random.default_rng(0)
    cycle = rng.normal(size=24)
    y = np.tile(cycle, 40) + 0.05 * rng.normal(size=960)
    model = LinearAR(ar_max_order(24, 96)).fit(y[:, None])
    assert model.order[0] >= 24
    forecast = model.predict(y[None, -96:, None], 24)[0, :, 0]
    assert np.abs(forecast - cycle).mean() < 0.1
