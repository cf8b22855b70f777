"""Muon for the block matrices and AdamW for the rest, as one optimizer: the recipe of parameter-golf (seed 002).

`torch.optim.Muon` orthogonalises each matrix's momentum (5 Newton-Schulz steps) and scales it by
sqrt(max(1, rows / cols)), with decoupled weight decay; it only takes 2-D tensors, so everything else goes to AdamW.
Which tensor goes where, for any model (a member or Llama):

- Muon: the weights of `nn.Linear` layers (attention and MLP projections, low-rank factors, gates), except the
  output head: learning rate `lr`, momentum warmed up from 0.85 to 0.95 over the first 500/6956 of the steps (the
  seed: 500 of its 6956), decoupled weight decay `weight_decay` (the seed: 0.01).
- AdamW without weight decay, betas (0.9, 0.95), eps 1e-8, as the seed's Adam: embedding tables at 1.25 * lr (the
  seed: 0.05 vs Muon's 0.04), an untied output head at 0.2 * lr (0.008), everything else (norm gains, biases, the
  per-pass and per-channel controls, tensors that are not 2-D) at lr (0.04).

So `lr = 0.04, weight_decay = 0.01` is the seed's setting. One difference: torch's Muon keeps its momentum as an
exponential average (lerp) where the seed summed it (buf = 0.95 buf + g); the orthogonalisation divides the scale out.
The learning-rate schedule is `warmup_then_warmdown`: linear warmup, constant, then a linear warm-down to 0 over the
last 2000/6956 of the steps (the seed's 2000 warm-down iterations, which it timed by the wall clock).
"""

import torch
from torch import nn

ADAM_BETAS = (0.9, 0.95)
ADAM_EPS = 1e-8
EMBEDDING_LR_RATIO = 0.05 / 0.04
HEAD_LR_RATIO = 0.008 / 0.04
MOMENTUM_START, MOMENTUM_END = 0.85, 0.95
SEED_STEPS, SEED_MOMENTUM_WARMUP_STEPS, SEED_WARMDOWN_STEPS = 6956, 500, 2000


def split_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The trainable parameters by role: 'matrices' (Muon), 'embeddings', 'head' and 'other' (AdamW)."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head = {id(output.weight)} if output is not None else set()
    embeddings = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}
    matrices = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear) and m.weight.dim() == 2}
    groups = dict(matrices=[], embeddings=[], head=[], other=[])
    for p in model.parameters():  # each tensor once, also when tied
        if not p.requires_grad:
            continue
        if id(p) in embeddings:  # a tied head is the embedding
            groups["embeddings"].append(p)
        elif id(p) in head:
            groups["head"].append(p)
        elif id(p) in matrices:
            groups["matrices"].append(p)
        else:
            groups["other"].append(p)
    return groups


class MuonWithAdamW(torch.optim.Optimizer):
    """torch.optim.Muon and torch.optim.AdamW stepped together, seen as one optimizer by accelerate, the LR scheduler
    (`param_groups` is both optimizers' groups: Muon's first) and checkpoints (`state_dict` holds both and the step
    count that drives the momentum warmup)."""

    def __init__(self, model: nn.Module, lr: float, weight_decay: float, momentum_warmup_steps: int):
        # Optimizer.__init__ is not called: the parameters, groups and state belong to the two inner optimizers.
        groups = split_parameters(model)
        if not groups["matrices"]:
            raise ValueError("--optimizer muon: the model has no nn.Linear weights for Muon to train")
        self.muon = torch.optim.Muon(groups["matrices"], lr=lr, weight_decay=weight_decay, momentum=MOMENTUM_START,
                                     adjust_lr_fn="original")
        adam_groups = [dict(params=groups["embeddings"], lr=lr * EMBEDDING_LR_RATIO),
                       dict(params=groups["head"], lr=lr * HEAD_LR_RATIO),
                       dict(params=groups["other"], lr=lr)]
        self.adamw = torch.optim.AdamW([g for g in adam_groups if g["params"]], betas=ADAM_BETAS, eps=ADAM_EPS,
                                       weight_decay=0.0)
        self.defaults = dict(lr=lr)
        self.momentum_warmup_steps = momentum_warmup_steps
        self.steps_taken = 0

    @property
    def param_groups(self) -> list[dict]:
        return self.muon.param_groups + self.adamw.param_groups

    @property
    def state(self) -> dict:
        return {**self.muon.state, **self.adamw.state}

    def momentum(self) -> float:
        progress = min(1.0, self.steps_taken / self.momentum_warmup_steps) if self.momentum_warmup_steps else 1.0
        return MOMENTUM_START + (MOMENTUM_END - MOMENTUM_START) * progress

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("MuonWithAdamW does not take a closure")
        for group in self.muon.param_groups:
            group["momentum"] = self.momentum()
        self.muon.step()
        self.adamw.step()
        self.steps_taken += 1

    def zero_grad(self, set_to_none: bool = True):
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def state_dict(self) -> dict:
        return dict(muon=self.muon.state_dict(), adamw=self.adamw.state_dict(), steps_taken=self.steps_taken)

    def load_state_dict(self, state_dict: dict):
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self.steps_taken = state_dict["steps_taken"]

    def __repr__(self) -> str:
        return f"MuonWithAdamW(muon={self.muon!r}, adamw={self.adamw!r})"


def warmup_then_warmdown(step: int, warmup_steps: int, total_steps: int, warmdown_steps: int) -> float:
    """The learning-rate multiplier: linear from 0 to 1 over warmup_steps, 1, then linear to 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return min(1.0, max(0.0, (total_steps - step) / warmdown_steps)) if warmdown_steps else 1.0


def seed_momentum_warmup_steps(max_steps: int) -> int:
    return round(max_steps * SEED_MOMENTUM_WARMUP_STEPS / SEED_STEPS)


def seed_warmdown_steps(max_steps: int) -> int:
    return round(max_steps * SEED_WARMDOWN_STEPS / SEED_STEPS)
