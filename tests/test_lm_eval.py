"""lm-evaluation-harness scores a saved attnlab folder through its `hf` model (HFLM) with trust_remote_code,
offline, on a tiny local multiple-choice task; its log-likelihoods are the model's own. The `dev` extra installs
lm_eval (the test is skipped only where it is missing)."""

import json
import textwrap

import pytest
import torch

from attnlab.members import MEMBERS
from attnlab.tokenization_attnlab import byte_tokenizer

lm_eval = pytest.importorskip("lm_eval")

DOCS = [dict(context="ROMEO: O, she doth teach the torches to", choices=[" burn bright!", " qxz"], label=0),
        dict(context="To be, or not to", choices=[" be", " zzq vv"], label=0)]


def continuation_logprob(model, tokenizer, context: str, continuation: str) -> float:
    context_ids = tokenizer(context)["input_ids"]
    ids = torch.tensor([context_ids + tokenizer(continuation)["input_ids"]])
    with torch.no_grad():
        logprobs = model(ids, use_cache=False).logits.float().log_softmax(-1)
    targets = ids[0, len(context_ids):]
    return logprobs[0, len(context_ids) - 1:-1].gather(-1, targets[:, None]).sum().item()


def test_hflm_scores_a_saved_folder_on_a_local_task(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    torch.set_num_threads(1)  # a tiny model: one thread is the fastest on a shared machine (conftest restores it)
    member = MEMBERS["evolving"]
    torch.manual_seed(0)
    model = member.causal_lm_class(member.test_config(vocab_size=259, pad_token_id=256, bos_token_id=257,
                                                      eos_token_id=258)).eval()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer = byte_tokenizer()
    tokenizer.save_pretrained(folder)
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps(doc) for doc in DOCS))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "attnlab_tiny_mc.yaml").write_text(textwrap.dedent(f"""\
        task: attnlab_tiny_mc
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {tmp_path / "docs.jsonl"}
        test_split: test
        output_type: multiple_choice
        doc_to_text: "{{{{context}}}}"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: "{{{{label}}}}"
        metric_list:
          - metric: acc
        """))

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=str(folder), trust_remote_code=True, device="cpu", batch_size=2)
    results = simple_evaluate(model=lm, tasks=["attnlab_tiny_mc"], task_manager=TaskManager(include_path=str(
        tmp_path / "tasks")), log_samples=True)
    assert 0 <= results["results"]["attnlab_tiny_mc"]["acc,none"] <= 1
    samples = results["samples"]["attnlab_tiny_mc"]
    assert len(samples) == len(DOCS)
    for sample in samples:
        # Each request is (context, continuation) as the harness built it (it puts a space before each choice).
        requests = [tuple(argument.values()) if isinstance(argument, dict) else tuple(argument)
                    for argument in sample["arguments"]]
        assert [continuation for _, continuation in requests] == [" " + c for c in sample["doc"]["choices"]]
        for (context, continuation), response in zip(requests, sample["resps"]):
            expected = continuation_logprob(model, tokenizer, context, continuation)
            assert response[0][0] == pytest.approx(expected, abs=1e-4)
