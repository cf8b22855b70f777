"""The registry of attnlab members: name -> classes, size presets and the tiny config the contract tests use.

Adding a member here adds it to the contract suite (tests/test_contract.py), the training CLI and the benchmarks.
The Llama baseline is listed beside the members so every tool can build it by name.
"""

from dataclasses import dataclass, field

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedConfig, PreTrainedModel

from .configuration_depth_recurrent import DepthRecurrentConfig
from .configuration_elita import ElitaConfig
from .configuration_evolving import EvolvingConfig
from .configuration_triple_product import TripleProductConfig
from .modeling_depth_recurrent import DepthRecurrentForCausalLM
from .modeling_elita import ElitaForCausalLM
from .modeling_evolving import EvolvingForCausalLM
from .modeling_triple_product import TripleProductForCausalLM

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
    name: str
    config_class: type[PreTrainedConfig]
    causal_lm_class: type[PreTrainedModel]
    test_overrides: dict = field(default_factory=dict)
    preset_overrides: dict = field(default_factory=dict)
    is_baseline: bool = False

    def test_config(self, **overrides) -> PreTrainedConfig:
        return self.config_class(**{**TEST_SIZE, **self.test_overrides, **overrides})

    def preset_config(self, preset: str, **overrides) -> PreTrainedConfig:
        if preset not in SIZE_PRESETS:
            raise ValueError(f"unknown size preset {preset!r}; choose one of {sorted(SIZE_PRESETS)}")
        return self.config_class(**{**SIZE_PRESETS[preset], **self.preset_overrides, **overrides})


MEMBERS: dict[str, Member] = {
    member.name: member
    for member in [
        # Small chunks in the tests so that chunk boundaries, and the recomputation across them, are exercised.
        Member("triple_product", TripleProductConfig, TripleProductForCausalLM, test_overrides=dict(query_chunk_size=5)),
        # Chunks of 4 positions so that the scan's carry across chunk ends is exercised.
        Member("evolving", EvolvingConfig, EvolvingForCausalLM, test_overrides=dict(scan_chunk_size=4)),
        Member("elita", ElitaConfig, ElitaForCausalLM, test_overrides=dict(scan_chunk_size=5)),
        # 2 blocks x 3 passes (so the state carry crosses two passes); everything drawn so every parameter gets a
        # gradient on the first step; a constant entropy bonus so two training forwards give the same loss.
        Member("depth_recurrent", DepthRecurrentConfig, DepthRecurrentForCausalLM,
               test_overrides=dict(num_passes=3, num_hidden_layers=6, num_key_value_heads=2,
                                   key_projection_rank=4, technique_rank=4, zero_init_output_projections=False,
                                   entropy_bonus_decay_steps=None),
               preset_overrides=dict(num_passes=3, num_hidden_layers=9, num_key_value_heads=2)),
    ]
}

BASELINES: dict[str, Member] = {
    "llama": Member("llama", LlamaConfig, LlamaForCausalLM, preset_overrides=dict(tie_word_embeddings=True),
                    is_baseline=True),
}


def get_member(name: str) -> Member:
    """A member or baseline by name, with an error that lists the choices."""
    known = {**MEMBERS, **BASELINES}
    if name not in known:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(known)}")
    return known[name]
