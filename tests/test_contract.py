"""The contracts of DESIGN.md, checked on every member, hybrid and stack registered in attnlab.members (tiny configs,
fp32, CPU): every check of the contract library (attnlab/workbench/contract.py, the one `attnlab audit` runs) as
TestContract, and below it the contracts that are about attnlab's own classes."""

import os

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, DynamicCache
from transformers.cache_utils import DynamicLayer, LinearAttentionCacheLayerMixin

import attnlab  # noqa: F401  (registers the Auto classes)
from attnlab.modeling_common import CACHE_FIELD
from tests.conftest import CONTRACT_MODELS
from attnlab.workbench.contract import left_padding_gap
from attnlab.workbench.contract_tests import ContractTests

VOCAB = 97  # tests/members TEST_SIZE
FIRST_TOKEN = 3  # ids 0, 1, 2 are pad, bos, eos in the test config


def random_ids(batch, length, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(FIRST_TOKEN, VOCAB, (batch, length), generator=generator)


def logits(model, ids, **kwargs):
    with torch.no_grad():
        return model(ids, use_cache=False, **kwargs).logits


class TestContract(ContractTests):
    """Causality, cache consistency (prefill in chunks of 1, 2, 3 and 7; decoding in steps of 1 and 3), left
    padding (batch of 1, a batch of very different lengths while decoding, the recurrent state), generate() with
    and without a cache, the save/load and remote-code round trips, training, bf16 and the out-of-vocabulary
    error, on every member, hybrid and stack (the `model` fixture of conftest.py)."""


def test_the_cache_is_transformers_own_with_one_layer_per_slot_of_layer_types(model):
    """generate() builds DynamicCache(config); its layers follow config.layer_types and hold every state."""
    ids = random_ids(2, 9)
    with torch.no_grad():
        cache = getattr(model(ids, use_cache=True), CACHE_FIELD)
    assert type(cache) is DynamicCache and len(cache.layers) == model.config.num_hidden_layers
    for kind, layer in zip(model.config.layer_types, cache.layers):
        assert isinstance(layer, LinearAttentionCacheLayerMixin) == (kind in ("linear_attention", "hybrid")), kind
        assert isinstance(layer, DynamicLayer) == (kind in ("full_attention", "hybrid")), kind
        if isinstance(layer, LinearAttentionCacheLayerMixin) and kind == "linear_attention":
            assert all(layer.is_recurrent_states_initialized.values())  # the state was written, not left empty
    assert cache.get_seq_length() == 9


def test_static_cache_is_refused_with_a_reason(model):
    with pytest.raises(ValueError, match="DynamicCache only"):
        model.generate(random_ids(1, 4), max_new_tokens=2, cache_implementation="static", pad_token_id=0)


def test_cache_is_accepted_under_either_name(model):
    """transformers 5.24 renamed `past_key_values` to `cache`; saved folders must work on both sides of it."""
    ids = random_ids(2, 12)
    with torch.no_grad():
        continued = []
        for name in ("cache", "past_key_values"):
            cache = getattr(model(ids[:, :8], use_cache=True), CACHE_FIELD)
            continued.append(model(ids[:, 8:], use_cache=True, **{name: cache}).logits)
        torch.testing.assert_close(continued[0], continued[1], atol=0, rtol=0)
        torch.testing.assert_close(continued[0], logits(model, ids)[:, 8:], atol=1e-4, rtol=0)
        with pytest.raises(ValueError, match="not both"):
            model(ids[:, 8:], cache=cache, past_key_values=cache)


def test_left_padded_row_behaves_like_the_unpadded_prompt(model):
    long_prompt, short_prompt = random_ids(1, 9, seed=2), random_ids(1, 5, seed=3)
    batch = torch.cat([long_prompt, torch.cat([torch.zeros(1, 4, dtype=torch.long), short_prompt], dim=1)])
    mask = torch.ones_like(batch)
    mask[1, :4] = 0
    assert left_padding_gap(model, short_prompt, 4, pad_token_id=0) < 1e-5
    torch.testing.assert_close(logits(model, batch, attention_mask=mask)[:1], logits(model, long_prompt), atol=1e-5,
                               rtol=0)

    generated = model.generate(batch, attention_mask=mask, max_new_tokens=10, min_new_tokens=10, do_sample=False,
                               pad_token_id=0)
    alone = model.generate(short_prompt, max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(generated[1, 4:], alone[0])


def test_batch_rows_equal_single_rows(model):
    ids = random_ids(3, 12)
    batched = logits(model, ids)
    for row in range(3):
        torch.testing.assert_close(batched[row:row + 1], logits(model, ids[row:row + 1]), atol=1e-5, rtol=0)


def test_inputs_embeds_and_logits_to_keep(model):
    ids = random_ids(2, 10)
    full = logits(model, ids)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        torch.testing.assert_close(model(inputs_embeds=embeds, use_cache=False).logits, full, atol=1e-6, rtol=0)
        torch.testing.assert_close(model(ids, use_cache=False, logits_to_keep=1).logits, full[:, -1:], atol=1e-6,
                                   rtol=0)


def test_compiles_as_one_graph_for_forward_and_cached_decoding(model):
    """torch.compile(fullgraph=True) traces the whole model: no input check reads a tensor value (a graph break, and
    a host sync per decoding step on a GPU). The eager backend checks the trace without paying for code generation;
    `attnlab bench speed --compile` measures the inductor speed-up."""
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    ids = random_ids(2, 12)
    full = logits(model, ids)
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids, use_cache=False).logits, full, atol=1e-5, rtol=0)
        cache = getattr(model(ids[:, :11], use_cache=True), CACHE_FIELD)
        step = compiled(ids[:, 11:], use_cache=True, **{CACHE_FIELD: cache}).logits
    torch.testing.assert_close(step, full[:, 11:], atol=1e-4, rtol=0)


# 3. Round trip -------------------------------------------------------------------------------------------------


def test_save_pretrained_writes_a_hub_ready_folder(model, member, tmp_path):
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"model.safetensors", "config.json", "generation_config.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files)
    model_type = member.config_class.model_type
    assert f"modeling_{model_type}.py" in files and f"configuration_{model_type}.py" in files
    config = AutoConfig.from_pretrained(tmp_path)
    assert set(config.auto_map) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}

    ids = random_ids(2, 12)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is member.causal_lm_class
    torch.testing.assert_close(logits(reloaded, ids), logits(model, ids), atol=0, rtol=0)
    if model.config.tie_word_embeddings:
        assert reloaded.lm_head.weight.data_ptr() == reloaded.get_input_embeddings().weight.data_ptr()
    base = AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(base(ids, use_cache=False).last_hidden_state,
                                   model.model(ids, use_cache=False).last_hidden_state, atol=0, rtol=0)


def test_missing_weights_are_initialised_like_a_fresh_model(member):
    config = member.test_config()
    torch.manual_seed(3)
    fresh = member.causal_lm_class(config)
    torch.manual_seed(3)
    loaded = member.causal_lm_class.from_pretrained(None, config=config, state_dict={})
    fresh_state, loaded_state = fresh.state_dict(), loaded.state_dict()
    assert fresh_state.keys() == loaded_state.keys()
    # Random draws happen in another order on the meta-device path, so compare constants exactly and random
    # tensors by their spread: uninitialised memory (values like 1e36 or all zeros) fails both.
    for name, tensor in fresh_state.items():
        other = loaded_state[name]
        assert other.device.type != "meta" and torch.isfinite(other).all(), name
        if tensor.numel() < 2 or tensor.float().std() == 0:
            assert torch.equal(tensor, other), name
        else:
            ratio = other.float().std() / tensor.float().std()
            assert 0.7 < ratio < 1.4, f"{name}: std {other.float().std():.4g} vs {tensor.float().std():.4g}"
    for (name, buffer), (_, fresh_buffer) in zip(loaded.named_buffers(), fresh.named_buffers()):
        assert torch.equal(buffer, fresh_buffer), name


# 5. Bad input --------------------------------------------------------------------------------------------------


def test_bad_inputs_get_clear_errors(model):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[3, VOCAB]]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[3, -1]]))
    with pytest.raises(TypeError, match="integer"):
        model(torch.rand(1, 4))
    with pytest.raises(ValueError, match=r"\[batch, seq_len\]"):
        model(torch.tensor([3, 4, 5]))
    with pytest.raises(ValueError, match="inputs_embeds must have shape"):
        model(inputs_embeds=torch.rand(1, 4, model.config.hidden_size + 1))
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(ValueError, match="attention_mask"):
        model(random_ids(2, 5), attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="row of zeros"):
        model(random_ids(2, 5), attention_mask=torch.tensor([[1] * 5, [0] * 5]))
    too_long = model.config.max_position_embeddings + 1
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(random_ids(1, too_long))
    with pytest.raises(ValueError, match="labels"):
        model(random_ids(1, 5), labels=random_ids(1, 4))
    with pytest.raises(ValueError, match="output_attentions"):
        model(random_ids(1, 5), output_attentions=True)


def test_inconsistent_config_values_are_rejected(member):
    with pytest.raises(ValueError, match="divisible"):
        member.test_config(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="num_hidden_layers"):
        member.test_config(num_hidden_layers=0)
    with pytest.raises(ValueError, match="pad_token_id"):
        member.test_config(pad_token_id=VOCAB)


# Assisted generation --------------------------------------------------------------------------------------------


# Registry and cache slots ---------------------------------------------------------------------------------------


def test_a_layer_applied_twice_keeps_one_cache_slot_per_application():
    """elita's wrap runs the stack twice: 2 layers (one recurrent, one attention) fill 4 independent slots."""
    member = CONTRACT_MODELS["elita"]
    torch.manual_seed(0)
    model = member.causal_lm_class(member.test_config(
        num_hidden_layers=4, num_wraps=2, mixer_types=["elita", "attention"] * 2)).eval()
    assert len(model.model.layers) == 2 and model.config.layer_types == ["linear_attention", "full_attention"] * 2
    ids = random_ids(2, 20)
    with torch.no_grad():
        cache = getattr(model(ids[:, :12], use_cache=True), CACHE_FIELD)
        decoded = [model(ids[:, i:i + 1], use_cache=True, **{CACHE_FIELD: cache}).logits for i in range(12, 20)]
    torch.testing.assert_close(torch.cat(decoded, dim=1), logits(model, ids)[:, 12:], atol=1e-4, rtol=0)
    # The same weights saw different inputs in the two wraps, so the two slots of each layer hold different states.
    assert not torch.equal(cache.layers[0].recurrent_states[2], cache.layers[2].recurrent_states[2])
    assert cache.layers[1].keys.shape == cache.layers[3].keys.shape == (2, 4, 20, 8)
    assert not torch.equal(cache.layers[1].keys, cache.layers[3].keys)


def test_saved_auto_map_names_real_modules_and_classes(model, tmp_path):
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    for auto_class, reference in config.auto_map.items():
        module_name, class_name = reference.split(".")
        source = (tmp_path / f"{module_name}.py").read_text()
        assert f"class {class_name}(" in source, (auto_class, reference)
