"""The contracts of DESIGN.md as a library: one implementation of each check, run by `attnlab audit`, by attnlab's
own test suite and by a researcher's repository.

In your own repository, one class runs the whole contract on your mixer (a stack of it and its hybrid with
attention, tiny configs, fp32, CPU; `contract_tests.py`):

    # tests/test_my_mixer.py
    from attnlab.workbench.contract_tests import MixerContractTests

    class TestGatedMixer(MixerContractTests):
        mixer = "mypkg.mixers:GatedMixer"

Any causal LM (a folder, a Hub model, a stock `LlamaForCausalLM`) can be checked with `run_checks(model)` or
`attnlab audit`. Each check returns a number (a max abs logit difference, compared with its tolerance), a bool, or
None where it does not apply (no recurrent state to compare, no remote code to load).
"""

import dataclasses
import os
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import AutoModelForCausalLM

CAUSAL_TOLERANCE = 1e-5  # a change of the future (or padding) moves earlier logits by rounding only
DECODE_TOLERANCE = 1e-4  # cached decoding sums in another order than the full forward
PREFILL_CHUNKS = (1, 2, 3, 7)

# The tiny shape a mixer is checked at (well under 1M parameters); ids 0, 1, 2 are pad, bos and eos.
TINY_STACK = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)


# ---------------------------------------------------------------------------------------------------------------
# The checks.


def cache_name(output) -> str:
    """transformers 5.24 renamed `past_key_values` to `cache` (the old name still works, with a deprecation
    warning): use whichever this version's outputs have, for the output field and the forward argument alike."""
    return "cache" if "cache" in {field.name for field in dataclasses.fields(output)} else "past_key_values"


def logits_of(model, ids, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False, **kwargs).logits.float()


def random_ids(model, batch: int, length: int, seed: int = 0) -> torch.LongTensor:
    """Random ids above the special ones (pad, bos, eos are 0-2 in attnlab's test configs)."""
    vocab = model.config.vocab_size
    low = 3 if vocab > 8 else 0
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(low, vocab, (batch, length), generator=generator).to(next(model.parameters()).device)


def pad_id(model) -> int:
    return 0 if model.config.pad_token_id is None else model.config.pad_token_id


def future_perturbation_gap(model, ids: torch.LongTensor, split: int, replacement: torch.LongTensor) -> float:
    """Max change of the logits before `split` when every token from `split` on is replaced."""
    perturbed = ids.clone()
    perturbed[:, split:] = replacement
    return (logits_of(model, ids)[:, :split] - logits_of(model, perturbed)[:, :split]).abs().max().item()


def next_token_leak_gap(model, ids: torch.LongTensor) -> float:
    """Max change of each position's logits when only the token right after it changes: a model that peeks at
    exactly the next token (the seeds' leak) fails this even where a change of many tokens could average out."""
    worst = 0.0
    for position in (ids.shape[1] // 3, ids.shape[1] - 2):
        perturbed = ids.clone()
        perturbed[:, position + 1] = (ids[:, position + 1] + 1) % model.config.vocab_size
        gap = (logits_of(model, ids)[:, : position + 1] - logits_of(model, perturbed)[:, : position + 1]).abs().max()
        worst = max(worst, gap.item())
    return worst


def append_gap(model, ids: torch.LongTensor, prefix: int) -> float:
    """Max change of the logits of a prefix when more tokens are appended."""
    return (logits_of(model, ids[:, :prefix]) - logits_of(model, ids)[:, :prefix]).abs().max().item()


def decode_gap(model, ids: torch.LongTensor, prefill: int, step: int = 1, prefill_chunk: int | None = None) -> float:
    """Max difference between the full forward and a cached run: the first `prefill` tokens fed in chunks of
    `prefill_chunk` (all at once by default), the rest decoded `step` tokens at a time."""
    pieces, cache, name = [], None, None
    chunk = prefill_chunk or prefill
    starts = [(start, min(chunk, prefill - start)) for start in range(0, prefill, chunk)]
    starts += [(start, step) for start in range(prefill, ids.shape[1], step)]
    with torch.no_grad():
        for start, size in starts:
            kwargs = {name: cache} if cache is not None else {}
            out = model(input_ids=ids[:, start:start + size], use_cache=True, **kwargs)
            name = name or cache_name(out)
            pieces.append(out.logits.float())
            cache = getattr(out, name)
    return (torch.cat(pieces, dim=1) - logits_of(model, ids)).abs().max().item()


def left_pad(ids: torch.LongTensor, num_pads: int, pad: int) -> tuple[torch.LongTensor, torch.LongTensor]:
    padded = torch.cat([torch.full((ids.shape[0], num_pads), pad, dtype=ids.dtype, device=ids.device), ids], dim=1)
    mask = torch.ones_like(padded)
    mask[:, :num_pads] = 0
    return padded, mask


def left_padding_gap(model, prompt: torch.LongTensor, num_pads: int, pad_token_id: int) -> float:
    """Max difference between a left-padded row (with its attention mask) and the same prompt unpadded."""
    padded, mask = left_pad(prompt, num_pads, pad_token_id)
    return (logits_of(model, padded, attention_mask=mask)[:, num_pads:] - logits_of(model, prompt)).abs().max().item()


def padded_batch_decoding_gap(model, long: torch.LongTensor, short: torch.LongTensor, continuation: torch.LongTensor,
                              pad: int) -> float:
    """A batch of a long row and a short, heavily left-padded one, prefilled and then decoded token by token on
    the same `continuation`: max difference of every real position's logits, prefill and each decoding step, from
    each row run alone without padding."""
    num_pads = long.shape[1] - short.shape[1]
    batch = torch.cat([long, left_pad(short, num_pads, pad)[0]])
    mask = torch.ones_like(batch)
    mask[1, :num_pads] = 0
    with torch.no_grad():
        out = model(input_ids=batch, attention_mask=mask, use_cache=True)
        name = cache_name(out)
        pieces, cache = [out.logits.float()], getattr(out, name)
        for i in range(continuation.shape[1]):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = model(input_ids=continuation[:, i:i + 1].expand(2, 1), attention_mask=mask, use_cache=True,
                        **{name: cache})
            pieces.append(out.logits.float())
            cache = getattr(out, name)
    batched = torch.cat(pieces, dim=1)
    alone_long = logits_of(model, torch.cat([long, continuation], dim=1))
    alone_short = logits_of(model, torch.cat([short, continuation], dim=1))
    return max((batched[:1] - alone_long).abs().max().item(),
               (batched[1:, num_pads:] - alone_short).abs().max().item())


def recurrent_states(cache) -> list[tuple[int, int, torch.Tensor]]:
    """(slot, state index, tensor) of every recurrent state written into a transformers cache."""
    from transformers.cache_utils import LinearAttentionCacheLayerMixin

    found = []
    for slot, layer in enumerate(getattr(cache, "layers", [])):
        if isinstance(layer, LinearAttentionCacheLayerMixin):
            for index, written in layer.is_recurrent_states_initialized.items():
                if written:
                    found.append((slot, index, layer.recurrent_states[index]))
    return found


def padded_state_gap(model, prompt: torch.LongTensor, num_pads: int, pad: int) -> float | None:
    """Max difference between the recurrent states after a left-padded prompt and after the same prompt unpadded
    (padding must never enter a state); None for a model that keeps no recurrent state."""
    padded, mask = left_pad(prompt, num_pads, pad)
    with torch.no_grad():
        out_padded = model(input_ids=padded, attention_mask=mask, use_cache=True)
        out_plain = model(input_ids=prompt, use_cache=True)
    name = cache_name(out_plain)
    plain, with_pads = recurrent_states(getattr(out_plain, name)), recurrent_states(getattr(out_padded, name))
    if not plain:
        return None
    if [(s, i) for s, i, _ in plain] != [(s, i) for s, i, _ in with_pads]:
        return float("inf")
    return max((a.float() - b.float()).abs().max().item() for (_, _, a), (_, _, b) in zip(plain, with_pads))


def generate_agrees_with_and_without_cache(model, prompt: torch.LongTensor, new_tokens: int, **generate_kwargs):
    """Whether generate() returns the same sequences with and without a cache (same seed for sampling)."""
    runs = []
    for use_cache in (True, False):
        torch.manual_seed(0)
        runs.append(model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                   use_cache=use_cache, **generate_kwargs))
    return torch.equal(runs[0], runs[1])


def generate_continues_from_cache(model, prompt: torch.LongTensor, extra: torch.LongTensor) -> bool:
    """Whether generate() continued from a returned cache (after appending tokens) equals a fresh run."""
    kwargs = dict(do_sample=False, pad_token_id=pad_id(model))
    first = model.generate(prompt, max_new_tokens=5, min_new_tokens=5, return_dict_in_generate=True, **kwargs)
    name = cache_name(first)
    extended = torch.cat([first.sequences, extra], dim=1)
    continued = model.generate(extended, **{name: getattr(first, name)}, max_new_tokens=6, min_new_tokens=6, **kwargs)
    fresh = model.generate(extended, max_new_tokens=6, min_new_tokens=6, **kwargs)
    return torch.equal(continued, fresh)


def save_load_gap(model, ids: torch.LongTensor, trust_remote_code: bool = False) -> float:
    """Max logit difference between the model and its own save_pretrained / from_pretrained round trip."""
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        if not (Path(folder) / "model.safetensors").is_file():
            return float("inf")  # weights saved as pickle (or not at all): the round trip fails the contract
        loaded = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=trust_remote_code,
                                                      dtype=next(model.parameters()).dtype).to(ids.device).eval()
    return (logits_of(loaded, ids) - logits_of(model, ids)).abs().max().item()


REMOTE_LOAD = textwrap.dedent("""
    import sys
    for blocked in sys.argv[3].split(","):
        sys.modules[blocked] = None  # any import of these fails: only the folder's own code may be used
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
    folder = sys.argv[1]
    expected = load_file(sys.argv[2])
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert "transformers_modules" in type(model).__module__, type(model).__module__
    AutoModel.from_pretrained(folder, trust_remote_code=True)
    AutoConfig.from_pretrained(folder, trust_remote_code=True)
    with torch.no_grad():
        logits = model(expected["ids"], use_cache=False).logits
    torch.testing.assert_close(logits, expected["logits"], atol=0, rtol=0)
    prompt = expected["ids"][:, :5]
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=int(expected["pad"]))
    if model.config.use_cache:
        assert torch.equal(model.generate(prompt, **kwargs), model.generate(prompt, use_cache=False, **kwargs))
    print("remote-ok")
""")


def is_remote_code_model(model) -> bool:
    module = type(model).__module__
    return module.startswith("attnlab.") or module.startswith("transformers_modules")


def remote_code_load_error(model, ids: torch.LongTensor) -> str | None:
    """Save the model, then load it in a fresh process where attnlab (and the package of every user mixer) cannot
    be imported; None if it loads with identical logits and generates, else the error's last line."""
    from safetensors.torch import save_file

    blocked = ["attnlab"] + sorted({name.partition(":")[0].split(".")[0]
                                    for name in getattr(model.config, "mixer_types", None) or [] if ":" in name})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "folder"
        model.save_pretrained(folder)
        save_file({"ids": ids.cpu().contiguous(), "logits": logits_of(model, ids).cpu(), "pad": torch.tensor(pad_id(model))},
                  Path(tmp) / "expected.safetensors")
        env = {**os.environ, "HF_MODULES_CACHE": str(Path(tmp) / "modules"), "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"}
        result = subprocess.run([sys.executable, "-c", REMOTE_LOAD, str(folder), str(Path(tmp) / "expected.safetensors"),
                                 ",".join(blocked)], cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    if result.returncode == 0 and "remote-ok" in result.stdout:
        return None
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {result.returncode}"


def parameters_without_gradient(model, ids: torch.LongTensor) -> list[str]:
    """Names of trainable parameters that a training step leaves without a (nonzero) gradient; ['loss not finite']
    if the loss is not finite."""
    model.train()
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    if not torch.isfinite(loss):
        model.eval()
        return ["loss not finite"]
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    model.zero_grad()
    model.eval()
    return missing


def ignored_labels_gap(model, ids: torch.LongTensor, ignored: int = 6) -> float:
    """|loss with the first labels at -100 - cross-entropy computed over the other positions only|."""
    labels = ids.clone()
    labels[:, :ignored] = -100
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels, use_cache=False)
    vocab = out.logits.shape[-1]
    expected = torch.nn.functional.cross_entropy(out.logits[:, ignored - 1:-1].reshape(-1, vocab).float(),
                                                 ids[:, ignored:].reshape(-1))
    return (out.loss.float() - expected).abs().item()


def gradient_checkpointing_gap(model, ids: torch.LongTensor) -> float | None:
    """Max difference of loss and gradients with gradient checkpointing on; None where it is not supported."""
    if not model.supports_gradient_checkpointing:
        return None

    def loss_and_grads():
        model.zero_grad()
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.train()
    try:
        plain_loss, plain = loss_and_grads()
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
        ckpt_loss, ckpt = loss_and_grads()
    finally:
        getattr(model, "activation_checkpointing_disable", model.gradient_checkpointing_disable)()
        model.zero_grad()
        model.eval()
    if plain.keys() != ckpt.keys():
        return float("inf")
    return max([(ckpt_loss - plain_loss).abs().item()] + [(ckpt[n] - g).abs().max().item() for n, g in plain.items()])


def bf16_autocast_is_finite(model, ids: torch.LongTensor) -> bool:
    """Whether a bf16-autocast training step at this length gives finite logits, loss and gradients."""
    model.train()
    try:
        with torch.autocast(ids.device.type, dtype=torch.bfloat16):
            out = model(input_ids=ids, labels=ids, use_cache=False)
        finite = bool(torch.isfinite(out.logits).all() and torch.isfinite(out.loss))
        out.loss.backward()
        finite = finite and all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
    finally:
        model.zero_grad()
        model.eval()
    return finite


def out_of_vocabulary_error(model, ids: torch.LongTensor) -> str | None:
    """The error message for an id equal to vocab_size if it is a clear one (it names the vocabulary or the id),
    else None: a bare IndexError from the embedding (or, on a GPU, a device-side assert) tells a user nothing."""
    bad = ids[:1, :4].clone()
    bad[0, -1] = model.config.vocab_size
    try:
        logits_of(model, bad)
    except Exception as error:  # whatever the model raises: the check is about the message
        message = " ".join(str(error).split())
        clear = "vocab" in message.lower() or str(model.config.vocab_size) in message
        return message if clear else None
    return None


# ---------------------------------------------------------------------------------------------------------------
# Running them.


@dataclass
class CheckResult:
    check: str
    value: float | bool | str | None
    status: str  # PASS, FAIL, WARN (reported, not a contract failure) or SKIP (does not apply to this model)

    @property
    def passed(self) -> bool:
        return self.status != "FAIL"


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable  # (model, ContractInputs) -> float | bool | list | str | None
    tolerance: float | None = None  # for numbers: PASS below it
    needs_cache: bool = False
    warn_only_for_other_libraries: bool = False


@dataclass
class ContractInputs:
    """Random tokens for one run of the checks (the same for every check)."""

    ids: torch.LongTensor
    long: torch.LongTensor
    short: torch.LongTensor
    continuation: torch.LongTensor
    pad: int

    @classmethod
    def for_model(cls, model, seq_len: int = 24, seed: int = 0) -> "ContractInputs":
        return cls(ids=random_ids(model, 2, seq_len, seed), long=random_ids(model, 1, seq_len, seed + 1),
                   short=random_ids(model, 1, 3, seed + 2), continuation=random_ids(model, 1, 4, seed + 3),
                   pad=pad_id(model))


def _generate_check(**kwargs):
    def run(model, inputs):
        return generate_agrees_with_and_without_cache(model, inputs.ids[:, :7], 8, pad_token_id=inputs.pad, **kwargs)
    return run


def _remote(model, inputs):
    """True when the folder loads as remote code, the error otherwise; None for a model of another library."""
    if not is_remote_code_model(model):
        return None
    return remote_code_load_error(model, inputs.ids[:, :10]) or True


CHECKS: list[Check] = [
    Check("causal: future tokens changed",
          lambda m, x: future_perturbation_gap(m, x.ids, x.ids.shape[1] // 2, torch.flip(x.ids[:, x.ids.shape[1] // 2:], [1])),
          CAUSAL_TOLERANCE),
    Check("causal: next token alone changed", lambda m, x: next_token_leak_gap(m, x.ids), CAUSAL_TOLERANCE),
    Check("causal: appending tokens", lambda m, x: append_gap(m, x.ids, 11), CAUSAL_TOLERANCE),
    Check("cache: prefill + 1-token decoding", lambda m, x: decode_gap(m, x.ids, 8), DECODE_TOLERANCE, True),
    Check("cache: prefill + 3-token chunks", lambda m, x: decode_gap(m, x.ids, 8, step=3), DECODE_TOLERANCE, True),
    *[Check(f"cache: prefill in chunks of {chunk}, then decoding",
            lambda m, x, chunk=chunk: decode_gap(m, x.ids, 15, prefill_chunk=chunk), DECODE_TOLERANCE, True)
      for chunk in PREFILL_CHUNKS],
    Check("left padding: 5 pads, batch of 1", lambda m, x: left_padding_gap(m, x.ids[:1], 5, x.pad), CAUSAL_TOLERANCE),
    Check("left padding: batch of rows 24 and 3 long, decoding",
          lambda m, x: padded_batch_decoding_gap(m, x.long, x.short, x.continuation, x.pad), DECODE_TOLERANCE, True),
    Check("left padding: recurrent state equals unpadded", lambda m, x: padded_state_gap(m, x.ids[:1, :9], 6, x.pad),
          CAUSAL_TOLERANCE, True),
    Check("generate greedy: cache == no cache", _generate_check(do_sample=False), needs_cache=True),
    Check("generate sampling: cache == no cache", _generate_check(do_sample=True, top_k=20), needs_cache=True),
    Check("generate beam search: cache == no cache",
          _generate_check(do_sample=False, num_beams=3, num_return_sequences=2), needs_cache=True),
    Check("generate: continues from a returned cache",
          lambda m, x: generate_continues_from_cache(m, x.ids[:1, :6], x.continuation[:, :3]), needs_cache=True),
    Check("save_pretrained + from_pretrained", lambda m, x: save_load_gap(m, x.ids), CAUSAL_TOLERANCE),
    Check("remote code: loads where attnlab is not importable", _remote),
    Check("training: every parameter gets a gradient", lambda m, x: parameters_without_gradient(m, x.ids)),
    Check("training: -100 labels ignored", lambda m, x: ignored_labels_gap(m, x.ids), 1e-5),
    Check("training: gradient checkpointing, same loss and gradients",
          lambda m, x: gradient_checkpointing_gap(m, x.ids), 1e-5),
    Check("numerics: bf16 autocast finite at the longest length",
          lambda m, x: bf16_autocast_is_finite(m, random_ids(m, 1, min(m.config.max_position_embeddings, 512)))),
    Check("bad input: out-of-vocabulary id, clear error", lambda m, x: out_of_vocabulary_error(m, x.ids),
          warn_only_for_other_libraries=True),
]


def judge(check: Check, value, model) -> CheckResult:
    if value is None and check.name.startswith("bad input"):
        status = "WARN" if (check.warn_only_for_other_libraries and not is_remote_code_model(model)) else "FAIL"
        return CheckResult(check.name, "a bare error that names neither the id nor the vocabulary", status)
    if value is None:
        return CheckResult(check.name, "does not apply", "SKIP")
    if isinstance(value, bool):
        return CheckResult(check.name, value, "PASS" if value else "FAIL")
    if isinstance(value, list):  # parameters without gradient
        return CheckResult(check.name, ", ".join(value) or "all", "FAIL" if value else "PASS")
    if isinstance(value, str):
        ok = check.name.startswith("bad input")  # a message is the passing value there; an error elsewhere
        return CheckResult(check.name, value, "PASS" if ok else "FAIL")
    return CheckResult(check.name, float(value), "PASS" if value < check.tolerance else "FAIL")


def run_check(check: Check, model, inputs: ContractInputs) -> CheckResult:
    if check.needs_cache and not getattr(model.config, "use_cache", True):
        return CheckResult(check.name, "the model keeps no decoding state (use_cache=False)", "SKIP")
    try:
        value = check.run(model, inputs)
    except Exception as error:  # a crash is a failure of that check, reported with its message
        message = " ".join(str(error).split()) or type(error).__name__
        return CheckResult(check.name, f"{type(error).__name__}: {message[:300]}", "FAIL")
    return judge(check, value, model)


def run_checks(model, seq_len: int = 24, seed: int = 0, checks: list[Check] | None = None) -> list[CheckResult]:
    """Every check of the contract on random tokens (in fp32 for the tolerances to be meaningful)."""
    if seq_len < 16:
        raise ValueError(f"seq_len must be at least 16 (prefills of 15 tokens are checked), got {seq_len}")
    model.eval()
    inputs = ContractInputs.for_model(model, seq_len, seed)
    return [run_check(check, model, inputs) for check in (checks or CHECKS)]
