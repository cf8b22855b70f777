"""Configuration fields shared by every attnlab decoder member.

Member configs subclass `AttnlabConfig`, add their own fields and set `model_type`. Field names follow
transformers' conventions (`LlamaConfig`), so tools that read `hidden_size` or `num_hidden_layers` work unchanged.

Mixers and caches. Each layer application runs one sequence mixer: the member's own (named by its `model_type`) or
`"attention"`, Llama's causal softmax attention (RoPE, SDPA), chosen per layer by `mixer_types` to build hybrid
stacks (`StackConfig` accepts any registered mixer). `layer_types` is derived from it in transformers' vocabulary,
one entry per layer application, from the cache kind each mixer declares (`mixers.py`), so that the
`DynamicCache(config)` that generate() builds has the right cache layer in every slot: `full_attention` (keys and
values), `linear_attention` (fixed-size recurrent states) or `hybrid` (both).
"""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


@strict(accept_kwargs=True)
class AttnlabConfig(PreTrainedConfig):
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    vocab_size: int = 32000
    hidden_size: int = 256
    intermediate_size: int = 1024
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    mixer_types: list[str] | None = None
    layer_types: list[str] | None = None

    def __post_init__(self, **kwargs):
        self.check_values()
        if self.mixer_types is None:
            self.mixer_types = [self.model_type] * self.num_hidden_layers
        self.check_mixer_types()
        layer_types = self.derived_layer_types()
        if self.layer_types is not None and list(self.layer_types) != layer_types:
            raise ValueError(
                f"{type(self).__name__}: layer_types {self.layer_types} disagree with mixer_types {self.mixer_types} "
                f"(expected {layer_types}); set mixer_types and leave layer_types to be derived"
            )
        self.layer_types = layer_types
        # The full auto_map (not only the classes that happen to be saved) lets a Hub folder load with
        # AutoConfig, AutoModel and AutoModelForCausalLM through trust_remote_code.
        self.auto_map = self.default_auto_map()
        super().__post_init__(**kwargs)

    @classmethod
    def default_auto_map(cls) -> dict[str, str]:
        prefix = cls.__name__.removesuffix("Config")
        modeling = f"modeling_{cls.model_type}"
        return {
            "AutoConfig": f"configuration_{cls.model_type}.{cls.__name__}",
            "AutoModel": f"{modeling}.{prefix}Model",
            "AutoModelForCausalLM": f"{modeling}.{prefix}ForCausalLM",
        }

    def check_values(self):
        """Raise a ValueError naming the first inconsistent value. Members extend this with their own fields."""
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "max_position_embeddings"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{type(self).__name__}: {name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"{type(self).__name__}: hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        for name in ("rms_norm_eps", "rope_theta", "initializer_range"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{type(self).__name__}: {name} must be positive, got {getattr(self, name)!r}")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            ids = getattr(self, name)
            for token_id in ids if isinstance(ids, list) else [ids]:
                if token_id is not None and not 0 <= token_id < self.vocab_size:
                    raise ValueError(
                        f"{type(self).__name__}: {name}={token_id} is outside the vocabulary [0, {self.vocab_size})"
                    )

    def allowed_mixers(self) -> tuple[str, ...] | None:
        """The mixer names `mixer_types` may use (None: any registered mixer or import path)."""
        return (self.model_type, "attention")

    def check_mixer_types(self):
        if not isinstance(self.mixer_types, (list, tuple)) or len(self.mixer_types) != self.num_hidden_layers:
            raise ValueError(
                f"{type(self).__name__}: mixer_types must be a list of num_hidden_layers={self.num_hidden_layers} "
                f"names, got {self.mixer_types!r}"
            )
        allowed = self.allowed_mixers()
        unknown = sorted(set(self.mixer_types) - set(allowed)) if allowed is not None else []
        if unknown:
            raise ValueError(f"{type(self).__name__}: unknown mixer_types {unknown}; each layer is one of {allowed}")
        self.mixer_types = list(self.mixer_types)

    def mixer_specs(self) -> list:
        """The registry entry (`mixers.MixerSpec`) of every layer application's mixer."""
        from .mixers import get_mixer, member_mixer  # at call time: the registry imports the modeling files

        # The member's own mixer is found by its config class, not its name (a folder may rename its model_type).
        return [member_mixer(type(self)) if name == self.model_type else get_mixer(name) for name in self.mixer_types]

    def derived_layer_types(self) -> list[str]:
        # A mixer without a decoding state gets a key slot it never writes (such a stack decodes without a cache).
        kinds = [spec.cache_kind or "full_attention" for spec in self.mixer_specs()]
        # transformers' cache reports its length (which generate() and positions need) only from layers that hold
        # keys: a stack of recurrent layers alone fails generate() on 5.23 and cannot be continued on 5.24. So the
        # first slot of such a stack is a hybrid layer in which the model records one placeholder key per token.
        if self.records_length:
            kinds[0] = "hybrid"
        return kinds

    @property
    def records_length(self) -> bool:
        """Whether the model writes the length placeholder keys into slot 0 (a stack whose mixers keep no keys)."""
        return not any(spec.keeps_keys for spec in self.mixer_specs())

    @property
    def number_of_conv_states(self) -> int:
        """Recurrent state tensors per linear or hybrid cache layer (transformers reads this name): the most any
        mixer of the stack keeps."""
        return max([1] + [spec.num_recurrent_states for spec in self.mixer_specs()])

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads
