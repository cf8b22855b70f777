"""Seed 000's 99.8-100% accuracy, reproduced as a metric artefact: accuracy counting padded positions vs real targets.

    python scripts/seed000_padding_accuracy.py [--corpus ../shared/data/shakespeare_complete.txt]
                                               [--lengths 512 1024 2048] [--steps 60]

Trains a tiny evolving model on 50 short Shakespeare passages right-padded to each length (see
attnlab/workbench/padding_accuracy.py), evaluates on 64 held-out passages from the end of the corpus, and writes
results/seed000_padding_accuracy.{md,json}.
"""

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from attnlab.workbench.benchmarking import machine_description
from attnlab.workbench.padding_accuracy import markdown, run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="../shared/data/shakespeare_complete.txt", help="plain-text corpus")
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048], help="padded lengths")
    parser.add_argument("--steps", type=int, default=60, help="training steps (batch 8) per length")
    args = parser.parse_args()

    results = []
    for seq_len in args.lengths:
        results.append(run(args.corpus, seq_len, steps=args.steps))
        print(results[-1], flush=True)
    report = (f"{markdown(results)}\n\nTiny evolving model (width 64, 2 layers, 4 heads), byte tokens, 50 training "
              f"passages, {args.steps} AdamW steps of batch 8, loss on every position (pads included), 64 held-out "
              f"passages. Corpus: {args.corpus}. Machine: {machine_description()}.")
    print(report)
    out = Path("results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "seed000_padding_accuracy.md").write_text(report + "\n")
    (out / "seed000_padding_accuracy.json").write_text(json.dumps([asdict(r) for r in results], indent=1))


if __name__ == "__main__":
    main()
