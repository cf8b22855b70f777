"""depth_recurrent (seed 002) on Shakespeare: against Llama at equal compute and at equal unique parameters, and an
ablation of its techniques. Writes results/NAME.{json,md,png}.

    OMP_NUM_THREADS=1 python scripts/depth_recurrent_shakespeare.py            # the committed run (defaults)

Every run: byte tokenizer (so bits per byte are exact), the same training tokens (steps x batch x block), the
parameter-golf optimizer (`--optimizer muon`: Muon 0.04 for nn.Linear weights, AdamW 0.05 for embeddings and 0.04
for the rest, Muon weight decay 0.01, no clipping, no warmup, linear warm-down over the last 2000/6956 of the steps).
Scored on the first `eval_tokens` tokens of the held-out plays with a sliding window (each token scored once, with
at least block - stride tokens of context after the first window), before and after the int8 + zlib round trip
(attnlab/workbench/quantization.py; matrices with more than hidden^2 / 9 elements go int8, the share of parameter-
golf's 65,536 at width 768).

Models (width `hidden`, 4 query and 2 key/value heads everywhere):
- dr_all: depth_recurrent 3 blocks x 3 passes, every technique on (the submission's setting);
- dr_none: 3 x 3 plain shared blocks (per-(pass, block) controls only, no technique, no entropy bonus);
- dr_<technique>: dr_none plus one technique (the three most plausible ones: the input embedding delta, the
  temporal-difference correction, the causal state carry);
- llama9: Llama with 9 layers, SwiGLU width chosen so its MLP costs what the ReLU^2 MLP (2 x hidden) costs:
  about equal compute per token;
- llama3: Llama with 3 layers, SwiGLU width chosen to match dr_all's parameter count: equal unique parameters.
"""

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's attnlab, run from anywhere

TECHNIQUES = ["input_embedding_delta", "pass_position_modulation", "state_carry", "confidence_conditioning",
              "depth_difference", "temporal_difference", "exit_gate", "skip_connection"]
ABLATED = ["input_embedding_delta", "temporal_difference", "state_carry"]


def variants(hidden: int, block_size: int) -> dict[str, tuple[str, list[str]]]:
    shape = [f"hidden_size={hidden}", "num_attention_heads=4", "num_key_value_heads=2",
             f"max_position_embeddings={block_size}"]
    dr = [*shape, f"intermediate_size={2 * hidden}", "num_unique_layers=3", "num_passes=3", "num_hidden_layers=9",
          f"key_projection_rank={hidden // 4}", "technique_rank=4"]
    none = [*dr, *(f"{name}=false" for name in TECHNIQUES), "entropy_bonus=0.0"]
    table = {"dr_all": ("depth_recurrent", dr), "dr_none": ("depth_recurrent", none)}
    for technique in ABLATED:
        table[f"dr_{technique}"] = ("depth_recurrent", [o for o in none if o != f"{technique}=false"])
    # SwiGLU has three hidden x intermediate matrices, ReLU^2 two of hidden x 2 hidden: equal FLOPs at 4/3 hidden.
    table["llama9"] = ("llama", [*shape, "num_hidden_layers=9", f"intermediate_size={round(4 * hidden / 3)}"])
    matched = matched_intermediate(dr, shape, block_size)
    table["llama3"] = ("llama", [*shape, "num_hidden_layers=3", f"intermediate_size={matched}"])
    return table


def count(model: str, overrides: list[str], block_size: int) -> int:
    from attnlab.tokenization_attnlab import byte_tokenizer
    from attnlab.workbench.experiments import count_parameters
    from attnlab.workbench.training import build_config

    return count_parameters(build_config(model, "tiny", byte_tokenizer(), block_size, overrides))


def matched_intermediate(dr_overrides: list[str], shape: list[str], block_size: int) -> int:
    """Llama-3-layer's intermediate_size whose parameter count is closest to depth_recurrent's (linear in it)."""
    target = count("depth_recurrent", dr_overrides, block_size)
    base = [*shape, "num_hidden_layers=3"]
    one, two = (count("llama", [*base, f"intermediate_size={i}"], block_size) for i in (1, 2))
    return max(1, round(1 + (target - one) / (two - one)))


def run_one(job: dict) -> dict:
    """Train one (variant, seed), then score it before and after the int8 round trip. Runs in a worker process."""
    import torch
    from transformers import AutoModelForCausalLM

    import attnlab  # noqa: F401  (registers the members)
    from attnlab.tokenization_attnlab import byte_tokenizer, token_byte_lengths
    from attnlab.workbench.evaluation import evaluate_sliding_window
    from attnlab.workbench.quantization import load_quantized, save_quantized
    from attnlab.workbench.training import TrainArgs, train

    torch.set_num_threads(1)
    work = Path(job["work_dir"]) / f"{job['variant']}-seed{job['seed']}"
    args = TrainArgs(model=job["model"], preset="tiny", config_overrides=job["overrides"],
                     block_size=job["block_size"], batch_size=job["batch_size"], max_steps=job["steps"],
                     optimizer="muon", learning_rate=0.04, weight_decay=0.01, max_grad_norm=0.0, warmup_ratio=0.0,
                     eval_every=0, save_every=0, final_eval_blocks=4, seed=job["seed"], num_threads=1,
                     output_dir=str(work / "model"))
    metrics = train(args)
    tokenizer = byte_tokenizer()
    byte_lengths = token_byte_lengths(tokenizer)
    stream = torch.tensor(job["eval_ids"])

    def score(folder):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        start = time.perf_counter()
        result = evaluate_sliding_window(model, stream, byte_lengths, window=job["block_size"],
                                         stride=job["stride"], batch_size=16)
        return result, time.perf_counter() - start

    before, eval_seconds = score(work / "model")
    model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.float32)
    hidden = model.config.hidden_size
    artifact_bytes = save_quantized(model, work / "model.int8.zlib", keep_float_max_numel=hidden * hidden // 9)
    after, _ = score(load_quantized(work / "model.int8.zlib", work / "model", work / "dequantized"))
    result = dict(variant=job["variant"], model=job["model"], seed=job["seed"], parameters=metrics["parameters"],
                  train_tokens=metrics["tokens"], train_seconds=metrics["train_seconds"],
                  tokens_per_second=metrics["tokens"] / metrics["train_seconds"],
                  bpb=before.bits_per_byte, bpb_int8=after.bits_per_byte, scored_tokens=before.tokens,
                  artifact_bytes=artifact_bytes,
                  safetensors_bytes=(work / "model" / "model.safetensors").stat().st_size,
                  eval_seconds=eval_seconds, train_loss=metrics["train_loss"], config_overrides=job["overrides"])
    print(f"{job['variant']} seed {job['seed']}: bpb {result['bpb']:.4f} -> int8 {result['bpb_int8']:.4f}, "
          f"{artifact_bytes:,} B, {result['tokens_per_second']:,.0f} tok/s", flush=True)
    return result


def held_out_ids(num_tokens: int) -> list[int]:
    """The first num_tokens of the held-out plays (documents joined by eos), byte ids."""
    from attnlab.tokenization_attnlab import byte_tokenizer
    from attnlab.workbench.data import shakespeare_splits

    tokenizer = byte_tokenizer()
    ids = []
    for text in shakespeare_splits()["validation"]["text"]:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) >= num_tokens:
            break
    return ids[:num_tokens]


def summarise(runs: list[dict]) -> dict:
    summary = {}
    for variant in dict.fromkeys(run["variant"] for run in runs):
        mine = [run for run in runs if run["variant"] == variant]
        summary[variant] = {key: mean_std([run[key] for run in mine])
                            for key in ("bpb", "bpb_int8", "artifact_bytes", "tokens_per_second", "train_seconds")}
        summary[variant]["quantization_cost"] = mean_std([run["bpb_int8"] - run["bpb"] for run in mine])
        summary[variant].update(parameters=mine[0]["parameters"], seeds=[run["seed"] for run in mine],
                                model=mine[0]["model"])
    return summary


def mean_std(values):
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def write_report(results: dict, out_dir: Path, name: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / name
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1))
    plot(results, stem.with_suffix(".png"))
    rows = []
    for variant, s in results["summary"].items():
        rows.append(f"| `{variant}` | {s['parameters']:,} | {s['bpb'][0]:.4f} ± {s['bpb'][1]:.4f} | "
                    f"{s['bpb_int8'][0]:.4f} ± {s['bpb_int8'][1]:.4f} | {s['quantization_cost'][0]:+.4f} | "
                    f"{s['artifact_bytes'][0]:,.0f} | {s['tokens_per_second'][0]:,.0f} | {len(s['seeds'])} |")
    per_run = [f"| `{r['variant']}` | {r['seed']} | {r['bpb']:.4f} | {r['bpb_int8']:.4f} | {r['artifact_bytes']:,} | "
               f"{r['tokens_per_second']:,.0f} | {r['train_seconds']:.0f} |" for r in results["runs"]]
    settings = results["settings"]
    text = f"""# depth_recurrent (seed 002) vs Llama on Shakespeare, and an ablation of its techniques

```bash
{results['command']}
```

Date {results['date']}; commit {results.get('git_commit')}; machine: {results['machine']}, {settings['workers']} runs at a time, one thread each; **the
machine was shared with other jobs**, so tokens/s are indicative only. Byte tokenizer, block {settings['block_size']},
batch {settings['batch_size']}, {settings['steps']} steps = {results['train_tokens']:,} training tokens for every run;
`--optimizer muon` (parameter-golf's rates, no warmup, linear warm-down). Width {settings['hidden']}, 4 query / 2
key-value heads. Bits per byte on the first {settings['eval_tokens']:,} tokens of the held-out plays, sliding window
{settings['block_size']} / stride {settings['stride']} (every token scored once, with at least
{settings['block_size'] - settings['stride']} tokens of context after the first window), before and after the int8 + zlib round trip (artifact = compressed
weights only, code not counted). Mean ± standard deviation over the seeds.

| model | parameters | bits/byte | bits/byte after int8 | int8 cost | artifact bytes | train tokens/s | seeds |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

`dr_*`: depth_recurrent 3 blocks x 3 passes (`dr_all`: every technique; `dr_none`: plain shared blocks with the
per-(pass, block) controls; `dr_<technique>`: `dr_none` plus that technique alone). `llama9`: 9 layers at about equal
compute per token; `llama3`: 3 layers at about equal (unique) parameters. Llama keeps its RoPE base 10000 (the
member: 500000, the submission's). The training losses in the figure include each model's regularisers (`dr_all`'s
entropy bonus lowers it), the held-out numbers do not.

Per run:

| model | seed | bits/byte | after int8 | artifact bytes | tokens/s | train s |
|---|---|---|---|---|---|---|
{chr(10).join(per_run)}

![training loss and held-out bits per byte]({stem.with_suffix('.png').name})
"""
    stem.with_suffix(".md").write_text(text)
    return stem.with_suffix(".md")


def plot(results: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (curves, bars) = plt.subplots(1, 2, figsize=(12, 4.5))
    variants_seen = list(results["summary"])
    for index, variant in enumerate(variants_seen):
        for run in (r for r in results["runs"] if r["variant"] == variant):
            losses = run["train_loss"]
            window = max(1, len(losses) // 20)
            smooth = [statistics.mean(losses[max(0, i - window + 1):i + 1]) for i in range(len(losses))]
            curves.plot(range(1, len(losses) + 1), smooth, color=f"C{index}", alpha=0.7,
                        label=variant if run["seed"] == results["summary"][variant]["seeds"][0] else None)
    curves.set_xlabel("step")
    curves.set_ylabel("training loss, nats/byte (running mean)")
    curves.set_ylim(top=3.0)
    curves.grid(alpha=0.3)
    curves.legend(fontsize=8)
    for index, variant in enumerate(variants_seen):
        s = results["summary"][variant]
        bars.bar(index - 0.2, s["bpb"][0], width=0.4, color=f"C{index}", yerr=s["bpb"][1])
        bars.bar(index + 0.2, s["bpb_int8"][0], width=0.4, color=f"C{index}", alpha=0.5, yerr=s["bpb_int8"][1])
    bars.set_xticks(range(len(variants_seen)), variants_seen, rotation=30, ha="right", fontsize=8)
    low = min(min(s["bpb"][0], s["bpb_int8"][0]) for s in results["summary"].values())
    high = max(max(s["bpb"][0], s["bpb_int8"][0]) for s in results["summary"].values())
    bars.set_ylim(low - 0.05, high + 0.05)
    bars.set_ylabel("held-out bits per byte (solid: fp32, light: after int8)")
    bars.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--block_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of dr_all, llama9, llama3")
    parser.add_argument("--ablation_seeds", type=int, nargs="+", default=[0, 1], help="seeds of the other dr_*")
    parser.add_argument("--eval_tokens", type=int, default=32768)
    parser.add_argument("--stride", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these variants")
    parser.add_argument("--name", default="depth_recurrent_shakespeare")
    args = parser.parse_args()

    from attnlab.workbench.benchmarking import machine_description, provenance_fields

    started = provenance_fields()

    table = variants(args.hidden, args.block_size)
    eval_ids = held_out_ids(args.eval_tokens)
    with tempfile.TemporaryDirectory() as work_dir:
        jobs = [dict(variant=variant, model=model, overrides=overrides, seed=seed, work_dir=work_dir,
                     block_size=args.block_size, batch_size=args.batch_size, steps=args.steps, stride=args.stride,
                     eval_ids=eval_ids)
                for variant, (model, overrides) in table.items() if args.only is None or variant in args.only
                for seed in (args.seeds if variant in ("dr_all", "llama9", "llama3") else args.ablation_seeds)]
        start = time.perf_counter()
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            runs = list(pool.map(run_one, jobs))
        wall = time.perf_counter() - start
    machine = machine_description(threads="1 thread per run")
    results = dict(command="OMP_NUM_THREADS=1 " + shlex.join(["python", "scripts/depth_recurrent_shakespeare.py",
                                                                *sys.argv[1:]]),
                   date=started["date"], git_commit=started["git_commit"],
                   uncommitted_code=started["uncommitted_code"], machine=machine,
                   wall_seconds=round(wall), settings=vars(args),
                   train_tokens=args.steps * args.batch_size * args.block_size, runs=runs, summary=summarise(runs))
    report = write_report(results, REPO / "results", args.name)
    print(report.read_text())


if __name__ == "__main__":
    main()
