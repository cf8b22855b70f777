"""Configuration of the ELiTA member (seed 001): cumulative-sum attention with scalar keys, bilinear feed-forward."""

from huggingface_hub.dataclasses import strict

from .configuration_common import AttnlabConfig


@strict(accept_kwargs=True)
class ElitaConfig(AttnlabConfig):
    r"""ELiTA: Attention2 (scalar keys, sin position terms, causal cumulative softmax with a self gate) and
    FeedForward2 (bilinear outer product of two swish projections). `intermediate_size` is not used:
    FeedForward2's width is `hidden_size * linear_factor`.

    Args:
        position_width (`int`, 16): sine terms per head in each position term p_1, p_2 (the seed's `pos_w`).
        position_step (`float`, defaults to `1 / (max_position_embeddings - 1)`): token i sits at n_i = i * step.
            The seed used n_i = i / (N - 1) with N the current length, so every earlier position moved whenever
            the sequence grew: cached sums became invalid and position i told the model how far the end was. A
            constant step keeps the seed's grid for sequences of max_position_embeddings tokens and makes each
            token's terms depend on its own index only.
        linear_factor (`int`, 8): FeedForward2's second input width l; its kernel is hidden x hidden x l.
        scan_chunk_size (`int`, 128): tokens per step of the parallel scan; time and memory are O(T * chunk).
        num_wraps (`int`, 1): how many times the whole layer stack runs (the seed's "wrap", which used 3), each
            pass starting with its own learned bias added to the residual stream. `num_hidden_layers` counts layer
            applications (one cache slot each, as transformers' caches expect), so the stack holds
            `num_hidden_layers // num_wraps` distinct layers, and `mixer_types` must repeat with that period.
        logit_ffn_size (`int`, 0): width of the seed's feed-forward over the tied head's logits
            (vocab -> size -> vocab, swish, added to the logits); 0 disables it.
    """

    model_type = "elita"
    position_width: int = 16
    position_step: float | None = None
    linear_factor: int = 8
    scan_chunk_size: int = 128
    num_wraps: int = 1
    logit_ffn_size: int = 0

    def __post_init__(self, **kwargs):
        if self.position_step is None and isinstance(self.max_position_embeddings, int):
            self.position_step = 1.0 / max(1, self.max_position_embeddings - 1)
        super().__post_init__(**kwargs)

    def check_mixer_types(self):
        super().check_mixer_types()
        stack = self.num_hidden_layers // self.num_wraps
        if self.mixer_types != self.mixer_types[:stack] * self.num_wraps:
            raise ValueError(f"ElitaConfig: mixer_types {self.mixer_types} must repeat every "
                             f"{stack} layers, the stack that each of the {self.num_wraps} wraps runs")

    @property
    def num_distinct_layers(self) -> int:
        return self.num_hidden_layers // self.num_wraps

    def check_values(self):
        super().check_values()
        for name in ("position_width", "linear_factor", "scan_chunk_size", "num_wraps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ElitaConfig: {name} must be a positive integer, got {value!r}")
        if isinstance(self.logit_ffn_size, bool) or not isinstance(self.logit_ffn_size, int) or self.logit_ffn_size < 0:
            raise ValueError(f"ElitaConfig: logit_ffn_size must be a non-negative integer (0 = off), "
                             f"got {self.logit_ffn_size!r}")
        if self.num_hidden_layers % self.num_wraps:
            raise ValueError(f"ElitaConfig: num_hidden_layers ({self.num_hidden_layers}) counts layer applications "
                             f"and must be divisible by num_wraps ({self.num_wraps})")
        if not self.position_step > 0:
            raise ValueError(f"ElitaConfig: position_step must be positive, got {self.position_step!r}")


__all__ = ["ElitaConfig"]
