"""Evolving's training step against Llama's (matched parameters), with subnormals kept and flushed, side by side in
one process and one thread, interleaved rounds. Writes results/subnormals-ratio.{json,md}.

    OMP_NUM_THREADS=1 python scripts/subnormal_ratio.py --lengths 512 2048 4096
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from attnlab.workbench.bench_common import _preset_values, build_model, run_info, shape_overrides, write_report
from attnlab.workbench.bench_subnormal import shakespeare_batches
from attnlab.workbench.benchmarking import markdown_table
from attnlab.workbench.subnormals import flush_denormal


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="small")
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 4096])
    parser.add_argument("--models", nargs="+", default=["evolving", "llama"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output-dir", default="results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = run_info([])
    info["command"] = "OMP_NUM_THREADS=1 python scripts/subnormal_ratio.py " + " ".join(sys.argv[1:])
    values = dict(_preset_values(args.preset, 256), max_position_embeddings=max(args.lengths))
    overrides, counts = shape_overrides(args.models, values, "params")
    models = {name: build_model(name, {**values, **overrides[name]}, seed=0).train() for name in args.models}
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, model in models.items()}
    times, records, rows = {}, [], []

    def step(name, ids):
        models[name](input_ids=ids, labels=ids, use_cache=False).loss.backward()
        optimizers[name].step()
        optimizers[name].zero_grad(set_to_none=True)

    for length in args.lengths:
        ids = next(shakespeare_batches(1, length, seed=1))
        for name in args.models:  # warm-up (and the optimizer state)
            step(name, ids)
        for _ in range(args.rounds):
            for name in args.models:
                for flushed in (False, True):
                    with flush_denormal(flushed):
                        start = time.process_time()
                        step(name, ids)
                        times.setdefault((length, name, flushed), []).append(time.process_time() - start)
        median = {key: statistics.median(value) for key, value in times.items() if key[0] == length}
        for flushed in (False, True):
            record = dict(seq_len=length, flushed=flushed, **{f"{name}_cpu_s": median[(length, name, flushed)]
                                                              for name in args.models})
            record["ratio"] = median[(length, args.models[0], flushed)] / median[(length, args.models[-1], flushed)]
            records.append(record)
            rows.append([length, "flushed" if flushed else "kept",
                         *[f"{median[(length, name, flushed)] * 1e3:.0f}" for name in args.models],
                         f"{record['ratio']:.2f}"])
            print(rows[-1], flush=True)
    sections = [
        f"Preset `{args.preset}`, fp32, batch 1, one thread; an AdamW training step (forward, backward, update), "
        f"CPU time of this process (less disturbed by other jobs than wall time), median of {args.rounds} interleaved "
        f"rounds. Parameters: " + ", ".join(f"{name} {counts[name]:,}" for name in args.models) + ".",
        markdown_table(["T", "subnormals", *[f"{name} ms" for name in args.models],
                        f"{args.models[0]} / {args.models[-1]}"], rows),
    ]
    write_report(Path(args.output_dir), "subnormals-ratio", info, vars(args), dict(records=records), sections,
                 quick=False)


if __name__ == "__main__":
    main()
