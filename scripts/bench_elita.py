"""elita vs transformers' LlamaForCausalLM (same width and depth): training, decoding and a very long forward.

    python scripts/bench_elita.py [--preset small] [--rounds 2]

Targets (issue 4): training throughput >= 2x Llama's at T = 8192; decode latency per token at a 32768 context
within 1.2x of that at 256; peak training memory growth exponent <= 1.1 between 4096 and 16384; one forward pass
of 131072 tokens completes. Writes docs/benchmarks/elita.{md,json,png}.
"""

import argparse

from attnlab.workbench.benchmarking import growth_exponent, isolated, markdown_table, plot_series, save_report, side_by_side

NAMES = ["elita", "llama"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", help="size preset shared by both models")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (the median round is reported)")
    parser.add_argument("--train-lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--decode-contexts", type=int, nargs="+", default=[256, 1024, 4096, 16384, 32768])
    parser.add_argument("--decode-tokens", type=int, default=20, help="timed decode steps per context")
    parser.add_argument("--long-forward", type=int, default=131072, help="elita-only forward length (0 to skip)")
    parser.add_argument("--name", default="elita", help="report name: docs/benchmarks/NAME.{md,json,png}")
    args = parser.parse_args()
    common = dict(preset=args.preset, batch_size=1, rounds=args.rounds, autocast=False)  # fp32 for both

    train = side_by_side("train", NAMES, lengths=args.train_lengths, repeats=3, **common)
    decode = side_by_side("decode", NAMES, lengths=args.decode_contexts, repeats=args.decode_tokens, warmup=3,
                          **common)
    long_forward = isolated("forward", "elita", args.preset, 1, args.long_forward, repeats=1, warmup=0,
                            autocast=False) \
        if args.long_forward else None

    ours, llama = train["elita"], train["llama"]
    train_rows = [[T, f"{ours[T].tokens_per_s:.0f}", f"{llama[T].tokens_per_s:.0f}",
                   f"{ours[T].tokens_per_s / llama[T].tokens_per_s:.2f}", f"{ours[T].peak_memory_mb:.0f}",
                   f"{llama[T].peak_memory_mb:.0f}"] for T in args.train_lengths]
    decode_rows = [[C, f"{decode['elita'][C].median_s * 1e3:.2f}", f"{decode['llama'][C].median_s * 1e3:.2f}"]
                   for C in args.decode_contexts]
    first, last = args.decode_contexts[0], args.decode_contexts[-1]
    summary = [f"Preset `{args.preset}`, batch 1, fp32; "
               f"parameters: elita {ours[args.train_lengths[0]].parameters:,}, "
               f"llama {llama[args.train_lengths[0]].parameters:,}. Each number is the median round of "
               f"{args.rounds} interleaved rounds (each a median of timed steps in a fresh process)."]
    if 8192 in ours:
        summary.append(f"Training throughput vs Llama at 8192: {ours[8192].tokens_per_s / llama[8192].tokens_per_s:.2f}x "
                       "(target >= 2x).")
    summary.append(f"Decode per token, context {last} / {first}: "
                   f"{decode['elita'][last].median_s / decode['elita'][first].median_s:.2f}x (target <= 1.2x; "
                   f"Llama {decode['llama'][last].median_s / decode['llama'][first].median_s:.2f}x).")
    if 4096 in ours and 16384 in ours:
        summary.append(f"Peak training memory growth exponent 4096 -> 16384: "
                       f"{growth_exponent(4096, ours[4096].peak_memory_mb, 16384, ours[16384].peak_memory_mb):.2f} "
                       f"(target <= 1.1; Llama "
                       f"{growth_exponent(4096, llama[4096].peak_memory_mb, 16384, llama[16384].peak_memory_mb):.2f}).")
    if long_forward:
        summary.append(f"One elita forward of {long_forward.seq_len} tokens: {long_forward.median_s:.1f} s, "
                       f"peak {long_forward.peak_memory_mb / 1024:.2f} GB (Llama not run: quadratic time).")
    report = "\n\n".join([
        "Training (AdamW step, forward + backward + update):",
        markdown_table(["T", "elita tok/s", "llama tok/s", "throughput ratio (elita / llama)", "elita peak MB",
                        "llama peak MB"], train_rows),
        "Decoding (one token after a prefill of the given context):",
        markdown_table(["context", "elita ms / token", "llama ms / token"], decode_rows),
        "\n".join(summary),
    ])
    print(report)
    records = [r for by_len in (*train.values(), *decode.values()) for r in by_len.values()]
    out = save_report(args.name, report, records + ([long_forward] if long_forward else []))
    plot_series(out / f"{args.name}.png", "elita vs Llama", "tokens (training length or decode context)", {
        "training tokens / s": {name: (args.train_lengths, [train[name][T].tokens_per_s for T in args.train_lengths])
                                for name in NAMES},
        "peak training memory (MB)": {name: (args.train_lengths,
                                             [train[name][T].peak_memory_mb for T in args.train_lengths])
                                      for name in NAMES},
        "decode ms / token": {name: (args.decode_contexts,
                                     [decode[name][C].median_s * 1e3 for C in args.decode_contexts])
                              for name in NAMES},
    })


if __name__ == "__main__":
    main()
