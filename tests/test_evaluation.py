"""Evaluation math on hand-computed cases: loss, bits per byte and accuracy on the same targets; sliding windows."""

import math

import pytest
import torch

from attnlab.workbench.evaluation import EvalResult, evaluate_blocks, evaluate_sliding_window, score_targets, sliding_window_spans
from attnlab.members import MEMBERS
from datasets import Dataset


def test_score_targets_hand_computed():
    # Vocabulary of 3: token 0 is 1 UTF-8 byte, token 1 is 2 bytes, token 2 a special token (0 bytes).
    byte_lengths = torch.tensor([1, 2, 0])
    labels = torch.tensor([[2, 0, 1, -100]])  # targets (labels[1:]) 0, 1 and an ignored one
    logits = torch.tensor([[0.5, 0.25, 0.25],  # predicts target 0 with p 1/2: ln 2 nats, argmax right
                           [0.5, 0.25, 0.25],  # predicts target 1 with p 1/4: ln 4 nats, argmax wrong
                           [0.0, 0.0, 1.0],  # ignored target: would be wrong and cost nats if it were counted
                           [1.0, 0.0, 0.0]]).log()[None]  # the last position has no target
    result = EvalResult.from_totals(score_targets(logits, labels, byte_lengths).sum(0))
    assert result.tokens == 2 and result.bytes == 3
    assert result.loss == pytest.approx(1.5 * math.log(2))
    assert result.perplexity == pytest.approx(2 ** 1.5)
    assert result.bits_per_byte == pytest.approx(1.0)  # 3 ln 2 nats = 3 bits over 3 bytes
    assert result.accuracy == 0.5
    # The loss is the one transformers' causal LM loss gives on the same labels.
    reference = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100)
    assert result.loss == pytest.approx(reference.item())


def test_sliding_window_spans_hand_computed():
    # 10 tokens, window 4, stride 2: the first window scores targets 1..3, each later one its last 2.
    assert sliding_window_spans(10, 4, 2) == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    # 9 tokens: the last window still has 4 tokens and scores only what is left (target 8).
    assert sliding_window_spans(9, 4, 2) == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (5, 9, 8)]
    assert sliding_window_spans(3, 4, 2) == [(0, 3, 1)]  # shorter than a window: one window scores everything


@pytest.mark.parametrize("num_tokens,window,stride", [(50, 8, 3), (17, 5, 4), (64, 16, 1), (9, 9, 8)])
def test_sliding_window_scores_every_target_once(num_tokens, window, stride):
    scored = []
    for start, end, score_from in sliding_window_spans(num_tokens, window, stride):
        assert end - start == min(window, num_tokens) and start < score_from
        assert end - score_from <= (window - 1 if start == 0 else stride)
        scored += range(score_from, end)
    assert scored == list(range(1, num_tokens))


@pytest.mark.parametrize("window,stride", [(4, 0), (4, 4), (1, 1)])
def test_sliding_window_rejects_bad_stride(window, stride):
    with pytest.raises(ValueError, match="stride|window"):
        sliding_window_spans(10, window, stride)


@pytest.fixture
def tiny_model():
    member = MEMBERS["triple_product"]
    torch.manual_seed(0)
    return member.causal_lm_class(member.test_config()).eval()


def test_block_evaluation_matches_model_loss(tiny_model):
    torch.manual_seed(1)
    ids = torch.randint(3, 97, (5, 12))
    byte_lengths = torch.ones(97, dtype=torch.long)
    result = evaluate_blocks(tiny_model, Dataset.from_dict({"input_ids": ids.tolist()}), byte_lengths, batch_size=2)
    with torch.no_grad():
        loss = tiny_model(input_ids=ids, labels=ids).loss.item()
    assert result.tokens == 5 * 11 and result.loss == pytest.approx(loss, rel=1e-5)
    assert result.bits_per_byte == pytest.approx(loss / math.log(2), rel=1e-5)


def test_sliding_window_scores_the_same_targets_as_one_pass(tiny_model):
    torch.manual_seed(2)
    stream = torch.randint(3, 97, (40,))
    byte_lengths = torch.arange(97) % 3  # some tokens count 0 bytes, like special tokens
    one_pass = evaluate_sliding_window(tiny_model, stream, byte_lengths, window=40, stride=20)
    with torch.no_grad():
        loss = tiny_model(input_ids=stream[None], labels=stream[None]).loss.item()
    assert one_pass.loss == pytest.approx(loss, rel=1e-5)
    windows = evaluate_sliding_window(tiny_model, stream, byte_lengths, window=16, stride=5, batch_size=3)
    assert windows.tokens == one_pass.tokens == 39
    assert windows.bytes == one_pass.bytes == int(byte_lengths[stream[1:]].sum())


def test_multi_byte_tokens_count_bytes_not_tokens(tiny_model):
    """Tokens of 0 to 4 bytes, as in a BPE vocabulary: bits per byte divides the summed nats by the targets' bytes."""
    torch.manual_seed(3)
    ids = torch.randint(3, 97, (4, 10))
    byte_lengths = torch.arange(97) % 5  # 0 (like special tokens) to 4 bytes
    result = evaluate_blocks(tiny_model, Dataset.from_dict({"input_ids": ids.tolist()}), byte_lengths, batch_size=3)
    with torch.no_grad():
        loss = tiny_model(input_ids=ids, labels=ids).loss.item()
    num_bytes = int(byte_lengths[ids[:, 1:]].sum())
    assert result.tokens == 4 * 9 and result.bytes == num_bytes and num_bytes != result.tokens
    assert result.loss == pytest.approx(loss, rel=1e-5)
    assert result.bits_per_byte == pytest.approx(loss * result.tokens / math.log(2) / num_bytes, rel=1e-5)


def test_evaluation_leaves_the_model_in_the_mode_it_found(tiny_model):
    """Training evaluates periodically: a model left in eval mode would train on without dropout or checkpointing."""
    ids = torch.randint(3, 97, (3, 12))
    blocks = Dataset.from_dict({"input_ids": ids.tolist()})
    byte_lengths = torch.ones(97, dtype=torch.long)
    for training in (True, False):
        tiny_model.train(training)
        evaluate_blocks(tiny_model, blocks, byte_lengths, batch_size=2)
        assert all(module.training == training for module in tiny_model.modules())
        evaluate_sliding_window(tiny_model, ids[0], byte_lengths, window=8, stride=4)
        assert all(module.training == training for module in tiny_model.modules())
