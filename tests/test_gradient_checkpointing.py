"""Gradient checkpointing as transformers' Trainer and user code use it: on, in training mode, with the config's
default `use_cache` (nobody passes `use_cache=False`). The backward pass replays every layer, so no layer may write
a cache during training: a second write changes the replayed tensors and torch raises a CheckpointError."""

import copy

import torch
from transformers.cache_utils import Cache

from attnlab.modeling_common import CACHE_FIELD

VOCAB = 97  # attnlab.members TEST_SIZE


def random_ids(batch, length, seed=0):
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def loss_and_grads(model, ids):
    model.zero_grad()
    out = model(ids, labels=ids)  # no use_cache: the config's default, True
    out.loss.backward()
    return out, {name: p.grad.clone() for name, p in model.named_parameters()}


def test_checkpointed_training_with_the_default_use_cache(model):
    assert model.config.use_cache  # otherwise this test would not take the path it is about
    model.train()
    ids = random_ids(2, 16)
    plain, plain_grads = loss_and_grads(model, ids)
    model.activation_checkpointing_enable()
    checkpointed, checkpointed_grads = loss_and_grads(model, ids)
    # Training with checkpointing turns the cache off, as Llama does: nothing is built, nothing returned.
    assert getattr(checkpointed, CACHE_FIELD) is None
    torch.testing.assert_close(checkpointed.loss, plain.loss, atol=1e-6, rtol=0)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_checkpointed_layers_never_write_the_cache_they_are_given(model):
    """The layers themselves drop the cache under checkpointing, whatever path a cache reaches them by (the model's
    forward turns the cache off first, but a layer must not rely on it): GradientCheckpointingLayer clears a cache
    passed as `cache=` (not as `past_key_values=`). The layer is called exactly as the model calls it while decoding."""
    layer = model.model.layers[0]
    calls = []

    def record(module, args, kwargs):
        if not calls:  # the first application, before it writes: the cache is still empty
            calls.append(copy.deepcopy((args, kwargs)))

    handle = layer.register_forward_pre_hook(record, with_kwargs=True)
    with torch.no_grad():
        model(random_ids(2, 8), use_cache=True)
    handle.remove()
    (hidden, *args), kwargs = calls[0]
    caches = [value for value in kwargs.values() if isinstance(value, Cache)]
    assert len(caches) == 1  # the model hands its layers the cache

    cache = caches[0]
    # What the cache held before the layer (a stack of recurrent layers records its length in slot 0 first).
    length = cache.get_seq_length()
    written = [dict(getattr(slot, "is_recurrent_states_initialized", {})) for slot in cache.layers]

    model.train()
    model.activation_checkpointing_enable()
    hidden = hidden.clone().requires_grad_(True)
    layer(hidden, *args, **kwargs).square().sum().backward()  # a second write would raise a CheckpointError here
    assert cache.get_seq_length() == length
    assert [dict(getattr(slot, "is_recurrent_states_initialized", {})) for slot in cache.layers] == written
    assert hidden.grad.abs().sum() > 0
