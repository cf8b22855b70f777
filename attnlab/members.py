"""The registry of attnlab: every causal LM member (name -> classes, size presets, the tiny config the contract tests
use), the hybrid stacks built from them, the time-series members, and the Llama baseline.

This is the one list: `attnlab/__init__.py` registers the members with the Auto classes from it, the CLI and the
benchmarks take their choices from it, and the contract suite (tests/test_contract.py) runs over every entry of
`MEMBERS` and `HYBRIDS`. A new member costs its config, its modeling file and one line in `MEMBERS`.
"""

from dataclasses import dataclass, field

from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel, PreTrainedConfig, PreTrainedModel

from .configuration_depth_recurrent import DepthRecurrentConfig
from .configuration_elita import ElitaConfig
from .configuration_evolving import EvolvingConfig
from .configuration_mixer_stack import MixerStackConfig
from .configuration_triple_product import TripleProductConfig
from .configuration_vqlnmlp import VQLNMLPConfig
from .modeling_depth_recurrent import DepthRecurrentForCausalLM, DepthRecurrentModel
from .modeling_elita import ElitaForCausalLM, ElitaModel
from .mixers import get_mixer, hybrid_mixer_types, is_import_path
from .modeling_evolving import EvolvingForCausalLM, EvolvingModel
from .modeling_mixer_stack import MixerStackForCausalLM, MixerStackModel
from .modeling_triple_product import TripleProductForCausalLM, TripleProductModel
from .modeling_vqlnmlp import VQLNMLPForPrediction, VQLNMLPModel

# Width and depth per preset; every member and the baseline share them so comparisons are at equal shape.
SIZE_PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4),
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4),
    "base": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8),
}

# The contract tests run every member at this size (well under 1M parameters) in fp32 on CPU.
TEST_SIZE = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)


@dataclass(frozen=True)
class Member:
    """A model attnlab can build by name. `attention_every=k` makes every k-th layer Llama attention (a hybrid, laid
    out by `mixers.hybrid_mixer_types`); `stack_mixer` makes it a `MixerStackConfig` stack of that mixer."""

    name: str
    config_class: type[PreTrainedConfig]
    model_class: type[PreTrainedModel]
    causal_lm_class: type[PreTrainedModel]
    test_overrides: dict = field(default_factory=dict)
    preset_overrides: dict = field(default_factory=dict)
    attention_every: int = 0
    is_baseline: bool = False
    stack_mixer: str | None = None

    @property
    def own_mixer(self) -> str | None:
        """The mixer a hybrid of this member pairs with attention (None for the baseline)."""
        return self.stack_mixer or (None if self.is_baseline else self.config_class.model_type)

    def test_config(self, **overrides) -> PreTrainedConfig:
        return self.build_config({**TEST_SIZE, **self.test_overrides, **overrides})

    def preset_config(self, preset: str, **overrides) -> PreTrainedConfig:
        if preset not in SIZE_PRESETS:
            raise ValueError(f"unknown size preset {preset!r}; choose one of {sorted(SIZE_PRESETS)}")
        return self.build_config({**SIZE_PRESETS[preset], **self.preset_overrides, **overrides})

    def build_config(self, values: dict) -> PreTrainedConfig:
        values = dict(values)
        pattern, layers = values.get("mixer_types"), values.get("num_hidden_layers", self.config_class.num_hidden_layers)
        if (self.config_class is MixerStackConfig and isinstance(pattern, list) and pattern and isinstance(layers, int)
                and len(pattern) < layers and layers % len(pattern) == 0):
            values["mixer_types"] = pattern * (layers // len(pattern))  # a stack's pattern repeats to fill the depth
        if "mixer_types" not in values and (self.attention_every or self.stack_mixer):
            layers = values.get("num_hidden_layers", self.config_class.num_hidden_layers)
            # A member that runs its stack several times (elita's wraps) repeats the layout of one pass.
            passes = values.get("num_wraps", 1)
            if isinstance(layers, int) and isinstance(passes, int) and passes > 0 and layers % passes == 0:
                per_pass = layers // passes
                values["mixer_types"] = passes * (hybrid_mixer_types(self.own_mixer, per_pass, self.attention_every)
                                                  if self.attention_every else [self.own_mixer] * per_pass)
        return self.config_class(**values)


MEMBERS: dict[str, Member] = {
    member.name: member
    for member in [
        # Small chunks in the tests, always recomputed in the backward pass, so that chunk boundaries and the
        # recomputation across them are exercised (tests/test_triple_product.py checks the path that keeps scores).
        Member("triple_product", TripleProductConfig, TripleProductModel, TripleProductForCausalLM,
               test_overrides=dict(query_chunk_size=5, recompute_scores_above_mb=0)),
        # Chunks of 4 positions so that the scan's carry across chunk ends is exercised.
        Member("evolving", EvolvingConfig, EvolvingModel, EvolvingForCausalLM, test_overrides=dict(scan_chunk_size=4)),
        Member("elita", ElitaConfig, ElitaModel, ElitaForCausalLM, test_overrides=dict(scan_chunk_size=5)),
        # 2 blocks x 3 passes (so the state carry crosses two passes); everything drawn so every parameter gets a
        # gradient on the first step; a constant entropy bonus so two training forwards give the same loss.
        Member("depth_recurrent", DepthRecurrentConfig, DepthRecurrentModel, DepthRecurrentForCausalLM,
               test_overrides=dict(num_passes=3, num_hidden_layers=6, num_key_value_heads=2,
                                   key_projection_rank=4, technique_rank=4, zero_init_output_projections=False,
                                   entropy_bonus_decay_steps=None),
               preset_overrides=dict(num_passes=3, num_hidden_layers=9, num_key_value_heads=2)),
    ]
}

# Hybrid stacks, as Qwen3-Next and fla's hybrid models interleave them: a member's mixer with Llama attention as
# every 4th layer, and as the last layer of a shallower stack (mixers.hybrid_mixer_types: the one rule), so the
# 2-layer tiny and test configs are [member, attention].
ATTENTION_EVERY = 4
HYBRIDS: dict[str, Member] = {
    f"{name}_attention": Member(
        f"{name}_attention", MEMBERS[name].config_class, MEMBERS[name].model_class, MEMBERS[name].causal_lm_class,
        test_overrides=MEMBERS[name].test_overrides, attention_every=ATTENTION_EVERY,
    )
    for name in ("elita", "evolving")
}

# Heterogeneous stacks of any registered mixers (MixerStackConfig); the contract suite runs over these too. The
# test overrides give each member mixer the small chunks its member's tests use, so chunk ends are exercised.
STACK_TEST_OPTIONS = {"triple_product": dict(query_chunk_size=5, recompute_scores_above_mb=0),
                      "evolving": dict(scan_chunk_size=4), "elita": dict(scan_chunk_size=5),
                      "depth_recurrent": dict(zero_init_output_projections=False)}


def _stack(name: str, mixer_types: list[str]) -> Member:
    options = {mixer: STACK_TEST_OPTIONS[mixer] for mixer in mixer_types if mixer in STACK_TEST_OPTIONS}
    return Member(name, MixerStackConfig, MixerStackModel, MixerStackForCausalLM, test_overrides=dict(
        num_hidden_layers=len(mixer_types), mixer_types=mixer_types, mixer_options=options))


STACKS: dict[str, Member] = {
    "stack_mixed": _stack("stack_mixed", ["elita", "evolving", "triple_product", "attention"]),
    "stack_gqa_elita": _stack("stack_gqa_elita", ["depth_recurrent", "elita"]),
}


def mixer_member(mixer: str, hybrid: bool = False, name: str | None = None) -> Member:
    """A stack of one mixer (a registered name or an import path, checked here), or its hybrid with attention."""
    get_mixer(mixer)
    return Member(name or (f"{mixer}+attention" if hybrid else mixer), MixerStackConfig, MixerStackModel,
                  MixerStackForCausalLM, attention_every=ATTENTION_EVERY if hybrid else 0, stack_mixer=mixer)


@dataclass(frozen=True)
class TimeSeriesMember:
    """A forecaster: registered with AutoModelForTimeSeriesPrediction, trained by attnlab/workbench/timeseries.py."""

    name: str
    config_class: type[PreTrainedConfig]
    model_class: type[PreTrainedModel]
    prediction_class: type[PreTrainedModel]


TIME_SERIES_MEMBERS: dict[str, TimeSeriesMember] = {
    "vqlnmlp": TimeSeriesMember("vqlnmlp", VQLNMLPConfig, VQLNMLPModel, VQLNMLPForPrediction),
}

BASELINES: dict[str, Member] = {
    "llama": Member("llama", LlamaConfig, LlamaModel, LlamaForCausalLM, preset_overrides=dict(tie_word_embeddings=True),
                    is_baseline=True),
}


def get_member(name: str) -> Member:
    """A member, hybrid, stack or baseline by name, or a mixer by import path (`pkg.module:Class`, a stack of it;
    `pkg.module:Class+attention`, its hybrid with attention), with an error that lists the choices."""
    known = {**MEMBERS, **HYBRIDS, **STACKS, **BASELINES}
    if name in known:
        return known[name]
    mixer, plus, rest = name.partition("+")
    if is_import_path(mixer) and rest in ("", "attention") and bool(plus) == bool(rest):
        return mixer_member(mixer, hybrid=bool(rest))
    raise ValueError(f"unknown model {name!r}; choose one of {sorted(known)} or a mixer's import path "
                     "'package.module:Class' (with '+attention' for its hybrid)")
