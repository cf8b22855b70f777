"""Prompt-lookup decoding against plain greedy decoding, per member and hybrid, on text the model has seen.

Each model (tiny preset, byte vocabulary) is trained for a few hundred steps on one Shakespeare passage written
twice, until it knows it by heart; the prompt is the passage followed by its first line again, so the continuation
repeats text already in the prompt, which is what prompt lookup proposes. Both decoders run greedy over the same prompt,
interleaved, in one process; the record keeps their outputs' agreement, the accepted draft tokens, and the median
time ratio. Run: OMP_NUM_THREADS=1 python scripts/prompt_lookup_speedup.py [--steps N] [--models a,b] [--out DIR]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from attnlab.members import HYBRIDS, MEMBERS
from attnlab.workbench.bench_common import run_info, write_report
from attnlab.workbench.data import shakespeare_text

MODELS = {**MEMBERS, **HYBRIDS}


def passage(length: int) -> torch.Tensor:
    text = shakespeare_text()
    start = text.index("To be, or not to be")
    return torch.tensor([list(text[start:start + length].encode("ascii", "replace"))])


def train_on(model, sequence: torch.Tensor, steps: int, lr: float) -> float:
    """AdamW on the whole sequence (the passage twice), at the positions the prompt will have; returns the last loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        loss = model(sequence, labels=sequence, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return float(loss.detach())


def accepted_tokens(model, prompt, new_tokens: int, lookup: int) -> int:
    """How many of the generated tokens came from accepted lookup candidates (counted on the verification calls)."""
    calls = []
    forward = model.forward

    def counting(*args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        calls.append(ids.shape[1])
        return forward(*args, **kwargs)

    model.forward = counting
    try:
        out = model.generate(prompt, max_new_tokens=new_tokens, do_sample=False, prompt_lookup_num_tokens=lookup)
    finally:
        del model.forward
    verification_rounds = len(calls) - 1  # the first call is the prefill
    return out.shape[1] - prompt.shape[1] - verification_rounds


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--passage", type=int, default=320)
    parser.add_argument("--repeat", type=int, default=64,
                        help="bytes of the passage's start repeated at the end of the prompt")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--lookup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="results")
    args = parser.parse_args(argv)
    info = {**run_info(argv), "command": " ".join(["python scripts/prompt_lookup_speedup.py", *argv]),
            "threads": torch.get_num_threads(), "torch": torch.__version__}
    import transformers
    info["transformers"] = transformers.__version__

    ids = passage(args.passage)
    prompt = torch.cat([ids, ids[:, :args.repeat]], dim=1)
    rows = []
    for name in args.models.split(","):
        member = MODELS[name]
        torch.manual_seed(0)
        # A hybrid at the tiny preset's 2 layers is [member, attention] (the registry's layout rule).
        config = member.preset_config("tiny", vocab_size=256, max_position_embeddings=2048)
        model = member.causal_lm_class(config)
        loss = train_on(model, torch.cat([ids, ids], dim=1), args.steps, lr=3e-3)
        with torch.no_grad():
            plain = model.generate(prompt, max_new_tokens=args.new_tokens, do_sample=False)
            lookup = model.generate(prompt, max_new_tokens=args.new_tokens, do_sample=False,
                                    prompt_lookup_num_tokens=args.lookup)
            accepted = accepted_tokens(model, prompt, args.new_tokens, args.lookup)
            times = {"plain": [], "lookup": []}
            for _ in range(args.rounds):  # interleaved, so load changes hit both alike
                times["plain"].append(timed(lambda: model.generate(prompt, max_new_tokens=args.new_tokens,
                                                                   do_sample=False)))
                times["lookup"].append(timed(lambda: model.generate(prompt, max_new_tokens=args.new_tokens,
                                                                    do_sample=False,
                                                                    prompt_lookup_num_tokens=args.lookup)))
        generated = plain[0, prompt.shape[1]:]
        expected = ids[0, args.repeat:args.repeat + generated.shape[0]]
        row = dict(model=name, final_train_loss=loss, outputs_equal=bool(torch.equal(plain, lookup)),
                   copies_the_passage=float((generated == expected).float().mean()),
                   accepted_draft_tokens=accepted, new_tokens=int(generated.shape[0]),
                   plain_s=statistics.median(times["plain"]), lookup_s=statistics.median(times["lookup"]),
                   times=times)
        row["speedup"] = row["plain_s"] / row["lookup_s"]
        rows.append(row)
        print(f"{name}: loss {loss:.3f}, equal {row['outputs_equal']}, copies {row['copies_the_passage']:.2f}, "
              f"accepted {accepted}/{row['new_tokens']}, plain {row['plain_s']:.2f}s, lookup {row['lookup_s']:.2f}s, "
              f"speed-up {row['speedup']:.2f}x", flush=True)

    table = ["| model | outputs equal | greedy copies the passage | accepted draft tokens | plain greedy (s) | "
             "prompt lookup (s) | speed-up |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['model']} | {'yes' if r['outputs_equal'] else 'NO'} | {r['copies_the_passage']:.0%} | "
                     f"{r['accepted_draft_tokens']}/{r['new_tokens']} | {r['plain_s']:.2f} | {r['lookup_s']:.2f} | "
                     f"{r['speedup']:.2f}x |")
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    intro = (f"Prompt lookup (`prompt_lookup_num_tokens={args.lookup}`) against plain greedy decoding, "
             f"{args.new_tokens} new tokens after a {prompt.shape[1]}-byte prompt: a {args.passage}-byte Shakespeare "
             f"passage (each model was trained for {args.steps} steps on it written twice; tiny preset, byte "
             f"vocabulary), then its first "
             f"{args.repeat} bytes again. Medians of {args.rounds} interleaved rounds, batch 1, fp32, "
             f"{info['threads']} thread(s), torch {info['torch']}, transformers {info['transformers']}.")
    path = write_report(Path(args.out), "prompt-lookup", info, settings, dict(rows=rows), [intro, "\n".join(table)],
                        quick=args.steps < 100)
    print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
