"""Configuration fields shared by every attnlab decoder member.

Member configs subclass `AttnlabConfig`, add their own fields and set `model_type`. Field names follow
transformers' conventions (`LlamaConfig`), so tools that read `hidden_size` or `num_hidden_layers` work unchanged.
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

    def __post_init__(self, **kwargs):
        self.check_values()
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

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads
