"""Eager forward+backward of elita and evolving with their exportable scans against the loop forms they replace (a
Python loop over chunks with cummax; a slice-then-cat memory shift), side by side in one process, interleaved.

    OMP_NUM_THREADS=1 python scripts/bench_export_loops.py --old-elita OLD.py --old-evolving OLD.py

OLD.py are modeling files with the loop forms (`git show 720af2e:attnlab/modeling_elita.py`, and likewise for
evolving). Writes results/export-loop-speed.{json,md}.
"""

import argparse
import importlib.util
import json
import os
import statistics
import time
from pathlib import Path

import torch

import attnlab.modeling_elita as elita_module
import attnlab.modeling_evolving as evolving_module
from attnlab.members import MEMBERS
from attnlab.workbench.benchmarking import machine_facts, provenance_fields


def load(path, name):
    spec = importlib.util.spec_from_file_location(f"attnlab.{name}", path, submodule_search_locations=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "attnlab"
    spec.loader.exec_module(module)
    return module


def step_seconds(model, input_ids):
    start = time.perf_counter()
    model(input_ids=input_ids, labels=input_ids, use_cache=False).loss.backward()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--old-elita", required=True)
    parser.add_argument("--old-evolving", required=True)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default="results/export-loop-speed")
    args = parser.parse_args()
    torch.manual_seed(0)
    started = provenance_fields()
    old = {"elita": (elita_module, "cumulative_softmax", load(args.old_elita, "old_elita").cumulative_softmax),
           "evolving": (evolving_module, "evolve", load(args.old_evolving, "old_evolving").evolve)}
    rows = []
    for name, (module, function, old_function) in old.items():
        new_function = getattr(module, function)
        for length in (128, 512):
            config = MEMBERS[name].preset_config("tiny", vocab_size=256, max_position_embeddings=1024)
            model = MEMBERS[name].causal_lm_class(config).train()
            input_ids = torch.randint(0, 256, (2, length))
            times = {"old": [], "new": []}
            for round_ in range(args.rounds + 1):
                for label, fn in (("old", old_function), ("new", new_function)):
                    setattr(module, function, fn)
                    seconds = step_seconds(model, input_ids)
                    if round_:  # the first round warms up
                        times[label].append(seconds)
            setattr(module, function, new_function)
            old_s, new_s = statistics.median(times["old"]), statistics.median(times["new"])
            rows.append(dict(member=name, preset="tiny", batch=2, length=length, old_s=old_s, new_s=new_s,
                             new_over_old=new_s / old_s))
            print(rows[-1], flush=True)
    record = dict(
        command="OMP_NUM_THREADS=1 python scripts/bench_export_loops.py --old-elita ... --old-evolving ...",
        **started, machine_facts=machine_facts(), omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
        load_average=os.getloadavg(),
        rounds=args.rounds, rows=rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = ["# Eager forward+backward: scans before and after the export work", "",
             f"`{record['command']}`, {record['date']}, commit {record['git_commit']}, {record['machine']}, "
             f"load average {', '.join(f'{x:.1f}' for x in record['load_average'])}; median of {args.rounds} "
             "interleaved rounds.", "", "| member | preset | batch | length | old s | new s | new / old |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['member']} | {r['preset']} | {r['batch']} | {r['length']} | {r['old_s']:.4f} | {r['new_s']:.4f} | "
              f"{r['new_over_old']:.2f} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
