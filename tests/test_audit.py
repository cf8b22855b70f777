import json
import logging

import pytest
import torch
import transformers

from attnlab.workbench.audit import audit, main
from attnlab.members import MEMBERS
from attnlab.modeling_triple_product import TripleProductForCausalLM


class LeakyForCausalLM(TripleProductForCausalLM):
    """Mixes the mean over the whole sequence into every position: the kind of leak the seeds had."""

    def forward(self, input_ids=None, **kwargs):
        out = super().forward(input_ids=input_ids, **kwargs)
        out.logits = out.logits + out.logits.mean(dim=1, keepdim=True)
        return out


def test_audit_passes_a_member_and_catches_a_leak():
    config = MEMBERS["triple_product"].test_config()
    torch.manual_seed(0)
    assert all(result.passed for result in audit(TripleProductForCausalLM(config)))
    torch.manual_seed(0)
    failed = {result.check for result in audit(LeakyForCausalLM(config)) if not result.passed}
    assert "causal: future tokens changed" in failed
    assert "cache: prefill + 1-token decoding" in failed


def test_audit_command_on_a_saved_folder(tmp_path, capsys):
    torch.manual_seed(0)
    TripleProductForCausalLM(MEMBERS["triple_product"].test_config()).save_pretrained(tmp_path)
    with pytest.raises(SystemExit) as exit:
        main([str(tmp_path)])
    assert exit.value.code == 0
    assert capsys.readouterr().out.count("PASS") == 9


def test_audit_subcommand_on_a_member_name_with_json(capsys):
    from attnlab.workbench.cli import main as cli_main

    with pytest.raises(SystemExit) as exit:
        cli_main(["audit", "elita", "--json"])
    report = json.loads(capsys.readouterr().out)  # stdout is the JSON alone
    assert exit.value.code == 0 and report["passed"] and report["model"] == "elita"
    checks = {check["check"]: check for check in report["checks"]}
    assert checks["save_pretrained + from_pretrained"]["passed"] and checks["out-of-vocabulary id: clear error"]["passed"]


def test_audit_flags_an_unclear_out_of_vocabulary_error(capsys):
    # transformers' Llama indexes its embedding with the bad id: a bare IndexError, which the audit reports.
    with pytest.raises(SystemExit) as exit:
        main(["llama"])
    out = capsys.readouterr().out
    assert exit.value.code == 1 and "FAIL  out-of-vocabulary id: clear error" in out


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_audit_makes_no_deprecated_calls(recwarn):
    # transformers 5.24 renamed past_key_values to cache and warns once per process through its own logger (which
    # does not propagate to the root, so a handler goes on it directly); the once-cache is cleared first.
    transformers.utils.logging.warning_once.cache_clear()
    library_logger = logging.getLogger("transformers")
    collect = Collect()
    library_logger.addHandler(collect)
    try:
        config = MEMBERS["evolving"].test_config()
        torch.manual_seed(0)
        audit(MEMBERS["evolving"].causal_lm_class(config))
    finally:
        library_logger.removeHandler(collect)
    deprecations = [str(w.message) for w in recwarn if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    deprecations += [message for message in collect.messages if "deprecat" in message.lower()]
    assert not deprecations, deprecations


def test_audit_of_a_missing_folder_is_one_line(tmp_path, capsys):
    from attnlab.workbench.cli import main as cli_main

    with pytest.raises(SystemExit) as exit:
        cli_main(["audit", str(tmp_path / "missing")])
    assert exit.value.code == 2 and capsys.readouterr().err.strip().endswith(f"not found: {tmp_path / 'missing'}")
