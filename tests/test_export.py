"""torch.export and ONNX exports of every member and hybrid: a symbolic sequence length, equal to eager."""

import pytest
import torch

from attnlab.members import HYBRIDS, MEMBERS
from attnlab.workbench.export import cummax_from_masked_max, decoding_state, export_onnx, export_program

NAMES = [*MEMBERS, *HYBRIDS]


def tiny_model(name):
    """The member's test config; a single layer where the member and its cache need no more (export time grows
    with the graph)."""
    torch.manual_seed(0)
    member = MEMBERS.get(name) or HYBRIDS[name]
    overrides = dict(num_hidden_layers=1) if name in ("triple_product", "evolving", "elita") else {}
    return member.causal_lm_class(member.test_config(**overrides)).eval()


def eager_logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids=input_ids, use_cache=False).logits


@pytest.mark.parametrize("name", NAMES)
def test_program_and_onnx_graph_take_any_length_and_equal_eager(name, tmp_path):
    model = tiny_model(name)
    program = export_program(model, example_length=16, batch_size=2)
    # shorter than the example, across several chunks of every member's test chunk size, and longer
    for length in (3, 23, 64):
        input_ids = torch.randint(3, model.config.vocab_size, (2, length))
        assert (program.module()(input_ids) - eager_logits(model, input_ids)).abs().max() < 1e-4, (name, length)
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    path = export_onnx(model, tmp_path / f"{name}.onnx", example_length=16, batch_size=2, program=program)
    session = onnxruntime.InferenceSession(str(path))
    for length in (7, 29):
        input_ids = torch.randint(3, model.config.vocab_size, (2, length))
        (logits,) = session.run(None, {"input_ids": input_ids.numpy()})
        assert (torch.from_numpy(logits) - eager_logits(model, input_ids)).abs().max() < 1e-4, (name, length)


@pytest.mark.parametrize("name", NAMES)
def test_decoding_step_program_continues_a_prefill_like_the_full_forward(name):
    model = tiny_model(name)
    step = export_program(model, decoding_step=True, example_length=8).module()
    for past, new in ((3, 1), (11, 2), (30, 1)):
        input_ids = torch.randint(3, model.config.vocab_size, (1, past + new))
        logits, *state = step(input_ids[:, past:], *decoding_state(model, input_ids[:, :past]))
        assert (logits - eager_logits(model, input_ids)[:, past:]).abs().max() < 1e-4, (name, past, new)
        # the returned cache continues the sequence: one more token equals the full forward too
        longer = torch.cat([input_ids, torch.randint(3, model.config.vocab_size, (1, 1))], 1)
        assert (step(longer[:, -1:], *state)[0] - eager_logits(model, longer)[:, -1:]).abs().max() < 1e-4, name


def test_cummax_decomposition_equals_cummax_with_ties():
    x = torch.randint(0, 4, (3, 9, 5)).float()
    x[0, 2, 1] = float("-inf")
    for dim in (1, -1):
        expected = x.cummax(dim)
        values, indices = cummax_from_masked_max(x, dim)
        assert torch.equal(values, expected.values) and torch.equal(indices, expected.indices)


@pytest.mark.parametrize("options, message", [
    (dict(decoding_step=True, cache="static"), "DynamicCache only"),
    (dict(padding=True), "padding"),
    (dict(cache="dynamic"), "decoding_step=True"),
    (dict(max_length=10_000), "max_position_embeddings"),
    (dict(example_length=1), "example_length"),
    (dict(decoding_step=True, past_length=1), "past_length"),
])
def test_options_a_member_cannot_honour_are_refused_with_the_reason(options, message):
    with pytest.raises(ValueError, match=message):
        export_program(tiny_model("elita"), **options)


def test_onnx_refuses_a_static_cache(tmp_path):
    with pytest.raises(ValueError, match="DynamicCache only"):
        export_onnx(tiny_model("evolving"), tmp_path / "x.onnx", cache="static")
