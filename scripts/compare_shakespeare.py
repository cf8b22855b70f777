"""Train a member and the Llama baseline at equal parameter count on Shakespeare; write results/NAME.*

    python scripts/compare_shakespeare.py --member triple_product --preset tiny --seeds 0 1 --steps 300

Defaults (tiny preset, block 256, batch 16 = 4,096 tokens per step, 300 steps, seeds 0 and 1) run the 2 models x
2 seeds in about 10 minutes on 2 CPU cores.
"""

import shlex
import sys
import tempfile
from pathlib import Path

from transformers import HfArgumentParser

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's attnlab, run from anywhere
from attnlab.workbench.experiments import Comparison, run, write_report  # noqa: E402


def main():
    (comparison,) = HfArgumentParser([Comparison]).parse_args_into_dataclasses()
    with tempfile.TemporaryDirectory() as work_dir:
        results = run(comparison, Path(work_dir))
    command = shlex.join(["python", "scripts/compare_shakespeare.py", *sys.argv[1:]])
    report = write_report(results, command, Path(__file__).resolve().parents[1] / "results")
    print(report.read_text())
    print(f"wrote {report.with_suffix('.*')}")


if __name__ == "__main__":
    main()
