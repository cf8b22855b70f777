import pytest
import torch

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
