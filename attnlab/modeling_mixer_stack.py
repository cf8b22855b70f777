"""A decoder stack of any mixers, one per layer: attnlab's own and users' (by import path).

    config = MixerStackConfig(mixer_types=["elita", "evolving", "triple_product", "attention"], num_hidden_layers=4)
    model = MixerStackForCausalLM(config)          # or AutoModelForCausalLM.from_config(config)
    model.generate(ids, max_new_tokens=20)         # DynamicCache(config) holds every layer's state

Each layer is a pre-norm block (`AttnlabDecoderLayer`) of its mixer and a SwiGLU MLP, built from the mixer's
registry entry (`mixers.py`) and its options (`MixerStackConfig.mixer_config`).

A user's mixer travels with the model. `save_pretrained` copies the module that defines it into the folder (as
`mixer_<module path>.py`, with `from attnlab.<module> import ...` rewritten to the folder's own `from .<module>
import ...`) and lists it in the folder's `stack_user_mixers.py`, which the registry reads through a static relative
import, the only way transformers finds remote code. A module that imports something that cannot travel (a
relative import, another module of the user's package, a package that is not installed) is refused at save time,
before anything is written.
"""

import ast
import importlib.metadata
import inspect
import os
import sys
from pathlib import Path

from .configuration_mixer_stack import MixerStackConfig
from .mixers import get_mixer, is_import_path
from .modeling_common import (
    AttnlabDecoderLayer,
    AttnlabForCausalLM,
    AttnlabModel,
    AttnlabPreTrainedModel,
    register_for_auto_classes,
)

LIBRARY_FOLDER = Path(__file__).resolve().parent


class MixerStackPreTrainedModel(AttnlabPreTrainedModel):
    config_class = MixerStackConfig

    def __init__(self, config: MixerStackConfig, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        # Assisted decoding rolls recurrent states back to the accepted tokens, which a mixer supports by giving its
        # per-token states (write_recurrent_states' per_token_states) and saying so; transformers refuses assisted
        # decoding for a stack with any other stateful mixer.
        self._is_stateful = any(spec.num_recurrent_states and not getattr(spec.mixer_class, "supports_state_rollback",
                                                                          False) for spec in config.mixer_specs())

    def save_pretrained(self, save_directory, *args, **kwargs):
        if kwargs.get("push_to_hub"):
            raise ValueError("save the stack to a folder first (it adds its user mixers' code after transformers' "
                             "save), then publish the folder with `attnlab push` or huggingface_hub's upload_folder")
        modules = user_mixer_modules(self.config)  # refuses a module that cannot travel before anything is written
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_user_mixer_modules(modules, Path(save_directory))


class MixerStackModel(MixerStackPreTrainedModel, AttnlabModel):
    def build_layer(self, layer_idx: int) -> AttnlabDecoderLayer:
        spec = get_mixer(self.config.mixer_types[layer_idx])
        return AttnlabDecoderLayer(self.config, layer_idx, spec.mixer_class, self.mlp_class,
                                   mixer_config=self.config.mixer_config(spec))

    def forward(self, *args, use_cache=None, **kwargs):
        caching = self.config.use_cache if use_cache is None else use_cache
        if caching:
            cacheless = sorted({spec.name for spec in self.config.mixer_specs() if spec.cache_kind is None})
            if cacheless:
                raise ValueError(f"mixer(s) {cacheless} declare no decoding state (cache_kind = None): call the model "
                                 "and generate() with use_cache=False (each step then recomputes the whole sequence)")
        return super().forward(*args, use_cache=use_cache, **kwargs)


class MixerStackForCausalLM(MixerStackPreTrainedModel, AttnlabForCausalLM):
    base_model_class = MixerStackModel


# ---------------------------------------------------------------------------------------------------------------
# Packaging users' mixers into a saved folder.


def user_mixer_modules(config: MixerStackConfig) -> dict[str, tuple[str, str, str]]:
    """{import path: (folder module name, class name, rewritten source)} for every user mixer of the stack."""
    modules = {}
    for name in dict.fromkeys(config.mixer_types):
        if not is_import_path(name):
            continue
        mixer_class = get_mixer(name).mixer_class
        source_file = Path(inspect.getsourcefile(mixer_class))
        folder_module = "mixer_" + name.partition(":")[0].replace(".", "_")
        if mixer_class.__module__.startswith("transformers_modules"):  # loaded from a folder: already portable
            source = source_file.read_text()
        else:
            source = portable_source(source_file, name)
        modules[name] = (folder_module, mixer_class.__name__, source)
    return modules


def portable_source(path: Path, mixer_path: str) -> str:
    """The module's source with `from attnlab.<module> import ...` made relative, or a ValueError naming the first
    import that cannot travel into a folder."""
    source = path.read_text()
    own_package = mixer_path.partition(":")[0].split(".")[0]
    installed = set(importlib.metadata.packages_distributions())  # once per module, not per import line
    lines = source.splitlines(keepends=True)
    replacements = {}
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            names = [node.module] if node.module else []
            if node.level:
                raise ValueError(f"mixer {mixer_path}: {path.name} line {node.lineno} has a relative import "
                                 f"('from {'.' * node.level}{node.module or ''} import ...'), which cannot travel "
                                 "into a saved folder; keep the mixer's code in one module")
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for module_name in names:
            top = module_name.split(".")[0]
            if top == "attnlab":
                replacements[node.lineno] = (node.end_lineno, library_import(node, module_name, mixer_path, path))
            elif top == own_package and top != "__main__":
                raise ValueError(f"mixer {mixer_path}: {path.name} line {node.lineno} imports {module_name!r}, "
                                 "another module of its own package, which cannot travel into a saved folder; "
                                 "keep the mixer's code in one module")
            elif top not in sys.stdlib_module_names and top not in installed:
                raise ValueError(f"mixer {mixer_path}: {path.name} line {node.lineno} imports {module_name!r}, which "
                                 "is not an installed package, so the saved folder could not load elsewhere")
    out, skip_until = [], 0
    for number, line in enumerate(lines, start=1):
        if number <= skip_until:
            continue
        if number in replacements:
            skip_until, text = replacements[number]
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}{text}\n")
        else:
            out.append(line)
    return "".join(out)


def library_import(node, module_name: str, mixer_path: str, path: Path) -> str:
    """`from attnlab.modeling_common import x` -> `from .modeling_common import x`; anything else from attnlab is
    refused, since only the flat model library travels with a folder."""
    library_module = module_name.partition(".")[2]
    if (not isinstance(node, ast.ImportFrom) or "." in library_module or not library_module
            or not (LIBRARY_FOLDER / f"{library_module}.py").is_file()):
        raise ValueError(f"mixer {mixer_path}: {path.name} line {node.lineno} imports {module_name!r}; a mixer may "
                         "import from attnlab's model library only as 'from attnlab.<module> import name' (e.g. "
                         "from attnlab.modeling_common import apply_rotary), since the workbench does not travel")
    names = ", ".join(alias.name + (f" as {alias.asname}" if alias.asname else "") for alias in node.names)
    return f"from .{library_module} import {names}"


def write_user_mixer_modules(modules: dict[str, tuple[str, str, str]], folder: Path) -> None:
    """Write each user mixer's module and the folder's `stack_user_mixers.py` that imports them."""
    imports, entries = [], []
    for path, (module_name, class_name, source) in modules.items():
        (folder / f"{module_name}.py").write_text(source)
        alias = f"{module_name}_{class_name}"
        imports.append(f"from .{module_name} import {class_name} as {alias}\n")
        entries.append(f"    {path!r}: {alias},\n")
    registry = folder / "stack_user_mixers.py"
    text = ('"""The user mixers this folder carries (written by save_pretrained)."""\n\n' + "".join(imports)
            + "\nUSER_MIXERS: dict[str, type] = {\n" + "".join(entries) + "}\n")
    tmp = registry.with_suffix(".py.tmp")
    tmp.write_text(text)
    os.replace(tmp, registry)


register_for_auto_classes(MixerStackConfig, MixerStackModel, MixerStackForCausalLM)

__all__ = ["MixerStackForCausalLM", "MixerStackModel", "MixerStackPreTrainedModel"]
