"""Publishing a saved attnlab folder to the Hugging Face Hub, and checking it is loadable before it goes.

A folder written by `save_pretrained` already holds everything the Hub needs: model.safetensors, config.json with
a full auto_map, generation_config.json and the flat modeling code, so `trust_remote_code=True` loads it where
attnlab is not installed. `publish` checks that, adds a model card and uploads with huggingface_hub.
"""

import importlib
import json
import socket
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import HfApi, constants, try_to_load_from_cache
from huggingface_hub.errors import HfHubHTTPError
from transformers.dynamic_module_utils import get_relative_imports

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
REQUIRED_AUTO_CLASSES = {"AutoConfig", "AutoModel"}
CHECKPOINT_PREFIX = "checkpoint-"  # training's resumable checkpoints: never published
# Ends the generated part of a model card, so publish can rewrite it for the repo id it publishes to.
CARD_HEADER_END = "<!-- end of the attnlab header -->"


def check_folder(folder: str | Path) -> dict:
    """Raise ValueError naming what is missing for a remote-code Hub repo; return the folder's config."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} has no config.json; save the model with model.save_pretrained({str(folder)!r})")
    if not (folder / "model.safetensors").is_file() and not (folder / "model.safetensors.index.json").is_file():
        raise ValueError(f"{folder} has no model.safetensors; attnlab publishes safetensors checkpoints only")
    # Everything that would be uploaded, subfolders included (a checkpoint folder is never uploaded: see publish).
    pickles = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                     if p.is_file() and p.name.endswith(PICKLE_SUFFIXES) and not _in_checkpoint(p.relative_to(folder)))
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


def _in_checkpoint(relative: Path) -> bool:
    return any(part.startswith(CHECKPOINT_PREFIX) for part in relative.parts[:-1])


def model_card(config: dict, repo_id: str) -> str:
    """The card's header (what the model is and how to load it); training appends its own section after it."""
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
tokenizer = AutoTokenizer.from_pretrained("{repo_id}", trust_remote_code=True)
```
{CARD_HEADER_END}
"""


def publish(folder: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
            token: str | None = None, api: HfApi | None = None) -> str:
    """Check the folder, write the model card for `repo_id`, create the repo (and branch) and upload; returns the
    commit URL. Checkpoint folders (optimizer and RNG pickles of an unfinished run) are never uploaded."""
    folder = Path(folder)
    config = check_folder(folder)
    card = folder / "README.md"
    if not card.exists():
        card.write_text(model_card(config, repo_id))
    elif CARD_HEADER_END in (text := card.read_text()):
        # attnlab's own card, written at training time for a placeholder repo id: retarget it, keep what follows.
        card.write_text(model_card(config, repo_id) + text.split(CARD_HEADER_END, 1)[1].removeprefix("\n"))
    api = api or HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, revision=revision,
                                   ignore_patterns=[f"{CHECKPOINT_PREFIX}*", f"{CHECKPOINT_PREFIX}*/**"],
                                   commit_message=f"Upload attnlab {config['model_type']} model")
    except (*_transport_errors(), OSError) as error:  # no network, DNS, proxy, timeout
        raise ValueError(f"cannot upload to {repo_id}: the Hub ({constants.ENDPOINT}) cannot be reached "
                         f"({type(error).__name__}: {_first_line(error)}); check the connection") from None
    except HfHubHTTPError as error:  # reachable, but refused: no token, no write access, a bad repo id
        raise ValueError(f"cannot upload to {repo_id}: {_first_line(error)}") from None
    return str(commit)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's connection errors (huggingface_hub's client is httpx, or its fork httpx2)."""
    errors = []
    for name in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def hub_unreachable(repo_id: str, repo_type: str = "model", timeout: float = 3.0) -> str | None:
    """Why `repo_id` cannot come from the Hub right now (None if it can): offline and not cached, or no connection.

    transformers and datasets retry an unreachable Hub for about 30 s before failing; this answers in a few seconds.
    Offline mode (HF_HUB_OFFLINE=1) is left to the libraries, which read their cache.
    """
    if constants.HF_HUB_OFFLINE:
        return None
    try:
        if repo_type == "model" and isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
            return None  # cached: the libraries fall back to the cache themselves
    except ValueError:  # not a valid repo id: the connection question decides the message
        pass
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
    except OSError as error:
        return (f"{endpoint.hostname} cannot be reached ({error}); check the connection, or set HF_HUB_OFFLINE=1 to "
                f"use the local Hugging Face cache")
    return None
