"""Publishing and downloading: `attnlab push` up to the network call, and a pushed folder loaded back from a
Hugging Face cache in the exact Hub layout, offline, where attnlab is not importable."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from attnlab.members import MEMBERS
from attnlab.tokenization_attnlab import byte_tokenizer
from attnlab.workbench import hub
from attnlab.workbench.cli import main
from attnlab.workbench.hub import CARD_HEADER_END, check_folder, model_card, publish


@pytest.fixture
def folder(tmp_path):
    """A saved member with the byte tokenizer and attnlab's training-time card (placeholder repo id)."""
    member = MEMBERS["triple_product"]
    torch.manual_seed(0)
    config = member.test_config(vocab_size=259, pad_token_id=256, bos_token_id=257, eos_token_id=258)
    folder = tmp_path / "run"
    member.causal_lm_class(config).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    card = model_card(json.loads((folder / "config.json").read_text()), "your-name/run")
    (folder / "README.md").write_text(card + "\n## Training\n\nTrained for 2 steps.\n")
    return folder


class RecordingApi:
    """Stands in for huggingface_hub.HfApi (no network here): records what would be sent, and which files."""

    def __init__(self, *args, **kwargs):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        from huggingface_hub.utils import filter_repo_objects

        root = Path(kwargs["folder_path"])
        files = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
        kwargs["uploaded"] = sorted(filter_repo_objects(files, ignore_patterns=kwargs.get("ignore_patterns")))
        self.calls.append(("upload_folder", kwargs))
        return f"https://huggingface.co/{kwargs['repo_id']}/commit/0"


def test_push_checks_retargets_the_card_and_uploads(folder, monkeypatch, capsys):
    api = RecordingApi()
    monkeypatch.setattr(hub, "HfApi", lambda *args, **kwargs: api)
    # An unfinished run's checkpoint (optimizer and RNG pickles) sits in the folder: checked, and never uploaded.
    (folder / "checkpoint-3").mkdir()
    (folder / "checkpoint-3" / "optimizer.bin").write_bytes(b"pickle")
    (folder / "checkpoint-3" / "model.safetensors").write_bytes(b"weights")
    main(["push", str(folder), "me/tiny-tp", "--private", "--revision", "v1"])
    assert "uploaded" in capsys.readouterr().out
    assert [call[0] for call in api.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert api.calls[0][2]["private"] is True and api.calls[1][2]["branch"] == "v1"
    upload = api.calls[2][1]
    assert upload["repo_id"] == "me/tiny-tp" and upload["revision"] == "v1"
    assert not [name for name in upload["uploaded"] if name.startswith("checkpoint-")]
    assert {"model.safetensors", "config.json", "modeling_triple_product.py", "README.md"} <= set(upload["uploaded"])
    card = (folder / "README.md").read_text()
    # The card names the repo it went to, loads the tokenizer without the custom-code prompt, keeps training notes.
    assert '"me/tiny-tp"' in card and "your-name" not in card and card.count(CARD_HEADER_END) == 1
    assert 'AutoTokenizer.from_pretrained("me/tiny-tp", trust_remote_code=True)' in card
    assert card.endswith("## Training\n\nTrained for 2 steps.\n")


def test_pickles_in_subfolders_are_refused(folder, capsys):
    (folder / "extras").mkdir()
    (folder / "extras" / "state.pt").write_bytes(b"pickle")
    with pytest.raises(ValueError, match=r"extras/state.pt"):
        check_folder(folder)
    with pytest.raises(SystemExit):
        main(["push", str(folder), "me/x"])
    assert "extras/state.pt" in capsys.readouterr().err


def test_publish_without_a_card_writes_one(folder):
    (folder / "README.md").unlink()
    publish(folder, "me/tiny", api=RecordingApi())
    assert '"me/tiny"' in (folder / "README.md").read_text()


def _write_hub_cache(folder: Path, cache: Path, repo_id: str) -> Path:
    """`folder` as huggingface_hub stores a downloaded repo: blobs named by hash, a snapshot of links, refs/main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        blob = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        (snapshot / path.name).symlink_to(Path("..") / ".." / "blobs" / blob)
    return snapshot


DOWNLOADING_USER = textwrap.dedent("""
    import sys
    sys.modules["attnlab"] = None  # attnlab is not installed for this user
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
    model = AutoModelForCausalLM.from_pretrained("me/tiny-tp", trust_remote_code=True).eval()
    assert "transformers_modules" in type(model).__module__
    tokenizer = AutoTokenizer.from_pretrained("me/tiny-tp", trust_remote_code=True)
    # Left padding (saved with the tokenizer): a batch of prompts generates what each prompt does alone.
    assert tokenizer.padding_side == "left"
    prompts = ["ROMEO:", "To be, or not"]
    batch = tokenizer(prompts, padding=True, return_tensors="pt")
    together = model.generate(**batch, max_new_tokens=6, do_sample=False)
    for row, prompt in enumerate(prompts):
        alone = model.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=6, do_sample=False)
        assert tokenizer.decode(together[row], skip_special_tokens=True) == tokenizer.decode(alone[0]), prompt
    generator = pipeline("text-generation", model="me/tiny-tp", trust_remote_code=True)
    text = generator("ROMEO:", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("ROMEO:") and len(text) > len("ROMEO:")
    print("downloaded-ok")
""")


def test_a_pushed_folder_loads_from_the_hub_cache_offline(folder, tmp_path):
    cache = tmp_path / "hf-cache"
    _write_hub_cache(folder, cache, "me/tiny-tp")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "mods"),
           "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", DOWNLOADING_USER], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and "downloaded-ok" in result.stdout, result.stderr[-3000:]


def test_init_from_a_hub_name(folder, tmp_path):
    """`attnlab train --init_from owner/name` fine-tunes a downloaded model, with its own tokenizer by default."""
    cache = tmp_path / "hf-cache"
    _write_hub_cache(folder, cache, "me/tiny-tp")
    (tmp_path / "train.txt").write_text("To be, or not to be, that is the question.\n\n" * 40)
    (tmp_path / "valid.txt").write_text("Whether 'tis nobler in the mind to suffer.\n\n" * 10)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "attnlab", "train", "--init_from", "me/tiny-tp", "--block_size", "32",
               "--batch_size", "2", "--max_steps", "2", "--eval_every", "0", "--save_every", "0", "--num_threads", "1",
               "--train_files", str(tmp_path / "train.txt"), "--validation_files", str(tmp_path / "valid.txt"),
               "--output_dir", str(tmp_path / "finetuned")]
    result = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "finetuned" / "metrics.json").read_text())
    assert metrics["model"] == "triple_product" and metrics["args"]["init_from"] == "me/tiny-tp"
    assert metrics["parameters"] == sum(p.numel() for p in MEMBERS["triple_product"].causal_lm_class(
        MEMBERS["triple_product"].test_config(vocab_size=259)).parameters())


def test_push_without_a_network_is_one_line(folder, monkeypatch, capsys):
    # Nothing listens on port 9 of this machine: the connection is refused at once, as with no network.
    monkeypatch.setattr(hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_TOKEN", "hf_placeholder")
    with pytest.raises(SystemExit) as exit:
        main(["push", str(folder), "someone/model"])
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("attnlab push: error: cannot upload to someone/model: the Hub (http://127.0.0.1:9) cannot "
                          "be reached"), err
