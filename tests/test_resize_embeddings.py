"""resize_token_embeddings on every member and hybrid: every vocabulary-sized table grows, a new id works, and the
resized model saves and reloads with identical logits."""

import torch
from transformers import AutoModelForCausalLM

import attnlab  # noqa: F401  (registers the Auto classes)

VOCAB = 97  # TEST_SIZE


def test_resize_then_use_a_new_id_then_save_and_reload(model, tmp_path):
    model.resize_token_embeddings(VOCAB + 5)
    assert model.config.vocab_size == VOCAB + 5
    for name, tensor in model.state_dict().items():
        if tensor.dim() and VOCAB in tensor.shape:
            raise AssertionError(f"{name} {tuple(tensor.shape)} still has the old vocabulary size")
    ids = torch.tensor([[5, VOCAB + 3, 7, VOCAB + 4]])
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits
    assert logits.shape[-1] == VOCAB + 5 and torch.isfinite(logits).all()

    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids, use_cache=False).logits, logits, rtol=0, atol=0)
