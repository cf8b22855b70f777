"""The mixer registry: every sequence mixer a stack can run, by name or by import path.

A mixer is an `nn.Module` built as `Mixer(config, layer_idx)` and called as described in `modeling_common.py`. Its
class declares, once, what its cache slot needs:

    class GatedMixer(nn.Module):
        cache_kind = "linear_attention"   # "full_attention" (keys, values), "linear_attention" (fixed-size states),
                                          # "hybrid" (both) or None (no decoding state: use_cache=False only)
        num_recurrent_states = 1          # recurrent state tensors kept in a linear_attention or hybrid slot

Everything else (a config's `layer_types`, the `DynamicCache(config)` that generate() builds, the audit, the
benchmarks, the Hub folder) is derived from those two attributes. A mixer outside attnlab is named by its import
path, `"package.module:ClassName"`, and is imported on first use (or, in a saved folder, found among the modules
`save_pretrained` copied into it: see `modeling_mixer_stack.py`).

attnlab's own entries are `attention` and each member's mixer, registered by the member's line in `members.py`
(its model class's `mixer_class`); their config class holds the mixer's options (elita's `position_width`,
evolving's `evolution_rate`, ...), so that a stack can give each mixer its options while sharing width and depth.
"""

import importlib
import inspect
from dataclasses import dataclass

from torch import nn

CACHE_KINDS = ("full_attention", "linear_attention", "hybrid", None)


@dataclass(frozen=True)
class MixerSpec:
    """What a stack needs to know of a mixer: its class, the cache layer kind of its slot, its state count, and
    (for attnlab's own mixers) the config class whose fields are its options."""

    name: str
    mixer_class: type
    cache_kind: str | None
    num_recurrent_states: int
    options_config_class: type | None = None

    @property
    def keeps_keys(self) -> bool:
        return self.cache_kind in ("full_attention", "hybrid")


def spec_of_class(name: str, mixer_class, options_config_class=None) -> MixerSpec:
    """The spec of a mixer class, with an error naming what is missing when the class is not a mixer."""
    if not (isinstance(mixer_class, type) and issubclass(mixer_class, nn.Module)):
        raise ValueError(f"mixer {name!r} is not an nn.Module subclass (got {mixer_class!r})")
    parameters = list(inspect.signature(mixer_class.__init__).parameters)[1:]
    if len(parameters) < 2 and not any(p.startswith("*") for p in parameters):
        raise ValueError(f"mixer {name!r}: the constructor must take (config, layer_idx), "
                         f"got {mixer_class.__name__}({', '.join(parameters)})")
    if not hasattr(mixer_class, "cache_kind"):
        raise ValueError(f"mixer {name!r} declares no cache: give {mixer_class.__name__} the class attributes "
                         f"cache_kind (one of {CACHE_KINDS}) and num_recurrent_states")
    kind, states = mixer_class.cache_kind, getattr(mixer_class, "num_recurrent_states", 0)
    if kind not in CACHE_KINDS:
        raise ValueError(f"mixer {name!r}: cache_kind must be one of {CACHE_KINDS}, got {kind!r}")
    if isinstance(states, bool) or not isinstance(states, int) or states < 0:
        raise ValueError(f"mixer {name!r}: num_recurrent_states must be a non-negative integer, got {states!r}")
    if kind in ("linear_attention", "hybrid") and states == 0:
        raise ValueError(f"mixer {name!r}: a {kind} slot keeps recurrent states; set num_recurrent_states >= 1")
    if kind in ("full_attention", None) and states:
        raise ValueError(f"mixer {name!r}: cache_kind {kind!r} keeps no recurrent states, but "
                         f"num_recurrent_states={states}; use 'linear_attention' or 'hybrid'")
    return MixerSpec(name, mixer_class, kind, states, options_config_class)


def _builtin_mixers() -> dict[str, MixerSpec]:
    """`attention` and every member's mixer (its model class's `mixer_class`, its config's fields as options): a
    member's one line in `members.MEMBERS` registers its mixer too."""
    # Imported here, not at module level: the member configs derive their layer types from this registry, and the
    # member modeling files import those configs.
    from .members import MEMBERS
    from .modeling_common import AttnlabAttention

    entries = {"attention": spec_of_class("attention", AttnlabAttention)}
    for name, member in MEMBERS.items():
        entries[name] = spec_of_class(name, member.model_class.mixer_class, member.config_class)
    return entries


_REGISTRY: dict[str, MixerSpec] = {}


def registered_mixers() -> dict[str, MixerSpec]:
    """attnlab's own mixers (every member's and `attention`) plus those registered with `register_mixer`."""
    if "attention" not in _REGISTRY:
        _REGISTRY.update({**_builtin_mixers(), **_REGISTRY})
    return _REGISTRY


def member_mixer(config_class: type) -> MixerSpec:
    """The mixer of the member whose config class this is (or derives from)."""
    from .members import MEMBERS

    for name, member in MEMBERS.items():
        if issubclass(config_class, member.config_class):
            return registered_mixers()[name]
    return get_mixer(config_class.model_type)


def register_mixer(name: str, mixer_class: type) -> MixerSpec:
    """Register a mixer class under a name (an import path is the usual name of a mixer outside attnlab)."""
    spec = spec_of_class(name, mixer_class)
    registered_mixers()[name] = spec
    return spec


def is_import_path(name: str) -> bool:
    return isinstance(name, str) and ":" in name


def import_mixer_class(path: str) -> type:
    """`"package.module:ClassName"` -> the class, with one-line errors for each way the path can be wrong."""
    module_name, _, class_name = path.partition(":")
    if not module_name or not class_name or not class_name.isidentifier():
        raise ValueError(f"mixer path {path!r} must look like 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"mixer path {path!r}: cannot import module {module_name!r} ({error}); is it on the "
                         "Python path (PYTHONPATH, or installed)?") from None
    if not hasattr(module, class_name):
        raise ValueError(f"mixer path {path!r}: module {module_name!r} has no attribute {class_name!r}")
    return getattr(module, class_name)


def get_mixer(name: str) -> MixerSpec:
    """A mixer by registered name or import path; a path is imported once and registered under itself."""
    registry = registered_mixers()
    if name in registry:
        return registry[name]
    if is_import_path(name):
        from .stack_user_mixers import USER_MIXERS  # the mixers a saved folder carries with it

        mixer_class = USER_MIXERS.get(name) or import_mixer_class(name)
        return register_mixer(name, mixer_class)
    raise ValueError(f"unknown mixer {name!r}; choose one of {sorted(n for n in registry if not is_import_path(n))} "
                     "or give an import path 'package.module:ClassName'")


def hybrid_mixer_types(own: str, num_layers: int, attention_every: int) -> list[str]:
    """How a hybrid of `own` with softmax attention is laid out: attention as every `attention_every`-th layer
    (as Qwen3-Next and fla's hybrids do), and as the last layer when the stack is shallower than that, so a
    hybrid always has both kinds. One layer cannot hold both: refused."""
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 2:
        raise ValueError(f"a hybrid of {own!r} and attention needs at least 2 layers (one of each), "
                         f"got num_hidden_layers={num_layers!r}")
    if attention_every < 2:
        raise ValueError(f"attention_every must be at least 2 (1 would leave no {own!r} layer), got {attention_every}")
    types = ["attention" if (i + 1) % attention_every == 0 else own for i in range(num_layers)]
    if "attention" not in types:
        types[-1] = "attention"
    return types
