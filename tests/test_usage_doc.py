"""docs/usage.md's Python blocks, run as written for every member (only the MEMBER line changes)."""

import re
from pathlib import Path

import pytest
import torch

from attnlab.members import MEMBERS

USAGE = Path(__file__).resolve().parents[1] / "docs" / "usage.md"


def usage_code() -> str:
    blocks = re.findall(r"```python\n(.*?)```", USAGE.read_text(), flags=re.S)
    assert len(blocks) == 2, "docs/usage.md: expected its two python blocks"
    return "\n".join(blocks)


@pytest.mark.parametrize("name", sorted(MEMBERS))
def test_usage_runs_for_every_member(name, tmp_path, monkeypatch):
    code = usage_code()
    line = 'MEMBER = "triple_product"'
    assert line in code
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)  # tiny models: one thread is the fastest on a shared machine (conftest restores it)
    namespace = {}
    exec(compile(code.replace(line, f"MEMBER = {name!r}"), str(USAGE), "exec"), namespace)
    assert namespace["model"].config.model_type == MEMBERS[name].config_class.model_type
    assert (tmp_path / "my-model" / "model.safetensors").is_file()
    assert namespace["generator"]("Hel", max_new_tokens=3)[0]["generated_text"].startswith("Hel")
