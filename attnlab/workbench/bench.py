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
"""

import argparse
import datetime
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..members import HYBRIDS, MEMBERS, get_member
from ..modeling_common import CACHE_FIELD
from . import bench_subnormal
from .benchmarking import (bf16_autocast_is_fast, isolated, load_average, machine_description, machine_facts,
                           markdown_table, measure, peak_fraction_section, plot_series)
from .subnormals import workbench_flush

BASELINE = "llama"
DEFAULT_MODELS = [*MEMBERS, *HYBRIDS, BASELINE]
IGNORE_INDEX = -100


# ---------------------------------------------------------------------------------------------------------------
# Models at a shape: hybrids at shallow depth, Llama matched in parameters, decoding state size


def config_values(name: str, values: dict) -> dict:
    """`values`, where a depth-recurrent member gets that many shared blocks, each applied `num_passes` times
    (equal unique parameters)."""
    member = get_member(name)
    layers = values.get("num_hidden_layers")
    if layers and "num_unique_layers" in member.config_class.__dataclass_fields__:
        passes = values.get("num_passes", member.preset_overrides.get("num_passes",
                                                                      member.config_class.num_passes))
        return {**values, "num_passes": passes, "num_unique_layers": layers, "num_hidden_layers": layers * passes}
    return values  # a hybrid's layout at this depth is the registry's rule (Member.build_config)


def build_config(name: str, values: dict):
    member = get_member(name)
    values = config_values(name, values)
    if member.is_baseline:
        return member.config_class(**{**member.preset_overrides, **values})
    return member.build_config(dict(values))


def count_parameters(name: str, values: dict) -> int:
    config = build_config(name, values)
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        model = get_member(name).causal_lm_class(config)
    return sum(p.numel() for p in model.parameters())


def matched_llama_intermediate(values: dict, target: int) -> int:
    """The Llama `intermediate_size` whose parameter count is closest to `target` (the count is linear in it)."""
    base = count_parameters(BASELINE, {**values, "intermediate_size": 1})
    per_unit = count_parameters(BASELINE, {**values, "intermediate_size": 2}) - base
    return max(1, round(1 + (target - base) / per_unit))


def shape_overrides(models: list[str], values: dict, llama_match: str) -> tuple[dict[str, dict], dict[str, int]]:
    """Per model, the config overrides beyond `values` (Llama's matched width of its MLP), and parameter counts."""
    # A hybrid's layout and a depth-recurrent member's blocks depend on the depth; everything else shares `values`.
    overrides = {name: {k: v for k, v in config_values(name, values).items() if values.get(k, object()) != v}
                 for name in models}
    counts = {name: count_parameters(name, {**values, **overrides[name]}) for name in models}
    others = [counts[name] for name in models if name != BASELINE]
    if BASELINE in models and others and llama_match == "params":
        overrides[BASELINE] = {"intermediate_size": matched_llama_intermediate(values, round(statistics.mean(others)))}
        counts[BASELINE] = count_parameters(BASELINE, {**values, **overrides[BASELINE]})
    return overrides, counts


def build_model(name: str, values: dict, seed: int = 0, device: str = "cpu"):
    torch.manual_seed(seed)
    return get_member(name).causal_lm_class(build_config(name, values)).to(device)


def cache_floats(cache) -> int:
    """Floating-point numbers held by a transformers cache (keys, values, recurrent states). Non-float tensors (the
    one-byte-per-token placeholder keys a pure recurrent stack keeps so that transformers can count its length) are
    not state the model computes with and are left out."""
    total = 0
    for layer in cache.layers:
        for value in vars(layer).values():
            items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) \
                else [value]
            total += sum(t.numel() for t in items if torch.is_tensor(t) and t.is_floating_point())
    return total


@torch.no_grad()
def decoding_state_floats(model, context: int) -> int:
    """Floats a model carries to decode the next token after `context` tokens (batch 1)."""
    model.eval()
    ids = torch.randint(0, model.config.vocab_size, (1, context), generator=torch.Generator().manual_seed(0))
    ids = ids.to(next(model.parameters()).device)
    return cache_floats(getattr(model(input_ids=ids, use_cache=True), CACHE_FIELD))


def logits_at(model, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets at the labelled positions only: the head runs on those rows alone, which keeps a large
    vocabulary (MQAR's 8192) cheap when a few positions per sequence are scored."""
    device = next(model.parameters()).device
    input_ids, labels = input_ids.to(device), labels.to(device)
    hidden = model.model(input_ids=input_ids, use_cache=False).last_hidden_state
    keep = labels != IGNORE_INDEX
    head = getattr(model, "compute_logits", None) or model.lm_head  # attnlab members may add layers on the head
    return head(hidden[keep]), labels[keep]


# ---------------------------------------------------------------------------------------------------------------
# Reports


def run_info(argv: list[str]) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        commit = None
    return dict(command=shlex.join(["attnlab", "bench", *argv]), machine=machine_description(),
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), git_commit=commit,
                load_average_at_start=os.getloadavg()[0], cpu_count=os.cpu_count(), machine_facts=machine_facts(),
                load_averages_before=load_average())


def write_report(out_dir: Path, name: str, info: dict, settings: dict, data: dict, sections: list[str],
                 quick: bool) -> Path:
    """`name.json` (everything) and `name.md` (the command, machine, date, load, then `sections`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    info = {**info, "load_average_at_end": os.getloadavg()[0], "load_averages_after": load_average(), "quick": quick}
    (out_dir / f"{name}.json").write_text(json.dumps(dict(info=info, settings=settings, **data), indent=1,
                                                     default=str))
    warning = ("**Smoke test (--quick): these numbers are not measurements and must not be reported.**\n\n"
               if quick else "")
    load = max(info["load_average_at_start"], info["load_average_at_end"])
    shared = " Other jobs shared the machine: timings are disturbed." if load > 0.5 * info["cpu_count"] + 1 else ""
    header = (f"```bash\n{info['command']}\n```\n\n{warning}Machine: {info['machine']}, {info['cpu_count']} CPUs; "
              f"{info['date']}; commit {info['git_commit']}; load average {info['load_average_at_start']:.1f} at the "
              f"start, {info['load_average_at_end']:.1f} at the end.{shared}")
    (out_dir / f"{name}.md").write_text("\n\n".join([header, *sections]) + "\n")
    return out_dir / f"{name}.md"


def fitted_exponent(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y against log x (1: linear growth, 2: quadratic); None below 2 usable points."""
    points = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(points) < 2:
        return None
    return float(np.polyfit(*zip(*points), 1)[0])


def fmt(value, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


# ---------------------------------------------------------------------------------------------------------------
# speed: training step, forward and cached decoding against length, in interleaved rounds of fresh processes


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
        overrides, counts = shape_overrides(names, _preset_values(preset, args.vocab_size), args.llama_match)
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


def _preset_values(preset: str, vocab_size: int) -> dict:
    from ..members import SIZE_PRESETS

    if preset not in SIZE_PRESETS:
        raise ValueError(f"unknown size preset {preset!r}; choose one of {sorted(SIZE_PRESETS)}")
    return dict(SIZE_PRESETS[preset], vocab_size=vocab_size)


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


# ---------------------------------------------------------------------------------------------------------------
# MQAR: multi-query associative recall as HazyResearch/zoology defines it (docs: hf-integration-guide.md section 5)


def mqar_examples(num_examples: int, seq_len: int, num_kv_pairs: int, vocab_size: int, seed: int,
                  power_a: float = 0.01, random_non_queries: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels, both [num_examples, seq_len], of zoology's multi-query associative recall.

    Each example is a context `k1 v1 ... kN vN` (keys drawn without replacement from [1, vocab/2), values from
    [vocab/2, vocab)) followed by a query region where every key appears once, key i at an even offset 2 g_i, with the
    N distinct gap slots g drawn with probability proportional to (g + 1)^(power_a - 1) (most queries close to the
    context). The label of a query position is the value paired with its key; every other label is -100. The
    sequence is built with seq_len + 1 tokens and shifted into inputs and labels. Non-query positions hold 0, or
    uniform random tokens with `random_non_queries` (zoology's Figure 2 uses 0).
    """
    if seq_len % 2:
        raise ValueError(f"MQAR: seq_len must be even, got {seq_len}")
    if vocab_size <= seq_len:
        raise ValueError(f"MQAR: vocab_size ({vocab_size}) must exceed seq_len ({seq_len})")
    if 4 * num_kv_pairs > seq_len:
        raise ValueError(f"MQAR: {num_kv_pairs} key-value pairs need a context and a query region of 2 x "
                         f"{2 * num_kv_pairs} tokens, more than seq_len {seq_len}")
    rng = np.random.default_rng(seed)
    context = 2 * num_kv_pairs
    space = (seq_len - context) // 2  # query slots at even offsets of the query region
    gap_weights = power_a * np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1)
    gap_weights /= gap_weights.sum()
    sequences = np.zeros((num_examples, seq_len + 1), dtype=np.int64)
    targets = np.full((num_examples, seq_len + 1), IGNORE_INDEX, dtype=np.int64)
    for row in range(num_examples):
        keys = rng.choice(np.arange(1, vocab_size // 2), size=num_kv_pairs, replace=False)
        values = rng.choice(np.arange(vocab_size // 2, vocab_size), size=num_kv_pairs, replace=False)
        sequences[row, 0:context:2], sequences[row, 1:context:2] = keys, values
        gaps = rng.choice(space, size=num_kv_pairs, replace=False, p=gap_weights)
        sequences[row, context + 2 * gaps] = keys
        targets[row, context + 2 * gaps + 1] = values  # shifted below: the label sits at the query key's position
    if random_non_queries:
        fillers = sequences == 0
        sequences[fillers] = rng.integers(0, vocab_size, size=int(fillers.sum()))
    return torch.from_numpy(sequences[:, :-1].copy()), torch.from_numpy(targets[:, 1:].copy())


def train_task(model, batches, steps: int, lr: float, weight_decay: float = 0.1,
               evaluate=None, eval_every: int = 0, stop_at: float | None = None, desc: str = "training") -> list[dict]:
    """AdamW with cosine decay to zero over `steps`, cross-entropy on labelled positions. `batches` yields (inputs,
    labels); `evaluate()` -> accuracy is called every `eval_every` steps, and training stops early once it exceeds
    `stop_at` (zoology stops at 0.99). A progress bar named `desc` shows the loss and the last accuracy. Returns the
    evaluations as [{step, accuracy}]."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    history = []
    model.train()
    progress = tqdm(total=steps, desc=desc, unit="step", leave=False, mininterval=1.0)
    for step in range(1, steps + 1):
        inputs, labels = next(batches)
        logits, targets = logits_at(model, inputs, labels)
        loss = torch.nn.functional.cross_entropy(logits.float(), targets)
        if not torch.isfinite(loss):
            history.append(dict(step=step, diverged=True))
            break
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        progress.update()
        if step % 10 == 0 or step == steps:  # .item() syncs: not every step
            progress.set_postfix(loss=f"{loss.item():.3f}", **({"acc": f"{history[-1]['accuracy']:.3f}"}
                                                              if history else {}), refresh=False)
        if evaluate is not None and eval_every and step % eval_every == 0 and step < steps:
            history.append(dict(step=step, accuracy=evaluate()))
            model.train()
            if stop_at is not None and history[-1]["accuracy"] > stop_at:
                break
    progress.close()
    return history


@torch.no_grad()
def accuracy_on_labels(model, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    """Share of labelled positions whose argmax is the label (zoology's accuracy; the copy task's copied half)."""
    model.eval()
    correct = total = 0
    for start in range(0, len(inputs), batch_size):
        logits, targets = logits_at(model, inputs[start:start + batch_size], labels[start:start + batch_size])
        correct += (logits.argmax(-1) == targets).sum().item()
        total += targets.numel()
    return correct / total


def epochs_of(inputs: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int):
    """Shuffled batches of a fixed training set, epoch after epoch (the last partial batch of an epoch dropped)."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            index = order[start:start + batch_size]
            yield inputs[index], labels[index]


def task_model_values(args, width: int, vocab_size: int, max_positions: int) -> dict:
    return dict(vocab_size=vocab_size, hidden_size=width, intermediate_size=args.mlp_ratio * width,
                num_hidden_layers=args.layers, num_attention_heads=args.heads, max_position_embeddings=max_positions)


def mqar(args, info: dict) -> dict:
    slices = [tuple(int(x) for x in s.lower().split("x")) for s in args.slices]
    runs, sections, state_sizes = [], [], {}
    for width in args.widths:
        for seq_len, kv in slices:
            values = task_model_values(args, width, args.vocab_size, seq_len)
            overrides, counts = shape_overrides(args.models, values, args.llama_match)
            train_inputs, train_labels = mqar_examples(args.train_examples, seq_len, kv, args.vocab_size, seed=1,
                                                       power_a=args.power_a)
            test_inputs, test_labels = mqar_examples(args.test_examples, seq_len, kv, args.vocab_size, seed=2,
                                                     power_a=args.power_a)
            steps = max(1, args.epochs * (args.train_examples // args.batch_size))
            for name in args.models:
                model_values = {**values, **overrides[name]}
                state_sizes[f"{name} d={width} L={seq_len}"] = decoding_state_floats(build_model(name, model_values),
                                                                                      seq_len)
                for lr in args.lrs:
                    model = build_model(name, model_values, seed=args.seed, device=args.device)
                    start = time.perf_counter()

                    def evaluate():
                        return accuracy_on_labels(model, test_inputs, test_labels, args.batch_size)

                    history = train_task(model, epochs_of(train_inputs, train_labels, args.batch_size, args.seed),
                                         steps, lr, evaluate=evaluate, eval_every=max(1, steps // args.evaluations),
                                         stop_at=0.99, desc=f"mqar d={width} L={seq_len} kv={kv} {name} lr {lr:g}")
                    accuracy = evaluate()
                    runs.append(dict(model=name, width=width, seq_len=seq_len, num_kv_pairs=kv, lr=lr,
                                     accuracy=accuracy, parameters=counts[name], steps=steps,
                                     state_floats=state_sizes[f"{name} d={width} L={seq_len}"], history=history,
                                     seconds=round(time.perf_counter() - start, 1)))
                    print(f"mqar d={width} L={seq_len} kv={kv} {name:20s} lr {lr:g}: accuracy {accuracy:.3f} "
                          f"({runs[-1]['seconds']:.0f} s)", flush=True)
    best = {}
    for run in runs:
        key = (run["model"], run["width"], run["seq_len"], run["num_kv_pairs"])
        if key not in best or run["accuracy"] > best[key]["accuracy"]:
            best[key] = run
    header = ["model", "width", "parameters"] + [f"L={L}, kv={kv}: acc (lr)" for L, kv in slices] + [
        f"state floats at L={L}" for L, _ in slices]
    rows = []
    for name in args.models:
        for width in args.widths:
            cells = [f"{best[(name, width, L, kv)]['accuracy']:.3f} ({best[(name, width, L, kv)]['lr']:g})"
                     for L, kv in slices]
            rows.append([name, width, f"{best[(name, width, *slices[0])]['parameters']:,}", *cells,
                         *[f"{best[(name, width, L, kv)]['state_floats']:,}" for L, kv in slices]])
    sections.append(
        f"Multi-query associative recall (zoology's definition: keys and values from disjoint vocabulary halves, "
        f"power-law query gaps with a={args.power_a}, accuracy on the queried positions only). Vocabulary "
        f"{args.vocab_size}, {args.layers} layers, {args.heads} heads, MLP {args.mlp_ratio}x width, "
        f"{args.train_examples:,} training and {args.test_examples:,} test examples per slice, {args.epochs} epochs of "
        f"batch {args.batch_size}, AdamW (weight decay 0.1) with cosine decay, early stop above 0.99 test accuracy; "
        f"learning rates {args.lrs}; each cell is the best rate's test accuracy (the rate in brackets), as zoology "
        "reports; the JSON keeps the sweep. State: floats in the decoding cache after a prompt of L tokens (batch 1).")
    sections.append(markdown_table(header, rows))
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_accuracy_vs_state(out / f"{args.name}.png", best, args.models, slices)
    sections.append(f"![MQAR accuracy against state size]({args.name}.png)")
    return dict(runs=runs, best=[run for run in best.values()], sections=sections)


def save_log_x_plot(figure, axes, path: Path, xlabel: str, ylabel: str, title: str):
    """The suite's one-panel plots: log x axis, labels, the machine under the title, grid, legend; saved and closed."""
    import matplotlib.pyplot as plt

    axes.set_xscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(f"{title}\n{machine_description()}", fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_accuracy_vs_state(path: Path, best: dict, models: list[str], slices: list[tuple[int, int]]):
    """Mean accuracy over slices against the decoding state at the longest slice, one point per width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    longest = max(L for L, _ in slices)
    for index, name in enumerate(models):
        widths = sorted({w for (m, w, *_) in best if m == name})
        xs = [best[(name, w, *max(slices))]["state_floats"] for w in widths]
        ys = [statistics.mean(best[(name, w, L, kv)]["accuracy"] for L, kv in slices) for w in widths]
        axes.plot(xs, ys, marker="o", color=f"C{index}", label=name)
        for x, y, w in zip(xs, ys, widths):
            axes.annotate(f"d={w}", (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
    save_log_x_plot(figure, axes, path, f"decoding state (floats) after {longest} tokens",
                    "MQAR accuracy, mean over slices (best lr)", "MQAR: accuracy against state size")


# ---------------------------------------------------------------------------------------------------------------
# copy: seed 003's task, in its fixed-offset form and a variable-offset form a fixed-offset head cannot solve


def copy_batch(batch_size: int, seq_len: int, vocab_size: int, form: str,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, training labels, scored labels) of seed 003's copy task, each [batch, seq_len - 1].

    fixed (the seed's `generate_copy_batch`): seq_len tokens uniform in [0, vocab), the second half a copy of the
      first; the copied half starts at the same position in every sequence, so one attention head looking back a
      fixed offset of seq_len / 2 solves it.
    variable: a segment x of m tokens from [1, vocab) with m uniform in [seq_len / 4, seq_len / 2 - 1], the separator
      0, x again, then uniform filler; the offset m + 1 changes from sequence to sequence, so copying needs content
      (find where the current token appeared, read the next one) or a count from the separator.

    Training labels are every next token, as the seed's cross-entropy over all positions; scored labels keep only the
    copied tokens (seed spec 3.3: accuracy on the second half), -100 elsewhere.
    """
    if seq_len % 2:
        seq_len += 1  # as the seed does
    half = seq_len // 2
    if form == "fixed":
        data = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator)
        data[:, half:] = data[:, :half]
        copied = torch.zeros(batch_size, seq_len, dtype=torch.bool)
        copied[:, half:] = True
    elif form == "variable":
        data = torch.randint(1, vocab_size, (batch_size, seq_len), generator=generator)
        lengths = torch.randint(seq_len // 4, half, (batch_size,), generator=generator)
        positions = torch.arange(seq_len)[None]
        source = positions - lengths[:, None] - 1  # where each copied token comes from
        copied = (positions > lengths[:, None]) & (positions <= 2 * lengths[:, None])
        data = torch.where(copied, data.gather(1, source.clamp(min=0)), data)
        data[positions == lengths[:, None]] = 0
    else:
        raise ValueError(f"copy task form {form!r}: choose 'fixed' or 'variable'")
    inputs, targets = data[:, :-1], data[:, 1:]
    scored = torch.where(copied[:, 1:], targets, IGNORE_INDEX)
    return inputs, targets, scored


def copy(args, info: dict) -> dict:
    values = task_model_values(args, args.width, args.vocab_size, args.seq_len)
    overrides, counts = shape_overrides(args.models, values, args.llama_match)
    runs = []
    for form in args.forms:
        test = copy_batch(args.test_examples, args.seq_len, args.vocab_size, form, torch.Generator().manual_seed(2))
        for name in args.models:
            for lr in args.lrs:
                model = build_model(name, {**values, **overrides[name]}, seed=args.seed, device=args.device)
                generator = torch.Generator().manual_seed(1)
                batches = iter(lambda: copy_batch(args.batch_size, args.seq_len, args.vocab_size, form, generator)[:2],
                               None)
                start = time.perf_counter()
                history = train_task(model, batches, args.steps, lr, weight_decay=0.0,
                                     desc=f"copy {form} {name} lr {lr:g}")
                accuracy = accuracy_on_labels(model, test[0], test[2], args.batch_size)
                runs.append(dict(model=name, form=form, lr=lr, accuracy=accuracy, parameters=counts[name],
                                 history=history, seconds=round(time.perf_counter() - start, 1)))
                print(f"copy {form:8s} {name:20s} lr {lr:g}: copied-half accuracy {accuracy:.3f} "
                      f"({runs[-1]['seconds']:.0f} s)", flush=True)
    rows = []
    for name in args.models:
        cells = []
        for form in args.forms:
            run = max((r for r in runs if r["model"] == name and r["form"] == form), key=lambda r: r["accuracy"])
            cells.append(f"{run['accuracy']:.3f} ({run['lr']:g})")
        rows.append([name, f"{counts[name]:,}", *cells])
    sections = [
        f"Seed 003's copy task: sequences of {args.seq_len} tokens, vocabulary {args.vocab_size}; `fixed` is the "
        "seed's form (second half = first half), `variable` puts a separator after a copied segment of random length "
        f"(offset varies per sequence). Models: width {args.width}, {args.layers} layers, {args.heads} heads, "
        f"{args.steps} AdamW steps of batch {args.batch_size} on fresh sequences (loss on every position, as the "
        "seed), "
        f"cosine decay, learning rates {args.lrs}. Accuracy on the copied tokens only of {args.test_examples} fixed "
        "test sequences; best rate in brackets; chance is 1 / vocabulary.",
        markdown_table(["model", "parameters", *[f"{form}: copied-half accuracy (lr)" for form in args.forms]], rows),
    ]
    return dict(runs=runs, parameters=counts, sections=sections)


# ---------------------------------------------------------------------------------------------------------------
# lm: held-out Shakespeare at equal parameters and tokens, through the workbench's own training loop


def lm(args, info: dict) -> dict:
    from ..tokenization_attnlab import byte_tokenizer
    from .experiments import summarise
    from .training import TrainArgs, train

    values = dict(_preset_values(args.preset, len(byte_tokenizer())), max_position_embeddings=args.block_size)
    for item in args.config_overrides:
        key, _, value = item.partition("=")
        values[key] = json.loads(value)
    overrides, counts = shape_overrides(args.models, values, args.llama_match)
    shape_keys = {k: v for k, v in values.items() if k not in ("vocab_size",)}
    work = Path(args.work_dir)

    def run_one(name: str, lr: float, seed: int) -> dict:
        model_overrides = {**shape_keys, **overrides[name]}
        train_args = TrainArgs(
            model=name, preset=args.preset,
            config_overrides=[f"{key}={json.dumps(value)}" for key, value in model_overrides.items()],
            block_size=args.block_size, batch_size=args.batch_size, max_steps=args.steps, learning_rate=lr,
            eval_every=max(1, args.steps // args.evaluations), eval_blocks=args.eval_blocks,
            final_eval_blocks=args.final_eval_blocks, save_every=0, seed=seed, num_threads=args.num_threads,
            compile=args.compile, train_files=args.train_files, validation_files=args.validation_files,
            output_dir=str(work / f"{name}-lr{lr:g}-seed{seed}"))
        metrics = train(train_args)
        print(f"lm {name:20s} lr {lr:g} seed {seed}: held-out loss {metrics['final_eval']['loss']:.4f} "
              f"({metrics['train_seconds']:.0f} s)", flush=True)
        return dict(model=name, lr=lr, seed=seed, parameters=metrics["parameters"], tokens=metrics["tokens"],
                    train_seconds=metrics["train_seconds"], compile_seconds=metrics.get("compile_seconds"),
                    final=metrics["final_eval"], curve=[(e["step"], e["loss"]) for e in metrics["eval"]])

    sweep = [run_one(name, lr, args.seeds[0]) for name in args.models for lr in args.lrs]
    best_lr = {name: min((r for r in sweep if r["model"] == name), key=lambda r: r["final"]["loss"])["lr"]
               for name in args.models}
    seeds = [r for r in sweep if r["lr"] == best_lr[r["model"]]]
    seeds += [run_one(name, best_lr[name], seed) for name in args.models for seed in args.seeds[1:]]
    summary = summarise(seeds)
    rows = [[name, f"{counts[name]:,}", f"{best_lr[name]:g}",
             f"{summary[name]['loss'][0]:.4f} ± {summary[name]['loss'][1]:.4f}",
             f"{summary[name]['bits_per_byte'][0]:.4f} ± {summary[name]['bits_per_byte'][1]:.4f}",
             f"{summary[name]['accuracy'][0]:.2%}", f"{summary[name]['train_seconds'][0]:.0f}",
             " / ".join(f"{r['lr']:g}: {r['final']['loss']:.3f}" for r in sweep if r["model"] == name)]
            for name in args.models]
    tokens = args.steps * args.batch_size * args.block_size
    sections = [
        f"Held-out Shakespeare plays (byte tokens), preset `{args.preset}`, block {args.block_size}, batch "
        f"{args.batch_size}, {args.steps} steps = {tokens:,} training tokens per run for every model; AdamW with "
        f"warmup and cosine decay (`attnlab train`). Learning rates {args.lrs} at seed {args.seeds[0]}; the best rate "
        f"by held-out loss then runs seeds {args.seeds}. Loss and bits per byte: mean ± std over those seeds, on the "
        f"held-out plays ({'all blocks' if args.final_eval_blocks is None else f'{args.final_eval_blocks} blocks'}). "
        "The rate is chosen on the same held-out text it is scored on, as zoology reports the best rate.",
        markdown_table(["model", "parameters", "best lr", "held-out loss (nats/byte)", "bits per byte",
                        "next-byte accuracy", "train s", "sweep (lr: loss)"], rows),
    ]
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_lm(out / f"{args.name}.png", sweep, args.models)
    sections.append(f"![held-out loss against learning rate]({args.name}.png)")
    return dict(sweep=sweep, seed_runs=seeds, best_lr=best_lr, summary=summary, parameters=counts,
                tokens_per_run=tokens, sections=sections)


def plot_lm(path: Path, sweep: list[dict], models: list[str]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for index, name in enumerate(models):
        runs = sorted((r for r in sweep if r["model"] == name), key=lambda r: r["lr"])
        axes.plot([r["lr"] for r in runs], [r["final"]["loss"] for r in runs], marker="o", color=f"C{index}",
                  label=name)
    save_log_x_plot(figure, axes, path, "peak learning rate", "held-out loss (nats per byte)",
                    "LM: held-out loss per learning rate (first seed)")


# ---------------------------------------------------------------------------------------------------------------
# Command line

SECTIONS = {"speed": speed, "mqar": mqar, "copy": copy, "lm": lm, "subnormal": bench_subnormal.subnormal_section}

# --quick: every section at a size that only checks the plumbing (in-process speed measurements, a few steps).
QUICK = {
    "speed": dict(presets=["tiny"], kinds=["train", "forward", "decode"], train_lengths=[64, 128], linear_lengths=[],
                  decode_contexts=[64], rounds=1, repeats=1, decode_tokens=2, precisions=["fp32"], isolate=False),
    "mqar": dict(widths=[32], slices=["64x4"], lrs=[1e-3, 3e-3], train_examples=64, test_examples=32, epochs=1,
                 batch_size=16, vocab_size=256, evaluations=1),
    "copy": dict(steps=4, lrs=[1e-3, 3e-3], test_examples=16, batch_size=8, seq_len=32, width=32),
    "lm": dict(steps=2, lrs=[1e-3, 3e-3], seeds=[0, 1], batch_size=2, block_size=32, eval_blocks=2,
               final_eval_blocks=2, evaluations=1),
    "subnormal": bench_subnormal.QUICK,
}


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
        sub.add_argument("--output-dir", default=None,
                         help="where NAME.json, NAME.md and the PNGs go (default: results, or outputs/bench-quick)")
        sub.add_argument("--name", default=None, help="report name (default: the section's name)")
        sub.add_argument("--quick", action="store_true", help="smoke-test sizes (numbers meaningless)")
        sub.add_argument("--keep-subnormals", action="store_true",
                         help="do not flush subnormal floats to zero (see docs/subnormals.md)")
        return sub

    speed = section("speed", "training, forward and decode speed and peak memory against length")
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

    def task_model(sub):
        sub.add_argument("--layers", type=int, default=2)
        sub.add_argument("--heads", type=int, default=2)
        sub.add_argument("--mlp-ratio", type=int, default=2, help="MLP width as a multiple of the model width")
        sub.add_argument("--seed", type=int, default=0, help="initialisation and data-order seed")
        sub.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        return sub

    mqar = task_model(section("mqar", "multi-query associative recall, zoology's definition"))
    mqar.add_argument("--widths", type=int, nargs="+", default=[64, 128])
    mqar.add_argument("--slices", nargs="+", default=["64x4", "128x8", "256x16"], help="SEQ_LENxKV_PAIRS")
    mqar.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    mqar.add_argument("--vocab-size", type=int, default=8192)
    mqar.add_argument("--train-examples", type=int, default=5000, help="per slice (zoology: 100,000)")
    mqar.add_argument("--test-examples", type=int, default=500, help="per slice (zoology: 3,000)")
    mqar.add_argument("--epochs", type=int, default=4, help="zoology: 64")
    mqar.add_argument("--batch-size", type=int, default=64)
    mqar.add_argument("--power-a", type=float, default=0.01)
    mqar.add_argument("--evaluations", type=int, default=8, help="test evaluations per run (early stop at 0.99)")

    copy = task_model(section("copy", "seed 003's copy task, fixed- and variable-offset"))
    copy.add_argument("--forms", nargs="+", default=["fixed", "variable"], choices=["fixed", "variable"])
    copy.add_argument("--width", type=int, default=64)
    copy.add_argument("--seq-len", type=int, default=128, help="the seed keeps seq_len - 1 <= 128")
    copy.add_argument("--vocab-size", type=int, default=64)
    copy.add_argument("--steps", type=int, default=1500)
    copy.add_argument("--batch-size", type=int, default=32)
    copy.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3])
    copy.add_argument("--test-examples", type=int, default=512)

    lm = section("lm", "held-out Shakespeare at equal parameters and tokens")
    lm.add_argument("--preset", default="tiny")
    lm.add_argument("--config-overrides", nargs="*", default=[], help="shared shape values as key=value (JSON)")
    lm.add_argument("--block-size", type=int, default=256)
    lm.add_argument("--batch-size", type=int, default=16)
    lm.add_argument("--steps", type=int, default=1200, help="1200 x 16 x 256 = 4.9M tokens, 4x the old comparisons")
    lm.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    lm.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="the first runs the sweep")
    lm.add_argument("--evaluations", type=int, default=10, help="held-out evaluations per run (curves)")
    lm.add_argument("--eval-blocks", type=int, default=32)
    lm.add_argument("--final-eval-blocks", type=int, default=None, help="default: every held-out block")
    lm.add_argument("--num-threads", type=int, default=1)
    lm.add_argument("--compile", action="store_true", help="train through torch.compile (attnlab train --compile)")
    lm.add_argument("--work-dir", default="outputs/bench-lm", help="the runs' folders")
    lm.add_argument("--train-files", nargs="+", default=None, help="default: the embedded Shakespeare")
    lm.add_argument("--validation-files", nargs="+", default=None, help="default: the held-out plays")

    bench_subnormal.add_arguments(section("subnormal", "training step time with subnormals kept against flushed, and "
                                                       "the subnormals in each model's attention"))

    every = sections.add_parser("all", help="every section in turn with its defaults (use with --quick)")
    every.add_argument("--quick", action="store_true")
    every.add_argument("--output-dir", default=None)
    return parser


def quick_text_files(folder: Path) -> tuple[list[str], list[str]]:
    from .data import shakespeare_text

    folder.mkdir(parents=True, exist_ok=True)
    text = shakespeare_text()
    files = folder / "train.txt", folder / "validation.txt"
    files[0].write_text(text[:20000])
    files[1].write_text(text[-5000:])
    return [str(files[0])], [str(files[1])]


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
        if args.section == "lm":  # a few kB of the plays instead of packing the whole corpus for every run
            args.work_dir = str(Path(args.output_dir) / "bench-lm-runs")
            args.train_files, args.validation_files = quick_text_files(Path(args.work_dir))
    args.name = args.name or args.section + ("-quick" if args.quick else "")
    workbench_flush(args.keep_subnormals)  # before any other work, so that torch's threads inherit it
    args.models = list(dict.fromkeys([*args.models, *(m for mixer in args.mixer for m in (mixer, f"{mixer}+attention"))]))
    for name in args.models:
        get_member(name)  # an unknown name or a mixer path that does not import: one line, before any work
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
