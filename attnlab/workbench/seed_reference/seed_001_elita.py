"""Seed 001, literal: ELiTA's Attention2 and FeedForward2 (acosharma/elita-transformer, TF2) in PyTorch.

Written from the seed's equations and the spec's reading of its code (../shared/docs/seed-variants-spec.md, 1.2):
scalar keys k1, k2, k3; sin position terms with a shared c on the grid n = linspace(0, t, N); every logit clipped
to [-20, 20] and exponentiated; plain inclusive cumulative sums; heads summed by the output einsum. This is the
reference attnlab's elita must match where the clip is inactive. Called with t = (N - 1) * step it puts token i at
n_i = i * step, the constant step attnlab uses instead of the seed's i / (N - 1).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


def glorot_uniform(shape, fan_in, fan_out):
    limit = (6 / (fan_in + fan_out)) ** 0.5
    return nn.Parameter(torch.empty(shape).uniform_(-limit, limit))


class Attention2(nn.Module):
    def __init__(self, width, heads, att_w, pos_w):
        super().__init__()
        self.k1, self.k2, self.k3 = (nn.Parameter(torch.empty(heads, width).uniform_(-0.05, 0.05)) for _ in range(3))
        self.a1, self.a2, self.b1, self.b2, self.c = (
            nn.Parameter(torch.empty(heads, pos_w, 1).uniform_(-0.05, 0.05)) for _ in range(5))
        self.value_weight = glorot_uniform((heads, width, att_w), width * heads, att_w * heads)
        self.output_weight = glorot_uniform((heads, width, att_w), width * heads, att_w * heads)

    def forward(self, x, t=1.0):
        n = torch.linspace(0.0, t, x.shape[-2])
        p1 = (torch.sin(self.a1 * n + self.b1) * self.c).sum(-2)  # [H, N]
        p2 = (torch.sin(self.a2 * n + self.b2) * self.c).sum(-2)
        cross = torch.einsum("bnw,hw->bhn", x, self.k1) + p1
        diag = torch.einsum("bnw,hw->bhn", x, self.k2)
        extra = torch.einsum("bnw,hw->bhn", x, self.k3) + p2
        values = torch.einsum("bnw,hwa->bhna", x, self.value_weight)
        cross = torch.exp(torch.clamp(cross, -20.0, 20.0))[..., None]
        diag = torch.exp(torch.clamp(diag, -20.0, 20.0))[..., None]
        extra = torch.exp(torch.clamp(extra, -20.0, 20.0))[..., None]
        output = (torch.cumsum(cross * values, dim=2) * extra + values * diag) / (
            torch.cumsum(cross, dim=2) * extra + diag)
        return torch.einsum("bhna,hwa->bnw", output, self.output_weight)


class FeedForward2(nn.Module):
    def __init__(self, width, linear_factor):
        super().__init__()
        self.w1 = glorot_uniform((width, width), width, width)
        self.w2 = glorot_uniform((width, linear_factor), width, linear_factor)
        self.w3 = glorot_uniform((width, linear_factor, width), linear_factor * width, width * width)
        self.b1, self.b2, self.b3 = (nn.Parameter(torch.zeros(size)) for size in (width, linear_factor, width))

    def forward(self, x):
        a = F.silu(x @ self.w1 + self.b1)
        b = F.silu(x @ self.w2 + self.b2)
        return torch.einsum("bni,bnj,ijw->bnw", a, b, self.w3) + self.b3
