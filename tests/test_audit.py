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
    assert "causal: next token alone changed" in failed
    assert "cache: prefill + 1-token decoding" in failed


def test_audit_command_on_a_saved_folder(tmp_path, capsys):
    from attnlab.workbench.contract import CHECKS

    torch.manual_seed(0)
    TripleProductForCausalLM(MEMBERS["triple_product"].test_config()).save_pretrained(tmp_path)
    with pytest.raises(SystemExit) as exit:
        main([str(tmp_path)])
    out = capsys.readouterr().out
    assert exit.value.code == 0 and "FAIL" not in out
    assert out.count("PASS  ") == len(CHECKS) - 1  # triple_product keeps no recurrent state to compare
    assert "SKIP  left padding: recurrent state equals unpadded" in out and "PASS  remote code" in out


def test_audit_subcommand_on_a_member_name_with_json(capsys):
    from attnlab.workbench.cli import main as cli_main

    with pytest.raises(SystemExit) as exit:
        cli_main(["audit", "elita", "--json"])
    report = json.loads(capsys.readouterr().out)  # stdout is the JSON alone
    assert exit.value.code == 0 and report["passed"] and [m["model"] for m in report["models"]] == ["elita"]
    checks = {check["check"]: check for check in report["models"][0]["checks"]}
    assert checks["save_pretrained + from_pretrained"]["status"] == "PASS"
    assert checks["bad input: out-of-vocabulary id, clear error"]["status"] == "PASS"
    assert checks["left padding: recurrent state equals unpadded"]["status"] == "PASS"  # elita keeps a state


def test_audit_passes_stock_llama_and_warns_of_its_unclear_out_of_vocabulary_error(capsys):
    # transformers' Llama indexes its embedding with the bad id: a bare IndexError. The audit reports it as a
    # warning (not a contract failure: it is another library's model), so stock Llama passes.
    with pytest.raises(SystemExit) as exit:
        main(["llama"])
    out = capsys.readouterr().out
    assert exit.value.code == 0, out
    assert "WARN  bad input: out-of-vocabulary id, clear error" in out
    assert "SKIP  left padding: recurrent state equals unpadded" in out  # Llama keeps no recurrent state
    assert "FAIL" not in out


def test_an_unclear_out_of_vocabulary_error_fails_an_attnlab_model(monkeypatch):
    from attnlab.workbench import contract

    config = MEMBERS["triple_product"].test_config()
    torch.manual_seed(0)
    model = TripleProductForCausalLM(config)
    monkeypatch.setattr("attnlab.modeling_common.check_inputs", lambda *args: None)  # no clear error: IndexError
    oov = next(c for c in contract.CHECKS if c.name.startswith("bad input"))
    assert contract.run_check(oov, model, contract.ContractInputs.for_model(model)).status == "FAIL"


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
