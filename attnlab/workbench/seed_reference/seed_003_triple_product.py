"""Seed 003, literal: the RoPE and TripleProductAttention modules of the falseywinchnet gist (Dec 2025).

Kept verbatim (minus the plotting imports and the training script that the gist never defined) as the reference
that attnlab's triple_product attention must match. Note its Sarrus expansion of the determinant and its
max_len=128 RoPE table: attnlab replaces both (projection form, positions from position_ids).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class RoPE(nn.Module):
    def __init__(self, dim, max_len=4096):
        super().__init__()
        self.dim = dim
        inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
        t = torch.arange(max_len).float()
        freqs = torch.einsum('i,j->ij', t, inv_freq)
        self.register_buffer('cos', freqs.cos())
        self.register_buffer('sin', freqs.sin())

    def forward(self, x):
        seq_len = x.shape[2]
        cos = self.cos[:seq_len, :].unsqueeze(0).unsqueeze(0)
        sin = self.sin[:seq_len, :].unsqueeze(0).unsqueeze(0)
        x1 = x[..., 0::2]
        x2 = x[..., 1::2]
        return torch.cat((-x2 * sin + x1 * cos, x1 * sin + x2 * cos), dim=-1)


class TripleProductAttention(nn.Module):
    def __init__(self, d_model, n_head, max_len=128):
        super().__init__()
        assert d_model % n_head == 0
        self.d_head = d_model // n_head
        self.n_head = n_head
        self.W_q = nn.Linear(d_model, d_model, bias=False)
        self.W_k = nn.Linear(d_model, d_model, bias=False)
        self.W_r = nn.Linear(d_model, d_model, bias=False)
        self.W_v = nn.Linear(d_model, d_model, bias=False)
        self.W_o = nn.Linear(d_model, d_model, bias=False)
        self.rope = RoPE(self.d_head, max_len)
        self.scale = 1.0 / (self.d_head ** 1.5)

    def forward(self, x):
        B, T, C = x.shape
        q = self.W_q(x).view(B, T, self.n_head, self.d_head).transpose(1, 2)
        k = self.W_k(x).view(B, T, self.n_head, self.d_head).transpose(1, 2)
        r = self.W_r(x).view(B, T, self.n_head, self.d_head).transpose(1, 2)
        v = self.W_v(x).view(B, T, self.n_head, self.d_head).transpose(1, 2)
        q = self.rope(q)
        k = self.rope(k)
        r = self.rope(r)
        d_qq = (q * q).sum(dim=-1, keepdim=True)
        d_rr = (r * r).sum(dim=-1, keepdim=True)
        d_rq = (r * q).sum(dim=-1, keepdim=True)
        d_kk = (k * k).sum(dim=-1, keepdim=True).transpose(-2, -1)
        d_qk = q @ k.transpose(-2, -1)
        d_rk = r @ k.transpose(-2, -1)
        term1 = d_qq * d_kk * d_rr
        term2 = 2.0 * d_qk * d_rk * d_rq
        term3 = - (d_qq * (d_rk ** 2))
        term4 = - (d_kk * (d_rq ** 2))
        term5 = - (d_rr * (d_qk ** 2))
        gram_det = term1 + term2 + term3 + term4 + term5
        scores = -gram_det * self.scale
        mask = torch.tril(torch.ones(T, T, device=x.device)).view(1, 1, T, T)
        scores = scores.masked_fill(mask == 0, float('-inf'))
        attn = F.softmax(scores, dim=-1)
        y = attn @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.W_o(y)
