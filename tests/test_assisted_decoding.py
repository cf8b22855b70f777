"""Assisted decoding (a draft model or prompt lookup) on every member and hybrid: the cache's recurrent states roll
back to any position written since the last crop, and assisted greedy output equals plain greedy output."""

import pytest
import torch
from transformers import DynamicCache

from attnlab.modeling_common import RecurrentStateRollbackMixin
from attnlab.modeling_elita import cumulative_softmax, per_token_states
from tests.conftest import CONTRACT_MODELS

VOCAB, FIRST_TOKEN = 97, 3  # TEST_SIZE; ids 0, 1, 2 are pad, bos, eos


def random_ids(length, seed=0):
    return torch.randint(FIRST_TOKEN, VOCAB, (1, length), generator=torch.Generator().manual_seed(seed))


def last_logits(model, ids, cache=None):
    with torch.no_grad():
        return model(ids, cache=cache, use_cache=cache is not None).logits[:, -1]


@pytest.mark.parametrize("remove", range(7))
def test_crop_restores_the_state_of_any_recorded_position(model, remove):
    """Prefill, then 6 candidates in two calls (as a draft writes them), then crop(-remove) and one more token: equal
    to a full forward over the kept tokens, whether the rollback stays inside the last call or crosses into the
    first."""
    ids, next_token = random_ids(14), random_ids(1, seed=1)
    cache = DynamicCache(config=model.config)
    cache.activate_past_recording()
    with torch.no_grad():
        model(ids[:, :8], cache=cache)
        cache.crop(0)  # verification of the prefill: nothing removed, the history restarts here
        model(ids[:, 8:11], cache=cache)
        model(ids[:, 11:], cache=cache)
    cache.crop(-remove)
    assert cache.get_seq_length() == 14 - remove
    expected = last_logits(model, torch.cat([ids[:, :14 - remove], next_token], 1))
    torch.testing.assert_close(last_logits(model, next_token, cache), expected, rtol=0, atol=1e-4)


def test_rollback_beyond_the_recorded_positions_names_the_limit(model, member):
    cache = DynamicCache(config=model.config)
    cache.activate_past_recording()
    with torch.no_grad():
        model(random_ids(6), cache=cache)
        cache.crop(0)
        model(random_ids(3, seed=1), cache=cache)
    if not any(isinstance(layer, RecurrentStateRollbackMixin) for layer in cache.layers):
        pytest.skip(f"{member.name} keeps keys and values only: its cache crops to any length")
    with pytest.raises(ValueError, match="cannot roll back 4 positions: the recurrent states of only the last 3"):
        cache.crop(-4)


def test_rollback_without_recording_the_past_is_refused(model, member):
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(random_ids(6), cache=cache)
    if not any(isinstance(layer, RecurrentStateRollbackMixin) for layer in cache.layers):
        pytest.skip(f"{member.name} keeps keys and values only: its cache crops to any length")
    with pytest.raises(RuntimeError, match="does not record its past"):
        cache.crop(-1)


def greedy(model, ids, **kwargs):
    return model.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=0, eos_token_id=None, **kwargs)


def sharp_model(member, seed=0):
    """Weights drawn wider than the default, so that greedy decoding wanders over many tokens instead of repeating
    one, and drafts are sometimes right and sometimes wrong."""
    torch.manual_seed(seed)
    return member.causal_lm_class(member.test_config(initializer_range=0.5)).eval()


@pytest.fixture
def partial_rollbacks(monkeypatch):
    """Counts crops that keep some of the recorded positions and remove others: the case a wrong rollback breaks."""
    count = [0]
    roll_back = RecurrentStateRollbackMixin.roll_back_recurrent_states

    def counting(layer, tokens_to_remove):
        count[0] += 0 < -tokens_to_remove < layer.recorded_positions
        return roll_back(layer, tokens_to_remove)

    monkeypatch.setattr(RecurrentStateRollbackMixin, "roll_back_recurrent_states", counting)
    return count


def repetitive_prompt():
    phrase = random_ids(5)
    return torch.cat([phrase, random_ids(3, seed=1), phrase, random_ids(2, seed=2), phrase[:, :3]], dim=1)


def test_prompt_lookup_equals_plain_greedy(member, partial_rollbacks):
    model, ids = sharp_model(member), repetitive_prompt()
    torch.testing.assert_close(greedy(model, ids, prompt_lookup_num_tokens=3), greedy(model, ids), rtol=0, atol=0)
    assert partial_rollbacks[0] > 0 or member.name == "triple_product"


def perturbed_copy(model):
    """A draft that agrees with the model often but not always, so rounds accept some candidates and reject others."""
    draft = type(model)(model.config).eval()
    draft.load_state_dict(model.state_dict())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in draft.parameters():
            if parameter.numel() > 1:
                parameter.add_(0.3 * parameter.std() * torch.randn(parameter.shape, generator=generator))
    return draft


@pytest.mark.parametrize("role", ["main", "draft"])
def test_assisted_greedy_equals_plain_greedy(member, role, partial_rollbacks):
    model, ids = sharp_model(member), random_ids(6)
    if role == "main":
        main, draft = model, perturbed_copy(model)
    else:
        main, draft = sharp_model(CONTRACT_MODELS["triple_product"], seed=1), model
    torch.testing.assert_close(greedy(main, ids, assistant_model=draft), greedy(main, ids), rtol=0, atol=0)
    assert partial_rollbacks[0] > 0 or member.name == "triple_product"


@pytest.mark.parametrize("remove", [2, 6])
def test_crop_in_a_left_padded_batch(model, remove):
    """Row 1 is padded for its first 3 positions; the prefill is recorded (as it is when the main model's first call
    carries candidates), so crop(-6) returns row 1 to a state that has seen only padding."""
    ids = torch.cat([random_ids(10), random_ids(10, seed=1)])
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    next_token = torch.cat([random_ids(1, seed=2), random_ids(1, seed=3)])
    cache = DynamicCache(config=model.config)
    cache.activate_past_recording()
    with torch.no_grad():
        model(ids[:, :8], attention_mask=mask[:, :8], cache=cache)
        cache.crop(-remove)
        kept = 8 - remove
        step_mask = torch.cat([mask[:, :kept], torch.ones(2, 1, dtype=mask.dtype)], 1)
        got = model(next_token, attention_mask=step_mask, cache=cache).logits[:, -1]
        want = model(torch.cat([ids[:, :kept], next_token], 1), attention_mask=step_mask, use_cache=False).logits[:, -1]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_elita_per_token_states_are_empty_before_the_first_real_token():
    """Before any real token the recorded state is exactly elita's empty state (-inf, 0, 0), not a log of the
    clamped zero sum, which a later very negative logit would notice."""
    cross = torch.tensor([[[float("-inf"), float("-inf"), 0.5, -1.0]]])
    values = torch.randn(1, 1, 4, 2)
    start = (torch.full((1, 1), float("-inf")), torch.zeros(1, 1), torch.zeros(1, 1, 2))
    log_sum, average, _ = cumulative_softmax(cross, values, start, chunk_size=3)
    m, s, u = per_token_states(start[0], cross, log_sum, average)
    assert m[0, :2].isneginf().all() and (s[0, :2] == 0).all() and (u[0, :2] == 0).all()
    torch.testing.assert_close(s[0, 2:], torch.ones(2, 1))
    torch.testing.assert_close(m[0, 2:, 0], log_sum[0, 0, 2:])
