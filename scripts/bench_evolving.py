"""evolving vs the seed's literal per-position loop and vs transformers' LlamaForCausalLM: training step time.

    python scripts/bench_evolving.py [--device cpu|cuda] [--preset small] [--rounds 3]    (from the repo root)

Targets (issue 5): at least 20x faster than the literal loop at T=2048; within 1.3x of Llama's step time at
T=512..4096. Three views of the first: the whole model (the seed's loop swapped in as every layer's mixer, same
weights), one attention layer alone, and the evolution step alone (q~, k~ from q, k: our scan vs the loop), all
forward + backward. Rounds interleave every model at every length, each measurement in a fresh process; the
tables report the median over rounds. Writes docs/benchmarks/evolving.{md,json,png}.
"""

import argparse
import statistics

import torch

from attnlab.workbench.benchmarking import bf16_autocast_is_fast, isolated, markdown_table, median_seconds, plot_series, save_report
from attnlab.members import get_member
from attnlab.modeling_evolving import EvolvingAttention, evolve
from attnlab.workbench.seed_reference.seed_000_evolving import seed_evolution

SEED_LOOP = "attnlab.workbench.seed_reference.seed_000_evolving:SeedEvolvingAttention"


def evolution_step_seconds(preset: str, seq_len: int, device: torch.device, repeats: int) -> dict[str, float]:
    """Forward + backward of the evolution step alone at the last layer (fp32, as the model runs it), ours and the
    seed's loop, interleaved."""
    config = get_member("evolving").preset_config(preset)
    torch.manual_seed(0)
    attention = EvolvingAttention(config, config.num_hidden_layers - 1).to(device)
    torch.nn.init.normal_(attention.evolution_weights)
    torch.nn.init.constant_(attention.decay_parameter, attention.initial_decay_parameter())
    shape = (1, config.num_attention_heads, seq_len, config.head_dim)
    q = torch.randn(shape, device=device, requires_grad=True)
    k = torch.randn(shape, device=device, requires_grad=True)
    positions = torch.arange(seq_len, device=device)[None]

    def ours():
        q_evolved, k_evolved = evolve(q, k, attention.temporal_weights(positions), attention.decay(),
                                      chunk_size=config.scan_chunk_size)
        (q_evolved.square().sum() + k_evolved.square().sum()).backward()

    def seed():
        q_evolved, k_evolved = seed_evolution(q, k, attention.evolution_weights, config.evolution_rate,
                                              attention.layer_idx, attention.decay())
        (q_evolved.square().sum() + k_evolved.square().sum()).backward()

    times = {"ours": [], "seed": []}
    for _ in range(repeats):
        times["ours"].append(median_seconds(ours, device, repeats=1, warmup=1))
        times["seed"].append(median_seconds(seed, device, repeats=1, warmup=1))
    return {name: statistics.median(values) for name, values in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--preset", default="small", help="size preset shared by all models")
    parser.add_argument("--batch-size", type=int, default=1, help="sequences per training step")
    parser.add_argument("--llama-lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--loop-lengths", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median over rounds reported)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed steps per measurement, after one warm-up step (median taken)")
    args = parser.parse_args()
    device = torch.device(args.device)
    autocast = bf16_autocast_is_fast(device.type)  # decided once, so every measurement runs in the same precision

    plan = [("evolving", None, "train", T) for T in sorted(set(args.llama_lengths + args.loop_lengths))]
    plan += [("llama", None, "train", T) for T in args.llama_lengths]
    plan += [("evolving", SEED_LOOP, "train", T) for T in args.loop_lengths]
    plan += [("evolving", mixer, "mixer_train", T) for T in args.loop_lengths for mixer in (None, SEED_LOOP)]
    records, runs, evolution = [], {}, {}
    for round_index in range(args.rounds):
        for name, mixer, kind, T in plan:
            r = isolated(kind, name, args.preset, args.batch_size, T, repeats=args.repeats, device=args.device,
                         autocast=autocast, mixer=mixer)
            records.append(r)
            runs.setdefault((name, mixer, kind, T), []).append(r)
            print(f"round {round_index} {kind:11s} {name:8s} {'seed loop' if mixer else '':9s} T={T:5d} "
                  f"{r.median_s * 1e3:9.1f} ms", flush=True)
        for T in args.loop_lengths:
            evolution.setdefault(T, []).append(evolution_step_seconds(args.preset, T, device, args.repeats))

    def seconds(name, T, mixer=None, kind="train"):
        return statistics.median(r.median_s for r in runs[(name, mixer, kind, T)])

    def peak(name, T):
        return statistics.median(r.peak_memory_mb for r in runs[(name, None, "train", T)])

    first = runs[plan[0]][0]
    llama_rows = [[T, f"{seconds('evolving', T) * 1e3:.0f}", f"{seconds('llama', T) * 1e3:.0f}",
                   f"{seconds('evolving', T) / seconds('llama', T):.2f}", f"{peak('evolving', T):.0f}",
                   f"{peak('llama', T):.0f}"] for T in args.llama_lengths]
    loop_rows = []
    for T in args.loop_lengths:
        evo_ours = statistics.median(e["ours"] for e in evolution[T])
        evo_seed = statistics.median(e["seed"] for e in evolution[T])
        loop_rows.append([
            T, f"{seconds('evolving', T) * 1e3:.0f}", f"{seconds('evolving', T, SEED_LOOP) * 1e3:.0f}",
            f"{seconds('evolving', T, SEED_LOOP) / seconds('evolving', T):.1f}",
            f"{seconds('evolving', T, SEED_LOOP, 'mixer_train') / seconds('evolving', T, None, 'mixer_train'):.1f}",
            f"{evo_ours * 1e3:.1f}", f"{evo_seed * 1e3:.1f}", f"{evo_seed / evo_ours:.1f}"])
    report = "\n\n".join([
        f"Preset `{args.preset}`, batch {args.batch_size}, device {args.device}, bf16 autocast: "
        f"{first.autocast_bf16}; AdamW training steps; median over {args.rounds} interleaved rounds of the median of "
        f"{args.repeats} steps; parameters: evolving {first.parameters:,}, llama "
        f"{runs[('llama', None, 'train', args.llama_lengths[0])][0].parameters:,}.",
        "Against transformers' LlamaForCausalLM (same width and depth; target: ratio <= 1.3):",
        markdown_table(["T", "evolving step ms", "llama step ms", "ratio (evolving / llama)", "evolving peak MB",
                        "llama peak MB"], llama_rows),
        "Against the seed's literal per-position loop (target: >= 20x at 2048), forward + backward:",
        markdown_table(["T", "evolving step ms", "seed-loop model step ms", "speed-up whole model",
                        "speed-up one attention layer", "evolution step ms (ours)", "evolution step ms (seed loop)",
                        "speed-up evolution step"], loop_rows),
    ])
    print(report)
    out = save_report("evolving", report, records)
    lengths = args.llama_lengths
    plot_series(out / "evolving.png", "evolving vs Llama and the seed's loop: training step", "sequence length", {
        "step time (s)": {
            "evolving": (lengths, [seconds("evolving", T) for T in lengths]),
            "llama": (lengths, [seconds("llama", T) for T in lengths]),
            "evolving with the seed's loop": (args.loop_lengths,
                                              [seconds("evolving", T, SEED_LOOP) for T in args.loop_lengths]),
        },
        "peak step memory (MB)": {name: (lengths, [peak(name, T) for T in lengths]) for name in ("evolving", "llama")},
    })


if __name__ == "__main__":
    main()
