import pytest
import torch

from attnlab.workbench.hub import check_folder, publish
from attnlab.members import MEMBERS


@pytest.fixture
def saved_folder(tmp_path):
    member = MEMBERS["triple_product"]
    torch.manual_seed(0)
    member.causal_lm_class(member.test_config()).save_pretrained(tmp_path)
    return tmp_path


class RecordingApi:
    """Stands in for huggingface_hub.HfApi (no network here): records what would be sent."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        return "https://huggingface.co/me/tiny/commit/0"


def test_publish_checks_writes_a_card_and_uploads(saved_folder):
    api = RecordingApi()
    assert publish(saved_folder, "me/tiny", api=api).endswith("/commit/0")
    assert [call[0] for call in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[1][1]["folder_path"] == str(saved_folder)
    card = (saved_folder / "README.md").read_text()
    assert "trust_remote_code=True" in card and "AutoModelForCausalLM" in card


def test_folders_that_would_not_load_are_refused(saved_folder):
    (saved_folder / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="pickled"):
        check_folder(saved_folder)
    (saved_folder / "pytorch_model.bin").unlink()
    (saved_folder / "configuration_common.py").unlink()  # imported by the member's configuration
    with pytest.raises(ValueError, match="configuration_common.py"):
        check_folder(saved_folder)
    (saved_folder / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="safetensors"):
        check_folder(saved_folder)
