"""Depth-recurrent transformer (seed 002, openai/parameter-golf PR #298): shared blocks applied in passes.

`num_unique_layers` blocks run in order `num_passes` times (3 x 3 = 9 block applications from 3 blocks' weights).
What is not shared is small: per (pass, block) an attention scale, an MLP scale and a mix of the stream with the
normalised input embedding x0 (`x <- mix_0 * x + mix_1 * x0` before the block). Around the passes sit the
submission's per-pass "techniques", each behind a config flag (`DepthRecurrentConfig` says what each one really
computes); all but the state carry are pointwise per token, so they need no cache.

Causality and the cache. Each block application attends with its own keys and values, so the cache has one slot per
application: slot `pass * num_unique_layers + block` (`config.layer_types`). The submission's state carry averaged the
previous pass's output over the whole window, future tokens included; here it is a running prefix mean, whose sum and
count are carried in the first slot of the reading pass (a `hybrid` cache layer) while decoding.

All norms are parameter-free RMS norms, as in the submission. From modeling_common: the rotary tables, head reshapes,
the causal padding mask and the input, position, label and cache-name checks; the stack itself is written here.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.utils.generic import can_return_tuple

from .configuration_depth_recurrent import DepthRecurrentConfig
from .modeling_common import (
    CACHE_FIELD,
    AttnlabForCausalLM,
    AttnlabRotaryEmbedding,
    apply_rotary,
    causal_attention,
    either_cache_name,
    output_hidden_states_of,
    prepare_stack_inputs,
    read_recurrent_states,
    register_for_auto_classes,
    split_heads,
    write_recurrent_states,
)


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), eps=eps)


class DepthRecurrentEmbedding(nn.Embedding):
    """The input embedding E[id], plus, with `input_embedding_delta`, an untied delta V[id]. The output head is tied to
    E (`weight`) alone, so V lets the input representation differ from the output one."""

    def __init__(self, config: DepthRecurrentConfig):
        super().__init__(config.vocab_size, config.hidden_size)
        self.delta = nn.Parameter(torch.zeros(config.vocab_size, config.hidden_size)) if config.input_embedding_delta \
            else None

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeddings = super().forward(input_ids)
        return embeddings if self.delta is None else embeddings + F.embedding(input_ids, self.delta)


class LowRankLinear(nn.Module):
    """x -> up(down(x)) through `rank` channels."""

    def __init__(self, in_features: int, rank: int, out_features: int):
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


class DepthRecurrentAttention(nn.Module):
    """Grouped-query softmax attention with RMS-normalised queries and keys, RoPE and a learned per-head query gain."""

    cache_kind = "full_attention"
    num_recurrent_states = 0

    def __init__(self, config: DepthRecurrentConfig, layer_idx: int | None = None):
        super().__init__()
        self.config = config  # the attention interface reads its _attn_implementation
        self.query_gain_init, self.zero_init_output = config.query_gain_init, config.zero_init_output_projections
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_kv_heads
        self.is_causal = True
        self.eps = config.rms_norm_eps
        kv_size = config.num_key_value_heads * config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        if config.key_projection_rank:
            self.k_proj = LowRankLinear(config.hidden_size, config.key_projection_rank, kv_size)
        else:
            self.k_proj = nn.Linear(config.hidden_size, kv_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, kv_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.q_gain = nn.Parameter(torch.full((config.num_attention_heads,), config.query_gain_init))

    def init_mixer_weights(self):
        init.constant_(self.q_gain, self.query_gain_init)
        if self.zero_init_output:
            init.zeros_(self.o_proj.weight)

    def forward(self, hidden_states, position_embeddings, token_mask=None, cache: Cache | None = None,
                cache_idx: int | None = None, past_length: int = 0, **kwargs):
        cos, sin = position_embeddings
        q = rms_norm(split_heads(self.q_proj(hidden_states), self.num_heads), self.eps)
        k = rms_norm(split_heads(self.k_proj(hidden_states), self.num_kv_heads), self.eps)
        v = split_heads(self.v_proj(hidden_states), self.num_kv_heads)
        q = apply_rotary(q, cos, sin).to(v.dtype) * self.q_gain.to(v.dtype)[None, :, None, None]
        k = apply_rotary(k, cos, sin).to(v.dtype)
        if cache is not None:
            k, v = cache.update(k, v, cache_idx)
        return self.o_proj(causal_attention(self, q, k, v, token_mask, past_length))


class DepthRecurrentMLP(nn.Module):
    def __init__(self, config: DepthRecurrentConfig):
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.relu(self.up_proj(x)).square())


class DepthRecurrentBlock(GradientCheckpointingLayer):
    """A shared block; the controls of the (pass, block) application it runs as come in as arguments."""

    def __init__(self, config: DepthRecurrentConfig):
        super().__init__()
        self.eps = config.rms_norm_eps
        self.self_attn = DepthRecurrentAttention(config)
        self.mlp = DepthRecurrentMLP(config)

    def forward(self, hidden_states, x0, residual_mix, attn_scale, mlp_scale, position_embeddings=None,
                token_mask=None, cache: Cache | None = None, cache_idx: int = 0, past_length: int = 0):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            cache = None  # the backward pass replays the block, which would write its cache slot a second time
        hidden_states = residual_mix[0] * hidden_states + residual_mix[1] * x0
        attn = self.self_attn(rms_norm(hidden_states, self.eps), position_embeddings, token_mask, cache, cache_idx,
                              past_length)
        hidden_states = hidden_states + attn_scale * attn
        return hidden_states + mlp_scale * self.mlp(rms_norm(hidden_states, self.eps))


@dataclass
class DepthRecurrentModelOutput(BaseModelOutputWithPast):
    """`aux_loss`: the training-only regularisers of the techniques (temporal-difference penalty, exit-gate entropy),
    already weighted; None when none applies."""

    aux_loss: torch.FloatTensor | None = None


class DepthRecurrentPreTrainedModel(PreTrainedModel):
    config_class = DepthRecurrentConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DepthRecurrentBlock"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_sdpa = True  # its attention goes through ALL_ATTENTION_FUNCTIONS
    # The state carry's running sum is rolled back by modeling_common's rollback cache layers, so assisted decoding
    # is allowed.
    _is_stateful = False

    def _init_weights(self, module):
        """The submission's initialisation: default-drawn matrices, zero output projections and second low-rank
        factors (`zero_init_output_projections`), the embedding at std 0.1 / sqrt(hidden) (its "spectral init", a
        plain Gaussian), every control at its neutral value."""
        super()._init_weights(module)
        config = self.config
        if isinstance(module, DepthRecurrentEmbedding):
            init.normal_(module.weight, mean=0.0, std=0.1 / math.sqrt(config.hidden_size))
            if module.delta is not None:
                init.zeros_(module.delta)
        elif isinstance(module, DepthRecurrentAttention):
            module.init_mixer_weights()
        elif isinstance(module, DepthRecurrentMLP) and config.zero_init_output_projections:
            init.zeros_(module.down_proj.weight)
        elif isinstance(module, AttnlabRotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq())
        elif isinstance(module, DepthRecurrentModel):
            init.ones_(module.attn_scales)
            init.ones_(module.mlp_scales)
            init.copy_(module.residual_mixes, torch.stack([torch.ones_like(module.mlp_scales),
                                                           torch.zeros_like(module.mlp_scales)], dim=1))
            if module.skip_weights is not None:
                init.ones_(module.skip_weights)
            if module.position_frequencies is not None:
                init.normal_(module.position_frequencies, mean=0.0, std=0.01)
                init.constant_(module.position_scales, 0.1)
            if module.difference_scales is not None:
                init.constant_(module.difference_scales, 0.1)
            if module.confidence_vectors is not None:
                init.zeros_(module.confidence_vectors)
            if module.exit_proj is not None:
                init.zeros_(module.exit_proj.weight)
                init.constant_(module.exit_proj.bias, 2.0)
            if module.td_proj is not None:
                init.constant_(module.td_alphas, 0.1)
            if module.carry_gates is not None:
                init.zeros_(module.carry_gates)
            for low_rank in (module.td_proj, module.carry_z, module.carry_h):
                if low_rank is not None:
                    init.normal_(low_rank.down.weight, mean=0.0, std=0.01)
                    if config.zero_init_output_projections:
                        init.zeros_(low_rank.up.weight)
        elif isinstance(module, DepthRecurrentForCausalLM):
            init.zeros_(module.training_step)

    def _get_resized_embeddings(self, old_embeddings, new_num_tokens=None, pad_to_multiple_of=None,
                                mean_resizing=True):
        """transformers resizes `weight` alone; the input delta V is a second table of the same vocabulary, so it is
        resized with it: kept rows copied, added rows zero (its initial value: a new token's input is E[id])."""
        delta = getattr(old_embeddings, "delta", None)
        embeddings = super()._get_resized_embeddings(old_embeddings, new_num_tokens, pad_to_multiple_of, mean_resizing)
        num_tokens = embeddings.weight.shape[0]
        if delta is not None and delta.shape[0] != num_tokens:
            resized = delta.new_zeros(num_tokens, delta.shape[1])
            kept = min(num_tokens, delta.shape[0])
            resized[:kept] = delta.detach()[:kept]
            embeddings.delta = nn.Parameter(resized, requires_grad=delta.requires_grad)
        return embeddings


class DepthRecurrentModel(DepthRecurrentPreTrainedModel):
    mixer_class = DepthRecurrentAttention  # the blocks' mixer, as the mixer registry (and stacks) know it

    def __init__(self, config: DepthRecurrentConfig):
        super().__init__(config)
        hidden, passes, blocks = config.hidden_size, config.num_passes, config.num_unique_layers
        applications = passes * blocks
        self.eps = config.rms_norm_eps
        self.embed_tokens = DepthRecurrentEmbedding(config)
        self.layers = nn.ModuleList(DepthRecurrentBlock(config) for _ in range(blocks))
        self.rotary_emb = AttnlabRotaryEmbedding(config.head_dim, config.rope_theta)
        # Per (pass, block) application, indexed by its cache slot: not shared across passes.
        self.attn_scales = nn.Parameter(torch.ones(applications, hidden))
        self.mlp_scales = nn.Parameter(torch.ones(applications, hidden))
        self.residual_mixes = nn.Parameter(torch.stack([torch.ones(applications, hidden),
                                                        torch.zeros(applications, hidden)], dim=1))
        # The techniques; parameters only for those that are on. Per-pass tensors that only passes 1.. read have
        # num_passes - 1 rows (row p - 1 for pass p).
        # The submission's U-Net bookkeeping: the first blocks // 2 blocks of a pass push their outputs, the next
        # ones each add one popped output (DepthRecurrentConfig.skip_connection says what that amounts to).
        self.num_encoder_blocks = blocks // 2
        self.num_skips = min(blocks // 2, blocks - blocks // 2) if config.skip_connection else 0
        self.skip_weights = nn.Parameter(torch.ones(passes, self.num_skips, hidden)) if self.num_skips else None
        self.position_frequencies = self.position_scales = None
        if config.pass_position_modulation:
            self.position_frequencies = nn.Parameter(torch.zeros(passes, hidden // 2))
            self.position_scales = nn.Parameter(torch.full((passes,), 0.1))
        self.difference_scales = nn.Parameter(torch.full((passes, hidden), 0.1)) if config.depth_difference else None
        later = passes - 1
        self.confidence_vectors = nn.Parameter(torch.zeros(later, hidden)) \
            if config.confidence_conditioning and later else None
        self.exit_proj = nn.Linear(hidden, 1) if config.exit_gate and later else None
        self.td_proj = self.td_alphas = None
        if config.temporal_difference and later:
            self.td_proj = LowRankLinear(hidden, config.technique_rank, hidden)
            self.td_alphas = nn.Parameter(torch.full((later,), 0.1))
        self.carry_z = self.carry_h = self.carry_gates = None
        if config.state_carry and later:
            self.carry_z = LowRankLinear(hidden, config.technique_rank, hidden)
            self.carry_h = LowRankLinear(hidden, config.technique_rank, hidden)
            self.carry_gates = nn.Parameter(torch.zeros(later, hidden))
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    @can_return_tuple  # return_dict=False, as an argument or in the config
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
    ) -> DepthRecurrentModelOutput:
        inputs_embeds, past_key_values, past_length, token_mask, position_ids = prepare_stack_inputs(
            self, input_ids, inputs_embeds, attention_mask, position_ids,
            either_cache_name(cache, past_key_values, self), use_cache, kwargs)
        output_hidden_states = output_hidden_states_of(self.config, output_hidden_states)

        config, blocks = self.config, self.config.num_unique_layers
        position_embeddings = self.rotary_emb(position_ids)
        hidden_states = x0 = rms_norm(inputs_embeds, self.eps)
        previous_input = x0.detach()  # the depth-difference term's x_prev at pass 0
        carried = confidence = None
        aux_losses = []
        all_hidden_states = [] if output_hidden_states else None
        for pass_idx in range(config.num_passes):
            if self.position_frequencies is not None:
                phase = position_ids[..., None].float() * self.position_frequencies[pass_idx].float()
                modulation = torch.cat([phase.cos(), phase.cos()], dim=-1).to(hidden_states.dtype)
                hidden_states = hidden_states * (1 + self.position_scales[pass_idx] * modulation)
            if carried is not None:
                hidden_states = hidden_states + self.carry_signal(carried, pass_idx, token_mask, past_key_values)
            if confidence is not None and self.confidence_vectors is not None:
                hidden_states = hidden_states + confidence[..., None] * self.confidence_vectors[pass_idx - 1]
            if self.difference_scales is not None:
                difference = (hidden_states - previous_input).abs()
                hidden_states = hidden_states + self.difference_scales[pass_idx] * difference
            pass_input = hidden_states.detach()

            skips = []
            for block_idx, block in enumerate(self.layers):
                slot = pass_idx * blocks + block_idx
                skip = block_idx - self.num_encoder_blocks
                if 0 <= skip < self.num_skips:
                    hidden_states = hidden_states + self.skip_weights[pass_idx, skip] * skips.pop()
                if all_hidden_states is not None:
                    all_hidden_states.append(hidden_states)
                hidden_states = block(hidden_states, x0, self.residual_mixes[slot], self.attn_scales[slot],
                                      self.mlp_scales[slot], position_embeddings=position_embeddings,
                                      token_mask=token_mask, cache=past_key_values, cache_idx=slot,
                                      past_length=past_length)
                if block_idx < self.num_encoder_blocks and self.num_skips:
                    skips.append(hidden_states)

            if self.td_proj is not None and pass_idx > 0:
                correction = torch.sigmoid(self.td_alphas[pass_idx - 1]) * (self.td_proj(hidden_states) - pass_input)
                hidden_states = hidden_states + correction
                if self.training:
                    aux_losses.append(config.temporal_difference_penalty * correction.float().square().mean())
            previous_input = pass_input
            if self.carry_gates is not None:
                carried = hidden_states
            if self.exit_proj is not None and pass_idx < config.num_passes - 1:
                gate = torch.sigmoid(self.exit_proj(hidden_states)).squeeze(-1)
                if self.training:
                    aux_losses.append(config.exit_gate_entropy_weight * binary_entropy(gate).mean())
                confidence = gate.detach()
                # Equal to hidden_states in value; only the gradient into earlier passes is scaled by the gate.
                hidden_states = gate[..., None] * hidden_states + (1 - gate[..., None]) * hidden_states.detach()

        hidden_states = rms_norm(hidden_states, self.eps)
        if output_hidden_states:
            all_hidden_states = (*all_hidden_states, hidden_states)
        return DepthRecurrentModelOutput(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states,
            aux_loss=torch.stack(aux_losses).sum() if aux_losses else None, **{CACHE_FIELD: past_key_values},
        )

    def carry_signal(self, previous_output, pass_idx: int, token_mask, cache: Cache | None) -> torch.Tensor:
        """The causal state carry: a gated low-rank map of the prefix mean of the previous pass's output."""
        prefix_mean = running_prefix_mean(previous_output, token_mask, cache, self.config.carry_slot(pass_idx))
        z = torch.sigmoid(self.carry_z(prefix_mean))
        h = torch.tanh(self.carry_h(prefix_mean))
        return torch.sigmoid(self.carry_gates[pass_idx - 1]) * ((1 - z) * prefix_mean + z * h)


def running_prefix_mean(x: torch.Tensor, token_mask: torch.Tensor | None, cache: Cache | None,
                        slot: int) -> torch.Tensor:
    """Position t gets the mean of x over the real (unpadded) positions <= t, earlier calls' tokens included: their
    sum and count are read from and written back to the cache slot's recurrent states 0 and 1. Sums in fp32."""
    batch, seq, _ = x.shape
    if token_mask is None:
        real = torch.ones(batch, seq, 1, device=x.device)
    else:
        real = token_mask[:, -seq:, None].float()
    sums = (x.float() * real).cumsum(dim=1)
    counts = real.cumsum(dim=1)
    carried = read_recurrent_states(cache, slot, 2)
    if carried is not None:
        sums = sums + carried[0][:, None]
        counts = counts + carried[1][:, None]
    write_recurrent_states(cache, slot, [sums[:, -1], counts[:, -1]], lambda: [sums, counts])
    return (sums / counts.clamp(min=1)).to(x.dtype)


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.float().clamp(1e-6, 1 - 1e-6)
    return -(p * p.log() + (1 - p) * (1 - p).log())


class DepthRecurrentForCausalLM(DepthRecurrentPreTrainedModel, AttnlabForCausalLM):
    """Causal LM head tied to the input embedding's E, logits soft-capped. In training mode the loss also carries the
    techniques' regularisers and the entropy bonus; in eval mode it is the cross-entropy alone."""

    base_model_class = DepthRecurrentModel
    # Training state, not weights: a training checkpoint restores these buffers (attnlab's loop registers them with
    # accelerate's checkpointing). Kept out of the state dict, which FSDP2 loads as if every entry were a sharded
    # parameter; folders saved when it was a weight still load.
    checkpointed_buffers = ("training_step",)
    _keys_to_ignore_on_load_unexpected = [r"^training_step$"]

    def __init__(self, config: DepthRecurrentConfig):
        super().__init__(config)
        # Training forwards with labels so far: the entropy bonus decays with it.
        self.register_buffer("training_step", torch.zeros((), dtype=torch.long), persistent=False)
        self.post_init()

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden_states)
        cap = self.config.final_logit_softcapping
        return logits if cap is None else cap * torch.tanh(logits / cap)

    def add_training_losses(self, loss, logits, labels, outputs) -> torch.Tensor:
        loss = loss + self.training_regularisers(logits, labels, outputs.aux_loss)
        self.training_step += 1
        return loss

    def training_regularisers(self, logits, labels, aux_loss) -> torch.Tensor:
        """aux_loss minus the entropy bonus: coefficient * mean predictive entropy over the scored positions."""
        total = aux_loss if aux_loss is not None else logits.new_zeros((), dtype=torch.float32)
        coefficient = self.config.entropy_bonus
        if self.config.entropy_bonus_decay_steps is not None:  # a tensor: no host sync, no graph break under compile
            coefficient = coefficient * torch.exp(-self.training_step / self.config.entropy_bonus_decay_steps)
        if self.config.entropy_bonus and logits.shape[1] == labels.shape[1]:
            scored = labels[:, 1:] != -100
            log_probs = logits[:, :-1].float().log_softmax(-1)
            entropy = -(log_probs.exp() * log_probs).sum(-1)
            total = total - coefficient * entropy[scored].mean()
        return total


register_for_auto_classes(DepthRecurrentConfig, DepthRecurrentModel, DepthRecurrentForCausalLM)

__all__ = ["DepthRecurrentForCausalLM", "DepthRecurrentModel", "DepthRecurrentPreTrainedModel"]
