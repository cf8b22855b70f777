"""`attnlab bench timeseries --quick` (the CI smoke run) and the packaged forecasters it adds."""

import json
import warnings

import numpy as np
import pytest

from attnlab.workbench import bench, bench_timeseries
from attnlab.workbench.timeseries import embedded_csv, read_series


def test_quick_benchmark_writes_every_forecaster_and_its_ratio(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels' convergence notes on 1-epoch toy fits
        bench.main(["timeseries", "--quick", "--output-dir", str(tmp_path)])
    report = json.loads((tmp_path / "timeseries-quick.json").read_text())
    expected = {"persistence", "seasonal_naive", "linear_ar", "vqlnmlp", "patchtst"}
    assert expected <= set(report["summary"])
    assert report["summary"]["seasonal_naive"]["geometric_mean_mase_ratio"] == pytest.approx(1)
    for run in report["series"]:
        tail = run["points"] - run["tail_start"]
        for name in expected:
            result = run["results"][name]
            assert [m["points"] for m in result["per_horizon"]] == [tail] * run["horizon"]
            assert result["mase_ratio"] == pytest.approx(result["mase"] / run["results"]["seasonal_naive"]["mase"])
    assert "wql" in report["series"][0]["results"]["linear_ar"]
    text = (tmp_path / "timeseries-quick.md").read_text()
    assert "Smoke test" in text and "geo-mean MASE ratio" in text
    assert (tmp_path / "timeseries-quick.png").stat().st_size > 1000


def test_ets_forecasts_from_every_origin_match_a_fit_forecast():
    pytest.importorskip("statsmodels")
    values = read_series(str(embedded_csv("elec_equip_monthly.csv"))).values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ets = bench_timeseries.StatsmodelsETS(12).fit(values[:200])
    from_filter = ets.predict_series(values, np.array([200]), 5)[0, :, 0]
    np.testing.assert_allclose(from_filter, ets.result.forecast(5), rtol=1e-8)


def test_patchtst_trains_on_observed_values_only():
    train = np.sin(np.arange(120) / 3)[:, None]
    train[50:54] = np.nan
    model = bench_timeseries.PatchTSTForecaster(context=16, horizon=4, steps=3, batch_size=8, learning_rate=1e-3,
                                                seed=0).fit(train)
    contexts = train[np.arange(40, 56)][None]  # holds the gap
    assert np.isfinite(model.predict(contexts, 4)).all()


def test_vqlnmlp_variants_reach_the_model_and_bad_ones_are_refused(tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bench.main(["timeseries", "--quick", "--series", "nile", "--no-ets", "--output-dir", str(tmp_path),
                    "--vq-variants", "base", "heads:num_heads=4,position_code=rope"])
    run = json.loads((tmp_path / "timeseries-quick.json").read_text())["series"][0]
    assert {"base", "heads"} <= set(run["results"]) and "vqlnmlp" not in run["results"]
    # 4 heads of 4 features: the LayerNorm is per head, so the multi-head model has fewer parameters (the seed's count).
    assert run["parameters"]["heads_total"] < run["parameters"]["base_total"]
    assert run["results"]["heads"]["mase"] != run["results"]["base"]["mase"]
    assert bench_timeseries.vq_variant("r:position_code=rope") == ("r", {"position_code": "rope"})
    with pytest.raises(SystemExit):
        bench.main(["timeseries", "--quick", "--vq-variants", "bad:d_model=4"])
    assert "unknown option(s) ['d_model']" in capsys.readouterr().err
    for option in ("--max-steps", "--max-ar-order"):
        with pytest.raises(SystemExit):
            bench.main(["timeseries", "--quick", option, "-1"])
        assert f"{option} must be 0 (the default rule) or positive, got -1" in capsys.readouterr().err
