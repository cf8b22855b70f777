"""Speed and memory measurements, always side by side with a baseline in one run.

Every measurement runs in a fresh subprocess (`python -m attnlab.workbench.benchmarking KIND --json ARGS`), so peak memory
is that of one model at one size: on CUDA `torch.cuda.max_memory_allocated`, on CPU the peak resident set during the
measured work (the kernel's peak is reset when it starts) over what the process held then (weights, optimizer state
and inputs already allocated). Timings are medians over repeats after warm-up; scripts report them as ratios to the baseline
measured in the same run, since absolute numbers depend on the machine.
"""

import argparse
import contextlib
import datetime
import functools
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.utils._python_dispatch

from ..modeling_common import CACHE_FIELD


@dataclass
class Measurement:
    model: str
    kind: str
    batch_size: int
    seq_len: int
    median_s: float  # per training step, per forward, or per decoded token
    tokens_per_s: float
    peak_memory_mb: float
    parameters: int
    autocast_bf16: bool
    mixer: str | None = None  # "module:Class" swapped in for the member's own mixer, if any
    compile_s: float | None = None  # torch.compile runs only: wall time of the first (compiling) call
    flops: float | None = None  # per timed unit (step, forward, token), counted from the shapes (`count_flops`)
    achieved_flops_per_s: float | None = None
    matmul_peak_flops_per_s: float | None = None  # fp32 matmul peak measured in the same process
    peak_fraction: float | None = None  # achieved / peak
    subnormals: str | None = None  # "flushed", "kept" or "partial" over the measuring threads


def _cpuinfo_field(name: str) -> str | None:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.split(":", 1)[0].strip() == name)
    except (OSError, StopIteration):
        return None


def machine_facts() -> dict:
    """What a timing depends on, stated precisely enough to compare two records: CPU model and vendor, cores, the
    threads torch uses, whether they flush subnormals (measured, see `subnormals.flush_denormal_state`),
    the accelerator if any, and the versions of torch and transformers."""
    import transformers

    from .subnormals import flush_denormal_state

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return dict(cpu_model=_cpuinfo_field("model name") or platform.processor() or platform.machine(),
                cpu_vendor=_cpuinfo_field("vendor_id") or platform.machine(), cpu_count=os.cpu_count(),
                usable_cpus=usable, torch_threads=torch.get_num_threads(), subnormals=flush_denormal_state(),
                accelerator=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                torch_version=torch.__version__, transformers_version=transformers.__version__,
                python_version=platform.python_version())


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def machine_description(threads: str | None = None) -> str:
    """The machine in one line. `threads` says how the measured work was threaded where that is not this process's
    torch thread count (a script whose runs each use one thread in its own process: "1 thread per run")."""
    facts = machine_facts()
    device = f"{facts['accelerator']}, host " if facts["accelerator"] else ""
    threads = threads or f"{facts['torch_threads']} threads"
    return (f"{device}{facts['cpu_model']} ({facts['cpu_vendor']}), {facts['usable_cpus']} of {facts['cpu_count']} "
            f"CPUs usable, {threads}, subnormals {facts['subnormals']}, torch {facts['torch_version']}, transformers "
            f"{facts['transformers_version']}")


def code_commit() -> str | None:
    """The short commit of the attnlab checkout that is running, or None outside a git checkout."""
    from .report import git

    return git(Path(__file__).parent, "rev-parse", "--short", "HEAD") or None


def uncommitted_code(root: Path | None = None) -> list[str] | None:
    """The code files (the package, scripts, examples) that differ from the commit in the checkout at `root` (by
    default the one that is running): a record taken from such a tree measures code no commit holds. None outside a
    git checkout."""
    from .report import git

    root = root or Path(__file__).resolve().parents[2]
    changed = git(root, "diff", "--name-only", "HEAD", "--", "attnlab", "scripts", "examples")
    return None if changed is None else sorted(changed.splitlines())


def provenance_fields(threads: str | None = None) -> dict:
    """What every record states about where it came from, taken when a run starts: the machine (`threads` as in
    `machine_description`), the UTC date, the commit of the code (`attnlab report` compares the commit with the
    code the record measures) and the code files changed since that commit, if any."""
    return dict(machine=machine_description(threads), git_commit=code_commit(), uncommitted_code=uncommitted_code(),
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


@functools.cache
def matmul_peak_flops(device_type: str = "cpu", size: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of the fastest of `repeats` fp32 [size, size] @ [size, size] products here, with torch's threads: the
    machine's attainable matmul peak, to which a model's achieved FLOP/s is compared."""
    device = torch.device(device_type)
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b
    return 2 * size**3 / min(_timed(lambda: a @ b, device, repeats, warmup=1))


def _sdpa_flops(query, key, is_causal: bool) -> float:
    """Forward FLOPs of softmax attention from its shapes: QK^T and PV, 2 * 2 * B * H * Tq * Tk * d, halved under
    a causal mask over a square block (the work a flash kernel does)."""
    batch, heads, lq, dim = query.shape
    lk = key.shape[-2]
    pairs = lq * lk - (lq * (lq - 1) / 2 if is_causal and lq == lk else 0)
    return 4 * batch * heads * pairs * dim


class _ShapeFlops(torch.utils._python_dispatch.TorchDispatchMode):
    """Sums torch.utils.flop_counter's per-op formulas (matmuls, convolutions) over the ops run. FlopCounterMode itself
    also tracks modules, with hooks that fail on tensors requiring grad under no_grad (depth_recurrent's forward)."""

    def __init__(self):
        super().__init__()
        from torch.utils.flop_counter import flop_registry

        self.registry, self.total = flop_registry, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self.registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


@contextlib.contextmanager
def count_flops():
    """Yields a dict whose "total" is the FLOPs run inside the block, counted from shapes: torch.utils.flop_counter's
    formulas (matmuls, convolutions) plus SDPA on CPU, which they do not count: its forward as `_sdpa_flops`, its
    backward twice that (dQ, dK, dV and dP)."""
    from torch.nn import functional as F

    extra = {"sdpa": 0.0}
    original = F.scaled_dot_product_attention

    def counted(query, key, value, *args, **kwargs):
        output = original(query, key, value, *args, **kwargs)
        if query.device.type == "cpu":
            flops = _sdpa_flops(query, key, kwargs.get("is_causal", False))
            extra["sdpa"] += flops
            if output.requires_grad:
                output.register_hook(lambda grad: extra.__setitem__("sdpa", extra["sdpa"] + 2 * flops))
        return output

    result = {}
    F.scaled_dot_product_attention = counted
    try:
        with _ShapeFlops() as counter:
            yield result
    finally:
        F.scaled_dot_product_attention = original
    result["total"] = counter.total + extra["sdpa"]


def training_flops(model, ids: torch.Tensor) -> float:
    """FLOPs of one training step on `ids` (forward and backward; the AdamW update is elementwise and not
    counted). The parameter gradients it leaves are cleared."""
    with count_flops() as flops:
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    model.zero_grad(set_to_none=True)
    return flops["total"]


@functools.cache
def bf16_autocast_is_fast(device_type: str) -> bool:
    """Whether bf16 autocast speeds up matmuls here. True on CUDA; on CPU only with native bf16 instructions
    (without them, e.g. on AMD EPYC without avx512_bf16, a bf16 matmul is ~100x slower than fp32)."""
    if device_type != "cpu":
        return device_type == "cuda" and torch.cuda.is_bf16_supported()
    a, b = torch.randn(256, 256), torch.randn(256, 256)

    def seconds(dtype):
        x, y = a.to(dtype), b.to(dtype)
        x @ y
        start = time.perf_counter()
        for _ in range(3):
            x @ y
        return time.perf_counter() - start

    return seconds(torch.bfloat16) < seconds(torch.float32)


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _reset_peak_rss() -> bool:
    """Resets the kernel's peak resident set (VmHWM) to the current one (Linux >= 4.0); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    """VmHWM: the peak resident set since the last reset (or since the process started)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class PeakMemory:
    """Peak memory of the work inside the block, beyond what was allocated before it. On CPU the process's peak
    resident set is reset on entry, so a larger peak earlier in the process (the warm-up step, a compilation) does
    not hide this one; where it cannot be reset (not Linux) the figure is a lower bound."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            _reset_peak_rss()
            self.start = _current_rss_mb()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated() - self.start) / 2**20
        else:
            self.peak_mb = max(0.0, _peak_rss_mb() - self.start)


def build_model(name: str, preset: str, max_position_embeddings: int, vocab_size: int, device: torch.device,
                mixer: str | None = None, **overrides):
    from ..members import get_member

    member = get_member(name)
    config = member.preset_config(preset, vocab_size=vocab_size, max_position_embeddings=max_position_embeddings,
                                  **overrides)
    torch.manual_seed(0)
    model = member.causal_lm_class(config)
    if mixer is not None:
        swap_mixers(model, mixer)
    return model.to(device)


def swap_mixers(model, mixer: str):
    """Replace every layer's mixer by `Mixer(config, layer_idx)` from "package.module:Mixer", with the same weights
    (e.g. a seed's literal reference module, to time it inside the same model)."""
    if model.config.model_type not in _attnlab_model_types():
        raise ValueError(f"mixer= applies to attnlab members only, not {model.config.model_type!r}")
    module_name, _, class_name = mixer.partition(":")
    mixer_class = getattr(importlib.import_module(module_name), class_name)
    for layer_idx, layer in enumerate(model.model.layers):
        replacement = mixer_class(model.config, layer_idx)
        replacement.load_state_dict(layer.self_attn.state_dict())
        layer.self_attn = replacement


def _attnlab_model_types() -> set[str]:
    from ..members import MEMBERS

    return {member.config_class.model_type for member in MEMBERS.values()}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn, device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall time of `fn()` over `repeats` calls after `warmup` calls (synchronising CUDA around each)."""
    return statistics.median(_timed(fn, device, repeats, warmup))


def _timed(fn, device, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def measure_training(model, batch_size: int, seq_len: int, repeats: int, warmup: int, autocast: bool) -> tuple:
    """Median seconds per AdamW training step (forward, backward, update) and the step's peak memory."""
    device = next(model.parameters()).device
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # allocates the optimizer state outside the measured peak
    with PeakMemory(device) as memory:
        times = _timed(step, device, repeats, warmup)
    return statistics.median(times), memory.peak_mb


@torch.no_grad()
def measure_forward(model, batch_size: int, seq_len: int, repeats: int, warmup: int, autocast: bool) -> tuple:
    """Median seconds for one forward pass without cache (last position's logits only) and its peak memory."""
    device = next(model.parameters()).device
    model.eval()
    ids = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), device=device)

    def forward():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            model(input_ids=ids, use_cache=False, logits_to_keep=1)

    with PeakMemory(device) as memory:
        times = _timed(forward, device, repeats, warmup)
    return statistics.median(times), memory.peak_mb


@torch.no_grad()
def measure_decode(model, batch_size: int, context: int, repeats: int, warmup: int, autocast: bool) -> tuple:
    """Median seconds per decoded token after a prefill of `context` tokens, and the decode steps' peak memory."""
    device = next(model.parameters()).device
    model.eval()
    ids = torch.randint(0, model.config.vocab_size, (batch_size, context), device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        prefill = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    cache, token = getattr(prefill, CACHE_FIELD), ids[:, -1:]
    # Each timed step decodes one more token on the same growing cache: at most warmup + repeats extra positions.

    def decode_one():
        nonlocal cache
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(input_ids=token, use_cache=True, **{CACHE_FIELD: cache})
        cache = getattr(out, CACHE_FIELD)

    with PeakMemory(device) as memory:
        times = _timed(decode_one, device, repeats, warmup)
    return statistics.median(times), memory.peak_mb


def measure_mixer_training(model, batch_size: int, seq_len: int, repeats: int, warmup: int, autocast: bool) -> tuple:
    """Median seconds for forward + backward of the first layer's mixer alone, on random hidden states (attnlab
    members only: the mixer is called with attnlab's signature), and its peak memory."""
    device = next(model.parameters()).device
    model.train()
    mixer = model.model.layers[0].self_attn
    hidden = torch.randn(batch_size, seq_len, model.config.hidden_size, device=device, requires_grad=True)
    position_ids = torch.arange(seq_len, device=device)[None].expand(batch_size, -1)
    rotary = model.model.rotary_emb
    position_embeddings = rotary(position_ids) if rotary is not None else None

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = mixer(hidden, position_ids=position_ids, position_embeddings=position_embeddings)
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)
        hidden.grad = None

    with PeakMemory(device) as memory:
        times = _timed(step, device, repeats, warmup)
    return statistics.median(times), memory.peak_mb


def unit_flops(kind: str, model, batch_size: int, seq_len: int, autocast: bool) -> float:
    """FLOPs of the unit that `kind` times (a training step, a forward pass, one decoded token after a prefill of
    `seq_len`, a mixer's forward + backward), counted from the shapes by `count_flops`."""
    device = next(model.parameters()).device
    ids = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        if kind == "train":
            return training_flops(model, ids)
        if kind == "mixer_train":
            with count_flops() as flops:
                measure_mixer_training(model, batch_size, seq_len, 1, 0, autocast)
            return flops["total"]
        with torch.no_grad():
            if kind == "forward":
                with count_flops() as flops:
                    model(input_ids=ids, use_cache=False, logits_to_keep=1)
                return flops["total"]
            cache = getattr(model(input_ids=ids, use_cache=True, logits_to_keep=1), CACHE_FIELD)
            with count_flops() as flops:
                model(input_ids=ids[:, -1:], use_cache=True, **{CACHE_FIELD: cache})
            return flops["total"]


MEASURES = {"train": measure_training, "forward": measure_forward, "decode": measure_decode,
            "mixer_train": measure_mixer_training}


def measure(kind: str, model_name: str, preset: str, batch_size: int, seq_len: int, repeats: int = 3,
            warmup: int = 1, autocast: bool | None = None, device: str | None = None, vocab_size: int = 512,
            overrides: dict | None = None, mixer: str | None = None, compile: bool = False,
            compile_backend: str = "inductor", flush_denormal: bool | None = None) -> Measurement:
    """One measurement in this process (use `isolated` to get a fresh process and a clean memory peak).

    `autocast=None` uses bf16 autocast where it is fast (see `bf16_autocast_is_fast`), fp32 otherwise; `mixer`
    swaps another mixer class into an attnlab member (see `swap_mixers`); `compile` measures `torch.compile(model)`
    (with `compile_backend`), after one untimed call whose wall time, the compilation, is reported as `compile_s`;
    `flush_denormal` sets this thread's flush-to-zero mode first (None: leave it), best before any other work, so
    that the threads torch starts inherit it."""
    if flush_denormal is not None:
        torch.set_flush_denormal(flush_denormal)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if autocast is None:
        autocast = bf16_autocast_is_fast(device.type)
    extra_positions = repeats + warmup + 1 if kind == "decode" else 0
    model = build_model(model_name, preset, seq_len + extra_positions, vocab_size, device, mixer=mixer,
                        **(overrides or {}))
    compile_s = None
    if compile:
        model = torch.compile(model, backend=compile_backend)
        start = time.perf_counter()
        MEASURES[kind](model, batch_size, seq_len, 1, 0, autocast)
        compile_s = time.perf_counter() - start
    median_s, peak_mb = MEASURES[kind](model, batch_size, seq_len, repeats, warmup, autocast)
    tokens = batch_size if kind == "decode" else batch_size * seq_len
    # Counted on the eager model (a compiled one computes the same products) after the timed work, so the counting
    # hooks never enter a measured step; the peak is measured in this process, with its threads.
    flops = unit_flops(kind, getattr(model, "_orig_mod", model), batch_size, seq_len, autocast)
    peak = matmul_peak_flops(device.type)
    from .subnormals import flush_denormal_state

    return Measurement(model=model_name, kind=kind, batch_size=batch_size, seq_len=seq_len, median_s=median_s,
                       tokens_per_s=tokens / median_s, peak_memory_mb=peak_mb,
                       parameters=sum(p.numel() for p in model.parameters()), autocast_bf16=autocast, mixer=mixer,
                       compile_s=compile_s, flops=flops, achieved_flops_per_s=flops / median_s,
                       matmul_peak_flops_per_s=peak, peak_fraction=flops / median_s / peak,
                       subnormals=flush_denormal_state())


def isolated(kind: str, model_name: str, preset: str, batch_size: int, seq_len: int, timeout: float = 3600,
             **kwargs) -> Measurement:
    """`measure` in a fresh Python process; raises with the child's stderr if it fails (e.g. out of memory)."""
    request = dict(kind=kind, model_name=model_name, preset=preset, batch_size=batch_size, seq_len=seq_len, **kwargs)
    result = subprocess.run([sys.executable, "-m", "attnlab.workbench.benchmarking", json.dumps(request)],
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"measurement {request} failed:\n{result.stderr[-2000:]}")
    return Measurement(**json.loads(result.stdout.strip().splitlines()[-1]))


def side_by_side(kind: str, names: list[str], preset: str, batch_size: int, lengths: list[int], rounds: int = 1,
                 max_lengths: dict[str, int] | None = None, log=print, **kwargs) -> dict[str, dict[int, Measurement]]:
    """`isolated` measurements of several models in interleaved rounds: every round goes through all lengths and, at
    each length, through every model, so a change of machine load affects them alike. Per model and length the
    round with the median time is kept. `max_lengths` skips a model above a length (e.g. a quadratic baseline)."""
    max_lengths = max_lengths or {}
    runs = {name: {} for name in names}
    for round_index in range(rounds):
        for seq_len in lengths:
            for name in names:
                if seq_len > max_lengths.get(name, seq_len):
                    continue
                result = isolated(kind, name, preset, batch_size, seq_len, **kwargs)
                runs[name].setdefault(seq_len, []).append(result)
                log(f"round {round_index + 1}/{rounds} {kind:7s} {name:8s} T={seq_len:6d} "
                    f"{result.median_s * 1e3:10.2f} ms  peak {result.peak_memory_mb:8.1f} MB")
    return {name: {seq_len: sorted(results, key=lambda r: r.median_s)[(len(results) - 1) // 2]
                   for seq_len, results in by_len.items()} for name, by_len in runs.items()}


def growth_exponent(x_small: float, y_small: float, x_large: float, y_large: float) -> float:
    """The exponent p in y ~ x^p between two points (1 = linear, 2 = quadratic)."""
    import math

    return math.log(y_large / y_small) / math.log(x_large / x_small)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def peak_fraction_section(records: list[dict]) -> str:
    """A speed report's table of achieved FLOP/s (counted from the shapes) as a share of the fp32 matmul peak that
    each measuring process found: one row per preset, precision, kind and model, one column per length."""
    rows, lengths = {}, sorted({r["seq_len"] for r in records if r.get("flops")})
    for r in records:
        if r.get("flops"):
            key = (r.get("preset"), r.get("precision"), r["kind"], r.get("label", r["model"]))
            rows.setdefault(key, {})[r["seq_len"]] = (f"{r['achieved_flops_per_s'] / 1e9:.3g} "
                                                      f"({r['peak_fraction']:.1%})")
    if not rows:
        return "No FLOP counts in these records."
    peaks = [r["matmul_peak_flops_per_s"] for r in records if r.get("matmul_peak_flops_per_s")]
    return (f"Achieved GFLOP/s (matmuls and attention counted from the shapes; the causal mask halves attention) and, "
            f"in brackets, its share of the fp32 matmul peak measured in the same process ({min(peaks) / 1e9:.0f}-"
            f"{max(peaks) / 1e9:.0f} GFLOP/s over the processes):\n\n"
            + markdown_table(["preset", "precision", "kind", "model", *[f"T={T}" for T in lengths]],
                             [[*key, *[cells.get(T, "-") for T in lengths]] for key, cells in rows.items()]))


def save_report(name: str, markdown: str, records: list[Measurement], directory: str = "results") -> Path:
    """Write `<name>.md` (the table, with the machine) and `<name>.json` (every measurement) under `directory`."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(f"{markdown}\n\nMachine: {machine_description()}\n")
    (out / f"{name}.json").write_text(json.dumps([asdict(r) for r in records], indent=1))
    return out


def plot_series(path: Path, title: str, xlabel: str, panels: dict[str, dict[str, tuple[list, list]]],
                log: bool = True):
    """One PNG with a panel per entry of `panels`: {panel ylabel: {series label: (xs, ys)}}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for axis, (ylabel, series) in zip(axes[0], panels.items()):
        for label, (xs, ys) in series.items():
            axis.plot(xs, ys, marker="o", label=label)
        if log:
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    fig.suptitle(f"{title}\n{machine_description()}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description="Run one measurement (used by `isolated`); prints JSON.")
    parser.add_argument("request", help="JSON object of `measure` keyword arguments")
    request = json.loads(parser.parse_args().request)
    print(json.dumps(asdict(measure(**request))))


if __name__ == "__main__":
    main()
