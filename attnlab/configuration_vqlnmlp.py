"""Configuration of the VQLNMLP time-series member (seed 004): a per-step soft vector quantiser."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

POSITION_CODES = ("none", "randn", "sinusoidal", "rope")
SCALINGS = ("stored", "std", "mean", "none")


@strict(accept_kwargs=True)
class VQLNMLPConfig(PreTrainedConfig):
    r"""VQLNMLP (single head) and MHVQLNMLP (`num_heads` > 1) of seed 004, with transformers' time-series field
    names (PatchTST, TimesFM). Each channel is a separate univariate series; at every time step the model maps the
    value to a prediction of the next one:

        h = Linear(1 -> d_model)(x_t) (+ position code at t) -> LayerNorm -> softmax(h E^T / sqrt(d_model)) E
          (-> + causal self-attention over time, optional) -> Linear(d_model -> 1)

    Args:
        context_length (`int`, 96): the longest `past_values` the model reads (the seed's window, `ts96`).
        prediction_length (`int`, 96): the default horizon of `generate()`.
        num_input_channels (`int`, 1): channels of `past_values`, each handled independently with shared weights.
        scaling (`str`, "stored"): how values are standardised before the model sees them.
            "stored": (x - scaling_loc) / scaling_scale, statistics of the training split saved with the model
            (the seed's z-score without its leak: the seed took them over the whole series, validation included).
            "std" / "mean": PatchTST's scalers over the context window. A next-step output inside the window then
            depends on statistics of later values, so these are for forecasting (`generate`) only; training with
            them is refused. "none": raw values.
        scaling_loc, scaling_scale (`list[float]`, one per channel): the stored statistics (default 0 and 1).
        codebook_size (`int`, 512): codes per head (the seed's `vs512`).
        d_model (`int`, 64): width (the seed's `dm64`).
        num_heads (`int`, 1): codebook heads. d_model is split into heads of d_model // num_heads, which share one
            LayerNorm and each have a codebook; the softmax scale stays 1 / sqrt(d_model), as in the seed.
        position_code (`str`, "none"): "none", "randn" (a frozen 0.01 * N(0, 1) table of max_position_embeddings
            rows, added before the heads are split), "sinusoidal" (the standard table, per head) or "rope"
            (consecutive pairs (2m, 2m+1) rotated by t * theta^(-2m / head_size), per head).
        max_position_embeddings (`int`, 512): rows of the "randn" table; no position may reach it. The other codes
            are computed from the position and have no limit.
        position_theta (`float`, 10000.0): base of the sinusoidal and rotary codes.
        trainable_codebook (`bool`, False): the seed's codebook is frozen N(0, 1) noise; True trains it.
        use_attention (`bool`, False): add a causal self-attention over time after the code mixture (residual), so
            a prediction can use earlier steps, not only the current one. It decodes with a KV cache; with
            position_code "rope" its queries and keys are rotated too.
        attention_heads (`int`, 4): heads of that attention.
        layer_norm_eps (`float`, 1e-5): the LayerNorm epsilon (PyTorch's default, as in the seed).
        minimum_scale (`float`, 1e-5): floor of the "std" and "mean" scalers.

    `num_hidden_layers` and `layer_types` follow from `use_attention`: one "full_attention" application or none,
    so that `DynamicCache(config)` has one slot per attention.
    """

    model_type = "vqlnmlp"

    context_length: int = 96
    prediction_length: int = 96
    num_input_channels: int = 1
    scaling: str = "stored"
    scaling_loc: list[float] | None = None
    scaling_scale: list[float] | None = None
    codebook_size: int = 512
    d_model: int = 64
    num_heads: int = 1
    position_code: str = "none"
    max_position_embeddings: int = 512
    position_theta: float = 10000.0
    trainable_codebook: bool = False
    use_attention: bool = False
    attention_heads: int = 4
    layer_norm_eps: float = 1e-5
    minimum_scale: float = 1e-5
    initializer_range: float = 0.02
    num_hidden_layers: int | None = None
    layer_types: list[str] | None = None

    def __post_init__(self, **kwargs):
        derived = ["full_attention"] if self.use_attention else []
        if self.layer_types is not None and list(self.layer_types) != derived:
            raise ValueError(f"VQLNMLPConfig: layer_types follows from use_attention={self.use_attention} "
                             f"({derived}), got {self.layer_types}")
        self.layer_types = derived
        self.num_hidden_layers = len(derived)
        if self.scaling_loc is None:
            self.scaling_loc = [0.0] * self.num_input_channels if isinstance(self.num_input_channels, int) else None
        if self.scaling_scale is None:
            self.scaling_scale = [1.0] * self.num_input_channels if isinstance(self.num_input_channels, int) else None
        self.check_values()
        # The full auto_map, not only the classes that happen to be saved, so that a Hub folder loads with
        # AutoConfig, AutoModel and AutoModelForTimeSeriesPrediction through trust_remote_code.
        self.auto_map = {
            "AutoConfig": "configuration_vqlnmlp.VQLNMLPConfig",
            "AutoModel": "modeling_vqlnmlp.VQLNMLPModel",
            "AutoModelForTimeSeriesPrediction": "modeling_vqlnmlp.VQLNMLPForPrediction",
        }
        super().__post_init__(**kwargs)

    def check_values(self):
        """Raise a ValueError naming the first inconsistent value."""
        for name in ("context_length", "prediction_length", "num_input_channels", "codebook_size", "d_model",
                     "num_heads", "max_position_embeddings", "attention_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"VQLNMLPConfig: {name} must be a positive integer, got {value!r}")
        if self.position_code not in POSITION_CODES:
            raise ValueError(f"VQLNMLPConfig: position_code must be one of {POSITION_CODES}, got {self.position_code!r}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"VQLNMLPConfig: scaling must be one of {SCALINGS}, got {self.scaling!r}")
        if self.d_model % self.num_heads:
            raise ValueError(f"VQLNMLPConfig: d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        if self.position_code in ("sinusoidal", "rope") and self.head_size % 2:
            raise ValueError(f"VQLNMLPConfig: position_code {self.position_code!r} needs an even head size, got "
                             f"d_model // num_heads = {self.head_size}")
        if self.use_attention and self.d_model % (2 * self.attention_heads):
            raise ValueError(f"VQLNMLPConfig: d_model ({self.d_model}) must be divisible by 2 * attention_heads "
                             f"({self.attention_heads}) for the attention's (rotary) heads")
        if self.context_length > self.max_position_embeddings and self.position_code == "randn":
            raise ValueError(f"VQLNMLPConfig: context_length ({self.context_length}) exceeds the randn position table "
                             f"(max_position_embeddings={self.max_position_embeddings})")
        for name in ("scaling_loc", "scaling_scale"):
            values = getattr(self, name)
            if len(values) != self.num_input_channels:
                raise ValueError(f"VQLNMLPConfig: {name} needs one value per channel ({self.num_input_channels}), "
                                 f"got {values!r}")
        if not all(scale > 0 for scale in self.scaling_scale):
            raise ValueError(f"VQLNMLPConfig: scaling_scale must be positive, got {self.scaling_scale!r}")
        for name in ("position_theta", "layer_norm_eps", "minimum_scale", "initializer_range"):
            if not getattr(self, name) > 0:
                raise ValueError(f"VQLNMLPConfig: {name} must be positive, got {getattr(self, name)!r}")

    @property
    def head_size(self) -> int:
        return self.d_model // self.num_heads


__all__ = ["VQLNMLPConfig"]
