"""Seed 002, the forward pass of openai/parameter-golf PR #298 ("Ultimate recurrent: 21 techniques"), as submitted.

The submitted train_gpt.py is not available in this repository; this module follows its forward pass line by line
as transcribed in the seed 002 spec (shared/docs/seed-depth-recurrent-spec.md, section 2.1 and techniques 9-20),
with the submission's parameter names, initial values and USE_* switches, so that it can serve as the reference that
attnlab's depth_recurrent member is checked against. It keeps the submission's "selective state carry": the mean of the
previous pass's output over ALL positions of the window is added to every position, so earlier logits depend on
later tokens (tests/test_depth_recurrent.py shows it; attnlab's member uses a causal prefix mean instead).

Only the evaluation forward is kept (logits; the submission's forward returned a scalar loss). Not kept: the dead
branches (eigenspace routing, compression loss, linear attention, LoRA TTT), the training losses and the optimizer.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def rms(x):
    return F.rms_norm(x, (x.size(-1),))


class Rotary(nn.Module):
    def __init__(self, dim, base=500000.0):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)), persistent=False)

    def forward(self, x):  # x [B, H, T, D]; the submission's half-split rotation
        t = torch.arange(x.size(2), device=x.device).float()
        freqs = torch.outer(t, self.inv_freq)
        cos, sin = freqs.cos()[None, None], freqs.sin()[None, None]
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos + x2 * sin, -x1 * sin + x2 * cos), dim=-1)


class Attention(nn.Module):
    def __init__(self, dim, num_heads, num_kv_heads, k_rank, rope_base, qk_gain_init):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, dim // num_heads
        kv_dim = num_kv_heads * self.head_dim
        self.c_q = nn.Linear(dim, dim, bias=False)
        self.c_k_a = nn.Linear(dim, k_rank, bias=False)
        self.c_k_b = nn.Linear(k_rank, kv_dim, bias=False)
        self.c_v = nn.Linear(dim, kv_dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.proj.weight)
        self.q_gain = nn.Parameter(torch.full((num_heads,), qk_gain_init))
        self.rotary = Rotary(self.head_dim, rope_base)

    def forward(self, x):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.c_k_b(self.c_k_a(x)).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.c_v(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = rms(q), rms(k)
        q, k = self.rotary(q), self.rotary(k)
        q = q * self.q_gain[None, :, None, None]
        repeat = self.num_heads // self.num_kv_heads
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class ReluSquared(nn.Module):
    def forward(self, x):
        return F.relu(x).square()


class Block(nn.Module):
    def __init__(self, dim, num_heads, num_kv_heads, mlp_mult, k_rank, rope_base, qk_gain_init):
        super().__init__()
        self.attn = Attention(dim, num_heads, num_kv_heads, k_rank, rope_base, qk_gain_init)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_mult * dim, bias=False), ReluSquared(),
                                 nn.Linear(mlp_mult * dim, dim, bias=False))
        nn.init.zeros_(self.mlp[2].weight)

    def forward(self, x, x0, mix, attn_scale, mlp_scale):
        x = mix[0] * x + mix[1] * x0
        x = x + attn_scale * self.attn(rms(x))
        return x + mlp_scale * self.mlp(rms(x))


class SeedDepthRecurrentGPT(nn.Module):
    def __init__(self, vocab_size=1024, dim=768, num_heads=8, num_kv_heads=2, mlp_mult=2, num_unique_layers=3,
                 num_passes=3, k_rank=32, lowrank=16, rope_base=500000.0, qk_gain_init=1.5, logit_softcap=30.0,
                 use_resonant=True, use_selective_state=True, use_confidence=True, use_grad_memory=True,
                 use_td=True, use_adaptive_depth=True, use_unet=True):
        super().__init__()
        L, P, S = num_unique_layers, num_passes, num_unique_layers * num_passes
        self.L, self.P, self.logit_softcap = L, P, logit_softcap
        self.use_resonant, self.use_selective_state = use_resonant, use_selective_state
        self.use_confidence, self.use_grad_memory, self.use_td = use_confidence, use_grad_memory, use_td
        self.use_adaptive_depth, self.use_unet = use_adaptive_depth, use_unet
        self.tok_emb = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.tok_emb.weight, std=0.1 / math.sqrt(dim))
        self.value_embeds = nn.Embedding(vocab_size, dim)
        nn.init.zeros_(self.value_embeds.weight)
        self.blocks = nn.ModuleList(Block(dim, num_heads, num_kv_heads, mlp_mult, k_rank, rope_base, qk_gain_init)
                                    for _ in range(L))
        self.resid_mixes = nn.Parameter(torch.stack([torch.ones(S, dim), torch.zeros(S, dim)], dim=1))
        self.attn_scales = nn.Parameter(torch.ones(S, dim))
        self.mlp_scales = nn.Parameter(torch.ones(S, dim))
        self.num_enc = L // 2
        self.num_skip = min(self.num_enc, L - self.num_enc)
        self.skip_weights = nn.Parameter(torch.ones(P, self.num_skip, dim))
        self.confidence_proj = nn.Parameter(torch.zeros(P, dim))
        self.grad_memory_scale = nn.Parameter(torch.full((P, dim), 0.1))
        self.state_gate = nn.Parameter(torch.zeros(P, dim))
        self.resonant_freq = nn.Parameter(torch.randn(P, dim // 2) * 0.01)
        self.resonant_scale = nn.Parameter(torch.full((P,), 0.1))
        self.exit_proj = nn.Linear(dim, 1)
        nn.init.zeros_(self.exit_proj.weight)
        nn.init.constant_(self.exit_proj.bias, 2.0)
        self.td_proj_a = nn.Linear(dim, lowrank, bias=False)
        self.td_proj_b = nn.Linear(lowrank, dim, bias=False)
        self.td_alpha_param = nn.Parameter(torch.full((P,), 0.1))
        self.gru_z_a = nn.Linear(dim, lowrank, bias=False)
        self.gru_z_b = nn.Linear(lowrank, dim, bias=False)
        self.gru_h_a = nn.Linear(dim, lowrank, bias=False)
        self.gru_h_b = nn.Linear(lowrank, dim, bias=False)
        for a, b in ((self.td_proj_a, self.td_proj_b), (self.gru_z_a, self.gru_z_b), (self.gru_h_a, self.gru_h_b)):
            nn.init.normal_(a.weight, std=0.01)
            nn.init.zeros_(b.weight)

    def forward(self, input_ids):
        x = rms(self.tok_emb(input_ids) + self.value_embeds(input_ids))
        x0 = x
        x_prev = x.detach()
        seq_state, conf = None, None
        T = x.size(1)
        t = torch.arange(T, device=x.device).float()
        for p in range(self.P):
            if self.use_resonant:
                phase = t[:, None] * self.resonant_freq[p][None, :]
                x = x * (1 + self.resonant_scale[p] * torch.cat([phase.cos(), phase.cos()], dim=-1))
            if self.use_selective_state and p > 0 and seq_state is not None:
                m = seq_state
                z = torch.sigmoid(self.gru_z_b(self.gru_z_a(m)))
                h = torch.tanh(self.gru_h_b(self.gru_h_a(m)))
                x = x + torch.sigmoid(self.state_gate[p]) * ((1 - z) * m + z * h)[:, None, :]
            if self.use_confidence and p > 0 and conf is not None:
                x = x + conf[..., None] * self.confidence_proj[p]
            if self.use_grad_memory:
                x = x + self.grad_memory_scale[p] * (x - x_prev).abs()
            x_in = x.detach()
            skips = []
            for i, block in enumerate(self.blocks):
                s = p * self.L + i
                if self.use_unet and self.num_enc <= i < self.num_enc + self.num_skip:
                    x = x + self.skip_weights[p, i - self.num_enc] * skips.pop()
                x = block(x, x0, self.resid_mixes[s], self.attn_scales[s], self.mlp_scales[s])
                if self.use_unet and i < self.num_enc:
                    skips.append(x)
            if self.use_td and p > 0:
                a = torch.sigmoid(self.td_alpha_param[p])
                x = x + a * (self.td_proj_b(self.td_proj_a(x)) - x_in)
            x_prev = x_in
            seq_state = x.mean(dim=1)  # over ALL positions of the window: the future leaks into every position
            if self.use_adaptive_depth and p < self.P - 1:
                g = torch.sigmoid(self.exit_proj(x)).squeeze(-1)
                conf = g.detach()
                x = x * g[..., None] + x.detach() * (1 - g[..., None])
        x = rms(x)
        logits = F.linear(x, self.tok_emb.weight)
        return self.logit_softcap * torch.tanh(logits / self.logit_softcap)
