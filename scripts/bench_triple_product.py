"""triple_product vs transformers' LlamaForCausalLM (same width and depth): training speed and peak memory.

    python scripts/bench_triple_product.py [--preset small] [--lengths 512 1024 2048 4096]

Targets (issue 2): peak training memory at 4096 <= 5x that at 1024; step time within 3x of Llama's at 1024.
Writes docs/benchmarks/triple_product.{md,json,png}.
"""

import argparse

from attnlab.workbench.benchmarking import growth_exponent, isolated, markdown_table, plot_series, save_report


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", help="size preset shared by both models")
    parser.add_argument("--batch-size", type=int, default=1, help="sequences per training step")
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096], help="sequence lengths")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per measurement (median reported)")
    args = parser.parse_args()

    results = {"triple_product": {}, "llama": {}}
    for seq_len in args.lengths:
        for name in results:  # alternate models at each length so machine load affects both alike
            results[name][seq_len] = isolated("train", name, args.preset, args.batch_size, seq_len,
                                              repeats=args.repeats)
            r = results[name][seq_len]
            print(f"{name:15s} T={seq_len:5d} step {r.median_s * 1e3:8.1f} ms  peak {r.peak_memory_mb:8.1f} MB")

    ours, llama = results["triple_product"], results["llama"]
    rows = [[T, f"{ours[T].tokens_per_s:.0f}", f"{llama[T].tokens_per_s:.0f}",
             f"{ours[T].median_s / llama[T].median_s:.2f}", f"{ours[T].peak_memory_mb:.0f}",
             f"{llama[T].peak_memory_mb:.0f}"] for T in args.lengths]
    table = markdown_table(["T", "triple_product tok/s", "llama tok/s", "step time ratio (ours / llama)",
                            "triple_product peak MB", "llama peak MB"], rows)
    summary = [f"Preset `{args.preset}`, batch {args.batch_size}, AdamW steps, bf16 autocast: "
               f"{ours[args.lengths[0]].autocast_bf16}; parameters: triple_product "
               f"{ours[args.lengths[0]].parameters:,}, llama {llama[args.lengths[0]].parameters:,}."]
    if 1024 in ours and 4096 in ours:
        memory_ratio = ours[4096].peak_memory_mb / ours[1024].peak_memory_mb
        summary.append(f"Peak memory 4096 / 1024: {memory_ratio:.2f}x (target <= 5x; growth exponent "
                       f"{growth_exponent(1024, ours[1024].peak_memory_mb, 4096, ours[4096].peak_memory_mb):.2f}).")
        summary.append(f"Step time vs Llama at 1024: {ours[1024].median_s / llama[1024].median_s:.2f}x (target <= 3x).")
    report = table + "\n\n" + "\n".join(summary)
    print(report)
    out = save_report("triple_product", report, [r for by_len in results.values() for r in by_len.values()])
    plot_series(out / "triple_product.png", "triple_product vs Llama: training", "sequence length", {
        "tokens / s": {name: (args.lengths, [by_len[T].tokens_per_s for T in args.lengths])
                       for name, by_len in results.items()},
        "peak step memory (MB)": {name: (args.lengths, [by_len[T].peak_memory_mb for T in args.lengths])
                                  for name, by_len in results.items()},
    })


if __name__ == "__main__":
    main()
