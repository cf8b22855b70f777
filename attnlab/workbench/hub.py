"""Publishing a saved attnlab folder to the Hugging Face Hub, and checking it is loadable before it goes.

A folder written by `save_pretrained` already holds everything the Hub needs: model.safetensors, config.json with
a full auto_map, generation_config.json and the flat modeling code, so `trust_remote_code=True` loads it where
attnlab is not installed. `publish` checks that, adds a model card and uploads with huggingface_hub.
"""

import json
from pathlib import Path

from huggingface_hub import HfApi
from transformers.dynamic_module_utils import get_relative_imports

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
REQUIRED_AUTO_CLASSES = {"AutoConfig", "AutoModel"}


def check_folder(folder: str | Path) -> dict:
    """Raise ValueError naming what is missing for a remote-code Hub repo; return the folder's config."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} has no config.json; save the model with model.save_pretrained({str(folder)!r})")
    if not (folder / "model.safetensors").is_file() and not (folder / "model.safetensors.index.json").is_file():
        raise ValueError(f"{folder} has no model.safetensors; attnlab publishes safetensors checkpoints only")
    pickles = sorted(p.name for p in folder.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise ValueError(f"{folder} contains pickled files {pickles}; remove them (they can run code when loaded)")
    config = json.loads((folder / "config.json").read_text())
    auto_map = config.get("auto_map", {})
    missing = REQUIRED_AUTO_CLASSES - set(auto_map)
    if missing:
        raise ValueError(f"config.json auto_map lacks {sorted(missing)}; save with attnlab's classes")
    pending = [reference.split(".")[0] for reference in auto_map.values()]
    seen = set()
    while pending:  # every module the auto_map names, and every sibling they import, must be in the folder
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        path = folder / f"{module}.py"
        if not path.is_file():
            raise ValueError(f"{folder} lacks {module}.py, which its remote code needs; save it again with save_pretrained")
        pending += get_relative_imports(str(path))
    return config


def model_card(config: dict, repo_id: str) -> str:
    head_class = next(name for name in config["auto_map"] if name not in REQUIRED_AUTO_CLASSES)
    return f"""---
library_name: transformers
tags: [attnlab, {config["model_type"]}, custom_code]
---

# {repo_id.split("/")[-1]}

An attnlab `{config["model_type"]}` model ({config.get("num_hidden_layers")} layers, width
{config.get("hidden_size")}, vocabulary {config.get("vocab_size")}). The modeling code ships in this repository, so
it loads without installing attnlab (transformers >= 5.23, < 6):

```python
from transformers import {head_class}, AutoTokenizer

model = {head_class}.from_pretrained("{repo_id}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{repo_id}")
```
"""


def publish(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None,
            api: HfApi | None = None) -> str:
    """Check the folder, write a model card if it has none, create the repo and upload; returns the commit URL."""
    folder = Path(folder)
    config = check_folder(folder)
    card = folder / "README.md"
    if not card.exists():
        card.write_text(model_card(config, repo_id))
    api = api or HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id,
                               commit_message=f"Upload attnlab {config['model_type']} model")
    return str(commit)
