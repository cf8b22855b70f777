"""Subnormal floats in softmax attention: count them, and read or set the flush-to-zero setting.

A softmax probability exp(s_ij - max_j s_ij) is subnormal in fp32 (and bf16, same exponent range) when the score is
87 to 103 below its row's maximum: 1e-45 <= p < 1.2e-38. Such values are exact zeros for any purpose (their share of
an output is below fp32 rounding by 30 orders of magnitude), yet on many Intel CPUs every operation on one costs a
microcode assist, ~100x an ordinary one, unless the thread flushes them (`torch.set_flush_denormal(True)`).

`count_attention_subnormals` counts them where SDPA's flash kernel meets them: in the probabilities P of the forward
pass and in the score gradients dS = P * (dO V^T - rowsum(dO * O)) of the backward pass, plus the gradients SDPA
returns for q, k and v. P and dS are recomputed for counting from SDPA's inputs in log space, so the count is the
same whether or not this thread flushes subnormals (flushed arithmetic would turn them into zeros and hide them): it
measures the cause. The `computed_*` counts are of the same P and dS as this thread's fp32 arithmetic produces them
(exp of the log-probabilities, then the product): zero when it flushes subnormals, the values a kernel meets.
"""

import contextlib
import math
from dataclasses import asdict, dataclass, field

import torch
from torch.nn import functional as F

FP32 = torch.finfo(torch.float32)
LOG_TINY = math.log(FP32.tiny)  # below this, an fp32 value is subnormal ...
# ... down to half the smallest subnormal (2^-149), which rounds up to it; below that, zero
LOG_SMALLEST = math.log(FP32.smallest_normal * FP32.eps / 2)


def flush_denormal_enabled() -> bool:
    """Whether this thread flushes subnormals to zero (torch has a setter only): a subnormal product reads 0."""
    return bool((torch.tensor([FP32.tiny]) * torch.tensor([0.5])).item() == 0.0)


def flush_denormal_state() -> str:
    """"flushed", "kept" or "partial" over torch's intra-op threads: `torch.set_flush_denormal` sets the calling
    thread's mode, which the threads it starts later inherit and threads already running do not. Measured with one
    product large enough for every thread to take a share."""
    tiny = torch.full((64 * 32768,), FP32.tiny)
    kept = int(((tiny * 0.5) != 0).sum())
    return "flushed" if kept == 0 else "kept" if kept == tiny.numel() else "partial"


def workbench_flush(keep: bool, log=print) -> bool:
    """The workbench's (attnlab train, attnlab bench) choice, made at the start of a process so that the threads
    torch starts afterwards inherit it: flush subnormals to zero unless `keep`. Logs what it did; returns whether
    subnormals are flushed. On CPUs without the flag (non-x86) nothing changes."""
    if keep:
        log("attnlab: subnormal floats kept (--keep-subnormals); on many Intel CPUs they slow softmax attention")
        return flush_denormal_enabled()
    supported = torch.set_flush_denormal(True)
    log("attnlab: flushing subnormal floats to zero for this run (torch.set_flush_denormal(True): values below "
        "1.2e-38 read 0, far below fp32 rounding of any output; on many Intel CPUs they otherwise slow softmax "
        "attention several-fold); --keep-subnormals keeps them" if supported else
        "attnlab: this CPU cannot flush subnormals to zero; they are kept")
    return supported


@contextlib.contextmanager
def flush_denormal(enabled: bool):
    """Set this thread's flush-to-zero mode inside the block and restore the previous one after it."""
    previous = flush_denormal_enabled()
    torch.set_flush_denormal(enabled)
    try:
        yield
    finally:
        torch.set_flush_denormal(previous)


# dtype -> (integer view, sign mask, bits of the smallest normal magnitude)
_BITS = {torch.float32: (torch.int32, 0x7FFFFFFF, 0x00800000), torch.float64: (torch.int64, 2**63 - 1, 2**52),
         torch.bfloat16: (torch.int16, 0x7FFF, 0x0080), torch.float16: (torch.int16, 0x7FFF, 0x0400)}


def count_subnormal(tensor: torch.Tensor) -> int:
    """Elements of a floating tensor that are subnormal (non-zero and below the smallest normal of its dtype). Read
    from the bits, not by arithmetic, which a thread that flushes subnormals would see as zeros."""
    view, sign, smallest_normal = _BITS[tensor.dtype]
    magnitude = tensor.detach().contiguous().view(view) & sign
    return int(((magnitude > 0) & (magnitude < smallest_normal)).sum())


def _log_subnormal(log_magnitude: torch.Tensor) -> int:
    """How many of these log|x| lie in fp32's subnormal range (the value would be a subnormal fp32 number)."""
    return int(((log_magnitude >= LOG_SMALLEST) & (log_magnitude < LOG_TINY)).sum())


@dataclass
class AttentionSubnormals:
    """Counts over every SDPA call in a forward and backward pass. `probabilities` counts the entries of P that are
    allowed by the mask (the denominators of the fractions); `score_gradients` the same entries of dS."""

    calls: int = 0
    probabilities: int = 0
    subnormal_probabilities: int = 0
    underflowed_probabilities: int = 0  # below 2^-150: exactly 0 in fp32, harmless
    subnormal_score_gradients: int = 0
    computed_subnormal_probabilities: int = 0  # as this thread's fp32 arithmetic (flushing or not) produces them
    computed_subnormal_score_gradients: int = 0
    input_gradients: int = 0
    subnormal_input_gradients: int = 0
    log_score_range: list = field(default_factory=list)  # per call: max over rows of (row max - row min) of q.k*scale

    @property
    def probability_fraction(self) -> float:
        return self.subnormal_probabilities / max(1, self.probabilities)

    @property
    def score_gradient_fraction(self) -> float:
        return self.subnormal_score_gradients / max(1, self.probabilities)

    def as_dict(self) -> dict:
        return {**asdict(self), "probability_fraction": self.probability_fraction,
                "score_gradient_fraction": self.score_gradient_fraction}


def _allowed_mask(query, key, attn_mask, is_causal) -> torch.Tensor | None:
    """Bool [.., Tq, Tk] of allowed (query, key) pairs, or None when every pair is allowed."""
    if is_causal:
        lq, lk = query.shape[-2], key.shape[-2]
        return torch.ones(lq, lk, dtype=torch.bool, device=query.device).tril(lk - lq)
    if attn_mask is None:
        return None
    return attn_mask if attn_mask.dtype == torch.bool else attn_mask > -math.inf


def _scores(query, key, attn_mask, is_causal, scale) -> tuple[torch.Tensor, torch.Tensor | None]:
    scale = scale if scale is not None else query.shape[-1] ** -0.5
    if key.shape[1] != query.shape[1]:  # grouped-query attention
        key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
    scores = (query.float() @ key.float().transpose(-1, -2)) * scale
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        scores = scores + attn_mask.float()
    allowed = _allowed_mask(query, key, attn_mask, is_causal)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, -math.inf)
    return scores, allowed


@torch.no_grad()
def _count_forward(counts: AttentionSubnormals, query, key, attn_mask, is_causal, scale):
    scores, allowed = _scores(query, key, attn_mask, is_causal, scale)
    log_p = torch.log_softmax(scores, dim=-1)
    live = torch.isfinite(log_p) if allowed is None else allowed.expand_as(log_p) & torch.isfinite(log_p)
    counts.probabilities += int(allowed.expand_as(log_p).sum()) if allowed is not None else log_p.numel()
    counts.subnormal_probabilities += _log_subnormal(log_p[live])
    counts.underflowed_probabilities += int((log_p[live] < LOG_SMALLEST).sum())
    # exp builds its result from bits, so flush-to-zero applies from the next arithmetic operation on: the value a
    # kernel's multiply reads
    counts.computed_subnormal_probabilities += count_subnormal(torch.exp(log_p) * 1.0)
    finite = torch.where(live, scores, torch.nan)
    spread = finite.nan_to_num(nan=-math.inf).amax(-1) - finite.nan_to_num(nan=math.inf).amin(-1)
    counts.log_score_range.append(round(float(spread.amax()), 1))


@torch.no_grad()
def _count_backward(counts: AttentionSubnormals, query, key, value, output, grad_output, attn_mask, is_causal,
                    scale):
    """dS = P * (dP - D) with dP = dO V^T and D = rowsum(dO * O), counted in log space: log|dS| = log P + log|dP-D|."""
    scores, allowed = _scores(query, key, attn_mask, is_causal, scale)
    log_p = torch.log_softmax(scores, dim=-1)
    if value.shape[1] != query.shape[1]:
        value = value.repeat_interleave(query.shape[1] // value.shape[1], dim=1)
    d_p = grad_output.float() @ value.float().transpose(-1, -2)
    delta = (grad_output.float() * output.float()).sum(-1, keepdim=True)
    log_ds = log_p + torch.log((d_p - delta).abs())
    live = torch.isfinite(log_ds)
    counts.subnormal_score_gradients += _log_subnormal(log_ds[live])
    counts.computed_subnormal_score_gradients += count_subnormal(torch.exp(log_p) * (d_p - delta))


def _counting_sdpa(original, counts: AttentionSubnormals, head_chunk: int):
    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
             **kwargs):
        output = original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                          scale=scale, enable_gqa=enable_gqa, **kwargs)
        counts.calls += 1
        q, k, v = query.detach(), key.detach(), value.detach()
        mask = attn_mask.detach() if attn_mask is not None else None
        # Heads in chunks: the recomputed [Tq, Tk] scores would otherwise cost heads x T^2 floats at once.
        group = q.shape[1] // k.shape[1]
        chunk = max(group, head_chunk // group * group)

        def pieces(*tensors):
            for start in range(0, q.shape[1], chunk):
                kv = slice(start // group, (start + chunk) // group)
                m = mask if mask is None or mask.shape[1] == 1 else mask[:, start:start + chunk]
                yield [t[:, start:start + chunk] for t in tensors], k[:, kv], v[:, kv], m

        for (qs,), ks, _, m in pieces(q):
            _count_forward(counts, qs, ks, m, is_causal, scale)
        if output.requires_grad:
            o = output.detach()

            def on_grad(grad):
                for (qs, os_, gs), ks, vs, m in pieces(q, o, grad):
                    _count_backward(counts, qs, ks, vs, os_, gs, m, is_causal, scale)

            output.register_hook(on_grad)
        for tensor in (query, key, value):
            if tensor.requires_grad:
                tensor.register_hook(lambda grad: _count_input_gradient(counts, grad))
        return output

    return sdpa


def _count_input_gradient(counts: AttentionSubnormals, grad: torch.Tensor):
    counts.input_gradients += grad.numel()
    counts.subnormal_input_gradients += count_subnormal(grad)


@contextlib.contextmanager
def counting_attention_subnormals(head_chunk: int = 4):
    """Inside the block, every `F.scaled_dot_product_attention` call (attnlab's and transformers' SDPA attention both
    go through it) adds to the yielded `AttentionSubnormals`; backward passes run inside the block count too. The
    model's own computation is unchanged: the counts come from a separate recomputation."""
    counts = AttentionSubnormals()
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _counting_sdpa(original, counts, head_chunk)
    try:
        yield counts
    finally:
        F.scaled_dot_product_attention = original


def count_attention_subnormals(model, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                               backward: bool = True) -> AttentionSubnormals:
    """Subnormal counts of one forward (and, with `backward`, one backward) pass of a causal LM on `input_ids`.
    Parameter gradients the backward pass leaves are cleared again."""
    labels = input_ids if labels is None else labels
    was_training = model.training
    model.train(backward)
    try:
        with counting_attention_subnormals() as counts, torch.set_grad_enabled(backward):
            loss = model(input_ids=input_ids, labels=labels, use_cache=False).loss
            if backward:
                loss.backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return counts


__all__ = ["AttentionSubnormals", "count_attention_subnormals", "count_subnormal", "counting_attention_subnormals",
           "flush_denormal", "flush_denormal_enabled", "flush_denormal_state", "workbench_flush"]
