"""Audit any causal LM for the contracts of DESIGN.md: causality, cache consistency, left padding, generate().

The seeds this library comes from leaked future tokens or decoded differently from how they trained; these
checks catch both, on any `transformers` causal LM (an attnlab member, a saved folder, or a new mixer under
development):

    python -m attnlab.workbench.audit path/to/folder      # or: from attnlab.workbench.audit import audit; audit(model)

Each check returns a number (a max abs logit difference) or a bool; `audit` runs them all on random tokens and
compares them with the tolerances of the contract suite.
"""

import argparse
from dataclasses import dataclass

import torch

CAUSAL_TOLERANCE = 1e-5
DECODE_TOLERANCE = 1e-4


def _logits(model, ids, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False, **kwargs).logits.float()


def future_perturbation_gap(model, ids: torch.LongTensor, split: int, replacement: torch.LongTensor) -> float:
    """Max change of the logits before `split` when every token from `split` on is replaced."""
    perturbed = ids.clone()
    perturbed[:, split:] = replacement
    return (_logits(model, ids)[:, :split] - _logits(model, perturbed)[:, :split]).abs().max().item()


def decode_gap(model, ids: torch.LongTensor, prefill: int, step: int = 1) -> float:
    """Max difference between the full forward and a prefill of `prefill` tokens followed by cached decoding."""
    with torch.no_grad():
        out = model(input_ids=ids[:, :prefill], use_cache=True)
        pieces, cache = [out.logits.float()], out.past_key_values
        for start in range(prefill, ids.shape[1], step):
            out = model(input_ids=ids[:, start:start + step], past_key_values=cache, use_cache=True)
            pieces.append(out.logits.float())
            cache = out.past_key_values
    return (torch.cat(pieces, dim=1) - _logits(model, ids)).abs().max().item()


def left_padding_gap(model, prompt: torch.LongTensor, num_pads: int, pad_token_id: int) -> float:
    """Max difference between a left-padded row (with its attention mask) and the same prompt unpadded."""
    padded = torch.cat([torch.full((1, num_pads), pad_token_id, dtype=prompt.dtype), prompt], dim=1)
    mask = torch.ones_like(padded)
    mask[:, :num_pads] = 0
    return (_logits(model, padded, attention_mask=mask)[:, num_pads:] - _logits(model, prompt)).abs().max().item()


def generate_agrees_with_and_without_cache(model, prompt: torch.LongTensor, new_tokens: int, **generate_kwargs):
    """Whether generate() returns the same sequences with and without a cache (same seed for sampling)."""
    runs = []
    for use_cache in (True, False):
        torch.manual_seed(0)
        runs.append(model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                   use_cache=use_cache, **generate_kwargs))
    return torch.equal(runs[0], runs[1])


@dataclass
class AuditResult:
    check: str
    value: float | bool
    passed: bool


def audit(model, seq_len: int = 32, batch_size: int = 2, seed: int = 0) -> list[AuditResult]:
    """Run every check on random tokens; the model should be in fp32 for the tolerances to be meaningful."""
    model.eval()
    vocab, pad = model.config.vocab_size, model.config.pad_token_id
    pad = 0 if pad is None else pad
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab, (batch_size, seq_len), generator=generator).to(device)
    replacement = torch.randint(0, vocab, (batch_size, seq_len // 2), generator=generator).to(device)
    gen_kwargs = dict(pad_token_id=pad)
    results = [
        ("causal: future tokens changed", future_perturbation_gap(model, ids, seq_len // 2, replacement), CAUSAL_TOLERANCE),
        ("cache: prefill + 1-token decoding", decode_gap(model, ids, seq_len // 4), DECODE_TOLERANCE),
        ("cache: prefill + 3-token chunks", decode_gap(model, ids, seq_len // 4, step=3), DECODE_TOLERANCE),
        ("left padding: 5 pads", left_padding_gap(model, ids[:1], 5, pad), CAUSAL_TOLERANCE),
    ]
    report = [AuditResult(name, value, value < tolerance) for name, value, tolerance in results]
    prompt = ids[:, :8]
    for name, kwargs in [("generate greedy", dict(do_sample=False)),
                         ("generate sampling", dict(do_sample=True, top_k=20)),
                         ("generate beam search", dict(do_sample=False, num_beams=3, num_return_sequences=2))]:
        agrees = generate_agrees_with_and_without_cache(model, prompt, 8, **kwargs, **gen_kwargs)
        report.append(AuditResult(f"{name}: cache == no cache", agrees, agrees))
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description="Audit a saved causal LM folder for causality and cache consistency.")
    parser.add_argument("folder", help="a folder written by save_pretrained (or a Hub repo id)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the folder's own modeling code")
    parser.add_argument("--seq-len", type=int, default=32, help="length of the random test sequences")
    args = parser.parse_args(argv)

    import attnlab  # noqa: F401  (registers attnlab's members)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(args.folder, trust_remote_code=args.trust_remote_code,
                                                 dtype=torch.float32)
    report = audit(model, seq_len=args.seq_len)
    for result in report:
        value = f"{result.value:.2e}" if isinstance(result.value, float) else str(result.value)
        print(f"{'PASS' if result.passed else 'FAIL'}  {result.check:40s} {value}")
    raise SystemExit(0 if all(result.passed for result in report) else 1)


if __name__ == "__main__":
    main()
