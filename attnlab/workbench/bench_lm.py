"""`attnlab bench lm`: held-out Shakespeare at equal parameters and tokens, through the workbench's own training
loop (`attnlab train`), a learning-rate sweep, then seeds at the best rate."""

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from .bench_common import _preset_values, save_log_x_plot, shape_overrides
from .benchmarking import markdown_table


def lm(args, info: dict) -> dict:
    from ..tokenization_attnlab import byte_tokenizer
    from .experiments import summarise
    from .training import TrainArgs, train

    values = dict(_preset_values(args.preset, len(byte_tokenizer())), max_position_embeddings=args.block_size)
    for item in args.config_overrides:
        key, _, value = item.partition("=")
        values[key] = json.loads(value)
    overrides, counts = shape_overrides(args.models, values, args.llama_match, args.llama_match_to)
    shape_keys = {k: v for k, v in values.items() if k not in ("vocab_size",)}
    work = Path(args.work_dir)

    def run_one(name: str, lr: float, seed: int) -> dict:
        model_overrides = {**shape_keys, **overrides[name]}
        train_args = TrainArgs(
            model=name, preset=args.preset,
            config_overrides=[f"{key}={json.dumps(value)}" for key, value in model_overrides.items()],
            block_size=args.block_size, batch_size=args.batch_size, max_steps=args.steps, learning_rate=lr,
            eval_every=max(1, args.steps // args.evaluations), eval_blocks=args.eval_blocks,
            final_eval_blocks=args.final_eval_blocks, save_every=0, seed=seed, num_threads=args.num_threads,
            compile=args.compile, train_files=args.train_files, validation_files=args.validation_files,
            output_dir=str(work / f"{name}-lr{lr:g}-seed{seed}"))
        metrics = finished_run(train_args)
        reused = metrics is not None
        if metrics is None:
            metrics = train(train_args)
            Path(train_args.output_dir, RUN_MARK).write_text(json.dumps(dict(library=library_fingerprint())))
        print(f"lm {name:20s} lr {lr:g} seed {seed}: held-out loss {metrics['final_eval']['loss']:.4f} "
              f"({metrics['train_seconds']:.0f} s)", flush=True)
        return dict(model=name, lr=lr, seed=seed, parameters=metrics["parameters"], tokens=metrics["tokens"],
                    train_seconds=metrics["train_seconds"], compile_seconds=metrics.get("compile_seconds"),
                    final=metrics["final_eval"], curve=[(e["step"], e["loss"]) for e in metrics["eval"]],
                    reused=reused)

    rates, given = model_rates(args)
    sweep = [run_one(name, lr, args.seeds[0]) for name in args.models for lr in rates[name]]
    best_lr = {name: min((r for r in sweep if r["model"] == name), key=lambda r: r["final"]["loss"])["lr"]
               for name in args.models}
    seeds = [r for r in sweep if r["lr"] == best_lr[r["model"]]]
    # Seed by seed over the models, so that an interrupted run has every model at the seeds it finished.
    seeds += [run_one(name, best_lr[name], seed) for seed in args.seeds[1:] for name in args.models]
    summary = summarise(seeds)
    runs = sweep + seeds[len(args.models):]  # every run once (the sweep holds the first seed's)
    rows = [[name, f"{counts[name]:,}", f"{best_lr[name]:g}",
             f"{summary[name]['loss'][0]:.4f} ± {summary[name]['loss'][1]:.4f}",
             f"{summary[name]['bits_per_byte'][0]:.4f} ± {summary[name]['bits_per_byte'][1]:.4f}",
             f"{summary[name]['accuracy'][0]:.2%}", f"{summary[name]['train_seconds'][0]:.0f}",
             " / ".join(f"{r['lr']:g}: {r['final']['loss']:.3f}" for r in sweep if r["model"] == name)]
            for name in args.models]
    tokens = args.steps * args.batch_size * args.block_size
    sections = [
        f"Held-out Shakespeare plays (byte tokens), preset `{args.preset}`, block {args.block_size}, batch "
        f"{args.batch_size}, {args.steps} steps = {tokens:,} training tokens per run for every model; AdamW with "
        f"warmup and cosine decay (`attnlab train`). Learning rates {args.lrs} at seed {args.seeds[0]}"
        + (f" ({', '.join(f'{name}: {rates[name]}' for name in given)} given by --model-lrs)"
           if given else "") + "; the best rate "
        f"by held-out loss then runs seeds {args.seeds}. Loss and bits per byte: mean ± std over those seeds, on the "
        f"held-out plays ({'all blocks' if args.final_eval_blocks is None else f'{args.final_eval_blocks} blocks'}). "
        "The rate is chosen on the same held-out text it is scored on, as zoology reports the best rate."
        + (f" {sum(r['reused'] for r in runs)} of {len(runs)} runs were finished by an earlier invocation of this "
           "command (same options, same model code) and reused; `train s` is each run's own training time."
           if any(r["reused"] for r in runs) else ""),
        markdown_table(["model", "parameters", "best lr", "held-out loss (nats/byte)", "bits per byte",
                        "next-byte accuracy", "train s", "sweep (lr: loss)"], rows),
    ]
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_lm(out / f"{args.name}.png", sweep, args.models)
    sections.append(f"![held-out loss against learning rate]({args.name}.png)")
    return dict(sweep=sweep, seed_runs=seeds, best_lr=best_lr, summary=summary, parameters=counts,
                tokens_per_run=tokens, sections=sections)


def plot_lm(path: Path, sweep: list[dict], models: list[str]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for index, name in enumerate(models):
        runs = sorted((r for r in sweep if r["model"] == name), key=lambda r: r["lr"])
        axes.plot([r["lr"] for r in runs], [r["final"]["loss"] for r in runs], marker="o", color=f"C{index}",
                  label=name)
    save_log_x_plot(figure, axes, path, "peak learning rate", "held-out loss (nats per byte)",
                    "LM: held-out loss per learning rate (first seed)")


RUN_MARK = "bench_run.json"  # the model library's fingerprint at training time, beside the run's metrics.json


def library_fingerprint() -> str:
    """A hash of the model library's source (attnlab/*.py, what a run's numbers depend on beyond its options)."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parents[1].glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def finished_run(train_args) -> dict | None:
    """The metrics of a run this benchmark already finished in `train_args.output_dir` with the same options and the
    same model library, so an interrupted `attnlab bench lm` continues where it stopped; None when there is none.
    A folder that holds anything else is refused rather than reused or replaced."""
    folder = Path(train_args.output_dir)
    if not folder.exists():
        return None
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
        mark = json.loads((folder / RUN_MARK).read_text())
    except (OSError, ValueError):
        metrics = mark = None
    # Options left None are resolved by the run (mixed precision, tokenizer) and recorded resolved.
    wanted = {k: v for k, v in asdict(train_args).items() if k != "num_threads" and v is not None}
    if (metrics is None or {k: metrics.get("args", {}).get(k) for k in wanted} != wanted
            or metrics.get("steps") != train_args.max_steps or mark.get("library") != library_fingerprint()):
        raise ValueError(f"{folder} holds another run (other options, an unfinished run, or older model code): "
                         f"remove it or choose another --work-dir")
    print(f"reusing the finished run in {folder}")
    return metrics


def model_rates(args) -> tuple[dict[str, list[float]], list[str]]:
    """Each model's learning rates: `--lrs`, or the rates `--model-lrs NAME=LR` gives that model (a rate an earlier
    sweep chose, so a rerun need not repeat the sweep), and the models `--model-lrs` names."""
    rates = {name: list(args.lrs) for name in args.models}
    given = {}
    for item in args.model_lrs:
        name, sep, value = item.partition("=")
        if not sep or name not in rates:
            raise ValueError(f"--model-lrs {item!r}: expected NAME=LR with NAME one of the run's models {args.models}")
        try:
            lr = float(value)
        except ValueError:
            lr = float("nan")
        if not lr > 0 or lr == float("inf"):
            raise ValueError(f"--model-lrs {item!r}: the rate must be a positive number")
        given.setdefault(name, []).append(lr)
    rates.update(given)
    return rates, sorted(given)


def add_arguments(lm):
    lm.add_argument("--preset", default="tiny")
    lm.add_argument("--config-overrides", nargs="*", default=[], help="shared shape values as key=value (JSON)")
    lm.add_argument("--block-size", type=int, default=256)
    lm.add_argument("--batch-size", type=int, default=16)
    lm.add_argument("--steps", type=int, default=1200, help="1200 x 16 x 256 = 4.9M tokens, 4x the old comparisons")
    lm.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    lm.add_argument("--model-lrs", nargs="+", default=[], metavar="NAME=LR",
                    help="rates for some models instead of --lrs (repeat a name for several), e.g. the best rates "
                         "of an earlier sweep")
    lm.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="the first runs the sweep")
    lm.add_argument("--evaluations", type=int, default=10, help="held-out evaluations per run (curves)")
    lm.add_argument("--eval-blocks", type=int, default=32)
    lm.add_argument("--final-eval-blocks", type=int, default=None, help="default: every held-out block")
    lm.add_argument("--num-threads", type=int, default=1)
    lm.add_argument("--compile", action="store_true", help="train through torch.compile (attnlab train --compile)")
    lm.add_argument("--work-dir", default="outputs/bench-lm", help="the runs' folders")
    lm.add_argument("--train-files", nargs="+", default=None, help="default: the embedded Shakespeare")
    lm.add_argument("--validation-files", nargs="+", default=None, help="default: the held-out plays")


def quick_text_files(folder: Path) -> tuple[list[str], list[str]]:
    from .data import shakespeare_text

    folder.mkdir(parents=True, exist_ok=True)
    text = shakespeare_text()
    files = folder / "train.txt", folder / "validation.txt"
    files[0].write_text(text[:20000])
    files[1].write_text(text[-5000:])
    return [str(files[0])], [str(files[1])]


# --quick: two steps on a few kB of the plays (plumbing only); main() points the text files at quick_text_files.
QUICK = dict(steps=2, lrs=[1e-3, 3e-3], seeds=[0, 1], batch_size=2, block_size=32, eval_blocks=2,
             final_eval_blocks=2, evaluations=1)
