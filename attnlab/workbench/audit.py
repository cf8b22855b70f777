"""Audit any causal LM for the contracts of DESIGN.md: causality, cache consistency, left padding, generate(),
a save/load round trip and a clear error for out-of-vocabulary ids.

The seeds this library comes from leaked future tokens or decoded differently from how they trained; these
checks catch both, on any `transformers` causal LM (an attnlab member, a saved folder, or a new mixer under
development):

    attnlab audit path/to/folder          # or a Hub name, or a member name (a tiny random model); --json
    from attnlab.workbench.audit import audit; audit(model)

Each check returns a number (a max abs logit difference) or a bool; `audit` runs them all on random tokens and
compares them with the tolerances of the contract suite.
"""

import argparse
import dataclasses
import json
import tempfile
from dataclasses import dataclass

import torch
import transformers
from transformers import AutoModelForCausalLM

CAUSAL_TOLERANCE = 1e-5
DECODE_TOLERANCE = 1e-4


def _logits(model, ids, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False, **kwargs).logits.float()


def _cache_name(output) -> str:
    """transformers 5.24 renamed `past_key_values` to `cache` (the old name still works, with a deprecation
    warning): use whichever this version's outputs have, for the output field and the forward argument alike."""
    return "cache" if "cache" in {field.name for field in dataclasses.fields(output)} else "past_key_values"


def future_perturbation_gap(model, ids: torch.LongTensor, split: int, replacement: torch.LongTensor) -> float:
    """Max change of the logits before `split` when every token from `split` on is replaced."""
    perturbed = ids.clone()
    perturbed[:, split:] = replacement
    return (_logits(model, ids)[:, :split] - _logits(model, perturbed)[:, :split]).abs().max().item()


def decode_gap(model, ids: torch.LongTensor, prefill: int, step: int = 1) -> float:
    """Max difference between the full forward and a prefill of `prefill` tokens followed by cached decoding."""
    with torch.no_grad():
        out = model(input_ids=ids[:, :prefill], use_cache=True)
        name = _cache_name(out)
        pieces, cache = [out.logits.float()], getattr(out, name)
        for start in range(prefill, ids.shape[1], step):
            out = model(input_ids=ids[:, start:start + step], use_cache=True, **{name: cache})
            pieces.append(out.logits.float())
            cache = getattr(out, name)
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


def save_load_gap(model, ids: torch.LongTensor, trust_remote_code: bool = False) -> float:
    """Max logit difference between the model and its own save_pretrained / from_pretrained round trip."""
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        loaded = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=trust_remote_code,
                                                      dtype=next(model.parameters()).dtype).to(ids.device).eval()
    return (_logits(loaded, ids) - _logits(model, ids)).abs().max().item()


def out_of_vocabulary_error(model, ids: torch.LongTensor) -> str | None:
    """The error message for an id equal to vocab_size if it is a clear one (it names the vocabulary or the id),
    else None: a bare IndexError from the embedding (or, on a GPU, a device-side assert) tells a user nothing."""
    bad = ids[:1, :4].clone()
    bad[0, -1] = model.config.vocab_size
    try:
        _logits(model, bad)
    except Exception as error:  # whatever the model raises: the check is about the message
        message = " ".join(str(error).split())
        clear = "vocab" in message.lower() or str(model.config.vocab_size) in message
        return message if clear else None
    return None


@dataclass
class AuditResult:
    check: str
    value: float | bool
    passed: bool


def audit(model, seq_len: int = 32, batch_size: int = 2, seed: int = 0,
          trust_remote_code: bool = False) -> list[AuditResult]:
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
        ("save_pretrained + from_pretrained", save_load_gap(model, ids, trust_remote_code), CAUSAL_TOLERANCE),
    ]
    report = [AuditResult(name, value, value < tolerance) for name, value, tolerance in results]
    oov_message = out_of_vocabulary_error(model, ids)
    report.append(AuditResult("out-of-vocabulary id: clear error", oov_message is not None, oov_message is not None))
    prompt = ids[:, :8]
    for name, kwargs in [("generate greedy", dict(do_sample=False)),
                         ("generate sampling", dict(do_sample=True, top_k=20)),
                         ("generate beam search", dict(do_sample=False, num_beams=3, num_return_sequences=2))]:
        agrees = generate_agrees_with_and_without_cache(model, prompt, 8, **kwargs, **gen_kwargs)
        report.append(AuditResult(f"{name}: cache == no cache", agrees, agrees))
    return report


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("model", help="a folder written by save_pretrained, a Hub repo id, or an attnlab member name "
                                      "(a tiny random model of it)")
    parser.add_argument("--trust_remote_code", "--trust-remote-code", action="store_true",
                        help="allow a folder's own modeling code (other libraries' models)")
    parser.add_argument("--seq_len", "--seq-len", type=int, default=32, help="length of the random test sequences")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of PASS/FAIL lines")


def load_audited_model(name: str, trust_remote_code: bool = False):
    """A member name gives a tiny random model of that member; anything else is loaded in fp32."""
    from ..members import BASELINES, MEMBERS
    from .evaluation import load_pretrained

    known = {**MEMBERS, **BASELINES}
    if name in known:
        torch.manual_seed(0)
        member = known[name]
        config = member.test_config() if not member.is_baseline else member.preset_config(
            "tiny", vocab_size=97, pad_token_id=0, bos_token_id=1, eos_token_id=2)
        return member.causal_lm_class(config)
    return load_pretrained(name, trust_remote_code=trust_remote_code, dtype=torch.float32)


def run(args) -> int:
    """Load, audit, print; exit status 1 on any failure."""
    if args.seq_len < 8:
        raise ValueError(f"--seq_len must be at least 8 (prompts of 8 tokens are generated from), got {args.seq_len}")
    transformers.utils.logging.disable_progress_bar()  # stdout carries the report (JSON with --json) only
    model = load_audited_model(args.model, args.trust_remote_code)
    report = audit(model, seq_len=args.seq_len, trust_remote_code=args.trust_remote_code)
    if args.json:
        print(json.dumps(dict(model=args.model, passed=all(r.passed for r in report),
                              checks=[dataclasses.asdict(r) for r in report]), indent=1))
    else:
        for result in report:
            value = f"{result.value:.2e}" if isinstance(result.value, float) else str(result.value)
            print(f"{'PASS' if result.passed else 'FAIL'}  {result.check:40s} {value}")
    raise SystemExit(0 if all(result.passed for result in report) else 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Audit a causal LM for causality and cache consistency.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    import attnlab  # noqa: F401  (registers attnlab's members)

    try:
        run(args)
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, f"audit: error: {' '.join(str(error).split())}\n")


if __name__ == "__main__":
    main()
