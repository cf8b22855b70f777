"""Pieces every attnlab decoder member shares.

A member is a sequence mixer (its attention) plus a thin config and model file: the embedding, RMSNorm, SwiGLU
MLP, rotary embedding, pre-norm residual block, input checks, cache handling and causal LM head live here, in the
style of transformers' `modeling_llama.py`.

A mixer is an `nn.Module` built as `Mixer(config, layer_idx)` and called as
`mixer(hidden_states, position_ids=..., position_embeddings=(cos, sin) or None, attention_mask=..., past_key_values=...)`
where `attention_mask` is None or a bool tensor [batch, past + new] that is True on real tokens.
"""

import dataclasses

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep

from .cache_utils import AttnlabCache
from .configuration_common import AttnlabConfig


class AttnlabRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.float()
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class AttnlabSwiGLUMLP(nn.Module):
    def __init__(self, config: AttnlabConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(hidden_states)) * self.up_proj(hidden_states))


class AttnlabRotaryEmbedding(nn.Module):
    """RoPE tables computed from position ids, in fp32 (phases reach thousands of radians at long contexts)."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self) -> torch.Tensor:
        return 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type=position_ids.device.type, enabled=False):
            freqs = position_ids[..., None].float() * self.inv_freq.float()
            emb = torch.cat((freqs, freqs), dim=-1)
            return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [batch, heads, seq, head_dim] by the tables [batch, seq, head_dim], in the tables' dtype (fp32)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x.to(cos.dtype) * cos + rotate_half(x.to(cos.dtype)) * sin


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[batch, seq, heads * head_dim] -> [batch, heads, seq, head_dim]"""
    batch, seq, _ = x.shape
    return x.view(batch, seq, num_heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[batch, heads, seq, head_dim] -> [batch, seq, heads * head_dim]"""
    batch, _, seq, _ = x.shape
    return x.transpose(1, 2).reshape(batch, seq, -1)


def causal_padding_mask(key_padding: torch.Tensor | None, query_start: int, query_len: int, key_len: int,
                        device: torch.device) -> torch.Tensor:
    """Bool [batch or 1, 1, query_len, key_len]: query at absolute index query_start + i may see key j <= it.

    Padded keys are hidden, except that every query always sees itself, so the rows of padded queries stay finite
    (their outputs are never used) while real queries are unaffected (they are never padding).
    """
    query_index = torch.arange(query_start, query_start + query_len, device=device)[:, None]
    key_index = torch.arange(key_len, device=device)[None, :]
    allowed = (key_index <= query_index)[None, None]
    if key_padding is not None:
        allowed = (allowed & key_padding[:, None, None, :key_len]) | (key_index == query_index)[None, None]
    return allowed


class AttnlabDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm residual block around a pluggable sequence mixer and feed-forward."""

    def __init__(self, config: AttnlabConfig, layer_idx: int, mixer_class: type, mlp_class: type):
        super().__init__()
        self.input_layernorm = AttnlabRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = mixer_class(config, layer_idx)
        self.post_attention_layernorm = AttnlabRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = mlp_class(config)

    def forward(self, hidden_states, position_ids=None, position_embeddings=None, attention_mask=None, cache=None,
                **mixer_kwargs):
        # The cache arrives as `cache=`, the name GradientCheckpointingLayer clears under checkpointing (it does not
        # know `past_key_values=`): the backward pass replays the layer, which would write the cache a second time.
        hidden_states = hidden_states + self.self_attn(
            self.input_layernorm(hidden_states),
            position_ids=position_ids,
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            past_key_values=cache,
            **mixer_kwargs,
        )
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class AttnlabPreTrainedModel(PreTrainedModel):
    config_class = AttnlabConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["AttnlabDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, AttnlabRotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq())


class AttnlabModel(AttnlabPreTrainedModel):
    """Embedding -> decoder layers -> final norm. Members set `mixer_class` (and optionally `mlp_class`)."""

    mixer_class: type = None
    mlp_class: type = AttnlabSwiGLUMLP
    uses_rotary: bool = True

    def __init__(self, config: AttnlabConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            AttnlabDecoderLayer(config, i, self.mixer_class, self.mlp_class) for i in range(config.num_hidden_layers)
        )
        self.norm = AttnlabRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = AttnlabRotaryEmbedding(config.head_dim, config.rope_theta) if self.uses_rotary else None
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    @property
    def num_cache_layers(self) -> int:
        """Cache layers this member fills: one per layer application (members that rerun layers override it)."""
        return self.config.num_hidden_layers

    def prepare_cache(self, past_key_values: Cache | None) -> Cache:
        """The cache this member decodes with: transformers' DynamicCache for KV members, AttnlabCache for members
        with a recurrent state (`_is_stateful`), swapped in for the empty DynamicCache that generate() passes."""
        if not self._is_stateful:
            return past_key_values if past_key_values is not None else DynamicCache(config=self.config)
        if isinstance(past_key_values, AttnlabCache):
            return past_key_values
        if past_key_values is not None and past_key_values.get_seq_length() > 0:
            raise ValueError(f"{type(self).__name__} decodes with an AttnlabCache, got a filled "
                             f"{type(past_key_values).__name__}")
        return AttnlabCache(num_layers=self.num_cache_layers)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        past_key_values = either_cache_name(cache, past_key_values)
        if kwargs.get("output_attentions"):
            raise ValueError(f"{type(self).__name__} does not return attention weights (output_attentions=True)")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        check_inputs(self.config, input_ids, inputs_embeds)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        past_key_values = self.prepare_cache(past_key_values) if use_cache else None
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        key_padding = padding_mask(attention_mask, inputs_embeds, past_length)
        if position_ids is None:
            position_ids = positions_from_mask(key_padding, inputs_embeds, past_length)
        check_positions(self.config, position_ids, inputs_embeds)

        position_embeddings = self.rotary_emb(position_ids) if self.rotary_emb is not None else None
        all_hidden_states = [] if output_hidden_states else None
        hidden_states = self.run_layers(
            inputs_embeds,
            all_hidden_states,
            position_ids=position_ids,
            position_embeddings=position_embeddings,
            attention_mask=key_padding,
            cache=past_key_values,
        )
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states = (*all_hidden_states, hidden_states)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states, **{CACHE_FIELD: past_key_values}
        )


    def run_layers(self, hidden_states, all_hidden_states: list | None, **layer_kwargs) -> torch.Tensor:
        """The decoder stack, appending each layer's input to `all_hidden_states` when it is a list. Members that run
        the stack differently (e.g. several times) override this."""
        for layer in self.layers:
            if all_hidden_states is not None:
                all_hidden_states.append(hidden_states)
            hidden_states = layer(hidden_states, **layer_kwargs)
        return hidden_states


class AttnlabForCausalLM(AttnlabPreTrainedModel, GenerationMixin):
    """Causal LM head (tied to the embedding by default) with transformers' loss. Members set `base_model_class`."""

    base_model_class: type = None
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: AttnlabConfig):
        super().__init__(config)
        self.model = self.base_model_class(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_hidden_states: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        past_key_values = either_cache_name(cache, past_key_values)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_attentions=kwargs.pop("output_attentions", None),
        )
        logits = self.compute_logits(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            check_labels(labels, outputs.last_hidden_state, self.config.vocab_size)
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)}
        )

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Final hidden states -> logits. Members with extra layers on the head override this."""
        return self.lm_head(hidden_states)


# ---------------------------------------------------------------------------------------------------------------
# transformers 5.24 renamed `past_key_values` to `cache` in forward arguments, generate() and model outputs; 5.23
# knows only the old name. Members accept both and return the cache under the name this version's outputs declare,
# so a saved folder works as remote code on either side of the rename.

CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(BaseModelOutputWithPast)} else "past_key_values"


def either_cache_name(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    if cache is not None and past_key_values is not None:
        raise ValueError("Pass the cache as `cache` or as `past_key_values`, not both")
    return cache if cache is not None else past_key_values


# ---------------------------------------------------------------------------------------------------------------
# Input handling: clear errors instead of IndexErrors deep inside an embedding, positions that survive left padding.


def check_inputs(config: AttnlabConfig, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None):
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of input_ids or inputs_embeds")
    if input_ids is not None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.long, torch.int32, torch.int16):
            raise TypeError(f"input_ids must be an integer torch.Tensor, got {_describe(input_ids)}")
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must have shape [batch, seq_len] with seq_len >= 1, got {tuple(input_ids.shape)}")
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= config.vocab_size:
            bad = high if high >= config.vocab_size else low
            raise ValueError(
                f"input_ids contain token id {bad}, outside the vocabulary [0, {config.vocab_size}); "
                "does the tokenizer match the model?"
            )
    else:
        if not isinstance(inputs_embeds, torch.Tensor) or not inputs_embeds.is_floating_point():
            raise TypeError(f"inputs_embeds must be a floating-point torch.Tensor, got {_describe(inputs_embeds)}")
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.hidden_size or inputs_embeds.shape[1] == 0:
            raise ValueError(
                f"inputs_embeds must have shape [batch, seq_len, {config.hidden_size}], got {tuple(inputs_embeds.shape)}"
            )


def _describe(value) -> str:
    return f"{type(value).__name__} of dtype {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__


def padding_mask(attention_mask: torch.Tensor | None, inputs_embeds: torch.Tensor, past_length: int):
    """The 2D mask as bool [batch, past + new] (True = real token), or None when nothing is padded."""
    if attention_mask is None:
        return None
    batch, seq = inputs_embeds.shape[:2]
    if attention_mask.dim() != 2 or attention_mask.shape != (batch, past_length + seq):
        raise ValueError(
            f"attention_mask must be a 2D [batch, past + new] = [{batch}, {past_length + seq}] tensor of 0/1, "
            f"got shape {tuple(attention_mask.shape)}"
        )
    mask = attention_mask.to(device=inputs_embeds.device, dtype=torch.bool)
    return None if bool(mask.all()) else mask


def positions_from_mask(key_padding: torch.Tensor | None, inputs_embeds: torch.Tensor, past_length: int):
    """Positions count real tokens only, so a left-padded row gets the positions of the same row unpadded."""
    batch, seq = inputs_embeds.shape[:2]
    if key_padding is None:
        return torch.arange(past_length, past_length + seq, device=inputs_embeds.device)[None].expand(batch, -1)
    return (key_padding.long().cumsum(-1) - 1).clamp(min=0)[:, -seq:]


def check_positions(config: AttnlabConfig, position_ids: torch.Tensor, inputs_embeds: torch.Tensor):
    if position_ids.shape != inputs_embeds.shape[:2] and position_ids.shape != (1, inputs_embeds.shape[1]):
        raise ValueError(
            f"position_ids must have shape [batch, seq_len] = {tuple(inputs_embeds.shape[:2])}, "
            f"got {tuple(position_ids.shape)}"
        )
    if int(position_ids.max()) >= config.max_position_embeddings:
        raise ValueError(
            f"position {int(position_ids.max())} is beyond max_position_embeddings={config.max_position_embeddings}; "
            "use a shorter input or a config with a larger max_position_embeddings"
        )


def check_labels(labels: torch.Tensor, hidden_states: torch.Tensor, vocab_size: int):
    if labels.shape != hidden_states.shape[:2]:
        raise ValueError(f"labels must have shape {tuple(hidden_states.shape[:2])}, got {tuple(labels.shape)}")
    real = labels[labels != -100]
    if real.numel() and (int(real.min()) < 0 or int(real.max()) >= vocab_size):
        raise ValueError(f"labels must be -100 or token ids in [0, {vocab_size})")
