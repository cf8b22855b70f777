"""`attnlab bench copy`: seed 003's copy task, in its fixed-offset form and a variable-offset form a fixed-offset
head cannot solve."""

import time

import torch

from .bench_common import (IGNORE_INDEX, accuracy_on_labels, add_task_model_arguments, build_model, shape_overrides,
                           task_model_values, train_task)
from .benchmarking import markdown_table


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
    overrides, counts = shape_overrides(args.models, values, args.llama_match, args.llama_match_to)
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


def add_arguments(copy):
    add_task_model_arguments(copy)
    copy.add_argument("--forms", nargs="+", default=["fixed", "variable"], choices=["fixed", "variable"])
    copy.add_argument("--width", type=int, default=64)
    copy.add_argument("--seq-len", type=int, default=128, help="the seed keeps seq_len - 1 <= 128")
    copy.add_argument("--vocab-size", type=int, default=64)
    copy.add_argument("--steps", type=int, default=1500)
    copy.add_argument("--batch-size", type=int, default=32)
    copy.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3])
    copy.add_argument("--test-examples", type=int, default=512)


# --quick: a few steps of short sequences (plumbing only).
QUICK = dict(steps=4, lrs=[1e-3, 3e-3], test_examples=16, batch_size=8, seq_len=32, width=32)
