"""transformers' output conventions, kept by every member and hybrid: return_dict=False (argument or config) gives
tuples, config.output_hidden_states is read, and the old cache argument name warns as transformers' own models do."""

import warnings

import pytest
import torch
from transformers import DynamicCache

from attnlab.modeling_common import CACHE_FIELD


def ids_for(model):
    return torch.randint(0, model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(0))


def test_return_dict_false_argument_gives_tensors(model):
    ids = ids_for(model)
    expected = model(ids, labels=ids)
    output = model(ids, labels=ids, return_dict=False)
    assert isinstance(output, tuple)
    loss, logits = output[:2]
    torch.testing.assert_close(loss, expected.loss)
    torch.testing.assert_close(logits, expected.logits)
    assert isinstance(model.model(ids, return_dict=False), tuple)
    hidden = model.model(ids, return_dict=False)[0]
    torch.testing.assert_close(hidden, model.model(ids).last_hidden_state)


def test_return_dict_false_in_the_config_gives_tuples(model):
    ids = ids_for(model)
    expected = model(ids).logits
    model.config.return_dict = False
    output = model(ids, use_cache=False)
    assert isinstance(output, tuple)
    torch.testing.assert_close(output[0], expected)
    assert isinstance(model.model(ids, use_cache=False), tuple)
    assert not isinstance(model(ids, return_dict=True), tuple)  # the argument wins over the config


def test_output_hidden_states_in_the_config(model):
    ids = ids_for(model)
    assert model(ids).hidden_states is None
    model.config.output_hidden_states = True
    from_config = model(ids).hidden_states
    assert from_config is not None and len(from_config) == model.config.num_hidden_layers + 1
    for ours, theirs in zip(from_config, model(ids, output_hidden_states=True).hidden_states):
        torch.testing.assert_close(ours, theirs)
    assert model(ids, output_hidden_states=False).hidden_states is None  # the argument wins over the config


@pytest.mark.skipif(CACHE_FIELD != "cache", reason="past_key_values is this transformers' own name")
def test_past_key_values_warns_like_transformers_models(model):
    ids = ids_for(model)
    with pytest.warns(FutureWarning, match="`past_key_values` is deprecated .* Use `cache` instead"):
        old = model(ids, past_key_values=DynamicCache(config=model.config)).logits
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither the new name nor generate() warns
        torch.testing.assert_close(model(ids, cache=DynamicCache(config=model.config)).logits, old)
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False)
