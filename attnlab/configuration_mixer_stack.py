"""Configuration of a mixer stack: any registered mixer (or one named by import path) per layer."""

from huggingface_hub.dataclasses import strict

from .configuration_common import AttnlabConfig

# The fields every mixer of a stack shares; a mixer's own options (mixer_options) are set on top of them.
SHARED_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "max_position_embeddings",
                 "rms_norm_eps", "rope_theta", "initializer_range")


@strict(accept_kwargs=True)
class MixerStackConfig(AttnlabConfig):
    r"""A decoder stack whose layers run any mixers: attnlab's (`attention`, `triple_product`, `evolving`, `elita`,
    `depth_recurrent`) or a user's, named by import path (`"mypkg.mixers:GatedMixer"`), in any order, each layer a
    pre-norm block of its mixer and a SwiGLU MLP. `layer_types` (and so the `DynamicCache(config)` of generate())
    follows from the cache kind each mixer declares.

    A member's mixer in a stack is that mixer alone: the member's other parts (elita's bilinear feed-forward and
    wraps, depth_recurrent's passes and controls) belong to the member model, not to its mixer.

    Args:
        mixer_types (`list[str]`): one mixer name or import path per layer (required).
        mixer_options (`dict[str, dict]`, optional): options per mixer name, e.g. `{"elita": {"position_width": 8}}`.
            attnlab's mixers take the fields of their member's config (checked by name); a user's mixer reads them
            as attributes of the config it is built with.
    """

    model_type = "mixer_stack"

    mixer_options: dict[str, dict] | None = None

    def __post_init__(self, **kwargs):
        if self.mixer_types is None:
            raise ValueError("MixerStackConfig: mixer_types is required: one mixer name or import path per layer, "
                             "e.g. ['elita', 'evolving', 'attention']")
        self.mixer_options = dict(self.mixer_options or {})
        super().__post_init__(**kwargs)
        if any(spec.cache_kind is None for spec in self.mixer_specs()):
            self.use_cache = False  # such a mixer has no decoding state: decode by recomputation (use_cache=False)

    def allowed_mixers(self):
        return None  # any mixer the registry resolves; check_mixer_types resolves each

    def check_mixer_types(self):
        super().check_mixer_types()
        self.mixer_specs()  # an unknown name, a path that does not import or a class that is not a mixer: an error
        unknown = sorted(set(self.mixer_options) - set(self.mixer_types))
        if unknown:
            raise ValueError(f"MixerStackConfig: mixer_options for {unknown}, which no layer runs "
                             f"(mixer_types {self.mixer_types})")
        for spec in self.mixer_specs():
            options = self.mixer_options.get(spec.name, {})
            if not isinstance(options, dict):
                raise ValueError(f"MixerStackConfig: mixer_options[{spec.name!r}] must be a dict, got {options!r}")
            if spec.options_config_class is not None:
                fields = set(spec.options_config_class.__dataclass_fields__)
                unknown = sorted(set(options) - fields)
                if unknown:
                    raise ValueError(f"MixerStackConfig: {spec.name} has no option(s) {unknown} (they are fields of "
                                     f"{spec.options_config_class.__name__})")

    def mixer_config(self, spec) -> "MixerConfigView":
        """The config a mixer of this stack is built from: its options over the shared fields; for attnlab's own
        mixers an instance of their member's config (so its defaults and checks apply)."""
        options = self.mixer_options.get(spec.name, {})
        member_config = None
        if spec.options_config_class is not None:
            shared = {name: getattr(self, name) for name in SHARED_FIELDS}
            member_config = spec.options_config_class(**{**shared, **options})
        return MixerConfigView(self, member_config, options)


class MixerConfigView:
    """What a mixer of a stack sees as `config`: its options (or its member's config), then the stack's fields.
    The attention kernel (`_attn_implementation`) is always the stack's live value, so `attn_implementation=` and
    `model.set_attn_implementation` reach every mixer."""

    def __init__(self, stack: MixerStackConfig, member_config, options: dict):
        self.__dict__.update(_stack=stack, _member_config=member_config, _options=dict(options))

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_stack", "_member_config", "_options"):
            raise AttributeError(name)
        if name == "_attn_implementation":
            return self._stack._attn_implementation
        if name in self._options:
            return self._options[name]
        if self._member_config is not None:
            return getattr(self._member_config, name)
        return getattr(self._stack, name)

    def __setattr__(self, name, value):
        raise AttributeError(f"a mixer's config is read-only (set {name!r} on the stack's MixerStackConfig or in "
                             "its mixer_options)")


__all__ = ["MixerConfigView", "MixerStackConfig"]
