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
from .configuration_triple_product import TripleProductConfig
from .configuration_vqlnmlp import VQLNMLPConfig
from .modeling_depth_recurrent import DepthRecurrentForCausalLM, DepthRecurrentModel
from .modeling_elita import ElitaForCausalLM, ElitaModel
from .modeling_evolving import EvolvingForCausalLM, EvolvingModel
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
    """A model attnlab can build by name. `attention_every=k` makes every k-th layer Llama attention (a hybrid)."""

    name: str
    config_class: type[PreTrainedConfig]
    model_class: type[PreTrainedModel]
    causal_lm_class: type[PreTrainedModel]
    test_overrides: dict = field(default_factory=dict)
    preset_overrides: dict = field(default_factory=dict)
    attention_every: int = 0
    is_baseline: bool = False

    def test_config(self, **overrides) -> PreTrainedConfig:
        return self.build_config({**TEST_SIZE, **self.test_overrides, **overrides})

    def preset_config(self, preset: str, **overrides) -> PreTrainedConfig:
        if preset not in SIZE_PRESETS:
            raise ValueError(f"unknown size preset {preset!r}; choose one of {sorted(SIZE_PRESETS)}")
        return self.build_config({**SIZE_PRESETS[preset], **self.preset_overrides, **overrides})

    def build_config(self, values: dict) -> PreTrainedConfig:
        if self.attention_every and "mixer_types" not in values:
            layers, own = values.get("num_hidden_layers", 0), self.config_class.model_type
            values["mixer_types"] = [
                "attention" if (i + 1) % self.attention_every == 0 else own for i in range(layers)
            ]
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
# every 4th layer (one in four at the small preset); the 2-layer test config has its second layer attention.
HYBRIDS: dict[str, Member] = {
    f"{name}_attention": Member(
        f"{name}_attention", MEMBERS[name].config_class, MEMBERS[name].model_class, MEMBERS[name].causal_lm_class,
        test_overrides={**MEMBERS[name].test_overrides, "mixer_types": [name, "attention"]}, attention_every=4,
    )
    for name in ("elita", "evolving")
}


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
    """A member, hybrid or baseline by name, with an error that lists the choices."""
    known = {**MEMBERS, **HYBRIDS, **BASELINES}
    if name not in known:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(known)}")
    return known[name]
