"""Audit any causal LM for the contracts of DESIGN.md: causality, cache consistency, left padding, generate(),
a save/load round trip and a clear error for out-of-vocabulary ids.

The seeds this library comes from leaked future tokens or decoded differently from how they trained; these
checks catch both, on any `transformers` causal LM (an attnlab member, a saved folder, or a new mixer under
development):

    attnlab audit path/to/folder          # or a Hub name, or a member name (a tiny random model); --json
    attnlab audit --mixer mypkg.mixers:GatedMixer   # a tiny stack of a mixer, and its hybrid with attention
    from attnlab.workbench.audit import audit; audit(model)

The checks are those of the contract suite (`contract.py`, one implementation for both): each gives PASS or FAIL,
WARN for what is reported but is not a contract failure (a model from another library that answers an
out-of-vocabulary id with a bare IndexError), or SKIP where it does not apply. Exit status 1 on a FAIL only.
"""

import argparse
import dataclasses
import json

import torch
import transformers

from .contract import (  # noqa: F401  (the checks live in contract.py; these names are audit's public API)
    CheckResult,
    decode_gap,
    future_perturbation_gap,
    generate_agrees_with_and_without_cache,
    left_padding_gap,
    out_of_vocabulary_error,
    run_checks,
    save_load_gap,
)

AuditResult = CheckResult


def audit(model, seq_len: int = 24, seed: int = 0) -> list[CheckResult]:
    """Run every check of the contract (contract.CHECKS) on random tokens; the model should be in fp32."""
    return run_checks(model, seq_len=seq_len, seed=seed)


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("model", nargs="?", help="a folder written by save_pretrained, a Hub repo id, or an attnlab "
                                                 "member name (a tiny random model of it)")
    parser.add_argument("--mixer", help="audit a mixer instead: a registered name or an import path "
                                        "'package.module:Class' (a tiny stack of it and its hybrid with attention)")
    parser.add_argument("--trust_remote_code", "--trust-remote-code", action="store_true",
                        help="allow a folder's own modeling code (other libraries' models)")
    parser.add_argument("--seq_len", "--seq-len", type=int, default=24, help="length of the random test sequences")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of PASS/FAIL lines")


def load_audited_model(name: str, trust_remote_code: bool = False):
    """A member name gives a tiny random model of that member; anything else is loaded in fp32."""
    from ..members import BASELINES, HYBRIDS, MEMBERS, STACKS
    from .evaluation import load_pretrained

    known = {**MEMBERS, **HYBRIDS, **STACKS, **BASELINES}
    if name in known:
        torch.manual_seed(0)
        member = known[name]
        config = member.test_config() if not member.is_baseline else member.preset_config(
            "tiny", vocab_size=97, pad_token_id=0, bos_token_id=1, eos_token_id=2)
        return member.causal_lm_class(config)
    return load_pretrained(name, trust_remote_code=trust_remote_code, dtype=torch.float32)


def audited_models(args) -> dict[str, object]:
    if (args.model is None) == (args.mixer is None):
        raise ValueError("give a model (folder, Hub id or member name) or --mixer, not both")
    if args.mixer is not None:
        from .contract_tests import mixer_models

        return {f"{args.mixer} ({kind})": make() for kind, make in mixer_models(args.mixer).items()}
    return {args.model: load_audited_model(args.model, args.trust_remote_code)}


def run(args) -> int:
    """Load, audit, print; exit status 1 on any failure."""
    if args.seq_len < 16:
        raise ValueError(f"--seq_len must be at least 16 (prefills of 15 tokens are checked), got {args.seq_len}")
    transformers.utils.logging.disable_progress_bar()  # stdout carries the report (JSON with --json) only
    transformers.utils.logging.set_verbosity_error()
    reports = {name: audit(model, seq_len=args.seq_len) for name, model in audited_models(args).items()}
    passed = all(result.passed for report in reports.values() for result in report)
    if args.json:
        print(json.dumps(dict(passed=passed, models=[
            dict(model=name, passed=all(r.passed for r in report),
                 checks=[{**dataclasses.asdict(r), "passed": r.passed} for r in report])
            for name, report in reports.items()]), indent=1))
    else:
        for name, report in reports.items():
            print(f"== {name}")
            for result in report:
                value = f"{result.value:.2e}" if isinstance(result.value, float) else str(result.value)
                print(f"{result.status:4s}  {result.check:58s} {value}")
    raise SystemExit(0 if passed else 1)


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
