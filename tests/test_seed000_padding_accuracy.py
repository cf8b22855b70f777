"""The metric math of the padding demonstration (scripts/seed000_padding_accuracy.py) on a hand-made case."""

import pytest
import torch

from attnlab.workbench.padding_accuracy import PAD, next_token_accuracies, pad_batch


def one_hot_logits(predictions, vocab=8):
    return torch.nn.functional.one_hot(torch.tensor(predictions), vocab).float() * 10


def test_counting_pads_inflates_accuracy():
    ids = torch.tensor([[4, 5, 6, PAD, PAD, PAD]])  # targets: 5, 6, PAD, PAD, PAD
    logits = one_hot_logits([[5, 7, PAD, PAD, PAD, 3]])  # predictions: 5, 7, PAD, PAD, PAD (last row unused)
    metrics = next_token_accuracies(logits, ids)
    assert metrics["pad_fraction"] == pytest.approx(3 / 5)
    assert metrics["with_pads"] == pytest.approx(4 / 5)
    assert metrics["real"] == pytest.approx(1 / 2)
    expected_loss = torch.nn.functional.cross_entropy(logits[0, :2], torch.tensor([5, 6]))
    assert metrics["real_loss"] == pytest.approx(expected_loss.item())


def test_all_padding_is_an_error():
    with pytest.raises(ValueError, match="no real target"):
        next_token_accuracies(one_hot_logits([[PAD, PAD]]), torch.tensor([[4, PAD]]))


def test_pad_batch_right_pads_and_cuts():
    batch = pad_batch([b"ab", b"abcdef"], 4)
    assert batch.tolist() == [[97, 98, PAD, PAD], [97, 98, 99, 100]]
