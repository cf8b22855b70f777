"""Configuration of the depth-recurrent member (seed 002): a few shared blocks applied in several passes."""

from huggingface_hub.dataclasses import strict

from .configuration_common import AttnlabConfig


@strict(accept_kwargs=True)
class DepthRecurrentConfig(AttnlabConfig):
    r"""`num_unique_layers` blocks (GQA softmax attention + ReLU^2 MLP) run in order, `num_passes` times, with
    per-(pass, block) attention scale, MLP scale and residual mix with the normalised input embedding that are not
    shared. The defaults are the submission's setting (openai/parameter-golf PR #298: 3 x 3, width 768, 8 query and
    2 key/value heads, RoPE base 500000, logit softcap 30, every technique on).

    `num_hidden_layers` counts block applications, `num_passes * num_unique_layers`, one cache slot each (slot
    `pass * num_unique_layers + block`): give either it or `num_unique_layers` and the other is derived (neither: 3
    blocks); values that disagree are an error. `layer_types` is derived as well:
    `"full_attention"` everywhere, except `"hybrid"` for the first slot of passes 1.. when `state_carry` is on (that
    slot also holds the running sum and count of the previous pass's outputs).

    Args:
        num_unique_layers (`int`, 3 unless derived from `num_hidden_layers`): blocks with their own weights.
        num_passes (`int`, 3): how many times the stack of blocks runs.
        num_key_value_heads (`int`, 2): key/value heads (grouped-query attention); divides `num_attention_heads`.
        key_projection_rank (`int`, 32): keys are `W_up (W_down x)` through this rank ("low-rank K"); 0 = a full
            projection.
        query_gain_init (`float`, 1.5): initial learned per-head gain on the RMS-normalised queries.
        final_logit_softcapping (`float`, 30.0): logits = cap * tanh(z / cap); None disables it.
        zero_init_output_projections (`bool`, True): the attention output and MLP down projections and the second
            factor of every low-rank map start at zero, so each block (and technique) starts as the identity. The
            parameters upstream of a zero factor then get no gradient on the first step.
        technique_rank (`int`, 16): rank of the low-rank maps of `temporal_difference` and `state_carry`.

    The techniques (names in the submission in quotes). Each is on by default, as in the submission:
        input_embedding_delta (`bool`): "value embeddings". The input is RMSNorm(E[id] + V[id]) with V a second,
            zero-initialised vocab x hidden table, while the tied output head uses E only: an untied input embedding
            delta (not the modded-nanogpt value embedding, which feeds attention values).
        pass_position_modulation (`bool`): "resonant position encoding". At the start of pass p the stream is
            multiplied by 1 + s_p * [cos(t f_p), cos(t f_p)] with learned frequencies f_p (hidden/2), scale s_p and
            t the token's absolute position: an absolute-position gain on top of RoPE.
        state_carry (`bool`): "selective state GRU carry", made causal. The submission added to every position a gated
            low-rank map of the mean of the previous pass's output over ALL positions of the window, future ones
            included (a leak; see attnlab/workbench/seed_reference/seed_002_depth_recurrent.py). Here position t
            gets sigma(g_p) * ((1 - z) m_t + z h_t) with m_t the mean over positions <= t only (padding excluded),
            z = sigma(B_z A_z m_t), h = tanh(B_h A_h m_t). While decoding, the running sum and count live in the cache.
        confidence_conditioning (`bool`): at the start of passes 1.., adds c_p times the previous pass's exit-gate value
            (stop-gradient), a per-token scalar. Needs `exit_gate`.
        depth_difference (`bool`): "gradient memory recurrence" (no gradients involved). At the start of pass p adds
            w_p * |x - x_prev| with x_prev the (stop-gradient) input of the previous pass (pass 0: the embedding).
        temporal_difference (`bool`): "temporal difference recurrence" (no TD learning). After passes 1.. adds
            a_p * (B A x - stopgrad(x_in)), x_in the pass's input, a_p = sigma(learned, init 0.1): at init it subtracts
            about half of the pass input. Training adds `temporal_difference_penalty` * mean(correction^2).
        exit_gate (`bool`): "adaptive depth". After passes 0..P-2, g = sigma(w.x + b) per token and x becomes
            g * x + (1 - g) * stopgrad(x): the forward value is unchanged (no token exits, no compute is saved), only
            the gradient into earlier passes is scaled by g. Training adds `exit_gate_entropy_weight` times the gates'
            mean binary entropy, the only signal the gate gets besides `confidence_conditioning`.
        skip_connection (`bool`): "U-Net skips". Per pass, the first num_unique_layers // 2 blocks push their outputs
            and the following blocks add w * (the last pushed output). The first of those is always the current
            stream, so with 3 blocks this is x <- (1 + w_p) * x before block 1: a per-pass channel rescale.
        entropy_bonus (`float`, 0.025): "thermodynamic compression loss F = E - T*S". Training subtracts
            entropy_bonus * exp(-step / entropy_bonus_decay_steps) times the mean predictive entropy (a confidence
            penalty); 0 disables it. `step` counts training forwards with labels (the `training_step` buffer).
        entropy_bonus_decay_steps (`float` or None, 5000): None keeps the coefficient constant.

    Left out (no-ops or broken in the submission): eigenspace routing (never built), the compression loss (a dead
    branch), linear attention (never built) and LoRA test-time training (off, and its adapters got no gradient).
    """

    model_type = "depth_recurrent"

    vocab_size: int = 1024
    hidden_size: int = 768
    intermediate_size: int = 1536
    num_hidden_layers: int | None = None
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    rope_theta: float = 500000.0
    layer_types: list[str] | None = None

    num_unique_layers: int | None = None
    num_passes: int = 3
    key_projection_rank: int = 32
    query_gain_init: float = 1.5
    final_logit_softcapping: float | None = 30.0
    zero_init_output_projections: bool = True
    technique_rank: int = 16

    input_embedding_delta: bool = True
    pass_position_modulation: bool = True
    state_carry: bool = True
    confidence_conditioning: bool = True
    depth_difference: bool = True
    temporal_difference: bool = True
    temporal_difference_penalty: float = 1e-3
    exit_gate: bool = True
    exit_gate_entropy_weight: float = 0.005
    skip_connection: bool = True
    entropy_bonus: float = 0.025
    entropy_bonus_decay_steps: float | None = 5000.0

    def __post_init__(self, **kwargs):
        self.resolve_depth()
        layer_types = self.derived_layer_types()
        if self.layer_types is not None and list(self.layer_types) != layer_types:
            raise ValueError(f"DepthRecurrentConfig: layer_types {self.layer_types} disagree with the passes and "
                             f"state_carry (expected {layer_types}); leave layer_types unset to derive it")
        self.layer_types = layer_types
        super().__post_init__(**kwargs)

    def resolve_depth(self):
        """Fill whichever of num_unique_layers and num_hidden_layers is unset from the other (both unset: the
        submission's 3 blocks), and check that they agree."""
        passes = self.num_passes
        if isinstance(passes, bool) or not isinstance(passes, int) or passes <= 0:
            raise ValueError(f"DepthRecurrentConfig: num_passes must be a positive integer, got {passes!r}")
        if self.num_unique_layers is None and self.num_hidden_layers is None:
            self.num_unique_layers = 3
        if self.num_unique_layers is None:
            applications = self.num_hidden_layers
            if isinstance(applications, bool) or not isinstance(applications, int) or applications <= 0 \
                    or applications % passes:
                raise ValueError(f"DepthRecurrentConfig: num_hidden_layers (block applications) must be a positive "
                                 f"multiple of num_passes={passes}, got {applications!r}")
            self.num_unique_layers = applications // passes
        blocks = self.num_unique_layers
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks <= 0:
            raise ValueError(f"DepthRecurrentConfig: num_unique_layers must be a positive integer, got {blocks!r}")
        if self.num_hidden_layers is None:
            self.num_hidden_layers = passes * blocks
        elif self.num_hidden_layers != passes * blocks:
            raise ValueError(
                f"DepthRecurrentConfig: num_hidden_layers ({self.num_hidden_layers!r}) must equal num_passes * "
                f"num_unique_layers = {passes} * {blocks} = {passes * blocks} (one cache slot per block "
                "application); set one of num_hidden_layers and num_unique_layers and the other is derived"
            )

    def derived_layer_types(self) -> list[str]:
        carry_slots = {self.carry_slot(pass_idx) for pass_idx in range(self.num_passes)}
        return ["hybrid" if slot in carry_slots else "full_attention"
                for slot in range(self.num_passes * self.num_unique_layers)]

    def carry_slot(self, pass_idx: int) -> int | None:
        """The cache slot holding the running sum and count that pass `pass_idx` reads (None: it reads none)."""
        if not self.state_carry or pass_idx == 0:
            return None
        return pass_idx * self.num_unique_layers

    @property
    def number_of_conv_states(self) -> int:
        """State tensors per hybrid cache slot (transformers reads this name): the running sum and the count."""
        return 2

    def check_values(self):
        super().check_values()
        for name in ("num_key_value_heads", "technique_rank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"DepthRecurrentConfig: {name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"DepthRecurrentConfig: num_attention_heads ({self.num_attention_heads}) must be "
                             f"divisible by num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise ValueError(f"DepthRecurrentConfig: head_dim ({self.head_dim}) must be even for RoPE")
        if self.hidden_size % 2:
            raise ValueError(f"DepthRecurrentConfig: hidden_size ({self.hidden_size}) must be even for "
                             "pass_position_modulation's cosine pairs")
        rank = self.key_projection_rank
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ValueError(f"DepthRecurrentConfig: key_projection_rank must be a non-negative integer (0 = full), "
                             f"got {rank!r}")
        if self.final_logit_softcapping is not None and not self.final_logit_softcapping > 0:
            raise ValueError(f"DepthRecurrentConfig: final_logit_softcapping must be positive or None, "
                             f"got {self.final_logit_softcapping!r}")
        for name in ("temporal_difference_penalty", "exit_gate_entropy_weight", "entropy_bonus"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"DepthRecurrentConfig: {name} must be >= 0, got {getattr(self, name)!r}")
        if self.entropy_bonus_decay_steps is not None and not self.entropy_bonus_decay_steps > 0:
            raise ValueError(f"DepthRecurrentConfig: entropy_bonus_decay_steps must be positive or None, "
                             f"got {self.entropy_bonus_decay_steps!r}")
        if self.confidence_conditioning and not self.exit_gate:
            raise ValueError("DepthRecurrentConfig: confidence_conditioning reads the exit gate's value; enable "
                             "exit_gate too (or disable confidence_conditioning)")


__all__ = ["DepthRecurrentConfig"]
