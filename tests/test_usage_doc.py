"""The usage code of README.md (its first Python block) and of docs/usage.md (its two blocks), run as written for
every member (only the MEMBER line changes)."""

import re
from pathlib import Path

import pytest
import torch

from attnlab.members import MEMBERS

REPO = Path(__file__).resolve().parents[1]
USAGE = REPO / "docs" / "usage.md"
README = REPO / "README.md"


def usage_code(page: Path) -> str:
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    if page == README:
        return blocks[0]
    assert len(blocks) == 2, "docs/usage.md: expected its two python blocks"
    return "\n".join(blocks)


@pytest.mark.parametrize("page", [README, USAGE], ids=["README", "usage"])
@pytest.mark.parametrize("name", sorted(MEMBERS))
def test_usage_runs_for_every_member(name, page, tmp_path, monkeypatch):
    code = usage_code(page)
    line = 'MEMBER = "triple_product"'
    assert line in code
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)  # tiny models: one thread is the fastest on a shared machine (conftest restores it)
    namespace = {}
    exec(compile(code.replace(line, f"MEMBER = {name!r}"), str(page), "exec"), namespace)
    assert namespace["model"].config.model_type == MEMBERS[name].config_class.model_type
    assert (tmp_path / "my-model" / "model.safetensors").is_file()
    assert namespace["generator"]("Hel", max_new_tokens=3)[0]["generated_text"].startswith("Hel")
