"""Eager against torch.compile (inductor) for every member, hybrid and Llama: forward and cached decoding.

    python scripts/bench_compile.py [--preset tiny] [--rounds 2]

Each measurement runs in a fresh process; the compiled one first makes one untimed call (its wall time, the
compilation, is reported apart). Writes results/bench-compile.{md,json}.
"""

import argparse

from attnlab.members import HYBRIDS, MEMBERS
from attnlab.workbench.benchmarking import markdown_table, save_report, side_by_side


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (the median round is reported)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=256, help="forward length and decode context")
    parser.add_argument("--models", nargs="+", default=[*MEMBERS, *HYBRIDS, "llama"])
    args = parser.parse_args()
    common = dict(preset=args.preset, batch_size=args.batch_size, lengths=[args.seq_len], rounds=args.rounds,
                  autocast=False)
    kinds = dict(forward=dict(repeats=5, warmup=2), decode=dict(repeats=20, warmup=5))
    results = {(kind, compiled): side_by_side(kind, args.models, compile=compiled, **common, **settings)
               for kind, settings in kinds.items() for compiled in (False, True)}

    rows, records = [], []
    for name in args.models:
        row = [name]
        for kind in kinds:
            eager, compiled = (results[kind, flag][name][args.seq_len] for flag in (False, True))
            records += [eager, compiled]
            row += [f"{eager.median_s * 1e3:.2f}", f"{compiled.median_s * 1e3:.2f}",
                    f"{eager.median_s / compiled.median_s:.2f}x", f"{compiled.compile_s:.0f}"]
        rows.append(row)
    report = "\n\n".join([
        f"Preset `{args.preset}`, fp32, batch {args.batch_size}: one forward of {args.seq_len} tokens, and one decoded "
        f"token after a prefill of {args.seq_len}. Median round of {args.rounds}; speed-up = eager / compiled.",
        markdown_table(["model", "forward eager ms", "compiled ms", "speed-up", "compile s",
                        "decode eager ms", "compiled ms", "speed-up", "compile s"], rows),
    ])
    print(report)
    save_report("bench-compile", report, records)


if __name__ == "__main__":
    main()
