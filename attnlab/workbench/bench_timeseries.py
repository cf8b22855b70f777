"""`attnlab bench timeseries`: every forecaster on many real series, scored as the field reports it.

For each bundled series (attnlab/workbench/corpus, public domain except the seed's formaldehyde series; see
corpus/README.md) the last `--test-fraction` is held out; every forecaster is fitted or trained on the rest and scored
by forecasting.evaluate (each tail point once at every horizon 1..H, H by frequency as in M4). The summary is the
geometric mean over series of each forecaster's MASE divided by Seasonal Naive's (GIFT-Eval, Chronos, fev).

Forecasters: persistence, seasonal naive, the AIC-order autoregression (orders up to 12, or one season and a step),
statsmodels' exponential smoothing (ETS, state space, damped trend and the season when it has at most 12 steps;
skipped with a note when statsmodels is not installed), vqlnmlp trained by `attnlab train`'s own loop
(train_timeseries), and transformers' PatchTST at a size near vqlnmlp's, trained on windows of the same training
part for the same number of steps and batch size.
"""

import argparse
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import forecasting
from .timeseries import TimeSeriesTrainArgs, VQLNMLPTailForecaster, embedded_csv, read_series, train_timeseries

HORIZONS = {"Y": 6, "Q": 8, "M": 18, "W": 13, "D": 14, "h": 48}  # M4's horizons per frequency


@dataclass(frozen=True)
class BenchSeries:
    name: str
    file: str
    frequency: str
    licence: str
    horizon: int | None = None  # default: HORIZONS[frequency]
    season: int | None = None   # default: forecasting.season_of(frequency)


SERIES = (
    BenchSeries("formaldehyde", "formaldehyde_y+w.csv", "2min", "seed 004's data; licence not recorded", 30, 1),
    BenchSeries("seattle_hourly", "seattle_temperature_hourly.csv", "h",
                "public domain (NOAA, via vega_datasets)"),
    BenchSeries("seattle_daily", "seattle_max_temperature_daily.csv", "D", "public domain (NOAA, via vega_datasets)"),
    BenchSeries("co2", "co2_weekly.csv", "W", "public domain (Mauna Loa, via statsmodels)"),
    BenchSeries("elnino", "elnino_monthly.csv", "M", "public domain (NOAA, via statsmodels)"),
    BenchSeries("elec_equip", "elec_equip_monthly.csv", "M", "public domain (Eurostat, via statsmodels)"),
    BenchSeries("realgdp", "realgdp_quarterly.csv", "Q", "public domain (FRED, via statsmodels)"),
    BenchSeries("unemp", "unemp_quarterly.csv", "Q", "public domain (FRED, via statsmodels)"),
    BenchSeries("sunspots", "sunspots_yearly.csv", "Y", "public domain (NOAA, via statsmodels)"),
    BenchSeries("nile", "nile_yearly.csv", "Y", "public domain (via statsmodels)"),
)
QUICK_SERIES = ("nile", "elec_equip")


# ---------------------------------------------------------------------------------------------------------------
# The forecasters that need training or a package


class StatsmodelsETS:
    """statsmodels' state-space exponential smoothing (damped trend, the season when 1 < m <= 12: a 52-step
    season took over 5 minutes to fit here), fitted on the training part; the forecasts from every origin come from one Kalman filter pass over the whole series with the
    fitted parameters (missing values are skipped by the filter), h steps ahead as Z T^(h-1) a_(o|o-1)."""

    name = "ets_statsmodels"

    def __init__(self, season: int):
        self.season = season

    def fit(self, train: np.ndarray):
        from statsmodels.tsa.statespace.exponential_smoothing import ExponentialSmoothing

        seasonal = self.season if 1 < self.season <= 12 and len(train) > 2 * self.season else None
        self.model_args = dict(trend=True, damped_trend=True, seasonal=seasonal, initialization_method="estimated")
        with warnings.catch_warnings():  # its optimiser's convergence notes; the fit is scored like any other
            warnings.simplefilter("ignore")
            self.result = ExponentialSmoothing(train[:, 0], **self.model_args).fit(disp=False)
        return self

    def predict_series(self, series: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
        filtered = self.result.apply(series[:, 0])
        states = filtered.filter_results.predicted_state  # [k, T + 1]: a_(t|t-1)
        design = filtered.filter_results.design[:, :, 0]
        transition = filtered.filter_results.transition[:, :, 0]
        intercept = filtered.filter_results.obs_intercept[0, 0]
        state = states[:, origins]  # [k, N]
        forecast = np.empty((len(origins), horizon, 1))
        for step in range(horizon):
            forecast[:, step, 0] = (design @ state)[0] + intercept
            state = transition @ state
        return forecast


def patchtst_size(context: int) -> dict:
    patch = max(2, min(8, context // 4))
    return dict(patch_length=patch, patch_stride=patch, d_model=16, num_attention_heads=2, num_hidden_layers=1,
                ffn_dim=32, dropout=0.0, attention_dropout=0.0, ff_dropout=0.0, head_dropout=0.0,
                positional_dropout=0.0, path_dropout=0.0)


class PatchTSTForecaster:
    """transformers' PatchTSTForPrediction (one shot: all H steps at once), its own window scaler ("std", which
    ignores unobserved values), trained with the MSE over observed future values only."""

    name = "patchtst"

    def __init__(self, context: int, horizon: int, steps: int, batch_size: int, learning_rate: float, seed: int):
        from transformers import PatchTSTConfig, PatchTSTForPrediction

        torch.manual_seed(seed)
        self.config = PatchTSTConfig(num_input_channels=1, context_length=context, prediction_length=horizon,
                                     scaling="std", loss="mse", **patchtst_size(context))
        self.model = PatchTSTForPrediction(self.config)
        self.steps, self.batch_size, self.learning_rate, self.seed = steps, batch_size, learning_rate, seed

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def fit(self, train: np.ndarray):
        context, horizon = self.config.context_length, self.config.prediction_length
        count = len(train) - context - horizon + 1
        if count < 1:
            raise ValueError(f"the training part ({len(train)} points) holds no window of {context} + {horizon}")
        index = np.arange(count)[:, None] + np.arange(context + horizon)[None, :]
        windows = torch.tensor(train[index], dtype=torch.float32)  # [N, L + H, 1]
        generator = torch.Generator().manual_seed(self.seed)
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.learning_rate)
        self.model.train()
        step = 0
        while step < self.steps:
            for batch in torch.randperm(count, generator=generator).split(self.batch_size):
                past, future = windows[batch, :context], windows[batch, context:]
                observed = torch.isfinite(future)
                if not observed.any():
                    continue
                output = self.model(past_values=past.nan_to_num(), past_observed_mask=torch.isfinite(past))
                loss = (output.prediction_outputs - future.nan_to_num()).pow(2)[observed].mean()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                step += 1
                if step == self.steps:
                    break
        self.model.eval()
        return self

    def predict(self, contexts: np.ndarray, horizon: int) -> np.ndarray:
        values = torch.tensor(contexts[:, -self.config.context_length:], dtype=torch.float32)
        with torch.no_grad():
            out = self.model(past_values=values.nan_to_num(), past_observed_mask=torch.isfinite(values))
        return out.prediction_outputs[:, :horizon].double().numpy()


# ---------------------------------------------------------------------------------------------------------------
# One series


def run_series(spec: BenchSeries, args, work: Path) -> dict:
    loaded = read_series(str(embedded_csv(spec.file)))
    series = loaded.values
    season = spec.season or forecasting.season_of(spec.frequency)
    horizon = spec.horizon or HORIZONS[spec.frequency]
    tail = max(horizon, round(args.test_fraction * len(series)))
    tail_start = len(series) - tail
    context = min(args.context_length, (tail_start - horizon) // 2)
    context = max(context, min(season, tail_start - horizon))  # seasonal naive reads one season back
    train = series[:tail_start]
    windows = forecasting.tail_origins(series, tail_start, horizon, context)
    results, parameters, seconds = {}, {}, {}

    def score(name, forecaster, forecast=None):
        begin = time.perf_counter()
        if forecast is None:
            forecast = forecaster.predict(windows.contexts, horizon)
        quantiles = forecaster.quantiles(windows.contexts, horizon) if hasattr(forecaster, "quantiles") else None
        results[name] = forecasting.score_forecasts(series, tail_start, windows.origins, forecast, season, quantiles)
        results[name]["forecast_from_tail_start"] = forecast[tail_start - windows.origins[0], :, 0].tolist()
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - begin

    score("persistence", forecasting.Persistence())
    score("seasonal_naive", forecasting.SeasonalNaive(season))
    begin = time.perf_counter()
    ar = forecasting.LinearAR(forecasting.ar_max_order(season, context, args.max_ar_order)).fit(train)
    seconds["linear_ar"] = time.perf_counter() - begin
    parameters["linear_ar"] = ar.order[0] + 1
    score("linear_ar", ar)
    if args.ets:
        try:
            begin = time.perf_counter()
            ets = StatsmodelsETS(season).fit(train)
            seconds["ets_statsmodels"] = time.perf_counter() - begin
            score("ets_statsmodels", ets, ets.predict_series(series, windows.origins, horizon))
            parameters["ets_statsmodels"] = len(ets.result.params)
        except ImportError:
            results["ets_statsmodels"] = dict(skipped="statsmodels is not installed (pip install statsmodels)")

    # vqlnmlp and its variants, trained by the workbench's own loop; validation windows must fit in the tail.
    from .timeseries import load_forecaster_folder

    vq_context = min(context, tail - 1)
    for name, options in args.vq_variants:
        begin = time.perf_counter()
        vq_args = TimeSeriesTrainArgs(
            csv_file=str(embedded_csv(spec.file)), split="tail", validation_fraction=tail / len(series),
            context_length=vq_context, prediction_length=horizon, num_epochs=args.epochs, max_steps=args.max_steps,
            batch_size=args.batch_size, learning_rate=args.vq_learning_rate, output_dir=str(work / spec.name / name),
            seed=args.seed, save_every=0, d_model=args.vq_d_model, codebook_size=args.vq_codebook_size, **options)
        metrics = train_timeseries(vq_args, progress=False)
        model = load_forecaster_folder(vq_args.output_dir)
        seconds[name] = time.perf_counter() - begin
        parameters[name] = metrics["trained_parameters"]
        parameters[f"{name}_total"] = sum(p.numel() for p in model.parameters())
        score(name, VQLNMLPTailForecaster(model))
        steps = metrics["steps"]  # the same windows and batch for every variant, so the same steps

    begin = time.perf_counter()
    patchtst = PatchTSTForecaster(context, horizon, steps, args.batch_size, args.patchtst_learning_rate, args.seed)
    patchtst.fit(train)
    seconds["patchtst"] = time.perf_counter() - begin
    parameters["patchtst"] = patchtst.parameters
    score("patchtst", patchtst)

    reference = results["seasonal_naive"]["mase"]
    for result in results.values():
        if "mase" in result:
            result["mase_ratio"] = result["mase"] / reference
    return dict(name=spec.name, file=spec.file, frequency=spec.frequency, licence=spec.licence, points=len(series),
                missing=loaded.missing, tail_start=tail_start, horizon=horizon, season=results["seasonal_naive"]["season"],
                context=context, vqlnmlp_context=vq_context, training_steps=steps, parameters=parameters,
                seconds={k: round(v, 2) for k, v in seconds.items()}, results=results,
                history=series[max(0, tail_start - 3 * horizon):tail_start + horizon, 0].tolist())


# ---------------------------------------------------------------------------------------------------------------
# Report


def summarise(runs: list[dict]) -> dict:
    names = [name for name in runs[0]["results"] if "mase" in runs[0]["results"][name]]
    summary = {}
    for name in names:
        ratios = [run["results"][name]["mase_ratio"] for run in runs if "mase_ratio" in run["results"].get(name, {})]
        summary[name] = dict(geometric_mean_mase_ratio=forecasting.geometric_mean(ratios),
                             geometric_mean_mase=forecasting.geometric_mean(
                                 [run["results"][name]["mase"] for run in runs]),
                             series=len(ratios),
                             wins_over_seasonal_naive=sum(r < 1 for r in ratios))
        wql = [run["results"][name].get("wql") for run in runs]
        if all(w is not None for w in wql):
            summary[name]["mean_wql"] = float(np.mean(wql))
    return summary


def markdown(runs: list[dict], summary: dict, args, seconds: float) -> list[str]:
    order = sorted(summary, key=lambda name: summary[name]["geometric_mean_mase_ratio"])
    lines = ["## Summary: geometric mean over series of MASE / Seasonal Naive's MASE (lower is better)", "",
             "| forecaster | geo-mean MASE ratio | geo-mean MASE | series better than seasonal naive | mean WQL |",
             "|---|---|---|---|---|"]
    for name in order:
        s = summary[name]
        wql = f"{s['mean_wql']:.4f}" if "mean_wql" in s else "-"
        lines.append(f"| {name} | {s['geometric_mean_mase_ratio']:.3f} | {s['geometric_mean_mase']:.3f} | "
                     f"{s['wins_over_seasonal_naive']} / {s['series']} | {wql} |")
    cap = f", at most {args.max_steps} steps per series" if args.max_steps else ""
    lines += ["", f"Budget: vqlnmlp {args.epochs} epochs of batch {args.batch_size}{cap} (the steps column below); "
                  "PatchTST the same steps and batch on windows of the same training part. "
                  f"The whole run took {seconds / 60:.1f} minutes on {args.num_threads} thread(s)."]
    sections = ["\n".join(lines)]
    rows = ["## Series", "", "| series | frequency | points (missing) | season | horizon | tail | context | steps | "
            f"parameters ({args.vq_variants[0][0]} trained / total, PatchTST) | licence |", "|---|---|---|---|---|---|---|---|---|---|"]
    first = args.vq_variants[0][0]
    for run in runs:
        p = run["parameters"]
        rows.append(f"| {run['name']} | {run['frequency']} | {run['points']} ({run['missing']}) | {run['season']} | "
                    f"{run['horizon']} | {run['points'] - run['tail_start']} | {run['context']} | "
                    f"{run['training_steps']} | {p[first]} / {p[first + '_total']}, {p['patchtst']} | "
                    f"{run['licence']} |")
    sections.append("\n".join(rows))
    for run in runs:
        table = [f"### {run['name']} (MASE, sMAPE, MAE, MSE: mean over horizons 1..{run['horizon']}; "
                 f"{run['results']['seasonal_naive']['points_per_horizon']} tail points per horizon, "
                 f"{run['results']['seasonal_naive']['missing_tail_points']} missing excluded)", "",
                 "| forecaster | MASE | ratio to seasonal naive | sMAPE | MAE | MSE | WQL | MASE at h=1 | "
                 "MASE at h=H | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in run["results"].items():
            if "skipped" in r:
                table.append(f"| {name} | skipped: {r['skipped']} | | | | | | | | |")
                continue
            wql = f"{r['wql']:.4f}" if "wql" in r else "-"
            table.append(f"| {name} | {r['mase']:.3f} | {r['mase_ratio']:.3f} | {r['smape']:.2f} | {r['mae']:.4g} | "
                         f"{r['mse']:.4g} | {wql} | {r['per_horizon'][0]['mase']:.3f} | "
                         f"{r['per_horizon'][-1]['mase']:.3f} | {run['seconds'].get(name, 0):.1f} |")
        sections.append("\n".join(table))
    return sections


def plot(path: Path, runs: list[dict], count: int = 4):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = runs[:count]
    figure, axes = plt.subplots(len(chosen), 1, figsize=(9, 2.8 * len(chosen)), squeeze=False)
    for axis, run in zip(axes[:, 0], chosen):
        history, horizon = np.array(run["history"]), run["horizon"]
        start = run["tail_start"] - (len(history) - horizon)
        steps = np.arange(start, start + len(history))
        axis.plot(steps, history, color="black", lw=1, label="truth")
        axis.axvline(run["tail_start"] - 0.5, color="0.6", ls="--", lw=0.8)
        for name, r in run["results"].items():
            if "forecast_from_tail_start" in r:
                axis.plot(np.arange(run["tail_start"], run["tail_start"] + horizon), r["forecast_from_tail_start"],
                          lw=1.2, label=f"{name} (MASE {r['mase']:.2f})")
        axis.set_title(f"{run['name']} ({run['frequency']}): {horizon}-step forecasts from the first tail point",
                       fontsize=9)
        axis.legend(fontsize=6, ncol=2, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# The seed's variants (seed-variants-spec.md, 004): the base map, RoPE, multi-codebook (its 8-head rows), both. Each
# costs about the base model's training again (its [window, 512-code] softmax dominates), so only the base one runs
# by default; `--vq-variants` with SEED_VQ_VARIANTS is the record of whether position codes or heads matter.
SEED_VQ_VARIANTS = ["vqlnmlp", "vqlnmlp_rope:position_code=rope", "mhvqlnmlp:num_heads=8",
                    "mhvqlnmlp_rope:num_heads=8,position_code=rope"]
DEFAULT_VQ_VARIANTS = SEED_VQ_VARIANTS[:1]
VARIANT_OPTIONS = ("num_heads", "position_code", "trainable_codebook", "use_attention")


def vq_variant(text: str) -> tuple[str, dict]:
    """'name' or 'name:key=value,key=value' (keys from VARIANT_OPTIONS) -> (name, TimeSeriesTrainArgs values)."""
    from .training import parse_overrides

    name, _, options = text.partition(":")
    if not name.isidentifier():
        raise argparse.ArgumentTypeError(f"variant name {name!r} is not an identifier")
    values = parse_overrides([item for item in options.split(",") if item]) if options else {}
    unknown = sorted(set(values) - set(VARIANT_OPTIONS))
    if unknown:
        raise argparse.ArgumentTypeError(f"variant {name!r}: unknown option(s) {unknown}; use {list(VARIANT_OPTIONS)}")
    return name, values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnlab bench timeseries", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", nargs="+", default=[s.name for s in SERIES], choices=[s.name for s in SERIES])
    parser.add_argument("--test-fraction", type=float, default=0.2, help="share of each series held out")
    parser.add_argument("--context-length", type=int, default=96, help="longest context (halved on short series)")
    parser.add_argument("--epochs", type=int, default=50, help="vqlnmlp epochs (the seed's 50); PatchTST gets the same steps")
    parser.add_argument("--max-steps", type=int, default=3000,
                        help="cap on vqlnmlp's (and so PatchTST's) steps per series, reached only on the long hourly "
                             "and daily series; 0: the epochs decide")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--vq-learning-rate", type=float, default=7e-3, help="the seed's")
    parser.add_argument("--vq-d-model", type=int, default=64)
    parser.add_argument("--vq-codebook-size", type=int, default=512)
    parser.add_argument("--vq-variants", nargs="+", type=vq_variant, default=[vq_variant(v) for v in DEFAULT_VQ_VARIANTS],
                        metavar="NAME[:key=value,...]",
                        help=f"vqlnmlp variants to train, each with options from {list(VARIANT_OPTIONS)} "
                             f"(default: {' '.join(DEFAULT_VQ_VARIANTS)}; the seed's: {' '.join(SEED_VQ_VARIANTS)}); the "
                             "series table gives the first one's size")
    parser.add_argument("--patchtst-learning-rate", type=float, default=1e-3)
    parser.add_argument("--max-ar-order", type=int, default=0,
                        help="highest autoregression order tried by AIC (0: 12, or season + 1 when that is more)")
    parser.add_argument("--no-ets", dest="ets", action="store_false", help="skip statsmodels' ETS")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument("--output-dir", default=None, help="default: results (outputs/bench-quick with --quick)")
    parser.add_argument("--name", default=None, help="report name (default: timeseries)")
    parser.add_argument("--quick", action="store_true", help="2 series, 1 epoch, tiny models (numbers meaningless)")
    return parser


def main(argv: list[str]):
    from .bench_common import run_info, write_report

    parser = build_parser()
    args = parser.parse_args(argv)
    for option in ("max_steps", "max_ar_order"):
        if getattr(args, option) < 0:
            parser.error(f"--{option.replace('_', '-')} must be 0 (the default rule) or positive, "
                         f"got {getattr(args, option)}")
    if args.quick:
        args.series = [name for name in args.series if name in QUICK_SERIES] or list(QUICK_SERIES)
        args.epochs, args.vq_d_model, args.vq_codebook_size, args.context_length = 1, 16, 16, 24
    args.output_dir = args.output_dir or ("outputs/bench-quick" if args.quick else "results")
    args.name = args.name or "timeseries" + ("-quick" if args.quick else "")
    torch.set_num_threads(args.num_threads)
    info = run_info(["timeseries", *argv])
    start = time.perf_counter()
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    runs = []
    with tempfile.TemporaryDirectory() as work:
        for spec in SERIES:
            if spec.name in args.series:
                runs.append(run_series(spec, args, Path(work)))
                print(f"{spec.name}: " + ", ".join(f"{name} {r['mase_ratio']:.3f}" for name, r in
                                                   runs[-1]["results"].items() if "mase_ratio" in r), flush=True)
    info["seconds"] = round(time.perf_counter() - start, 1)
    summary = summarise(runs)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot(out / f"{args.name}.png", runs)
    sections = markdown(runs, summary, args, info["seconds"]) + [f"![forecasts]({args.name}.png)"]
    settings = {k: v for k, v in vars(args).items()}
    path = write_report(out, args.name, info, settings, dict(summary=summary, series=runs), sections, args.quick)
    print(f"timeseries: {info['seconds']:.0f} s; wrote {path}, {path.with_suffix('.json')} and "
          f"{path.with_suffix('.png')}")
    for name, s in sorted(summary.items(), key=lambda item: item[1]["geometric_mean_mase_ratio"]):
        print(f"{name:>16}: geometric-mean MASE ratio to seasonal naive {s['geometric_mean_mase_ratio']:.3f}")
    return summary
