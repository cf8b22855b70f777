"""`attnlab bench mqar`: multi-query associative recall as HazyResearch/zoology defines it (docs/mqar.md;
hf-integration-guide.md section 5), 2-layer models, a learning-rate sweep, accuracy against decoding state size."""

import statistics
import time
from pathlib import Path

import numpy as np
import torch

from .bench_common import (IGNORE_INDEX, accuracy_on_labels, add_task_model_arguments, build_model,
                           decoding_state_floats, epochs_of, save_log_x_plot, shape_overrides, task_model_values,
                           train_task)
from .benchmarking import markdown_table


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


def mqar(args, info: dict) -> dict:
    slices = [tuple(int(x) for x in s.lower().split("x")) for s in args.slices]
    runs, sections, state_sizes = [], [], {}
    for width in args.widths:
        for seq_len, kv in slices:
            values = task_model_values(args, width, args.vocab_size, seq_len)
            overrides, counts = shape_overrides(args.models, values, args.llama_match)
            train_inputs, train_labels = mqar_examples(args.train_examples, seq_len, kv, args.vocab_size, seed=1,
                                                       power_a=args.power_a)
            test_inputs, test_labels = mqar_examples(args.test_examples, seq_len, kv, args.vocab_size, seed=2,
                                                     power_a=args.power_a)
            steps = max(1, args.epochs * (args.train_examples // args.batch_size))
            for name in args.models:
                model_values = {**values, **overrides[name]}
                state_sizes[f"{name} d={width} L={seq_len}"] = decoding_state_floats(build_model(name, model_values),
                                                                                      seq_len)
                for lr in args.lrs:
                    model = build_model(name, model_values, seed=args.seed, device=args.device)
                    start = time.perf_counter()

                    def evaluate():
                        return accuracy_on_labels(model, test_inputs, test_labels, args.batch_size)

                    history = train_task(model, epochs_of(train_inputs, train_labels, args.batch_size, args.seed),
                                         steps, lr, evaluate=evaluate, eval_every=max(1, steps // args.evaluations),
                                         stop_at=0.99, desc=f"mqar d={width} L={seq_len} kv={kv} {name} lr {lr:g}")
                    accuracy = evaluate()
                    runs.append(dict(model=name, width=width, seq_len=seq_len, num_kv_pairs=kv, lr=lr,
                                     accuracy=accuracy, parameters=counts[name], steps=steps,
                                     state_floats=state_sizes[f"{name} d={width} L={seq_len}"], history=history,
                                     seconds=round(time.perf_counter() - start, 1)))
                    print(f"mqar d={width} L={seq_len} kv={kv} {name:20s} lr {lr:g}: accuracy {accuracy:.3f} "
                          f"({runs[-1]['seconds']:.0f} s)", flush=True)
    best = {}
    for run in runs:
        key = (run["model"], run["width"], run["seq_len"], run["num_kv_pairs"])
        if key not in best or run["accuracy"] > best[key]["accuracy"]:
            best[key] = run
    header = ["model", "width", "parameters"] + [f"L={L}, kv={kv}: acc (lr)" for L, kv in slices] + [
        f"state floats at L={L}" for L, _ in slices]
    rows = []
    for name in args.models:
        for width in args.widths:
            cells = [f"{best[(name, width, L, kv)]['accuracy']:.3f} ({best[(name, width, L, kv)]['lr']:g})"
                     for L, kv in slices]
            rows.append([name, width, f"{best[(name, width, *slices[0])]['parameters']:,}", *cells,
                         *[f"{best[(name, width, L, kv)]['state_floats']:,}" for L, kv in slices]])
    sections.append(
        f"Multi-query associative recall (zoology's definition: keys and values from disjoint vocabulary halves, "
        f"power-law query gaps with a={args.power_a}, accuracy on the queried positions only). Vocabulary "
        f"{args.vocab_size}, {args.layers} layers, {args.heads} heads, MLP {args.mlp_ratio}x width, "
        f"{args.train_examples:,} training and {args.test_examples:,} test examples per slice, {args.epochs} epochs of "
        f"batch {args.batch_size}, AdamW (weight decay 0.1) with cosine decay, early stop above 0.99 test accuracy; "
        f"learning rates {args.lrs}; each cell is the best rate's test accuracy (the rate in brackets), as zoology "
        "reports; the JSON keeps the sweep. State: floats in the decoding cache after a prompt of L tokens (batch 1).")
    sections.append(markdown_table(header, rows))
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_accuracy_vs_state(out / f"{args.name}.png", best, args.models, slices)
    sections.append(f"![MQAR accuracy against state size]({args.name}.png)")
    return dict(runs=runs, best=[run for run in best.values()], sections=sections)


def plot_accuracy_vs_state(path: Path, best: dict, models: list[str], slices: list[tuple[int, int]]):
    """Mean accuracy over slices against the decoding state at the longest slice, one point per width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    longest = max(L for L, _ in slices)
    for index, name in enumerate(models):
        widths = sorted({w for (m, w, *_) in best if m == name})
        xs = [best[(name, w, *max(slices))]["state_floats"] for w in widths]
        ys = [statistics.mean(best[(name, w, L, kv)]["accuracy"] for L, kv in slices) for w in widths]
        axes.plot(xs, ys, marker="o", color=f"C{index}", label=name)
        for x, y, w in zip(xs, ys, widths):
            axes.annotate(f"d={w}", (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
    save_log_x_plot(figure, axes, path, f"decoding state (floats) after {longest} tokens",
                    "MQAR accuracy, mean over slices (best lr)", "MQAR: accuracy against state size")


def add_arguments(mqar):
    add_task_model_arguments(mqar)
    mqar.add_argument("--widths", type=int, nargs="+", default=[64, 128])
    mqar.add_argument("--slices", nargs="+", default=["64x4", "128x8", "256x16"], help="SEQ_LENxKV_PAIRS")
    mqar.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    mqar.add_argument("--vocab-size", type=int, default=8192)
    mqar.add_argument("--train-examples", type=int, default=5000, help="per slice (zoology: 100,000)")
    mqar.add_argument("--test-examples", type=int, default=500, help="per slice (zoology: 3,000)")
    mqar.add_argument("--epochs", type=int, default=4, help="zoology: 64")
    mqar.add_argument("--batch-size", type=int, default=64)
    mqar.add_argument("--power-a", type=float, default=0.01)
    mqar.add_argument("--evaluations", type=int, default=8, help="test evaluations per run (early stop at 0.99)")


# --quick: a tiny vocabulary and a few dozen examples (plumbing only).
QUICK = dict(widths=[32], slices=["64x4"], lrs=[1e-3, 3e-3], train_examples=64, test_examples=32, epochs=1,
             batch_size=16, vocab_size=256, evaluations=1)
