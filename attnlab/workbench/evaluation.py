"""Held-out evaluation of a causal LM: loss, perplexity, bits per byte and next-token accuracy.

All four come from the same target positions, so they can be compared with each other and across runs:

- `loss` is the mean negative log-likelihood in nats per scored token, `perplexity` its exponential;
- `bits_per_byte` is the total negative log-likelihood in bits over the UTF-8 bytes those tokens stand for, which
  compares models with different tokenizers fairly (a tokenizer with longer tokens has a higher loss per token);
- `accuracy` is the share of scored targets that are the argmax of the logits.

Two ways to cut a held-out text into model inputs: packed blocks (`evaluate_blocks`, each block's first token has
no context and is not scored) and a sliding window over one token stream (`evaluate_sliding_window`, every token
after the first is scored exactly once, with at least `window - stride` tokens of context after the first window).
"""

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer, default_data_collator

from .hub import hub_unreachable
from ..tokenization_attnlab import load_tokenizer

IGNORE_INDEX = -100


def load_model_and_tokenizer(folder: str, tokenizer: str | None = None, trust_remote_code: bool = False):
    """A saved model in eval mode and its tokenizer (by default the folder's own), checked to match."""
    model = load_pretrained(folder, trust_remote_code=trust_remote_code).eval()
    tokenizer = load_tokenizer(tokenizer) if tokenizer is not None else load_hub_tokenizer(folder, trust_remote_code)
    if len(tokenizer) != model.config.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model in {folder} has a vocabulary of "
                         f"{model.config.vocab_size}; use the tokenizer it was trained with (saved in its folder)")
    return model, tokenizer


def load_pretrained(name_or_path: str, trust_remote_code: bool = False, **kwargs):
    """`AutoModelForCausalLM.from_pretrained` with one-line errors: a missing folder, a corrupt or truncated weights
    file (named), an unreachable Hub (failing at once rather than after transformers' retries)."""
    _check_model_source(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load the model {name_or_path}: {_first_line(error)}") from None
    check_finite_weights(model, name_or_path)
    return model


def check_finite_weights(model, name_or_path: str):
    """Raise ValueError naming the weights file and the first tensor holding a NaN or an infinity: a file damaged
    in place keeps its size and header, and would otherwise evaluate to a NaN loss."""
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        if tensor.is_floating_point() and tensor.device.type != "meta" and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            files = sorted(Path(name_or_path).glob("*.safetensors")) if os.path.isdir(name_or_path) else []
            where = ", ".join(str(path) for path in files) or name_or_path
            raise ValueError(f"{where}: the weight {name} holds {bad:,} non-finite value(s) (NaN or inf); the file "
                             f"is damaged or the run that saved it diverged; save or download it again")


def load_hub_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """A model folder's or Hub repo's own tokenizer, with the same one-line errors as `load_pretrained`."""
    if not os.path.isdir(name_or_path):
        _check_model_source(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load the tokenizer of {name_or_path}: {_first_line(error)}") from None


def _check_model_source(name_or_path: str):
    if os.path.isdir(name_or_path):
        for weights in sorted(Path(name_or_path).glob("*.safetensors")):
            check_safetensors(weights)
        return
    # Not a folder here: a Hub id has the form owner/name (or name); anything else is a local path that is missing.
    parts = name_or_path.split("/")
    if os.path.exists(name_or_path) or len(parts) > 2 or not all(parts) or name_or_path.startswith((".", "~")):
        raise FileNotFoundError(f"model folder not found: {name_or_path}")
    unreachable = hub_unreachable(name_or_path)
    if unreachable:
        raise FileNotFoundError(f"model folder not found: {name_or_path} (nor on the Hub: {unreachable})")


def check_safetensors(path: Path):
    """Raise ValueError naming a weights file that is truncated or not safetensors at all."""
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except Exception as error:  # SafetensorError: a header that does not parse or does not cover the file
        raise ValueError(f"{path} is corrupt or truncated ({_first_line(error)}); save or download it again") from None


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


class NonFiniteLossError(ValueError):
    """An evaluation whose loss is NaN or infinite: a wrong number that must not be printed as a result."""


@dataclass
class EvalResult:
    loss: float  # nats per scored token
    perplexity: float
    bits_per_byte: float
    accuracy: float
    tokens: int  # scored target tokens
    bytes: int  # UTF-8 bytes of the scored targets

    @classmethod
    def from_totals(cls, totals: torch.Tensor) -> "EvalResult":
        """From summed [nats, correct, tokens, bytes], as `score_targets` returns per row."""
        nats, correct, tokens, num_bytes = totals.double().tolist()
        if tokens == 0:
            raise ValueError("nothing to evaluate: the held-out text gave no target tokens")
        if not math.isfinite(nats):
            raise NonFiniteLossError(f"the loss is not finite ({nats}): the model's logits hold NaN or inf")
        loss = nats / tokens
        return cls(
            loss=loss,
            perplexity=math.exp(loss),
            bits_per_byte=nats / math.log(2) / num_bytes if num_bytes else float("nan"),
            accuracy=correct / tokens,
            tokens=int(tokens),
            bytes=int(num_bytes),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"loss {self.loss:.4f} | perplexity {self.perplexity:.2f} | bits/byte {self.bits_per_byte:.4f} | "
                f"accuracy {self.accuracy:.2%} | {self.tokens:,} tokens, {self.bytes:,} bytes")


def score_targets(logits: torch.Tensor, labels: torch.Tensor, byte_lengths: torch.Tensor) -> torch.Tensor:
    """Per row, [summed nats, correct predictions, scored tokens, bytes] (float64, shape [batch, 4]).

    `labels` are aligned with the inputs, as for the model's own loss: position t's logits predict labels[t + 1];
    targets equal to -100 are not scored.
    """
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    scored = targets != IGNORE_INDEX
    safe_targets = targets.masked_fill(~scored, 0)
    nats = -logits.log_softmax(-1).gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    correct = logits.argmax(-1) == targets
    num_bytes = byte_lengths.to(targets.device)[safe_targets]
    per_position = torch.stack([nats.double(), correct.double(), torch.ones_like(nats, dtype=torch.double),
                                num_bytes.double()], dim=-1)
    return torch.where(scored.unsqueeze(-1), per_position, 0.0).sum(dim=1)  # where, not *: an ignored inf stays out


@torch.no_grad()
def evaluate_blocks(model, blocks, byte_lengths: torch.Tensor, batch_size: int = 8, max_blocks: int | None = None,
                    accelerator=None) -> EvalResult:
    """Score packed blocks (a Dataset with an `input_ids` column of equal-length rows).

    With an `accelerator` each process scores a contiguous shard of the blocks and the totals are summed, so every
    process returns the same result. Pass the unwrapped model: the processes may run different numbers of batches.
    """
    if max_blocks is not None:
        blocks = blocks.select(range(min(max_blocks, len(blocks))))
    if accelerator is not None and accelerator.num_processes > 1:
        blocks = blocks.shard(accelerator.num_processes, accelerator.process_index, contiguous=True)
    loader = DataLoader(blocks.select_columns(["input_ids"]), batch_size=batch_size, collate_fn=default_data_collator)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.double, device=device)
    batches = list(loader)
    num_forwards = len(batches)
    if accelerator is not None and accelerator.num_processes > 1 and accelerator.distributed_type == "FSDP":
        # A sharded model gathers its weights collectively in every forward: each process runs as many forwards as
        # the busiest one, the extra ones on a batch it already scored, not counted.
        num_forwards = int(accelerator.reduce(torch.tensor(num_forwards, device=device), reduction="max").item())
    for index in range(num_forwards):
        input_ids = batches[min(index, len(batches) - 1)]["input_ids"].to(device)
        scores = score_targets(model(input_ids=input_ids, use_cache=False).logits, input_ids, byte_lengths).sum(0)
        if index < len(batches):
            totals += scores
    if accelerator is not None:
        totals = accelerator.reduce(totals, reduction="sum")
    model.train(was_training)
    return EvalResult.from_totals(totals.cpu())


def sliding_window_spans(num_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """The windows over a stream of `num_tokens` tokens, as (start, end, score_from) triples.

    A window feeds tokens [start, end) to the model and scores the targets at stream positions [score_from, end).
    The first window scores every target it has (from position 1: token 0 has no context); each later window moves
    by `stride` and scores only its last `stride` targets (the last window: what is left), so every position
    1 .. num_tokens - 1 is scored exactly once and, after the first window, with >= window - stride tokens of context.
    """
    if window < 2:
        raise ValueError(f"window must be >= 2 tokens (one of context, one to score), got {window}")
    if not 0 < stride < window:  # a target needs the token before it in the same window
        raise ValueError(f"stride must be in [1, window - 1 = {window - 1}], got {stride}")
    if num_tokens < 2:
        raise ValueError(f"need at least 2 tokens to score one, got {num_tokens}")
    end = min(window, num_tokens)
    spans = [(0, end, 1)]
    while end < num_tokens:
        new_end = min(end + stride, num_tokens)
        spans.append((new_end - window, new_end, end))
        end = new_end
    return spans


@torch.no_grad()
def evaluate_sliding_window(model, token_ids: torch.Tensor, byte_lengths: torch.Tensor, window: int, stride: int,
                            batch_size: int = 8) -> EvalResult:
    """Score a 1-D token stream with a sliding window (see `sliding_window_spans`). Runs in one process."""
    device = next(model.parameters()).device
    spans = sliding_window_spans(len(token_ids), window, stride)
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.double)
    for first in range(0, len(spans), batch_size):
        # Every window but a stream shorter than `window` has exactly `window` tokens, so they stack.
        batch_spans = spans[first:first + batch_size]
        input_ids = torch.stack([token_ids[start:end] for start, end, _ in batch_spans])
        labels = input_ids.clone()
        for row, (start, _, score_from) in enumerate(batch_spans):
            labels[row, :score_from - start] = IGNORE_INDEX
        input_ids = input_ids.to(device)
        logits = model(input_ids=input_ids, use_cache=False).logits
        totals += score_targets(logits, labels.to(device), byte_lengths).sum(0).cpu()
    model.train(was_training)
    return EvalResult.from_totals(totals)
