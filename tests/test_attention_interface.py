"""attn_implementation selects the softmax-attention kernel through transformers' ALL_ATTENTION_FUNCTIONS: eager and
sdpa give the same logits on every member and hybrid, in a full forward over a left-padded batch and in cached
decoding, and a kernel registered under a new name is the one called. (flex_attention is not declared: its compiled
CPU kernel aborted the process here, docs/inference.md.)"""

import pytest
import torch
from transformers import DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

VOCAB, FIRST_TOKEN = 97, 3


def build(member, implementation):
    torch.manual_seed(0)
    return member.causal_lm_class(member.test_config(attn_implementation=implementation)).eval()


def outputs(model):
    ids = torch.randint(FIRST_TOKEN, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.no_grad():
        full = model(ids, attention_mask=mask, use_cache=False).logits
        cache = DynamicCache(config=model.config)
        model(ids[:, :6], attention_mask=mask[:, :6], cache=cache)
        step = model(ids[:, 6:], attention_mask=mask, cache=cache).logits
    return full, step


def test_eager_and_sdpa_agree(member):
    if not member.causal_lm_class._supports_sdpa:  # triple_product: its own scores are not SDPA
        with pytest.raises(ValueError, match="scaled_dot_product_attention"):
            build(member, "sdpa")
        return
    reference = outputs(build(member, "sdpa"))
    for got, want in zip(outputs(build(member, "eager")), reference):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_the_configured_kernel_is_the_one_called(member, monkeypatch):
    """A kernel registered under a new name is called by every softmax-attention layer, and only by those."""
    calls = []

    def counting(module, *args, **kwargs):
        calls.append(type(module).__name__)
        return sdpa_attention_forward(module, *args, **kwargs)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "counting", counting)
    model = build(member, "eager")
    model.config._attn_implementation = "counting"
    outputs(model)
    uses_interface = [mixer for mixer in member.test_config().mixer_types
                      if mixer in ("attention", "evolving", "depth_recurrent")]
    assert bool(calls) == bool(uses_interface)
