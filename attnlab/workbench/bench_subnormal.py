"""`attnlab bench subnormal`: which models' training step depends on subnormal arithmetic, and how many subnormals
their attention makes.

For every model, in this process and one thread (the flush-to-zero mode is per thread), at init and, with
`--train-steps`, after a short training run on Shakespeare bytes:

- the training step's median time with subnormals kept and flushed (`torch.set_flush_denormal`), in interleaved
  rounds; a model whose time changes by more than `--max-change` (20 %) is flagged: on this CPU, subnormals cost it;
- the subnormal values in its SDPA attention's probabilities and score gradients (see `subnormals.py`); a model whose
  fraction exceeds `--max-fraction` is flagged on any CPU, including those (most AMD ones) where subnormals are cheap.

Members whose mixer is not SDPA attention (elita, triple_product) have no count; their timing is still checked.
"""

import statistics
import time

import torch

from .benchmarking import markdown_table, training_flops
from .subnormals import count_attention_subnormals, flush_denormal

MAX_CHANGE = 0.2
MAX_FRACTION = 1e-4


def shakespeare_batches(batch_size: int, seq_len: int, seed: int = 0):
    """Endless random windows of the embedded Shakespeare as byte ids (0-255)."""
    from .data import shakespeare_text

    data = torch.frombuffer(bytearray(shakespeare_text()[:2_000_000].encode("utf-8")), dtype=torch.uint8).long()
    generator = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, len(data) - seq_len - 1, (batch_size,), generator=generator)
        yield torch.stack([data[s:s + seq_len] for s in starts])


def short_training(model, steps: int, batch_size: int, seq_len: int, lr: float = 3e-3, seed: int = 0) -> list[float]:
    """`steps` AdamW steps on Shakespeare bytes; returns the losses."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    losses, batches = [], shakespeare_batches(batch_size, seq_len, seed)
    for _ in range(steps):
        ids = next(batches)
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses


def flush_timing(model, ids: torch.Tensor, rounds: int, repeats: int) -> dict:
    """Median CPU seconds of this process for a training step (forward, backward; no update, so the weights stay those
    counted) with subnormals kept and flushed, alternating every round so that a change of load affects both alike.
    CPU time, not wall time: with one thread it is the step's work, much less disturbed by other jobs."""
    model.train()

    def step():
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        model.zero_grad(set_to_none=True)

    times = {False: [], True: []}
    for flushed in (False, True):  # warm-up
        with flush_denormal(flushed):
            step()
    for _ in range(rounds):
        for flushed in (False, True):
            with flush_denormal(flushed):
                for _ in range(repeats):
                    start = time.process_time()
                    step()
                    times[flushed].append(time.process_time() - start)
    kept, flushed = statistics.median(times[False]), statistics.median(times[True])
    return dict(kept_s=kept, flushed_s=flushed, change=kept / flushed - 1)


def check(model, ids: torch.Tensor, rounds: int, repeats: int, max_change: float = MAX_CHANGE,
          max_fraction: float = MAX_FRACTION) -> dict:
    """One model's timing with and without flushing, its attention's subnormal counts, and why it is flagged
    (`flags`: empty when it passes)."""
    with flush_denormal(False):
        counts = count_attention_subnormals(model, ids).as_dict()
    timing = flush_timing(model, ids, rounds, repeats)
    return dict(**timing, subnormals=counts, flags=flags_for(timing["change"], counts, max_change, max_fraction))


def flags_for(change: float, counts: dict, max_change: float = MAX_CHANGE, max_fraction: float = MAX_FRACTION):
    """Why a model is flagged: its step time changes by more than `max_change` (kept / flushed - 1) when subnormals
    are flushed, or more than `max_fraction` of its attention's probabilities or score gradients are subnormal."""
    flags = []
    if abs(change) > max_change:
        flags.append(f"step time changes by {change:+.0%} when subnormals are flushed")
    for key, what in (("probability_fraction", "probabilities"), ("score_gradient_fraction", "score gradients")):
        if counts[key] > max_fraction:
            flags.append(f"{counts[key]:.2%} of the attention's {what} are subnormal")
    return flags


def subnormal_section(args, info: dict) -> dict:
    from .bench_common import BASELINE, build_model, shape_overrides
    from .bench_common import _preset_values

    # One thread: torch.set_flush_denormal sets the calling thread's mode only, not that of running worker threads.
    torch.set_num_threads(1)
    values = _preset_values(args.preset, vocab_size=256)
    values["max_position_embeddings"] = max(args.seq_len, args.train_length)
    overrides, counts = shape_overrides(args.models, values, args.llama_match, args.llama_match_to)
    ids = next(shakespeare_batches(args.batch_size, args.seq_len, seed=1))
    records, rows = [], []
    for name in args.models:
        model = build_model(name, {**values, **overrides[name]}, seed=0)
        stages = [("init", 0)] + ([("trained", args.train_steps)] if args.train_steps else [])
        for stage, steps in stages:
            losses = short_training(model, steps, args.batch_size, args.train_length) if steps else []
            result = check(model, ids, args.rounds, args.repeats, args.max_change, args.max_fraction)
            record = dict(model=name, stage=stage, train_steps=steps, final_loss=losses[-1] if losses else None,
                          parameters=counts[name], step_flops=training_flops(model, ids), **result)
            records.append(record)
            s = result["subnormals"]
            has_sdpa = s["calls"] > 0
            rows.append([name, stage, f"{result['kept_s'] * 1e3:.0f}", f"{result['flushed_s'] * 1e3:.0f}",
                         f"{result['change']:+.0%}",
                         f"{s['probability_fraction']:.2e}" if has_sdpa else "no SDPA",
                         f"{s['score_gradient_fraction']:.2e}" if has_sdpa else "no SDPA",
                         f"{max(s['log_score_range']):.0f}" if has_sdpa else "-",
                         "; ".join(result["flags"]) or "pass"])
            print(f"subnormal {name:22s} {stage:7s} kept {result['kept_s'] * 1e3:8.1f} ms flushed "
                  f"{result['flushed_s'] * 1e3:8.1f} ms  P {s['probability_fraction']:.2e} "
                  f"dS {s['score_gradient_fraction']:.2e}  {'; '.join(result['flags']) or 'pass'}", flush=True)
    flagged = sorted({r["model"] for r in records if r["flags"]})
    sections = [
        f"Preset `{args.preset}`, T = {args.seq_len}, batch {args.batch_size}, one thread; "
        f"training step = forward + backward; median of {args.rounds} interleaved rounds x {args.repeats} steps per "
        f"setting, in CPU time of the process. Flagged: step time changes by more than {args.max_change:.0%} when subnormals are flushed, or "
        f"more than {args.max_fraction:g} of the SDPA probabilities or score gradients are subnormal."
        + (f" `trained`: after {args.train_steps} AdamW steps (lr 3e-3) on Shakespeare bytes at T = "
           f"{args.train_length}." if args.train_steps else ""),
        markdown_table(["model", "stage", "kept ms", "flushed ms", "kept / flushed - 1", "subnormal P",
                        "subnormal dS", "max score range", "check"], rows),
        f"**Flagged: {', '.join(flagged)}.**" if flagged else "No model flagged.",
    ]
    if BASELINE in args.models:
        sections.append(f"`{BASELINE}` is transformers' LlamaForCausalLM, the reference level.")
    return dict(records=records, flagged=flagged, sections=sections)


def add_arguments(sub):
    sub.add_argument("--preset", default="small")
    sub.add_argument("--seq-len", type=int, default=1024, help="length of the timed and counted steps")
    sub.add_argument("--batch-size", type=int, default=1)
    sub.add_argument("--rounds", type=int, default=3, help="interleaved kept/flushed rounds")
    sub.add_argument("--repeats", type=int, default=2, help="timed steps per round and setting")
    sub.add_argument("--train-steps", type=int, default=0, help="also check after this many training steps")
    sub.add_argument("--train-length", type=int, default=256, help="sequence length of those training steps")
    sub.add_argument("--max-change", type=float, default=MAX_CHANGE)
    sub.add_argument("--max-fraction", type=float, default=MAX_FRACTION)


QUICK = dict(preset="tiny", seq_len=128, rounds=1, repeats=1, train_steps=0)
