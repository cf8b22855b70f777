"""How counting padded positions inflates next-token accuracy: the likely cause of seed 000's 99.8-100% figures.

The seed trained on ~50 short Shakespeare passages per epoch, each padded to the full sequence length (512 to 5120
tokens), and reported 99.8% accuracy at a loss of 5.39 (seed-variants-spec.md, 0.3): impossible if both were
measured on the same real targets. `run` reproduces the mechanism on a tiny evolving model: short passages
(byte tokens) right-padded to `seq_len`, trained briefly the way a fixed-length script without a label mask trains
(every position in the loss, pads included), then evaluated on held-out passages two ways:

- `with_pads`: argmax == target over every position, pads included (what a plain `(pred == target).mean()` gives);
- `real`: the same, only where the target is a real token; `real_loss` is the cross-entropy there.

A model that has learnt "after a pad comes a pad" scores pad_fraction + (1 - pad_fraction) * real on the first,
which tends to 1 as the padded length grows, whatever it knows about Shakespeare.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

PAD = 0  # byte tokens: NUL never occurs in the text


@dataclass
class PaddedAccuracy:
    seq_len: int
    pad_fraction: float  # of the target positions
    with_pads: float
    real: float
    real_loss: float


def next_token_accuracies(logits: torch.Tensor, input_ids: torch.Tensor, pad_token_id: int = PAD) -> dict:
    """Accuracy over all target positions vs over real targets only, and the loss on real targets.

    logits [B, T, V] predict input_ids[:, 1:]; a target is padding where it equals `pad_token_id`."""
    predictions, targets = logits[:, :-1].argmax(-1), input_ids[:, 1:]
    correct, real = predictions == targets, targets != pad_token_id
    if not real.any():
        raise ValueError("no real target positions: every target is padding")
    losses = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                             reduction="none").view_as(targets)
    return dict(pad_fraction=1 - real.float().mean().item(), with_pads=correct.float().mean().item(),
                real=correct[real].float().mean().item(), real_loss=losses[real].mean().item())


def load_passages(path: str | Path, min_bytes: int = 60, max_bytes: int = 400) -> list[bytes]:
    """The corpus's blank-line separated blocks (a speaker and a speech) of a bounded size, as ASCII bytes."""
    text = Path(path).read_text(encoding="utf-8", errors="ignore")
    blocks = (block.strip().encode("ascii", errors="ignore") for block in text.split("\n\n"))
    return [block for block in blocks if min_bytes <= len(block) <= max_bytes]


def pad_batch(passages: list[bytes], seq_len: int) -> torch.Tensor:
    """[len(passages), seq_len] byte ids, right-padded with PAD (passages longer than seq_len are cut)."""
    ids = torch.full((len(passages), seq_len), PAD, dtype=torch.long)
    for row, passage in enumerate(passages):
        data = torch.tensor(list(passage[:seq_len]), dtype=torch.long)
        ids[row, :len(data)] = data
    return ids


def tiny_evolving(seq_len: int):
    from ..configuration_evolving import EvolvingConfig
    from ..modeling_evolving import EvolvingForCausalLM

    config = EvolvingConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=seq_len, pad_token_id=PAD)
    return EvolvingForCausalLM(config)


def run(corpus: str | Path, seq_len: int, steps: int = 60, batch_size: int = 8, train_passages: int = 50,
        eval_passages: int = 64, lr: float = 3e-3, seed: int = 0) -> PaddedAccuracy:
    """Train on `train_passages` passages (the seed's 50) for `steps` steps, evaluate on held-out passages from the
    end of the corpus (a contiguous tail that never overlaps the training passages)."""
    passages = load_passages(corpus)
    if len(passages) < train_passages + eval_passages:
        raise ValueError(f"{corpus} has {len(passages)} usable passages, need {train_passages + eval_passages}")
    generator = torch.Generator().manual_seed(seed)
    train = pad_batch(passages[:train_passages], seq_len)
    held_out = pad_batch(passages[-eval_passages:], seq_len)
    torch.manual_seed(seed)
    model = tiny_evolving(seq_len)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        batch = train[torch.randint(0, len(train), (batch_size,), generator=generator)]
        loss = model(batch, labels=batch, use_cache=False).loss  # pads in the loss: no label mask
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(chunk, use_cache=False).logits for chunk in held_out.split(16)])
    return PaddedAccuracy(seq_len=seq_len, **next_token_accuracies(logits, held_out))


def markdown(results: list[PaddedAccuracy]) -> str:
    rows = ["| padded length | pad share of targets | accuracy counting pads | accuracy on real targets | "
            "loss on real targets (nats) |", "|---|---|---|---|---|"]
    rows += [f"| {r.seq_len} | {r.pad_fraction:.3f} | {r.with_pads:.3f} | {r.real:.3f} | {r.real_loss:.2f} |"
             for r in results]
    return "\n".join(rows)

