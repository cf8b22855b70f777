"""`attnlab bench speed`: training step, forward and cached decoding against length, with peak memory, in
interleaved rounds of fresh processes (see docs/workbench.md)."""

import statistics
import subprocess
from dataclasses import asdict
from pathlib import Path

import torch

from ..members import get_member
from .bench_common import BASELINE, _preset_values, build_config, fitted_exponent, fmt, shape_overrides
from .benchmarking import bf16_autocast_is_fast, isolated, markdown_table, measure, peak_fraction_section, plot_series


def is_linear(name: str, preset: str) -> bool:
    """Whether every mixer keeps a fixed-size state (no attention over the whole past), so long lengths are fair."""
    member = get_member(name)
    if member.is_baseline:
        return False
    config = build_config(name, _preset_values(preset, vocab_size=256))  # with a shallow hybrid's attention layer
    return all(spec.cache_kind == "linear_attention" for spec in config.mixer_specs())


def speed(args, info: dict) -> dict:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    precisions, skipped = [], []
    for precision in args.precisions:
        if precision == "bf16" and not args.force_bf16 and not bf16_autocast_is_fast(torch.device(device).type):
            skipped.append("bf16 autocast skipped: slower than fp32 on this device (no native bf16; --force-bf16 "
                           "runs it anyway)")
            continue
        precisions.append(precision)
    mixers = dict(item.split("=", 1) for item in args.swap_mixer)
    # A variant is one model built one way: (label, model, mixer, compiled); every variant meets every length.
    variants = [(name, name, None, False) for name in args.models]
    variants += [(f"{name} [{mixer.rsplit(':', 1)[-1]}]", name, mixer, False) for name, mixer in mixers.items()]
    if args.compile:
        variants += [(f"{label} +compile", name, mixer, True) for label, name, mixer, _ in list(variants)]

    def lengths_for(kind: str, name: str, mixer: str | None, preset: str) -> list[int]:
        lengths = args.decode_contexts if kind == "decode" else args.train_lengths
        if kind == "forward" and args.forward_lengths:
            lengths = args.forward_lengths
        if mixer is not None and args.variant_lengths:
            lengths = [T for T in lengths if T in args.variant_lengths]
        if kind != "decode" and not is_linear(name, preset):
            lengths = [T for T in lengths if T <= args.max_quadratic_length]
        if kind == "train" and is_linear(name, preset):
            lengths = sorted(set(lengths) | set(args.linear_lengths))
        return lengths

    records, skipped_measurements = [], []
    for preset in args.presets:
        names = list(args.models)
        overrides, counts = shape_overrides(names, _preset_values(preset, args.vocab_size), args.llama_match,
                                            args.llama_match_to)
        info.setdefault("parameters", {})[preset] = counts
        for precision in precisions:
            autocast = precision == "bf16" or (precision == "auto" and bf16_autocast_is_fast(torch.device(device).type))
            plan = [(label, name, mixer, compiled, kind, T)
                    for kind in args.kinds for label, name, mixer, compiled in variants
                    if not (kind == "mixer_train" and get_member(name).is_baseline)
                    for T in lengths_for(kind, name, mixer, preset)]
            for round_index in range(args.rounds):
                # Every round walks kinds, then lengths, then variants, so load changes hit all models alike.
                for kind, T in dict.fromkeys((kind, T) for *_, kind, T in plan):
                    for label, name, mixer, compiled, *_ in [p for p in plan if p[4:] == (kind, T)]:
                        settings = dict(flush_denormal=not args.keep_subnormals,
                                        repeats=args.decode_tokens if kind == "decode" else args.repeats,
                                        warmup=3 if kind == "decode" else 1, autocast=autocast, device=device,
                                        vocab_size=args.vocab_size, overrides=overrides[name], mixer=mixer,
                                        compile=compiled, compile_backend=args.compile_backend)
                        try:
                            result = (isolated if args.isolate else measure)(kind, name, preset, args.batch_size, T,
                                                                             **settings)
                        except (RuntimeError, subprocess.TimeoutExpired) as error:
                            skipped_measurements.append(dict(label=label, kind=kind, seq_len=T, preset=preset,
                                                             precision=precision, error=str(error)[-500:]))
                            print(f"{label} {kind} T={T}: failed, left out ({str(error).splitlines()[0]})")
                            continue
                        records.append(dict(asdict(result), label=label, preset=preset, precision=precision,
                                            round=round_index))
                        print(f"round {round_index + 1}/{args.rounds} {preset} {precision} {kind:11s} {label:28s} "
                              f"T={T:6d} {result.median_s * 1e3:10.2f} ms  peak {result.peak_memory_mb:8.1f} MB"
                              + (f"  compile {result.compile_s:.1f} s" if result.compile_s is not None else ""),
                              flush=True)
        if args.long_forward:
            for name in names:
                if is_linear(name, preset):
                    try:
                        result = (isolated if args.isolate else measure)(
                            "forward", name, preset, 1, args.long_forward, repeats=1, warmup=0, autocast=False,
                            device=device, vocab_size=args.vocab_size, overrides=overrides[name])
                        records.append(dict(asdict(result), label=f"{name} (long forward)", preset=preset,
                                            precision="fp32", round=0))
                    except (RuntimeError, subprocess.TimeoutExpired) as error:
                        skipped_measurements.append(dict(label=name, kind="long forward", seq_len=args.long_forward,
                                                         error=str(error)[-500:]))

    medians = median_rounds(records)
    sections, out = speed_tables(args, info, medians, precisions), Path(args.output_dir)
    sections.append(peak_fraction_section(medians))
    sections += skipped + [f"Left out (failed): {s['label']} {s['kind']} T={s['seq_len']}"
                           for s in skipped_measurements]
    out.mkdir(parents=True, exist_ok=True)
    for preset in args.presets:
        for precision in precisions:
            panels = speed_panels(medians, preset, precision)
            if panels:
                plot_series(out / f"{args.name}-{preset}-{precision}.png", f"attnlab bench speed: preset {preset}, "
                            f"{precision}", "sequence length (tokens; decode: context)", panels)
                sections.append(f"![speed {preset} {precision}]({args.name}-{preset}-{precision}.png)")
    return dict(records=records, medians=medians, skipped=skipped_measurements, sections=sections)



def median_rounds(records: list[dict]) -> list[dict]:
    """Per (preset, precision, kind, variant, length), the round with the median time."""
    groups = {}
    for record in records:
        key = (record["preset"], record["precision"], record["kind"], record["label"], record["seq_len"])
        groups.setdefault(key, []).append(record)
    return [sorted(group, key=lambda r: r["median_s"])[(len(group) - 1) // 2] for group in groups.values()]


def _lookup(medians: list[dict], preset: str, precision: str, kind: str) -> dict[str, dict[int, dict]]:
    table = {}
    for r in medians:
        if (r["preset"], r["precision"], r["kind"]) == (preset, precision, kind):
            table.setdefault(r["label"], {})[r["seq_len"]] = r
    return table


KIND_TITLES = {"train": "Training (AdamW step: forward, backward, update): tokens/s, ratio to Llama's",
               "forward": "Forward pass without cache (last position's logits): tokens/s, ratio to Llama's",
               "decode": "Cached decoding: ms per token after a prefill of the context, ratio to Llama's",
               "mixer_train": "First layer's mixer alone, forward + backward: ms, ratio to the member's own mixer"}


def speed_tables(args, info: dict, medians: list[dict], precisions: list[str]) -> list[str]:
    sections = [f"Batch {args.batch_size}; each cell is the median over {args.rounds} interleaved round(s) of the "
                f"median of {args.repeats} timed steps ({args.decode_tokens} decoded tokens) after warm-up, "
                + ("every measurement in a fresh process" if args.isolate else "all in one process (--no-isolate: "
                   "peak memory means little)")
                + " (peak memory: on CPU the peak resident set during the timed work, reset when it starts, over what the process held then). Ratios are to "
                "Llama measured in the same run (for +compile variants: to compiled Llama). Exponents: least-squares "
                "slope of log time (per step, per forward, per token) and log peak memory against log length."]
    for preset in args.presets:
        counts = info["parameters"][preset]
        sections.append(f"### Preset `{preset}`\n\nParameters: "
                        + ", ".join(f"{name} {count:,}" for name, count in counts.items()))
        for precision in precisions:
            for kind in args.kinds:
                table = _lookup(medians, preset, precision, kind)
                if not table:
                    continue
                lengths = sorted({T for by_len in table.values() for T in by_len})
                rows = []
                for label, by_len in table.items():
                    reference = table.get(f"{BASELINE} +compile" if label.endswith("+compile") else BASELINE, {})
                    if kind == "mixer_train":
                        reference = table.get(label.split(" [")[0], {})
                    cells = []
                    for T in lengths:
                        r = by_len.get(T)
                        if r is None:
                            cells.append("-")
                            continue
                        value = r["median_s"] * 1e3 if kind in ("decode", "mixer_train") else r["tokens_per_s"]
                        ref = reference.get(T)
                        ratio = (r["median_s"] / ref["median_s"] if kind in ("decode", "mixer_train")
                                 else r["tokens_per_s"] / ref["tokens_per_s"]) if ref else None
                        cells.append(f"{value:.{2 if kind == 'decode' else 0}f}"
                                     + (f" ({ratio:.2f}x)" if ratio else ""))
                    xs = sorted(by_len)
                    time_exp = fitted_exponent(xs, [by_len[T]["median_s"] for T in xs])
                    memory_exp = fitted_exponent(xs, [by_len[T]["peak_memory_mb"] for T in xs])
                    compile_s = [by_len[T]["compile_s"] for T in xs if by_len[T]["compile_s"] is not None]
                    rows.append([label, *cells, fmt(time_exp, ".2f"), fmt(memory_exp, ".2f"),
                                 fmt(statistics.median(compile_s) if compile_s else None, ".1f")])
                sections.append(f"{KIND_TITLES[kind]} ({precision}):\n\n" + markdown_table(
                    ["model", *[f"T={T}" for T in lengths], "time exponent", "memory exponent", "compile s"], rows))
                compiled_rows = [[label, *[compiled_cell(by_len.get(T), table[f"{label} +compile"].get(T))
                                           for T in lengths]]
                                 for label, by_len in table.items() if f"{label} +compile" in table]
                if compiled_rows:
                    sections.append(f"{kind}, eager against torch.compile ({precision}): eager ms / compiled ms "
                                    "(speed-up; compile s):\n\n"
                                    + markdown_table(["model", *[f"T={T}" for T in lengths]], compiled_rows))
                if kind == "train":
                    memory_rows = [[label, *[fmt(by_len[T]["peak_memory_mb"]) if T in by_len else "-"
                                             for T in lengths]] for label, by_len in table.items()]
                    sections.append(f"Peak training memory, MB ({precision}):\n\n"
                                    + markdown_table(["model", *[f"T={T}" for T in lengths]], memory_rows))
    long = [r for r in medians if r["label"].endswith("(long forward)")]
    if long:
        sections.append("Long forward passes (linear members only): " + "; ".join(
            f"{r['label']} at {r['seq_len']:,} tokens: {r['median_s']:.1f} s, peak {r['peak_memory_mb']:.0f} MB"
            for r in long))
    return sections


def compiled_cell(eager: dict | None, compiled: dict | None) -> str:
    if eager is None or compiled is None:
        return "-"
    return (f"{eager['median_s'] * 1e3:.1f} / {compiled['median_s'] * 1e3:.1f} "
            f"({eager['median_s'] / compiled['median_s']:.2f}x; {compiled['compile_s']:.0f} s)")


def speed_panels(medians: list[dict], preset: str, precision: str) -> dict:
    panels = {}
    for kind, ylabel, value in [("train", "training tokens / s", lambda r: r["tokens_per_s"]),
                                ("train", "peak training memory (MB)", lambda r: r["peak_memory_mb"]),
                                ("forward", "forward tokens / s", lambda r: r["tokens_per_s"]),
                                ("decode", "decode ms / token", lambda r: r["median_s"] * 1e3)]:
        table = _lookup(medians, preset, precision, kind)
        series = {label: (sorted(by_len), [max(value(by_len[T]), 1e-3) for T in sorted(by_len)])
                  for label, by_len in table.items()}
        if series:
            panels[ylabel] = series
    return panels


def add_arguments(speed):
    speed.add_argument("--presets", nargs="+", default=["tiny", "small"], help="size presets")
    speed.add_argument("--kinds", nargs="+", default=["train", "forward", "decode"],
                       choices=["train", "forward", "decode", "mixer_train"])
    speed.add_argument("--train-lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192],
                       help="training and forward lengths")
    speed.add_argument("--forward-lengths", type=int, nargs="+", default=None,
                       help="forward lengths, if not the training lengths")
    speed.add_argument("--linear-lengths", type=int, nargs="*", default=[16384, 32768],
                       help="extra training lengths for members with fixed-size state only")
    speed.add_argument("--max-quadratic-length", type=int, default=8192,
                       help="train/forward lengths above this only for fixed-state members")
    speed.add_argument("--decode-contexts", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    speed.add_argument("--decode-tokens", type=int, default=20, help="timed decode steps per context")
    speed.add_argument("--batch-size", type=int, default=1)
    speed.add_argument("--rounds", type=int, default=2, help="interleaved rounds (the median round is reported)")
    speed.add_argument("--repeats", type=int, default=3, help="timed steps per measurement after one warm-up")
    speed.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "auto"],
                       help="bf16 = bf16 autocast (skipped where slower than fp32 unless --force-bf16); auto = bf16 "
                            "where it is fast")
    speed.add_argument("--force-bf16", action="store_true")
    speed.add_argument("--compile", action="store_true",
                       help="also measure torch.compile of every variant; compile time reported apart")
    speed.add_argument("--compile-backend", default="inductor", help="torch.compile backend for --compile")
    speed.add_argument("--swap-mixer", action="append", default=[], metavar="MODEL=module:Class",
                       help="also measure MODEL with every layer's mixer swapped for this class, same weights (e.g. "
                            "a seed's literal module)")
    speed.add_argument("--variant-lengths", type=int, nargs="+", default=None,
                       help="lengths at which --swap-mixer variants are measured (default: all)")
    speed.add_argument("--long-forward", type=int, default=0, help="one forward of this length, fixed-state members")
    speed.add_argument("--vocab-size", type=int, default=512)
    speed.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    speed.add_argument("--no-isolate", dest="isolate", action="store_false",
                       help="measure in this process (faster; peak memory then means little)")


# --quick: in-process measurements at two short lengths, one round (plumbing only).
QUICK = dict(presets=["tiny"], kinds=["train", "forward", "decode"], train_lengths=[64, 128], linear_lengths=[],
             decode_contexts=[64], rounds=1, repeats=1, decode_tokens=2, precisions=["fp32"], isolate=False)
