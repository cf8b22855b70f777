"""`attnlab bench mqar`: multi-query associative recall as HazyResearch/zoology defines it (docs/mqar.md;
hf-integration-guide.md section 5), 2-layer models, a learning-rate sweep, accuracy against decoding state size."""

import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from .bench_common import (IGNORE_INDEX, accuracy_on_labels, add_task_model_arguments, build_model,
                           decoding_state_floats, epochs_of, shape_overrides, task_model_values,
                           train_task, write_report)
from .benchmarking import machine_description, markdown_table
from .report import provenance


def mqar_examples(num_examples: int, seq_len: int, num_kv_pairs: int, vocab_size: int, seed: int,
                  power_a: float = 0.01, random_non_queries: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels, both [num_examples, seq_len], of zoology's multi-query associative recall.

    Each example is a context `k1 v1 ... kN vN` (keys drawn without replacement from [1, vocab/2), values from
    [vocab/2, vocab)) followed by a query region where every key appears once, key i at an even offset 2 g_i, with the
    N distinct gap slots g drawn with probability proportional to (g + 1)^(power_a - 1) (most queries close to the
    context). The label of a query position is the value paired with its key; every other label is -100. The
    sequence is built with seq_len + 1 tokens and shifted into inputs and labels. Non-query positions hold 0, or
    uniform random tokens with `random_non_queries` (zoology's Figure 2 uses 0).
    """
    if seq_len % 2:
        raise ValueError(f"MQAR: seq_len must be even, got {seq_len}")
    if vocab_size <= seq_len:
        raise ValueError(f"MQAR: vocab_size ({vocab_size}) must exceed seq_len ({seq_len})")
    if 4 * num_kv_pairs > seq_len:
        raise ValueError(f"MQAR: {num_kv_pairs} key-value pairs need a context and a query region of 2 x "
                         f"{2 * num_kv_pairs} tokens, more than seq_len {seq_len}")
    rng = np.random.default_rng(seed)
    context = 2 * num_kv_pairs
    space = (seq_len - context) // 2  # query slots at even offsets of the query region
    gap_weights = power_a * np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1)
    gap_weights /= gap_weights.sum()
    sequences = np.zeros((num_examples, seq_len + 1), dtype=np.int64)
    targets = np.full((num_examples, seq_len + 1), IGNORE_INDEX, dtype=np.int64)
    for row in range(num_examples):
        keys = rng.choice(np.arange(1, vocab_size // 2), size=num_kv_pairs, replace=False)
        values = rng.choice(np.arange(vocab_size // 2, vocab_size), size=num_kv_pairs, replace=False)
        sequences[row, 0:context:2], sequences[row, 1:context:2] = keys, values
        gaps = rng.choice(space, size=num_kv_pairs, replace=False, p=gap_weights)
        sequences[row, context + 2 * gaps] = keys
        targets[row, context + 2 * gaps + 1] = values  # shifted below: the label sits at the query key's position
    if random_non_queries:
        fillers = sequences == 0
        sequences[fillers] = rng.integers(0, vocab_size, size=int(fillers.sum()))
    return torch.from_numpy(sequences[:, :-1].copy()), torch.from_numpy(targets[:, 1:].copy())


class ShortConvolution(torch.nn.Module):
    """A causal depthwise convolution over the last `kernel_size` positions, added to a mixer's input (zoology gives
    every mixer one, so that mixing a token with its predecessor is free for all). Zero-initialised: at
    initialisation the model computes exactly what it computes without it."""

    def __init__(self, width: int, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.conv = torch.nn.Conv1d(width, width, kernel_size, groups=width, padding=kernel_size - 1, bias=False)
        torch.nn.init.zeros_(self.conv.weight)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # [batch, time, width]
        mixed = self.conv(hidden_states.transpose(1, 2))[..., :hidden_states.shape[1]]  # left padding only: causal
        return hidden_states + mixed.transpose(1, 2)


def add_short_convolutions(model, kernel_size: int) -> int:
    """Give every layer's mixer (`layer.self_attn`) a `ShortConvolution` on its input; returns the floats it adds to
    the decoding state (the last kernel_size - 1 inputs of every mixer application)."""
    layers = model.model.layers
    for index, layer in enumerate(layers):
        mixer = getattr(layer, "self_attn", None)
        if mixer is None:
            raise ValueError(f"--short-conv: layer {index} ({type(layer).__name__}) has no self_attn mixer to convolve")
        layer.short_conv = ShortConvolution(model.config.hidden_size, kernel_size).to(next(model.parameters()).device)

        def convolve_input(module, args, kwargs, conv=layer.short_conv):
            if args:
                return (conv(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": conv(kwargs["hidden_states"])}

        mixer.register_forward_pre_hook(convolve_input, with_kwargs=True)
    # A depth-recurrent member applies each of its blocks num_passes times: one convolution state per application.
    return (kernel_size - 1) * model.config.hidden_size * model.config.num_hidden_layers


def stopped_early(history: list[dict], stop_at: float) -> bool:
    """Whether `train_task` ended before its last step: diverged, or an evaluation above `stop_at`."""
    return bool(history) and (history[-1].get("diverged", False) or history[-1].get("accuracy", 0) > stop_at)


def mqar(args, info: dict) -> dict:
    """Per width and slice, every model at the first rate, then at the other rates, then the other seeds at each
    model's best rate: a run cut short still compares every model at one rate. The record is rewritten after every
    run (marked partial until the last), so what finished is kept. With `--merge`, no training: the runs of earlier
    records become one record (one grid, one plot)."""
    if args.merge:
        return merge_records(args, info)
    slices = [tuple(int(x) for x in s.lower().split("x")) for s in args.slices]
    steps = max(1, args.epochs * (args.train_examples // args.batch_size))
    total = len(args.widths) * len(slices) * len(args.models) * (len(args.lrs) + len(args.seeds) - 1)
    runs = []
    for width in args.widths:
        for seq_len, kv in slices:
            values = task_model_values(args, width, args.vocab_size, seq_len)
            overrides, _ = shape_overrides(args.models, values, args.llama_match, args.llama_match_to)
            train_inputs, train_labels = mqar_examples(args.train_examples, seq_len, kv, args.vocab_size, seed=1,
                                                       power_a=args.power_a)
            test_inputs, test_labels = mqar_examples(args.test_examples, seq_len, kv, args.vocab_size, seed=2,
                                                     power_a=args.power_a)

            def run_one(name: str, lr: float, seed: int) -> dict:
                model_values = {**values, **overrides[name]}
                state_floats = decoding_state_floats(build_model(name, model_values), seq_len)
                model = build_model(name, model_values, seed=seed, device=args.device)
                if args.short_conv:
                    state_floats += add_short_convolutions(model, args.short_conv)
                start = time.perf_counter()

                def evaluate():
                    return accuracy_on_labels(model, test_inputs, test_labels, args.batch_size)

                history = train_task(model, epochs_of(train_inputs, train_labels, args.batch_size, seed), steps, lr,
                                     evaluate=evaluate, eval_every=max(1, steps // args.evaluations),
                                     stop_at=args.stop_at,
                                     desc=f"mqar d={width} L={seq_len} kv={kv} {name} lr {lr:g} seed {seed}")
                accuracy = evaluate()
                run = dict(model=name, width=width, seq_len=seq_len, num_kv_pairs=kv, lr=lr, seed=seed,
                           accuracy=accuracy, parameters=sum(p.numel() for p in model.parameters()), steps=steps,
                           steps_run=history[-1]["step"] if stopped_early(history, args.stop_at) else steps,
                           state_floats=state_floats, history=history, seconds=round(time.perf_counter() - start, 1))
                print(f"mqar d={width} L={seq_len} kv={kv} {name:20s} lr {lr:g} seed {seed}: accuracy {accuracy:.3f} "
                      f"({run['seconds']:.0f} s, {len(runs) + 1}/{total})", flush=True)
                runs.append(run)
                if len(runs) < total:
                    write_partial_record(args, info, runs, slices, total)
                return run

            for lr in args.lrs:
                for name in args.models:
                    run_one(name, lr, args.seeds[0])
            for seed in args.seeds[1:]:
                for name in args.models:
                    sweep = [r for r in runs if (r["model"], r["width"], r["seq_len"], r["seed"])
                             == (name, width, seq_len, args.seeds[0])]
                    run_one(name, max(sweep, key=lambda r: r["accuracy"])["lr"], seed)
    return mqar_report(args, runs, slices)


# Settings that must agree for runs of several records to be compared in one table.
MERGE_MUST_AGREE = ("vocab_size", "train_examples", "test_examples", "epochs", "batch_size", "power_a", "evaluations",
                    "stop_at", "short_conv", "layers", "heads", "mlp_ratio", "llama_match")


# What merging reads of each run (a record whose runs lack one is refused).
MERGED_RUN_KEYS = {"model", "width", "seq_len", "num_kv_pairs", "lr", "seed", "accuracy", "parameters", "state_floats"}


def merge_records(args, info: dict) -> dict:
    """The runs of earlier MQAR records as one record. Refused, naming the record and the setting, when their budgets
    differ, when a (model, width) has different parameter counts in two of them (Llama is matched to the models of its
    run), or when the same run appears twice. The merged record takes the commit of its oldest source, so its age is
    judged by the oldest code it holds."""
    sources = []
    for path in args.merge:
        try:
            record = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise SystemExit(f"attnlab bench mqar: --merge {path}: cannot read it as a record ({error})") from None
        if (not isinstance(record, dict) or not isinstance(record.get("settings"), dict)
                or not isinstance(record.get("runs"), list)
                or not all(isinstance(run, dict) and MERGED_RUN_KEYS <= run.keys() for run in record["runs"])):
            raise SystemExit(f"attnlab bench mqar: --merge {path}: not an MQAR record (its settings or runs are "
                             "missing or incomplete)")
        sources.append((path, record))
    first_path, first = sources[0]
    runs, parameters, seen = [], {}, set()
    for path, record in sources:
        for key in MERGE_MUST_AGREE:
            if record["settings"].get(key) != first["settings"].get(key):
                raise SystemExit(f"attnlab bench mqar: --merge: {key} is {record['settings'].get(key)!r} in {path} but "
                                 f"{first['settings'].get(key)!r} in {first_path}; only runs at one budget compare")
        for run in record["runs"]:
            identity = (run["model"], run["width"], run["seq_len"], run["num_kv_pairs"], run["lr"], run["seed"])
            if identity in seen:
                raise SystemExit(f"attnlab bench mqar: --merge: the run {identity} appears twice (again in {path})")
            seen.add(identity)
            size = parameters.setdefault((run["model"], run["width"]), (run["parameters"], path))
            if size[0] != run["parameters"]:
                raise SystemExit(f"attnlab bench mqar: --merge: {run['model']} at width {run['width']} has "
                                 f"{run['parameters']:,} parameters in {path} but {size[0]:,} in {size[1]} (a Llama "
                                 "matched to other models?); merge records of one model list")
            runs.append(run)
    for key in MERGE_MUST_AGREE:
        setattr(args, key, first["settings"].get(key))
    args.models = list(dict.fromkeys(run["model"] for run in runs))
    args.widths = sorted({run["width"] for run in runs})
    args.lrs = list(dict.fromkeys(lr for _, record in sources for lr in record["settings"]["lrs"]))
    args.seeds = sorted({run["seed"] for run in runs})
    slices = sorted({(run["seq_len"], run["num_kv_pairs"]) for run in runs})
    args.slices = [f"{L}x{kv}" for L, kv in slices]
    info["merged_from"] = [dict(record=str(path), **provenance(record), partial=record.get("info", {}).get("partial"))
                           for path, record in sources]
    oldest = min(info["merged_from"], key=lambda source: source["date"] or "")
    oldest_path, info["git_commit"] = oldest["record"], oldest["commit"]
    machines = list(dict.fromkeys(str(source["machine"]) for source in info["merged_from"]))
    data = mqar_report(args, runs, slices, machine="; ".join(machines))
    lines = [f"- [`{Path(s['record']).stem}`]({Path(s['record']).stem}.md): `{s['command']}`; commit {s['commit']}; "
             f"{s['machine']}; {s['date']}" + (f"; **partial ({s['partial']})**" if s["partial"] else "")
             for s in info["merged_from"]]
    data["sections"].insert(0, f"## Merged records\n\nNo run was trained for this record: it holds the {len(runs)} runs "
                               f"of these records (the commit above is the oldest one's, {oldest_path}):\n\n"
                            + "\n".join(lines))
    return data


def write_partial_record(args, info: dict, runs: list[dict], slices: list[tuple[int, int]], total: int):
    data = mqar_report(args, runs, slices)
    note = (f"**Partial record: {len(runs)} of {total} runs finished when it was written; the rest are missing "
            "(`-`).**")
    settings = {k: v for k, v in vars(args).items() if k != "section"}
    write_report(Path(args.output_dir), args.name, {**info, "partial": f"{len(runs)} of {total} runs"}, settings,
                 data, [note, *data.pop("sections")], args.quick)


def mqar_report(args, runs: list[dict], slices: list[tuple[int, int]], machine: str | None = None) -> dict:
    """The tables and the plot of the runs so far (the best rate at the first seed, then every seed at it)."""
    best = {}
    for run in (r for r in runs if r["seed"] == args.seeds[0]):
        key = (run["model"], run["width"], run["seq_len"], run["num_kv_pairs"])
        if key not in best or run["accuracy"] > best[key]["accuracy"]:
            best[key] = run

    def cell(name, width, L, kv, text):
        run = best.get((name, width, L, kv))
        return "-" if run is None else text(run)

    header = ["model", "width", "parameters"] + [f"L={L}, kv={kv}: acc (lr)" for L, kv in slices] + [
        f"state floats at L={L}" for L, _ in slices]
    rows = []
    for name in args.models:
        for width in args.widths:
            if not any((name, width, L, kv) in best for L, kv in slices):
                continue
            parameters = next(r["parameters"] for key, r in best.items() if key[:2] == (name, width))
            rows.append([name, width, f"{parameters:,}",
                         *[cell(name, width, L, kv, lambda r: f"{r['accuracy']:.3f} ({r['lr']:g})")
                           for L, kv in slices],
                         *[cell(name, width, L, kv, lambda r: f"{r['state_floats']:,}") for L, kv in slices]])
    seed_rows = []
    for (name, width, L, kv), run in best.items():
        accuracies = [r["accuracy"] for r in runs if (r["model"], r["width"], r["seq_len"], r["num_kv_pairs"], r["lr"])
                      == (name, width, L, kv, run["lr"])]
        seed_rows.append([name, width, f"L={L}, kv={kv}", f"{run['lr']:g}", " / ".join(f"{a:.3f}" for a in accuracies),
                          f"{statistics.mean(accuracies):.3f}", f"{min(accuracies):.3f}"])
    steps = max(1, args.epochs * (args.train_examples // args.batch_size))
    conv = (f"every mixer's input passes through a zero-initialised causal depthwise convolution of {args.short_conv} "
            "taps (`--short-conv`, zoology's fairness convolution); " if args.short_conv else "no short convolution; ")
    sections = [
        "## Setup\n\n"
        f"Multi-query associative recall (zoology's definition: keys and values from disjoint vocabulary halves, "
        f"power-law query gaps with a={args.power_a}, accuracy on the queried positions only). Vocabulary "
        f"{args.vocab_size}, {args.layers} layers, {args.heads} heads, MLP {args.mlp_ratio}x width, "
        f"{args.train_examples:,} training and {args.test_examples:,} test examples per slice, {args.epochs} epochs of "
        f"batch {args.batch_size} ({steps:,} steps per run), AdamW (weight decay 0.1) with cosine decay over "
        f"those steps, test accuracy {args.evaluations} times per run and an early stop above {args.stop_at}; "
        f"{conv}learning rates {args.lrs} at seed {args.seeds[0]}, then seeds {args.seeds[1:]} at the best rate. "
        "State: floats in the decoding cache after a prompt of L tokens (batch 1); seconds per run are in the JSON.",
        "## Best accuracy\n\nEach cell is the best rate's test accuracy at the first seed (the rate in brackets), as "
        "zoology reports; the JSON keeps the sweep.\n\n" + markdown_table(header, rows)]
    if len(args.seeds) > 1:
        sections.append(f"## Seeds at the best rate\n\nTest accuracy of seeds {args.seeds} (initialisation and data "
                        "order) at each model's best rate.\n\n"
                        + markdown_table(["model", "width", "slice", "lr", "accuracy per seed", "mean", "min"],
                                         seed_rows))
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_accuracy_vs_state(out / f"{args.name}.png", best, args.models, slices, machine or machine_description())
    sections.append(f"## Accuracy against state size\n\n![MQAR accuracy against state size]({args.name}.png)")
    return dict(runs=runs, best=list(best.values()), sections=sections)


def plot_accuracy_vs_state(path: Path, best: dict, models: list[str], slices: list[tuple[int, int]], machine: str):
    """zoology's figure: one panel per slice, the best rate's accuracy against the decoding state at that slice's
    length, one line per model through its widths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(1, len(slices), figsize=(4.2 * len(slices) + 1.5, 4.2), squeeze=False,
                                  sharex=True, sharey=True)
    markers = "osD^vPX*<>"  # models with equal state (attention's KV cache) sit on one x: shapes tell them apart
    for axes, (L, kv) in zip(panels[0], slices):
        for index, name in enumerate(models):
            points = sorted((key[1], run) for key, run in best.items() if key[0] == name and key[2:] == (L, kv))
            if not points:
                continue
            xs, ys = [run["state_floats"] for _, run in points], [run["accuracy"] for _, run in points]
            axes.plot(xs, ys, marker=markers[index % len(markers)], color=f"C{index % 10}", alpha=0.8,
                      markerfacecolor="none", markersize=7, linestyle="-" if index < 10 else "--", label=name)
            if len(points) > 1:  # several widths: name each point's width
                for (width, _), x, y in zip(points, xs, ys):
                    axes.annotate(f"d={width}", (x, y), fontsize=6, textcoords="offset points", xytext=(3, 3))
        axes.set_xscale("log")
        axes.set_ylim(-0.03, 1.03)
        axes.set_title(f"L={L}, {kv} pairs", fontsize=9)
        axes.set_xlabel(f"decoding state (floats) after {L} tokens")
        axes.grid(alpha=0.3)
    panels[0][0].set_ylabel("MQAR test accuracy (best lr)")
    handles, labels = panels[0][0].get_legend_handles_labels()
    for axes in panels[0][1:]:  # a model missing from the first panel still gets its legend entry
        for handle, label in zip(*axes.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    figure.legend(handles, labels, loc="center right", fontsize=7)
    figure.suptitle(f"MQAR: accuracy against state size\n{machine}", fontsize=9)
    figure.tight_layout(rect=(0, 0, 1 - 1.4 / figure.get_figwidth(), 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)


def add_arguments(mqar):
    # The defaults are the budget calibrated on one CPU core so that Llama reaches 0.99 at (64, 4) (docs/mqar.md):
    # 2 x 40,000 examples in batches of 32 (2,500 steps) with every mixer given a 4-tap short convolution.
    add_task_model_arguments(mqar, seed=False)
    mqar.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                      help="initialisation and data-order seeds: the first runs the rate sweep, the others the best "
                           "rate")
    mqar.add_argument("--widths", type=int, nargs="+", default=[64, 128])
    mqar.add_argument("--slices", nargs="+", default=["64x4", "128x8", "256x16"], help="SEQ_LENxKV_PAIRS")
    mqar.add_argument("--lrs", type=float, nargs="+", default=[3e-3, 1e-3],
                      help="every model runs the first rate before any runs the second")
    mqar.add_argument("--vocab-size", type=int, default=8192)
    mqar.add_argument("--train-examples", type=int, default=40000, help="per slice (zoology: 100,000)")
    mqar.add_argument("--test-examples", type=int, default=500, help="per slice (zoology: 3,000)")
    mqar.add_argument("--epochs", type=int, default=2, help="zoology: 64")
    mqar.add_argument("--batch-size", type=int, default=32)
    mqar.add_argument("--power-a", type=float, default=0.01)
    mqar.add_argument("--evaluations", type=int, default=20, help="test evaluations per run (for the early stop)")
    mqar.add_argument("--stop-at", type=float, default=0.99, help="stop a run once its test accuracy exceeds this")
    mqar.add_argument("--merge", nargs="+", default=None, metavar="RECORD.json",
                      help="train nothing: write one record (tables, plot) of the runs of these MQAR records, which "
                           "must share a budget")
    mqar.add_argument("--short-conv", type=int, default=4, metavar="TAPS",
                      help="give every mixer a causal depthwise convolution of this many taps on its input, as "
                           "zoology does for fairness (0: none; without it Llama does not reach 0.99 in this budget)")


# --quick: a tiny vocabulary and a few dozen examples (plumbing only).
QUICK = dict(widths=[32], slices=["64x4"], lrs=[1e-3, 3e-3], seeds=[0, 1], train_examples=64, test_examples=32,
             epochs=1, batch_size=16, vocab_size=256, evaluations=1)
