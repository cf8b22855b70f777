"""VQLNMLP (seed 004): a per-step soft vector quantiser for time series, in transformers' time-series conventions.

At each time step t of each channel, with x_t standardised:

    h_t = W_in x_t + b_in                                (Linear 1 -> D)
    h_t = position_code(h_t, t)                          (none | + randn table | + sinusoidal | rotate pairs)
    h_t = LayerNorm(h_t)                                 (per head, one LayerNorm of the head size shared by heads)
    p_t = softmax(h_t E^T / sqrt(D))                     (per head, over that head's codebook E of V codes)
    z_t = p_t E                                          (the code mixture)
    z_t = z_t + CausalSelfAttention(z_{<=t})             (optional; not in the seed)
    y_t = W_out z_t + b_out                              (Linear D -> 1): the prediction of x_{t+1}

Without the attention nothing mixes time steps: y_t depends on x_t and t only, so a forecast iterates a function of
one value. The codebook is frozen N(0, 1) noise by default, as in the seed, where it was a buffer never trained.

Self-contained (imports only its configuration), so a saved folder runs as remote code.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.utils import ModelOutput

from .configuration_vqlnmlp import VQLNMLPConfig

# The seed's randn position table: 0.01 * N(0, 1), a buffer it never trained.
RANDN_POSITION_STD = 0.01


@dataclass
class VQLNMLPModelOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_channels, sequence_length, d_model)`):
        The code mixture at each step (after the attention, if any), channels kept apart as in PatchTST.
    loc, scale (`torch.FloatTensor` of shape `(batch_size, 1, num_channels)`):
        The standardisation applied: the model saw (past_values - loc) / scale.
    cache (`Cache`, *optional*): the attention's KV cache, when `use_attention` and `use_cache` (named `cache`,
        transformers 5.24's name, on every version: ModelOutput in 5.24 renames a `past_key_values` field).
    """

    last_hidden_state: torch.FloatTensor | None = None
    loc: torch.FloatTensor | None = None
    scale: torch.FloatTensor | None = None
    cache: Cache | None = None


@dataclass
class VQLNMLPForPredictionOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, returned with `future_values`):
        MSE of the next-step predictions in standardised units (data-unit MSE / scale^2, averaged over channels),
        the seed's loss.
    prediction_outputs (`torch.FloatTensor` of shape `(batch_size, sequence_length, num_channels)`):
        At each position t, the prediction of the value at t + 1, in the data's units.
    loc, scale (`torch.FloatTensor` of shape `(batch_size, 1, num_channels)`): the standardisation applied.
    cache (`Cache`, *optional*): the attention's KV cache.
    """

    loss: torch.FloatTensor | None = None
    prediction_outputs: torch.FloatTensor | None = None
    loc: torch.FloatTensor | None = None
    scale: torch.FloatTensor | None = None
    cache: Cache | None = None


@dataclass
class SampleVQLNMLPOutput(ModelOutput):
    r"""
    sequences (`torch.FloatTensor` of shape `(batch_size, 1, prediction_length, num_channels)`):
        The forecast (one deterministic sample, PatchTST's layout), in the data's units.
    """

    sequences: torch.FloatTensor | None = None


# ---------------------------------------------------------------------------------------------------------------
# The seed's math


def sinusoidal_code(positions: torch.Tensor, dim: int, theta: float) -> torch.Tensor:
    """[T] -> [T, dim]: sin(t * theta^(-2i/dim)) on even dims, cos on odd dims (the standard table)."""
    frequencies = theta ** (-torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim)
    angles = positions.float()[:, None] * frequencies
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)


def rotate_pairs(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate the consecutive pairs (2m, 2m+1) of x [..., T, dim] by t * theta^(-2m/dim) (simplepe's and
    nano-llama's RoPE layout, not the half-split one of transformers' Llama)."""
    dim = x.shape[-1]
    frequencies = theta ** (-torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim)
    angles = positions.float()[:, None] * frequencies
    cos, sin = angles.cos(), angles.sin()
    even, odd = x.float()[..., 0::2], x.float()[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2).to(x.dtype)


def soft_quantize(hidden: torch.Tensor, codebook: torch.Tensor, scale: float) -> torch.Tensor:
    """hidden [N, T, heads, head_size], codebook [heads, V, head_size] -> sum_v softmax(h . E_v * scale)_v E_v,
    each head against its own codebook."""
    num, length, heads, size = hidden.shape
    per_head = hidden.reshape(num * length, heads, size).transpose(0, 1)  # batched matmuls, one per head
    weights = (per_head @ codebook.transpose(1, 2)).mul(scale).softmax(dim=-1)
    return (weights @ codebook).transpose(0, 1).reshape(num, length, heads, size)


# ---------------------------------------------------------------------------------------------------------------
# Modules


def fill_missing(scaled: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Each missing value (observed == 0) of scaled [N, T, C] takes the last observed value before it, or 0 (the
    standardisation's loc) when none comes before: the model reads one value per step, so a gap must hold some
    value; holding the last one is what a forecaster knows at that time and never reads the future."""
    length = scaled.shape[1]
    steps = torch.arange(length, device=scaled.device).view(1, length, 1).expand_as(scaled)
    last = torch.where(observed, steps, -1).cummax(dim=1).values
    held = scaled.gather(1, last.clamp_min(0))
    return torch.where(last >= 0, held, torch.zeros_like(scaled))


class VQLNMLPScaler(nn.Module):
    """Standardises past_values [B, T, C]: returns (scaled, loc, scale) with loc and scale [B, 1, C]. With an
    observed mask the window statistics ("std", "mean") use the observed values only."""

    def __init__(self, config: VQLNMLPConfig):
        super().__init__()
        self.config = config

    def forward(self, values: torch.Tensor, observed: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        config = self.config
        batch, _, channels = values.shape
        if observed is not None:
            values = torch.where(observed, values, torch.zeros_like(values))  # a missing NaN must not spread
        weights = torch.ones_like(values) if observed is None else observed.to(values.dtype)
        count = weights.sum(dim=1, keepdim=True).clamp_min(1)
        if config.scaling == "stored":
            loc = torch.tensor(config.scaling_loc, dtype=values.dtype, device=values.device).view(1, 1, channels)
            scale = torch.tensor(config.scaling_scale, dtype=values.dtype, device=values.device).view(1, 1, channels)
        elif config.scaling == "std":
            loc = (values * weights).sum(dim=1, keepdim=True) / count
            variance = ((values - loc).pow(2) * weights).sum(dim=1, keepdim=True) / count
            scale = (variance + config.minimum_scale).sqrt()
        elif config.scaling == "mean":
            loc = torch.zeros_like(values[:, :1])
            scale = ((values.abs() * weights).sum(dim=1, keepdim=True) / count).clamp_min(config.minimum_scale)
        else:
            loc, scale = torch.zeros_like(values[:, :1]), torch.ones_like(values[:, :1])
        loc, scale = loc.expand(batch, 1, channels), scale.expand(batch, 1, channels)
        scaled = (values - loc) / scale
        if observed is not None:
            scaled = fill_missing(scaled, observed)
        return scaled, loc, scale


class VQLNMLPAttention(nn.Module):
    """Causal multi-head self-attention over time (not in the seed), with a KV cache in slot `cache_idx`."""

    def __init__(self, config: VQLNMLPConfig, cache_idx: int = 0):
        super().__init__()
        self.cache_idx = cache_idx
        self.num_heads = config.attention_heads
        self.rotary = config.position_code == "rope"
        self.theta = config.position_theta
        self.q_proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.k_proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.v_proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.o_proj = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        batch, length, width = hidden.shape

        def heads(x):  # [N, T, D] -> [N, heads, T, head_dim]
            return x.view(batch, length, self.num_heads, -1).transpose(1, 2)

        query, key, value = heads(self.q_proj(hidden)), heads(self.k_proj(hidden)), heads(self.v_proj(hidden))
        if self.rotary:  # relative positions in the scores, the use of RoPE the seed's author was after
            query, key = rotate_pairs(query, positions, self.theta), rotate_pairs(key, positions, self.theta)
        if cache is not None:
            key, value = cache.update(key, value, self.cache_idx)
        past = key.shape[2] - length
        # Query i (absolute past + i) sees keys j <= past + i; a single new query sees everything.
        mask = None
        if length > 1:
            mask = torch.arange(key.shape[2], device=hidden.device)[None, :] <= (
                torch.arange(length, device=hidden.device)[:, None] + past)
        out = nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, width))


class VQLNMLPPreTrainedModel(PreTrainedModel):
    config_class = VQLNMLPConfig
    base_model_prefix = "model"
    main_input_name = "past_values"
    _no_split_modules = []
    _skip_keys_device_placement = ["past_key_values", "cache"]

    def _init_weights(self, module):
        # The seed's initialisation: xavier-uniform Linear weights, zero biases, LayerNorm at (1, 0), N(0, 1) codes.
        if isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, VQLNMLPModel):
            init.normal_(module.codebook, mean=0.0, std=1.0)
            if module.position_table is not None:
                init.normal_(module.position_table, mean=0.0, std=RANDN_POSITION_STD)


class VQLNMLPModel(VQLNMLPPreTrainedModel):
    """Scaling, input projection, position code, LayerNorm, soft vector quantisation and the optional attention.
    Returns the code mixture per channel and step; `VQLNMLPForPrediction` adds the output projection."""

    def __init__(self, config: VQLNMLPConfig):
        super().__init__(config)
        self.scaler = VQLNMLPScaler(config)
        self.in_proj = nn.Linear(1, config.d_model)
        codebook = torch.empty(config.num_heads, config.codebook_size, config.head_size)
        if config.trainable_codebook:
            self.codebook = nn.Parameter(codebook)
        else:  # the seed's: a buffer, saved with the model (it is random) and never trained
            self.register_buffer("codebook", codebook)
        # The seed's randn position code, a buffer like the codebook; None for the other codes.
        table = torch.empty(config.max_position_embeddings, config.d_model) if config.position_code == "randn" else None
        self.register_buffer("position_table", table)
        self.norm = nn.LayerNorm(config.head_size, eps=config.layer_norm_eps)
        self.attention = VQLNMLPAttention(config, cache_idx=0) if config.use_attention else None
        self.post_init()

    def check_inputs(self, past_values: torch.Tensor, past_observed_mask: torch.Tensor | None = None,
                     extra_length: int = 0) -> torch.Tensor:
        """past_values as [batch, time, channels] float, or a ValueError naming the problem. Values that
        past_observed_mask marks missing may be anything, NaN included."""
        config = self.config
        if not torch.is_tensor(past_values) or not past_values.is_floating_point():
            raise ValueError(f"past_values must be a float tensor [batch, time, channels], got "
                             f"{getattr(past_values, 'dtype', type(past_values))}")
        if past_values.dim() == 2 and config.num_input_channels == 1:
            past_values = past_values.unsqueeze(-1)
        if past_values.dim() != 3 or past_values.shape[-1] != config.num_input_channels:
            raise ValueError(f"past_values must be [batch, time, {config.num_input_channels}] (num_input_channels="
                             f"{config.num_input_channels}), got shape {tuple(past_values.shape)}")
        length = past_values.shape[1] + extra_length
        if past_values.shape[1] == 0:
            raise ValueError("past_values has no time steps")
        if length > config.context_length:
            raise ValueError(f"past_values has {length} time steps, more than context_length={config.context_length}; "
                             f"pass the last {config.context_length} or use a model configured for longer contexts")
        observed = self.observed_mask(past_values, past_observed_mask)
        if not torch.isfinite(past_values[observed]).all():
            bad = (~torch.isfinite(past_values[observed])).sum().item()
            raise ValueError(f"past_values contains {bad} NaN or infinite value(s) marked observed; mark them 0 in "
                             "past_observed_mask (or fill them)")
        return past_values

    @staticmethod
    def observed_mask(past_values: torch.Tensor, past_observed_mask: torch.Tensor | None) -> torch.Tensor:
        """The mask as a bool tensor of past_values' shape (all True when None)."""
        if past_observed_mask is None:
            return torch.ones_like(past_values, dtype=torch.bool)
        if past_observed_mask.dim() == 2 and past_values.dim() == 3 and past_values.shape[-1] == 1:
            past_observed_mask = past_observed_mask.unsqueeze(-1)
        if past_observed_mask.shape != past_values.shape:
            raise ValueError(f"past_observed_mask must have the shape of past_values {tuple(past_values.shape)}, "
                             f"got {tuple(past_observed_mask.shape)}")
        return past_observed_mask.bool()

    def encode(self, scaled: torch.Tensor, start: int = 0, cache: Cache | None = None) -> torch.Tensor:
        """Standardised values [N, T] at absolute positions start .. start + T - 1 -> code mixtures [N, T, D]."""
        config = self.config
        num, length = scaled.shape
        positions = torch.arange(start, start + length, device=scaled.device)
        hidden = self.in_proj(scaled.unsqueeze(-1))
        if config.position_code == "randn":
            if start + length > config.max_position_embeddings:
                raise ValueError(f"position {start + length - 1} is past the randn position table "
                                 f"(max_position_embeddings={config.max_position_embeddings}); forecast fewer steps, "
                                 "use rollout='sliding', or configure a longer table")
            hidden = hidden + self.position_table[start:start + length]
        hidden = hidden.view(num, length, config.num_heads, config.head_size)
        if config.position_code == "sinusoidal":
            hidden = hidden + sinusoidal_code(positions, config.head_size, config.position_theta)[:, None].to(hidden.dtype)
        elif config.position_code == "rope":
            hidden = rotate_pairs(hidden.transpose(1, 2), positions, config.position_theta).transpose(1, 2)
        hidden = soft_quantize(self.norm(hidden), self.codebook, 1.0 / math.sqrt(config.d_model))
        hidden = hidden.reshape(num, length, config.d_model)
        if self.attention is not None:
            hidden = hidden + self.attention(hidden, positions, cache)
        return hidden

    def forward(
        self,
        past_values: torch.Tensor,
        past_observed_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> VQLNMLPModelOutput:
        r"""
        past_values (`torch.FloatTensor` of shape `(batch_size, sequence_length, num_input_channels)`, or
            `(batch_size, sequence_length)` with one channel): the series, in the data's units.
        past_observed_mask (`(batch_size, sequence_length, num_input_channels)`, *optional*): 1 where observed, 0
            where missing. A missing value is ignored by the "std" / "mean" scalers and replaced (after scaling)
            by the last observed value before it, or by 0 (the loc) when none comes before.
        past_key_values / cache: the attention's KV cache to continue from (transformers 5.24 calls it `cache`);
            the new values sit at the positions after the cached ones.
        """
        cache = either_cache(cache, past_key_values)
        if cache is not None and self.attention is None:
            raise ValueError("this VQLNMLP has no attention (use_attention=False), so it keeps no cache")
        if cache is not None and cache.get_seq_length() > 0 and self.config.scaling in ("std", "mean"):
            raise ValueError(f"scaling={self.config.scaling!r} takes its statistics from the context window, which a "
                             "continued call does not see; use generate()")
        start = cache.get_seq_length() if cache is not None else 0
        values = self.check_inputs(past_values, past_observed_mask, extra_length=start)
        observed = None if past_observed_mask is None else self.observed_mask(values, past_observed_mask)
        if use_cache and self.attention is not None and cache is None:
            cache = DynamicCache(config=self.config)
        scaled, loc, scale = self.scaler(values, observed)
        batch, length, channels = scaled.shape
        hidden = self.encode(scaled.transpose(1, 2).reshape(batch * channels, length), start, cache)
        return VQLNMLPModelOutput(last_hidden_state=hidden.view(batch, channels, length, -1), loc=loc, scale=scale,
                                  cache=cache)


def either_cache(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    if cache is not None and past_key_values is not None:
        raise ValueError("pass the cache as `cache` or as `past_key_values`, not both")
    return cache if cache is not None else past_key_values


class VQLNMLPForPrediction(VQLNMLPPreTrainedModel):
    """VQLNMLP with its output projection: a next-step prediction at every position, and `generate()` forecasts."""

    def __init__(self, config: VQLNMLPConfig):
        super().__init__(config)
        self.model = VQLNMLPModel(config)
        self.out_proj = nn.Linear(config.d_model, 1)
        self.post_init()

    def predict_scaled(self, scaled: torch.Tensor, start: int = 0, cache: Cache | None = None) -> torch.Tensor:
        """Standardised values [N, T] at positions start.. -> standardised next-step predictions [N, T]."""
        return self.out_proj(self.model.encode(scaled, start, cache)).squeeze(-1)

    def forward(
        self,
        past_values: torch.Tensor,
        past_observed_mask: torch.Tensor | None = None,
        future_values: torch.Tensor | None = None,
        future_observed_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> VQLNMLPForPredictionOutput:
        r"""
        past_values (`torch.FloatTensor` of shape `(batch_size, sequence_length, num_input_channels)`): the series.
        future_values (`torch.FloatTensor` of shape `(batch_size, F, num_input_channels)`, *optional*): the values
            that follow. The loss scores every next-step prediction the series past_values ++ future_values defines:
            the model reads past_values ++ future_values[:, :-1] (teacher forcing, like labels in a causal LM), so
            with F = 1 the targets are past_values[:, 1:] ++ future_values, the seed's aligned targets.
        past_observed_mask, future_observed_mask: 1 where observed. The loss counts a prediction only where both
            the value it reads and the value it predicts are observed, so a gap never enters it.
        """
        if future_values is not None and self.config.scaling in ("std", "mean"):
            raise ValueError(f"scaling={self.config.scaling!r} standardises with statistics of the whole window, so "
                             "next-step outputs inside it would see later values; train with scaling='stored' (the "
                             "training split's statistics) and keep 'std' / 'mean' for forecasting")
        past_values = self.model.check_inputs(past_values, past_observed_mask)
        observed = self.model.observed_mask(past_values, past_observed_mask)
        inputs = past_values
        if future_values is not None:
            if past_values.dim() == 2:
                past_values = past_values.unsqueeze(-1)
            if future_values.dim() == 2 and self.config.num_input_channels == 1:
                future_values = future_values.unsqueeze(-1)
            if future_values.dim() != 3 or future_values.shape[0] != past_values.shape[0] or \
                    future_values.shape[2] != past_values.shape[2] or future_values.shape[1] == 0:
                raise ValueError(f"future_values must be [batch, steps >= 1, channels] matching past_values "
                                 f"{tuple(past_values.shape)}, got {tuple(future_values.shape)}")
            future_observed = self.model.observed_mask(future_values, future_observed_mask)
            if not torch.isfinite(future_values[future_observed]).all():
                raise ValueError("future_values contains NaN or infinite values marked observed")
            inputs = torch.cat([past_values, future_values[:, :-1]], dim=1)
            observed = torch.cat([observed, future_observed], dim=1)
        all_observed = bool(observed.all())
        outputs = self.model(inputs, past_observed_mask=None if all_observed else observed[:, :inputs.shape[1]],
                             past_key_values=past_key_values, cache=cache, use_cache=use_cache)
        predictions = self.out_proj(outputs.last_hidden_state).squeeze(-1).transpose(1, 2)  # [B, T, C] standardised
        loss = None
        if future_values is not None:
            targets = (torch.cat([past_values, future_values], dim=1)[:, 1:] - outputs.loc) / outputs.scale
            if all_observed:
                loss = nn.functional.mse_loss(predictions, targets)
            else:
                counted = observed[:, 1:] & observed[:, :-1]
                loss = (predictions - targets.nan_to_num()).pow(2)[counted].sum() / counted.sum().clamp_min(1)
        return VQLNMLPForPredictionOutput(loss=loss, prediction_outputs=predictions * outputs.scale + outputs.loc,
                                          loc=outputs.loc, scale=outputs.scale,
                                          cache=outputs.cache)

    @torch.no_grad()
    def generate(
        self,
        past_values: torch.Tensor,
        past_observed_mask: torch.Tensor | None = None,
        prediction_length: int | None = None,
        rollout: str = "absolute",
        use_cache: bool = True,
    ) -> SampleVQLNMLPOutput:
        r"""Forecast `prediction_length` (default `config.prediction_length`) steps by feeding each prediction back.

        rollout:
            "absolute": the context sits at positions 0 .. T-1 and the h-th forecast step is read at position
                T - 1 + h; positions are tracked, so the position codes never wrap or overflow silently (the
                randn table refuses positions past its end). With attention, `use_cache` keeps the keys and values
                (transformers' DynamicCache) and each step reads one value; without it each step reruns the whole
                growing series (same result). Without attention each step reads only the newest value.
            "sliding": the seed's protocol: a window of the last `context_length` values, always at positions
                0 .. context_length-1, is rerun each step (no cache; the positions shift).
        Returns `sequences` [batch, 1, prediction_length, channels] in the data's units.
        """
        horizon = self.config.prediction_length if prediction_length is None else prediction_length
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon <= 0:
            raise ValueError(f"prediction_length must be a positive integer, got {horizon!r}")
        if rollout not in ("absolute", "sliding"):
            raise ValueError(f"rollout must be 'absolute' or 'sliding', got {rollout!r}")
        values = self.model.check_inputs(past_values, past_observed_mask)
        observed = None if past_observed_mask is None else self.model.observed_mask(values, past_observed_mask)
        scaled, loc, scale = self.model.scaler(values, observed)
        batch, length, channels = scaled.shape
        series = scaled.transpose(1, 2).reshape(batch * channels, length)
        forecast = []
        if rollout == "sliding":
            window = series
            for _ in range(horizon):
                forecast.append(self.predict_scaled(window)[:, -1:])
                window = torch.cat([window, forecast[-1]], dim=1)[:, -self.config.context_length:]
        elif not use_cache:
            for _ in range(horizon):
                forecast.append(self.predict_scaled(series)[:, -1:])
                series = torch.cat([series, forecast[-1]], dim=1)
        else:
            cache = DynamicCache(config=self.config) if self.model.attention is not None else None
            forecast.append(self.predict_scaled(series, 0, cache)[:, -1:])
            for step in range(1, horizon):
                forecast.append(self.predict_scaled(forecast[-1], length - 1 + step, cache))
        forecast = torch.cat(forecast, dim=1).view(batch, channels, horizon).transpose(1, 2)
        return SampleVQLNMLPOutput(sequences=(forecast * scale + loc).unsqueeze(1))


VQLNMLPConfig.register_for_auto_class()
VQLNMLPModel.register_for_auto_class("AutoModel")
VQLNMLPForPrediction.register_for_auto_class("AutoModelForTimeSeriesPrediction")

__all__ = ["VQLNMLPForPrediction", "VQLNMLPModel", "VQLNMLPPreTrainedModel"]
