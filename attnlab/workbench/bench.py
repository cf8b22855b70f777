"""`attnlab bench`: every registered member, every hybrid and transformers' Llama, measured the same way, side by side.

    attnlab bench speed   # training / forward / decode speed and peak memory against length (+ --compile, bf16)
    attnlab bench mqar    # multi-query associative recall (zoology's definition), 2-layer models, lr sweep
    attnlab bench copy    # seed 003's copy task, fixed-offset and variable-offset forms
    attnlab bench lm      # held-out Shakespeare at equal parameters and tokens, lr sweep, seeds at the best rate
    attnlab bench subnormal   # whose training step depends on subnormal arithmetic (flushed vs kept, counts)
    attnlab bench all --quick   # every section at smoke-test size (a few minutes on 2 cores); numbers meaningless

Each section writes `<output-dir>/<name>.json` (settings, every measurement or run, the command, machine, date, git
commit and load average), `<name>.md` (the tables) and `<name>.png` under `results/` by default. The defaults are
sized for a 2-core CPU; the same commands with larger settings (documented in docs/notes/bench.md) scale to a GPU.

Llama is transformers' `LlamaForCausalLM` at the same width, depth and heads, with its `intermediate_size` set so
that its parameter count is the mean of the compared attnlab models' counts (`--llama-match shape` keeps the
preset's instead, as the older per-member benchmarks did). Hybrids are laid out by the registry's one rule
(`mixers.hybrid_mixer_types`), so a 2-layer hybrid is [member, attention], as `attnlab train` builds it.
`--mixer package.module:Class` adds a mixer written outside attnlab: a stack of it and its hybrid with attention.

Each section lives in its own module: bench_speed, bench_mqar, bench_copy, bench_lm, bench_subnormal (and
bench_timeseries, its own command line); what they share (models at a shape, the task loop, reports) is in
bench_common.
"""

import argparse
import sys
import time
from pathlib import Path

from ..members import get_member
from . import bench_copy, bench_lm, bench_mqar, bench_speed, bench_subnormal
from .bench_common import DEFAULT_MODELS, run_info, write_report
from .subnormals import workbench_flush

SECTIONS = {"speed": bench_speed.speed, "mqar": bench_mqar.mqar, "copy": bench_copy.copy, "lm": bench_lm.lm,
            "subnormal": bench_subnormal.subnormal_section}

# --quick: every section at a size that only checks the plumbing (in-process speed measurements, a few steps).
QUICK = {"speed": bench_speed.QUICK, "mqar": bench_mqar.QUICK, "copy": bench_copy.QUICK, "lm": bench_lm.QUICK,
         "subnormal": bench_subnormal.QUICK}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnlab bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sections = parser.add_subparsers(dest="section", required=True)

    def section(name: str, help: str):
        sub = sections.add_parser(name, help=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        sub.add_argument("--models", nargs="+", default=DEFAULT_MODELS,
                         help="members, hybrids, stacks, llama, or mixers by import path (pkg.module:Class, "
                              "pkg.module:Class+attention for its hybrid)")
        sub.add_argument("--mixer", action="append", default=[], metavar="package.module:Class",
                         help="also measure this mixer: a stack of it and its hybrid with attention (repeatable)")
        sub.add_argument("--llama-match", choices=["params", "shape"], default="params",
                         help="params: Llama's MLP sized to the mean parameter count of the others; shape: the "
                              "preset's MLP (the older per-member benchmarks)")
        sub.add_argument("--llama-match-to", nargs="+", default=None, metavar="MODEL",
                         help="with --llama-match params: match Llama to the mean of these models instead of the "
                              "compared ones (a grid split across runs keeps one Llama)")
        sub.add_argument("--output-dir", default=None,
                         help="where NAME.json, NAME.md and the PNGs go (default: results, or outputs/bench-quick)")
        sub.add_argument("--name", default=None, help="report name (default: the section's name)")
        sub.add_argument("--quick", action="store_true", help="smoke-test sizes (numbers meaningless)")
        sub.add_argument("--keep-subnormals", action="store_true",
                         help="do not flush subnormal floats to zero (see docs/subnormals.md)")
        return sub

    bench_speed.add_arguments(section("speed", "training, forward and decode speed and peak memory against length"))
    bench_mqar.add_arguments(section("mqar", "multi-query associative recall, zoology's definition"))
    bench_copy.add_arguments(section("copy", "seed 003's copy task, fixed- and variable-offset"))
    bench_lm.add_arguments(section("lm", "held-out Shakespeare at equal parameters and tokens"))
    bench_subnormal.add_arguments(section("subnormal", "training step time with subnormals kept against flushed, and "
                                                       "the subnormals in each model's attention"))

    every = sections.add_parser("all", help="every section in turn with its defaults (use with --quick)")
    every.add_argument("--quick", action="store_true")
    every.add_argument("--output-dir", default=None)
    return parser


def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["timeseries"]:  # forecasting on many real series: its own module and options
        from .bench_timeseries import main as timeseries_main

        return timeseries_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.section == "all":
        common = (["--output-dir", args.output_dir] if args.output_dir else []) + (["--quick"] if args.quick else [])
        for name in SECTIONS:
            main([name, *common])
        return
    # Smoke-test reports stay out of results/ (and out of git: outputs/ is ignored).
    args.output_dir = args.output_dir or ("outputs/bench-quick" if args.quick else "results")
    if args.quick:
        for key, value in QUICK[args.section].items():
            setattr(args, key, value)
    args.name = args.name or args.section + ("-quick" if args.quick else "")
    args.models = list(dict.fromkeys([*args.models, *(m for mixer in args.mixer for m in (mixer, f"{mixer}+attention"))]))
    if args.llama_match_to is not None and args.llama_match != "params":
        parser.error("--llama-match-to sizes Llama by parameters: it needs --llama-match params")
    if args.llama_match_to is not None and not set(args.llama_match_to) - {"llama"}:
        parser.error("--llama-match-to: name the models (other than llama) whose mean parameter count Llama matches")
    for name in [*args.models, *(args.llama_match_to or [])]:
        get_member(name)  # an unknown name or a mixer path that does not import: one line, before any work
    if args.quick and args.section == "lm":  # a few kB of the plays, written only once the options are accepted
        args.work_dir = str(Path(args.output_dir) / "bench-lm-runs")
        args.train_files, args.validation_files = bench_lm.quick_text_files(Path(args.work_dir))
    # After the option checks (a bad option answers with its error alone), before any tensor work, so that torch's
    # threads inherit it.
    workbench_flush(args.keep_subnormals)
    info = run_info(argv)
    start = time.perf_counter()
    data = SECTIONS[args.section](args, info)
    info["seconds"] = round(time.perf_counter() - start, 1)
    sections = data.pop("sections")
    settings = {k: v for k, v in vars(args).items() if k != "section"}
    path = write_report(Path(args.output_dir), args.name, info, settings, data, sections, args.quick)
    print(f"{args.section}: {info['seconds']:.0f} s; wrote {path} and {path.with_suffix('.json')}")
    return path


if __name__ == "__main__":
    main()
