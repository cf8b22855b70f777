"""Members against the Llama baseline at equal parameter count, trained and evaluated the same way on Shakespeare.

All models get the same width, depth, heads, tokenizer (bytes), block size, batch, steps, learning-rate schedule
and seeds; only Llama's `intermediate_size` changes, to the value that brings its parameter count closest to the
first member's (the report lists every model's count). Each run is scored on the held-out plays with loss, next-byte accuracy and bits per byte on exactly the
same target positions. `scripts/compare_shakespeare.py` is the command-line entry point.
"""

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from .benchmarking import machine_description, provenance_fields
from ..tokenization_attnlab import byte_tokenizer
from .training import TrainArgs, build_config, parse_overrides, train

BASELINE = "llama"
METRICS = ("loss", "accuracy", "bits_per_byte")


@dataclass
class Comparison:
    """One comparison's settings; the defaults fit 2 models x 2 seeds in about 10 minutes on 2 CPU cores."""

    member: list[str] = field(default_factory=lambda: ["triple_product"], metadata={
        "help": "the member(s) or hybrid(s) to compare with Llama; Llama's size is matched to the first"})
    preset: str = field(default="tiny", metadata={"help": "size preset shared by both models: tiny, small or base"})
    block_size: int = field(default=256, metadata={"help": "tokens per sequence"})
    seeds: list[int] = field(default_factory=lambda: [0, 1], metadata={"help": "one run per model and seed"})
    steps: int = field(default=300, metadata={"help": "optimizer steps per run"})
    batch_size: int = field(default=16, metadata={"help": "sequences per step (tokens per step = batch x block)"})
    config_overrides: list[str] = field(default_factory=list, metadata={
        "help": "member config values as key=value; the shape keys Llama also has apply to it too"})
    learning_rate: float = field(default=3e-3, metadata={"help": "peak learning rate of both models"})
    name: str | None = field(default=None, metadata={
        "help": "report name: results/NAME.{md,json,png} (default: MEMBER_vs_llama_shakespeare)"})
    evaluations: int = field(default=10, metadata={"help": "held-out evaluations per run, for the loss curves"})
    eval_blocks: int = field(default=32, metadata={
        "help": "held-out blocks per curve point (the final evaluation scores them all)"})

    @property
    def report_name(self) -> str:
        return self.name or f"{'_'.join(self.member)}_vs_llama_shakespeare"


def count_parameters(config) -> int:
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def matched_baseline_overrides(comparison: Comparison) -> tuple[list[str], int, int]:
    """Llama overrides (the member's shared shape overrides plus a matched intermediate_size) and both counts."""
    tokenizer = byte_tokenizer()
    member_config = build_config(comparison.member[0], comparison.preset, tokenizer, comparison.block_size,
                                 comparison.config_overrides)
    member_parameters = count_parameters(member_config)
    llama_keys = set(LlamaConfig().to_dict())
    shared = [item for item, key in zip(comparison.config_overrides, parse_overrides(comparison.config_overrides))
              if key in llama_keys and key != "intermediate_size"]

    def llama_config(intermediate_size: int):
        return build_config(BASELINE, comparison.preset, tokenizer, comparison.block_size,
                            [*shared, f"intermediate_size={intermediate_size}"])

    # The count is linear in intermediate_size (three hidden x intermediate matrices per layer).
    base = count_parameters(llama_config(1))
    per_unit = count_parameters(llama_config(2)) - base
    intermediate_size = max(1, round(1 + (member_parameters - base) / per_unit))
    overrides = [*shared, f"intermediate_size={intermediate_size}"]
    return overrides, member_parameters, count_parameters(llama_config(intermediate_size))


def run(comparison: Comparison, work_dir: Path, num_threads: int | None = 1) -> dict:
    """Train and evaluate every (model, seed); returns the report data (also what the JSON holds)."""
    started = provenance_fields()  # the commit and date when the runs start (the machine is described at the end,
    # when training has set the threads and subnormal mode it ran with)
    baseline_overrides, _, _ = matched_baseline_overrides(comparison)
    models = {**{member: comparison.config_overrides for member in comparison.member}, BASELINE: baseline_overrides}
    tokenizer = byte_tokenizer()
    parameters = {model: count_parameters(build_config(model, comparison.preset, tokenizer, comparison.block_size,
                                                       overrides)) for model, overrides in models.items()}
    print("parameters: " + " | ".join(f"{model} {count:,}" for model, count in parameters.items())
          + f" ({BASELINE}: {' '.join(baseline_overrides)})")
    runs = []
    for seed in comparison.seeds:
        for model, overrides in models.items():
            args = TrainArgs(model=model, preset=comparison.preset, config_overrides=list(overrides),
                             block_size=comparison.block_size, batch_size=comparison.batch_size,
                             max_steps=comparison.steps, learning_rate=comparison.learning_rate,
                             eval_every=max(1, comparison.steps // comparison.evaluations),
                             eval_blocks=comparison.eval_blocks, save_every=0, seed=seed, num_threads=num_threads,
                             output_dir=str(work_dir / f"{model}-seed{seed}"))
            metrics = train(args)
            runs.append(dict(model=model, seed=seed, parameters=metrics["parameters"],
                             train_seconds=metrics["train_seconds"], final=metrics["final_eval"],
                             curve=[(e["step"], e["loss"]) for e in metrics["eval"]], config_overrides=overrides))
            print(f"{model} seed {seed}: held-out loss {metrics['final_eval']['loss']:.4f}, "
                  f"bits/byte {metrics['final_eval']['bits_per_byte']:.4f}, {metrics['train_seconds']:.0f} s")
    return dict(comparison=comparison.__dict__, parameters=parameters,
                tokens_per_step=comparison.batch_size * comparison.block_size, runs=runs,
                summary=summarise(runs), date=started["date"], git_commit=started["git_commit"],
                uncommitted_code=started["uncommitted_code"],
                machine=machine_description())


def summarise(runs: list[dict]) -> dict:
    """Per model: mean and standard deviation over seeds of each final metric and of the training time."""
    summary = {}
    for model in dict.fromkeys(run["model"] for run in runs):
        finals = [run["final"] for run in runs if run["model"] == model]
        seconds = [run["train_seconds"] for run in runs if run["model"] == model]
        summary[model] = {name: mean_std([final[name] for final in finals]) for name in METRICS}
        summary[model]["train_seconds"] = mean_std(seconds)
        summary[model]["held_out_tokens"] = finals[0]["tokens"]
    return summary


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def write_report(results: dict, command: str, out_dir: Path) -> Path:
    """results/NAME.{json,md,png}; returns the markdown path."""
    settings = results["comparison"]
    if isinstance(settings["member"], str):  # reports written before several members could be compared
        settings = {**settings, "member": [settings["member"]]}
    comparison = Comparison(**settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / comparison.report_name
    stem.with_suffix(".json").write_text(json.dumps({**results, "command": command}, indent=1))
    plot_curves(results, stem.with_suffix(".png"))

    rows = []
    for model, stats in results["summary"].items():
        cells = [f"{stats[name][0]:.4f} ± {stats[name][1]:.4f}" for name in ("loss", "bits_per_byte")]
        accuracy = f"{stats['accuracy'][0]:.2%} ± {stats['accuracy'][1]:.2%}"
        rows.append(f"| `{model}` | {results['parameters'][model]:,} | {cells[0]} | {accuracy} | {cells[1]} | "
                    f"{stats['train_seconds'][0]:.0f} |")
    per_run = [f"| `{run['model']}` | {run['seed']} | {run['final']['loss']:.4f} | {run['final']['accuracy']:.2%} | "
               f"{run['final']['bits_per_byte']:.4f} | {run['train_seconds']:.0f} |" for run in results["runs"]]
    baseline_overrides = next(run["config_overrides"] for run in results["runs"] if run["model"] == BASELINE)
    held_out = results["summary"][BASELINE]["held_out_tokens"]
    text = f"""# {', '.join(comparison.member)} vs Llama on Shakespeare (equal parameter count)

```bash
{command}
```

Preset `{comparison.preset}`{' with ' + ' '.join(comparison.config_overrides) if comparison.config_overrides else ''};
Llama (transformers' `LlamaForCausalLM`) at the same width, depth and heads with {' '.join(baseline_overrides)} to
match the parameter count of `{comparison.member[0]}`. Byte tokenizer (259 ids), block {comparison.block_size}, batch {comparison.batch_size}
({results['tokens_per_step']:,} tokens per step), {comparison.steps} AdamW steps with warmup and cosine decay from
learning rate {comparison.learning_rate:g}, seeds {comparison.seeds}. Evaluated on the held-out plays
({held_out:,} target tokens in packed blocks; loss, accuracy and bits per byte on the same targets).
Mean ± standard deviation over the seeds.

| model | parameters | held-out loss (nats/token) | next-byte accuracy | bits per byte | train s |
|---|---|---|---|---|---|
{chr(10).join(rows)}

Per run:

| model | seed | held-out loss | next-byte accuracy | bits per byte | train s |
|---|---|---|---|---|---|
{chr(10).join(per_run)}

Machine: {results['machine']} (shared with other jobs; times are indicative only).

![validation loss curves]({stem.with_suffix('.png').name})
"""
    stem.with_suffix(".md").write_text(text)
    return stem.with_suffix(".md")


def plot_curves(results: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    colors = {}
    for run in results["runs"]:
        if not run["curve"]:  # a run shorter than its evaluation interval has only the final evaluation
            continue
        first_of_model = run["model"] not in colors
        color = colors.setdefault(run["model"], f"C{len(colors)}")
        steps, losses = zip(*run["curve"])
        axes.plot(steps, losses, color=color, marker="o", markersize=3, alpha=0.8,
                  label=run["model"] if first_of_model else None)
    axes.set_xlabel("step")
    axes.set_ylabel("held-out loss (nats per byte)")
    axes.set_title(f"validation loss on the first {results['comparison']['eval_blocks']} held-out blocks, one line per seed")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
