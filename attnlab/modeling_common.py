"""Pieces every attnlab decoder member shares.

A member is a sequence mixer (its attention) plus a thin config and model file: the embedding, RMSNorm, SwiGLU
MLP, rotary embedding, pre-norm residual block, input checks, cache handling and causal LM head live here, in the
style of transformers' `modeling_llama.py`.

A mixer is an `nn.Module` built as `Mixer(config, layer_idx)` and called as
`mixer(hidden_states, position_ids=..., position_embeddings=(cos, sin) or None, token_mask=..., cache=..., cache_idx=...,
past_length=...)`; it takes the keywords it needs and ignores the rest. `token_mask` is None or a bool tensor
[batch, past + new] that is True on real tokens (the one meaning of "mask" inside attnlab); `cache` is transformers'
cache, in which the mixer owns slot `cache_idx` (given by the stack, so a layer applied twice owns two slots); and
`past_length` is how many tokens the cache held before this call.
"""

import dataclasses
import warnings

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import (
    Cache,
    DynamicCache,
    DynamicLayer,
    LinearAttentionAndFullAttentionLayer,
    LinearAttentionCacheLayerMixin,
    LinearAttentionLayer,
    StaticLayer,
)
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, slice_logits_to_keep
from transformers.models.llama.modeling_llama import repeat_kv
from transformers.utils.generic import can_return_tuple

from .configuration_common import AttnlabConfig


def fp32_region(tensor: torch.Tensor):
    """Turns autocast off, for the parts of a mixer whose numerics need fp32 (scans, exponentials, phases); the code
    inside casts its inputs with `.float()`."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def register_for_auto_classes(config_class, model_class, causal_lm_class) -> None:
    """Make `save_pretrained` copy the modeling code and write the auto_map for all three Auto classes."""
    config_class.register_for_auto_class()
    model_class.register_for_auto_class("AutoModel")
    causal_lm_class.register_for_auto_class("AutoModelForCausalLM")


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
        with fp32_region(position_ids):
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


def causal_padding_mask(token_mask: torch.Tensor | None, query_start: int, query_len: int, key_len: int,
                        device: torch.device) -> torch.Tensor:
    """Bool [batch or 1, 1, query_len, key_len]: query at absolute index query_start + i may see key j <= it.

    Padded keys are hidden, except that every query always sees itself, so the rows of padded queries stay finite
    (their outputs are never used) while real queries are unaffected (they are never padding).
    """
    query_index = torch.arange(query_start, query_start + query_len, device=device)[:, None]
    key_index = torch.arange(key_len, device=device)[None, :]
    allowed = (key_index <= query_index)[None, None]
    if token_mask is not None:
        allowed = (allowed & token_mask[:, None, None, :key_len]) | (key_index == query_index)[None, None]
    return allowed


def eager_attention_forward(module, query, key, value, attention_mask, scaling: float, dropout: float = 0.0,
                            **kwargs):
    """Llama's eager attention: `attention_mask` is additive [batch or 1, 1, query_len, key_len]."""
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def causal_attention(module, query, key, value, token_mask: torch.Tensor | None, past_length: int) -> torch.Tensor:
    """Causal softmax attention for queries at positions past_length.. over all keys so far, through the kernel
    `module.config._attn_implementation` names in transformers' `ALL_ATTENTION_FUNCTIONS` ("eager", "sdpa",
    "flex_attention", or one registered by the user). `module` has `config`, `num_key_value_groups` and
    `is_causal`. Returns [batch, query_len, heads * head_dim]."""
    implementation = module.config._attn_implementation
    batch, _, query_len, head_dim = query.shape
    if implementation == "sdpa" and token_mask is None and key.shape[2] == query_len:
        attention_mask = None  # SDPA's own causal path
    else:
        allowed = causal_padding_mask(token_mask, past_length, query_len, key.shape[2], query.device)
        if implementation == "sdpa":
            attention_mask = allowed
        else:  # eager and flex_attention add the mask to the scores; flex indexes it by batch row
            attention_mask = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device).masked_fill(
                ~allowed, torch.finfo(query.dtype).min).expand(batch, -1, -1, -1)
    attention = eager_attention_forward if implementation in (None, "eager") else \
        ALL_ATTENTION_FUNCTIONS[implementation]
    out, _ = attention(module, query, key, value, attention_mask, scaling=head_dim**-0.5, dropout=0.0)
    return out.reshape(batch, query_len, -1)


class AttnlabAttention(nn.Module):
    """Llama's causal softmax attention (RoPE, SDPA): the `"attention"` layers of a hybrid stack."""

    cache_kind = "full_attention"
    num_recurrent_states = 0

    def __init__(self, config: AttnlabConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.num_key_value_groups = 1
        self.is_causal = True
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, hidden_states, position_embeddings, token_mask=None, cache=None, cache_idx=None,
                past_length: int = 0, **kwargs):
        cos, sin = position_embeddings
        query = apply_rotary(split_heads(self.q_proj(hidden_states), self.num_heads), cos, sin).to(hidden_states.dtype)
        key = apply_rotary(split_heads(self.k_proj(hidden_states), self.num_heads), cos, sin).to(hidden_states.dtype)
        value = split_heads(self.v_proj(hidden_states), self.num_heads)
        if cache is not None:
            key, value = cache.update(key, value, cache_idx)
        return self.o_proj(causal_attention(self, query, key, value, token_mask, past_length))


# ---------------------------------------------------------------------------------------------------------------
# Recurrent states live in transformers' own linear-attention cache layers (`linear_attention` and `hybrid` slots).
# They are read from the layer directly: `Cache.get_recurrent_state` answers None until a convolution state has been
# written, which these mixers never have, so it would silently decode every token from an empty state.
#
# Rollback. Assisted decoding verifies several candidate tokens in one forward and then `crop(-n)`s the cache back
# to the accepted ones; transformers' linear-attention layers roll back convolution states only. While a cache records
# its past (`Cache.activate_past_recording()`, which assisted decoding and the draft's generate() call), the layers
# below also keep the recurrent states after every token written since the last `crop`, so `crop(-n)` restores the
# state of n tokens before, for any n up to that count. They are transformers' layer classes with that one addition,
# swapped into the slots a model owns on its first forward (`adopt_rollback_layers`); they are not registered
# under a `_layer_type`, which would replace transformers' classes for every model in the process.


class RecurrentStateRollbackMixin:
    """Per-token recurrent states kept while recording the past, so `crop(-n)` can restore any of them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.start_rollback_tracking()

    def start_rollback_tracking(self):
        # Per state index: chunks [batch, tokens, ...] of the states after each recorded token, and the states
        # before the first of them (None: the layer was empty then).
        self.state_history = {i: [] for i in range(self.number_of_states)}
        self.states_before_history = None
        self.history_started = False

    @property
    def recorded_positions(self) -> int:
        return sum(chunk.shape[1] for chunk in self.state_history[0]) if self.history_started else 0

    @property
    def is_croppable(self) -> bool:
        return self.record_past

    def write_states(self, states: list[torch.Tensor], per_token_states) -> None:
        """Store the states after the call's last token; while recording, also those after each of its tokens,
        from `per_token_states()` (the same states with a token axis at dim 1)."""
        if self.record_past:
            if per_token_states is None:
                raise ValueError(
                    "this mixer wrote its recurrent states without `per_token_states`, so they cannot be rolled back "
                    "for assisted decoding; pass write_recurrent_states(cache, cache_idx, states, per_token_states) "
                    "and set supports_state_rollback = True on the mixer class (docs/mixers.md)")
            if not self.history_started:
                initialized = all(self.is_recurrent_states_initialized[i] for i in range(len(states)))
                self.states_before_history = ([self.recurrent_states[i].clone() for i in range(len(states))]
                                              if initialized else None)
                self.history_started = True
            for state_idx, chunk in enumerate(per_token_states()):
                self.state_history[state_idx].append(chunk.detach())
        for state_idx, state in enumerate(states):
            self.update_recurrent_state(state, state_idx)

    def roll_back_recurrent_states(self, tokens_to_remove: int) -> None:
        if not self.record_past:
            raise RuntimeError(
                f"{type(self).__name__}.crop: this cache does not record its past, so its recurrent states cannot be "
                "rolled back; call cache.activate_past_recording() before the forward passes to undo"
            )
        if tokens_to_remove > 0:
            raise RuntimeError("linear attention layers are cropped with a negative count (crop(-n) removes n tokens)")
        remove = -tokens_to_remove
        recorded = self.recorded_positions
        if remove > recorded:
            raise ValueError(
                f"cannot roll back {remove} positions: the recurrent states of only the last {recorded} positions "
                "(those written since the last crop while recording the past) are kept"
            )
        if remove:
            keep = recorded - remove
            for state_idx in range(self.number_of_states):
                if not self.state_history[state_idx]:
                    continue
                if keep:
                    state = torch.cat(self.state_history[state_idx], dim=1)[:, keep - 1]
                    self.recurrent_states[state_idx].copy_(state)
                elif self.states_before_history is not None:
                    self.recurrent_states[state_idx].copy_(self.states_before_history[state_idx])
                else:
                    self.recurrent_states[state_idx].zero_()
                    self.is_recurrent_states_initialized[state_idx] = False
        self.start_rollback_tracking()

    def reorder_cache(self, beam_idx: torch.LongTensor):
        super().reorder_cache(beam_idx)
        self.start_rollback_tracking()  # history rows would no longer match the batch


class AttnlabLinearAttentionLayer(RecurrentStateRollbackMixin, LinearAttentionLayer):
    def crop(self, tokens_to_remove: int) -> None:
        self.roll_back_recurrent_states(tokens_to_remove)


class AttnlabLinearAttentionAndFullAttentionLayer(RecurrentStateRollbackMixin, LinearAttentionAndFullAttentionLayer):
    def crop(self, tokens_to_remove: int) -> None:
        self.roll_back_recurrent_states(tokens_to_remove)
        DynamicLayer.crop(self, tokens_to_remove)


ROLLBACK_LAYER_CLASSES = {
    LinearAttentionLayer: AttnlabLinearAttentionLayer,
    LinearAttentionAndFullAttentionLayer: AttnlabLinearAttentionAndFullAttentionLayer,
}


def adopt_rollback_layers(cache: Cache) -> None:
    """Give every plain linear-attention slot of `cache` the rollback layer of the same kind, keeping its contents."""
    for idx, layer in enumerate(cache.layers):
        rollback_class = ROLLBACK_LAYER_CLASSES.get(type(layer))
        if rollback_class is not None:
            adopted = rollback_class.__new__(rollback_class)
            adopted.__dict__.update(layer.__dict__)
            adopted.start_rollback_tracking()
            cache.layers[idx] = adopted


def read_recurrent_states(cache: Cache | None, cache_idx: int, count: int) -> list[torch.Tensor] | None:
    """The `count` states of slot `cache_idx`, or None before the first token (or without a cache)."""
    if cache is None:
        return None
    layer = cache.layers[cache_idx]
    if not isinstance(layer, LinearAttentionCacheLayerMixin):
        raise ValueError(f"cache slot {cache_idx} is a {type(layer).__name__}, which cannot hold recurrent states; "
                         "decode with the DynamicCache(config=model.config) that generate() builds")
    if not all(layer.is_recurrent_states_initialized[i] for i in range(count)):
        return None
    return [layer.recurrent_states[i] for i in range(count)]


def write_recurrent_states(cache: Cache | None, cache_idx: int, states: list[torch.Tensor],
                           per_token_states=None) -> None:
    """Store the states after the call's last token in slot `cache_idx`. `per_token_states` is a function returning
    the states after each of the call's tokens (token axis at dim 1); it is called only while the cache records its
    past, to make `crop(-n)` possible."""
    if cache is None:
        return
    layer = cache.layers[cache_idx]
    if isinstance(layer, RecurrentStateRollbackMixin):
        layer.write_states(states, per_token_states)
        return
    if getattr(layer, "record_past", False):
        raise ValueError(f"cache slot {cache_idx} is a {type(layer).__name__}, which cannot roll back recurrent "
                         "states; record the past in the DynamicCache(config=model.config) that generate() builds")
    for state_idx, state in enumerate(states):
        layer.update_recurrent_state(state, state_idx)


def record_length(cache: Cache, num_tokens: int, batch: int, device: torch.device) -> None:
    """One placeholder key per token in slot 0, so that a cache of recurrent states reports its length
    (`AttnlabConfig.derived_layer_types` says why)."""
    placeholder = torch.zeros(batch, 1, num_tokens, 1, dtype=torch.bool, device=device)
    cache.update(placeholder, placeholder, 0)


def check_cache(cache: Cache, config) -> None:
    """A cache a model can decode with: dynamic, and (if any slot keeps recurrent states) built from its config."""
    if any(isinstance(layer, StaticLayer) for layer in cache.layers):
        raise ValueError(
            "attnlab members decode with DynamicCache only: a StaticCache (cache_implementation='static') returns "
            "keys padded to its maximum length and needs the 4D masks of transformers' own attention code, which "
            "these mixers do not take; generate without cache_implementation"
        )
    if len(cache.layers) < len(config.layer_types) and set(config.layer_types) != {"full_attention"}:
        raise ValueError(f"the cache has {len(cache.layers)} layers for {len(config.layer_types)} slots; build it "
                         "as DynamicCache(config=model.config), as generate() does")


def prepare_stack_inputs(model, input_ids, inputs_embeds, attention_mask, position_ids, cache, use_cache, kwargs):
    """What every attnlab stack does first: check the inputs, embed them, take the cache (transformers'
    `DynamicCache(config)` when none is given, none when not caching), and derive the token mask and positions.
    Returns (inputs_embeds, cache, past_length, token_mask, position_ids)."""
    if kwargs.get("output_attentions"):
        raise ValueError(f"{type(model).__name__} does not return attention weights (output_attentions=True)")
    use_cache = model.config.use_cache if use_cache is None else use_cache
    if model.training and torch.is_grad_enabled() and any(layer.gradient_checkpointing for layer in model.layers):
        use_cache = False  # the backward pass replays each layer, which would write its cache slot twice
    check_inputs(model.config, input_ids, inputs_embeds)
    if inputs_embeds is None:
        inputs_embeds = model.embed_tokens(input_ids)
    if not use_cache:
        cache = None
    elif cache is None:
        cache = DynamicCache(config=model.config)
    else:
        check_cache(cache, model.config)
    if cache is not None:
        adopt_rollback_layers(cache)
    past_length = cache.get_seq_length() if cache is not None else 0
    token_mask = tokens_from_attention_mask(attention_mask, inputs_embeds, past_length)
    if position_ids is None:
        position_ids = positions_from_mask(token_mask, inputs_embeds, past_length)
    check_positions(model.config, position_ids, inputs_embeds)
    return inputs_embeds, cache, past_length, token_mask, position_ids


class AttnlabDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm residual block around a pluggable sequence mixer and feed-forward."""

    def __init__(self, config: AttnlabConfig, layer_idx: int, mixer_class: type, mlp_class: type, mixer_config=None):
        """`mixer_config` (default: `config`) is what the mixer is built from: a stack gives each mixer its options."""
        super().__init__()
        self.input_layernorm = AttnlabRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = mixer_class(config if mixer_config is None else mixer_config, layer_idx)
        self.post_attention_layernorm = AttnlabRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = mlp_class(config)

    def forward(self, hidden_states, cache_idx: int, **mixer_kwargs):
        """`cache_idx` is the cache slot of this application of the layer (a layer run twice has two)."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            # The backward pass replays the layer, which would write its cache slot a second time. transformers
            # clears the cache for us only under the argument name of its own version (5.23 and 5.24 differ).
            mixer_kwargs["cache"] = None
        hidden_states = hidden_states + self.self_attn(
            self.input_layernorm(hidden_states), cache_idx=cache_idx, **mixer_kwargs
        )
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class AttnlabPreTrainedModel(PreTrainedModel):
    config_class = AttnlabConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["AttnlabDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    # The softmax-attention layers (the `attention` mixer, evolving's) go through ALL_ATTENTION_FUNCTIONS;
    # triple_product, whose own scores do not, turns this off.
    _supports_sdpa = True

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, AttnlabRotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq())
        elif hasattr(module, "init_mixer_weights"):  # a mixer's own parameters (mixers.py: the mixer interface)
            module.init_mixer_weights()


class AttnlabModel(AttnlabPreTrainedModel):
    """Embedding -> decoder layers -> final norm. Members set `mixer_class` (and optionally `mlp_class`); the config's
    `mixer_types` picks it or `AttnlabAttention` for each layer."""

    mixer_class: type = None
    mlp_class: type = AttnlabSwiGLUMLP
    uses_rotary: bool = True

    def __init__(self, config: AttnlabConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(self.build_layer(i) for i in range(self.num_distinct_layers))
        self.norm = AttnlabRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        needs_rotary = self.uses_rotary or "attention" in config.mixer_types
        self.rotary_emb = AttnlabRotaryEmbedding(config.head_dim, config.rope_theta) if needs_rotary else None
        self.post_init()

    def build_layer(self, layer_idx: int) -> AttnlabDecoderLayer:
        """Layer `layer_idx` with the mixer `mixer_types` names: the member's own or Llama attention."""
        mixer_class = AttnlabAttention if self.config.mixer_types[layer_idx] == "attention" else self.mixer_class
        return AttnlabDecoderLayer(self.config, layer_idx, mixer_class, self.mlp_class)

    @property
    def num_distinct_layers(self) -> int:
        """Layers with their own weights; members that apply their stack several times have fewer than
        `num_hidden_layers`, which counts applications."""
        return self.config.num_hidden_layers

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    @can_return_tuple  # return_dict=False, as an argument or in the config: the output's to_tuple()
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
        inputs_embeds, cache, past_length, token_mask, position_ids = prepare_stack_inputs(
            self, input_ids, inputs_embeds, attention_mask, position_ids,
            either_cache_name(cache, past_key_values, self), use_cache, kwargs)
        output_hidden_states = output_hidden_states_of(self.config, output_hidden_states)
        batch, length = inputs_embeds.shape[:2]
        if cache is not None and self.config.records_length:
            record_length(cache, length, batch, inputs_embeds.device)

        all_hidden_states = [] if output_hidden_states else None
        hidden_states = self.run_layers(
            inputs_embeds,
            all_hidden_states,
            position_ids=position_ids,
            position_embeddings=self.rotary_emb(position_ids) if self.rotary_emb is not None else None,
            token_mask=token_mask,
            cache=cache,
            past_length=past_length,
        )
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states = (*all_hidden_states, hidden_states)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states, **{CACHE_FIELD: cache}
        )

    def run_layers(self, hidden_states, all_hidden_states: list | None, **layer_kwargs) -> torch.Tensor:
        """Every layer application in order, each with its own cache slot, appending each application's input to
        `all_hidden_states` when it is a list. Members that add something between applications override this."""
        for cache_idx in range(self.config.num_hidden_layers):
            if all_hidden_states is not None:
                all_hidden_states.append(hidden_states)
            hidden_states = self.layers[cache_idx % len(self.layers)](hidden_states, cache_idx, **layer_kwargs)
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

    @can_return_tuple
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
        outputs = self.model(
            return_dict=True,
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=either_cache_name(cache, past_key_values, self),
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
            if self.training:
                loss = self.add_training_losses(loss, logits, labels, outputs)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)}
        )

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Final hidden states -> logits. Members with extra layers on the head override this."""
        return self.lm_head(hidden_states)

    def add_training_losses(self, loss, logits, labels, outputs) -> torch.Tensor:
        """The training loss from the cross-entropy. Members with regularisers (evaluated only in training mode, so
        held-out losses stay comparable) override this."""
        return loss


# ---------------------------------------------------------------------------------------------------------------
# transformers 5.24 renamed `past_key_values` to `cache` in forward arguments, generate() and model outputs; 5.23
# knows only the old name. Members accept both and return the cache under the name this version's outputs declare,
# so a saved folder works as remote code on either side of the rename.

CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(BaseModelOutputWithPast)} else "past_key_values"


def either_cache_name(cache: Cache | None, past_key_values: Cache | None, model=None) -> Cache | None:
    """The cache under either name; the old one warns where this transformers has the new one, as its own models
    do (`deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")`)."""
    if cache is not None and past_key_values is not None:
        raise ValueError("Pass the cache as `cache` or as `past_key_values`, not both")
    if past_key_values is not None and CACHE_FIELD == "cache" and not torch.compiler.is_compiling():
        where = f"{type(model).__name__}.forward" if model is not None else "forward"
        warnings.warn(f"`past_key_values` is deprecated and will be removed in version 5.40.0 for `{where}`. Use "
                      "`cache` instead.", FutureWarning, stacklevel=3)
    return cache if cache is not None else past_key_values


def output_hidden_states_of(config, output_hidden_states: bool | None) -> bool:
    """The argument, else the config's `output_hidden_states` (as transformers' own models read it)."""
    return bool(getattr(config, "output_hidden_states", False) if output_hidden_states is None else output_hidden_states)


# ---------------------------------------------------------------------------------------------------------------
# Input handling: clear errors instead of IndexErrors deep inside an embedding, positions that survive left padding.
# Checks that read tensor values run eagerly on CPU, where reading a value is free. On an accelerator, or inside
# torch.compile, they become asynchronous asserts with the same message: no host sync per decoding step, no graph break.


def check_values(condition_fn, tensor: torch.Tensor, message_fn) -> None:
    """Raise ValueError(message_fn()) unless condition_fn(tensor) holds for every value."""
    if torch.compiler.is_compiling() or tensor.device.type != "cpu":
        torch._assert_async(condition_fn(tensor).all(), message_fn())
    elif not bool(condition_fn(tensor).all()):
        raise ValueError(message_fn())


def check_inputs(config: AttnlabConfig, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None):
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of input_ids or inputs_embeds")
    if input_ids is not None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.long, torch.int32, torch.int16):
            raise TypeError(f"input_ids must be an integer torch.Tensor, got {_describe(input_ids)}")
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must have shape [batch, seq_len] with seq_len >= 1, got {tuple(input_ids.shape)}")
        check_values(lambda ids: (ids >= 0) & (ids < config.vocab_size), input_ids, lambda: (
            f"input_ids contain a token id outside the vocabulary [0, {config.vocab_size}) "
            f"(min {_value(input_ids.min())}, max {_value(input_ids.max())}); does the tokenizer match the model?"
        ))
    else:
        if not isinstance(inputs_embeds, torch.Tensor) or not inputs_embeds.is_floating_point():
            raise TypeError(f"inputs_embeds must be a floating-point torch.Tensor, got {_describe(inputs_embeds)}")
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.hidden_size or inputs_embeds.shape[1] == 0:
            raise ValueError(
                f"inputs_embeds must have shape [batch, seq_len, {config.hidden_size}], got {tuple(inputs_embeds.shape)}"
            )


def _describe(value) -> str:
    return f"{type(value).__name__} of dtype {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__


def _value(scalar: torch.Tensor) -> str:
    """A tensor's value for an error message, only where reading it costs nothing."""
    return str(int(scalar)) if scalar.device.type == "cpu" and not torch.compiler.is_compiling() else "?"


def tokens_from_attention_mask(attention_mask: torch.Tensor | None, inputs_embeds: torch.Tensor, past_length: int):
    """The 2D 0/1 `attention_mask` as the token mask: bool [batch, past + new], True on real tokens; None when every
    token is real (known for free only on CPU: elsewhere the mask is kept, which gives the same result)."""
    if attention_mask is None:
        return None
    batch, seq = inputs_embeds.shape[:2]
    if attention_mask.dim() != 2 or attention_mask.shape != (batch, past_length + seq):
        raise ValueError(
            f"attention_mask must be a 2D [batch, past + new] = [{batch}, {past_length + seq}] tensor of 0/1, "
            f"got shape {tuple(attention_mask.shape)}"
        )
    mask = attention_mask.to(device=inputs_embeds.device, dtype=torch.bool)
    check_values(lambda m: m.any(-1), mask, lambda: "attention_mask has a row of zeros: every sequence needs at "
                                                   "least one real token (1 in the mask)")
    if mask.device.type == "cpu" and not torch.compiler.is_compiling() and bool(mask.all()):
        return None
    return mask


def positions_from_mask(token_mask: torch.Tensor | None, inputs_embeds: torch.Tensor, past_length: int):
    """Positions count real tokens only, so a left-padded row gets the positions of the same row unpadded."""
    batch, seq = inputs_embeds.shape[:2]
    if token_mask is None:
        return torch.arange(past_length, past_length + seq, device=inputs_embeds.device)[None].expand(batch, -1)
    return (token_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -seq:]


def check_positions(config: AttnlabConfig, position_ids: torch.Tensor, inputs_embeds: torch.Tensor):
    if position_ids.shape != inputs_embeds.shape[:2] and position_ids.shape != (1, inputs_embeds.shape[1]):
        raise ValueError(
            f"position_ids must have shape [batch, seq_len] = {tuple(inputs_embeds.shape[:2])}, "
            f"got {tuple(position_ids.shape)}"
        )
    check_values(lambda p: p < config.max_position_embeddings, position_ids, lambda: (
        f"position {_value(position_ids.max())} is beyond max_position_embeddings={config.max_position_embeddings}; "
        "use a shorter input or a config with a larger max_position_embeddings"
    ))


def check_labels(labels: torch.Tensor, hidden_states: torch.Tensor, vocab_size: int):
    if labels.shape != hidden_states.shape[:2]:
        raise ValueError(f"labels must have shape {tuple(hidden_states.shape[:2])}, got {tuple(labels.shape)}")
    check_values(lambda y: (y == -100) | ((y >= 0) & (y < vocab_size)), labels,
                 lambda: f"labels must be -100 or token ids in [0, {vocab_size})")
