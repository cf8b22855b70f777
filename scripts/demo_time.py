"""Time `attnlab demo` on this machine and add the run to results/demo.{json,md}: wall time, training time, steps,
held-out nats/byte, and the load average before and after (the demo's time depends on what else shares the cores).

    python scripts/demo_time.py                 # runs the demo in a temporary folder, appends the run
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from attnlab.workbench.bench import run_info
from attnlab.workbench.benchmarking import markdown_table

REPO = Path(__file__).resolve().parents[1]


def time_demo() -> dict:
    with tempfile.TemporaryDirectory() as work:
        load_before = os.getloadavg()
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "attnlab", "demo", "--output_dir", f"{work}/demo"], check=True)
        wall = time.perf_counter() - start
        metrics = json.loads(Path(work, "demo", "metrics.json").read_text())
    return dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                load_average_before=round(load_before[0], 2), load_average_after=round(os.getloadavg()[0], 2),
                wall_seconds=round(wall, 1), train_seconds=round(metrics["train_seconds"], 1),
                steps=metrics["steps"], max_steps=metrics["args"]["max_steps"],
                threads=metrics["args"]["num_threads"], subnormals=metrics["subnormals"], held_out_nats_per_byte=metrics["final_eval"]["loss"],
                time_limit=metrics["args"]["time_limit"])


def render(record: dict) -> str:
    rows = [[run["date"], f"{run['load_average_before']:.1f} / {run['load_average_after']:.1f}",
             f"{run['threads']}, subnormals {run.get('subnormals', 'flushed')}",
             f"{run['wall_seconds']:.0f}", f"{run['train_seconds']:.0f}", f"{run['steps']} of {run['max_steps']}",
             f"{run['held_out_nats_per_byte']:.3f}", f"{run['time_limit']:.0f}"] for run in record["runs"]]
    return "\n".join([
        "# The demo's time", "", "```bash", record["info"]["command"], "```", "",
        f"Machine: {record['info']['machine']} (the machine line is the timing script's own process; each run's "
        "row gives the demo's threads and subnormal setting).", "", "## Runs", "",
        markdown_table(["date", "load before / after", "demo's threads", "demo s", "training s", "steps",
                        "held-out nats/byte", "time limit s"], rows), ""])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=str(REPO / "results" / "demo"), help="record path without suffix")
    args = parser.parse_args()
    path = Path(args.output)
    record = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").exists() else {"runs": []}
    run = time_demo()
    record["info"] = {**run_info([]), "command": "python scripts/demo_time.py"}
    record["runs"].append(run)
    path.with_suffix(".json").write_text(json.dumps(record, indent=1))
    path.with_suffix(".md").write_text(render(record))
    print(f"demo: {run['wall_seconds']:.0f} s at load {run['load_average_before']:.1f}; wrote {path}.json and .md")


if __name__ == "__main__":
    main()
