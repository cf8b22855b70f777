"""The clients users train members with: PEFT's LoRA (an adapter saved and reloaded exactly) and TRL's SFTTrainer
and DPOTrainer, each on a saved folder loaded as remote code, offline. Tiny models, a few steps; installed by the
`dev` extra (docs/workbench.md says what each needs)."""

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from attnlab.members import MEMBERS
from attnlab.tokenization_attnlab import byte_tokenizer

peft = pytest.importorskip("peft")


@pytest.fixture(autouse=True)
def remote_code_offline_one_thread(monkeypatch):
    """As where attnlab is not installed: the Auto classes know no attnlab member, so a folder loads through its own
    modeling code (trust_remote_code); offline; one thread (conftest restores the count)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING

    for mapping in (CONFIG_MAPPING, MODEL_MAPPING, MODEL_FOR_CAUSAL_LM_MAPPING):
        monkeypatch.setattr(mapping, "_extra_content", {key: value for key, value in mapping._extra_content.items()
                                                        if not value.__module__.startswith("attnlab")})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    torch.set_num_threads(1)


def is_remote_code(model) -> bool:
    return type(model).__module__.startswith("transformers_modules")


def saved_member(name: str, folder) -> str:
    member = MEMBERS[name]
    torch.manual_seed(0)
    tokenizer = byte_tokenizer()
    config = member.test_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    member.causal_lm_class(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def remote(folder: str):
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    assert is_remote_code(model)
    return model


@pytest.mark.parametrize("name", sorted(MEMBERS))
def test_lora_adapter_trains_and_reloads_exactly(name, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    folder = saved_member(name, tmp_path / "base")
    model = get_peft_model(remote(folder), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with model.disable_adapter():
            assert not torch.allclose(model(input_ids=ids).logits, adapted)  # the adapter changes the model
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(remote(folder), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, adapted, atol=0, rtol=0)
        merged = reloaded.merge_and_unload()
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted, atol=1e-5, rtol=1e-4)


def trl_args(config_class, tmp_path, **kwargs):
    return config_class(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2,
                        learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                        dataloader_num_workers=0, bf16=False, **kwargs)  # fp32: the reference logits compare exactly


def test_trl_sft_trainer_on_a_remote_code_folder(tmp_path):
    trl = pytest.importorskip("trl")
    folder = saved_member("evolving", tmp_path / "base")
    data = Dataset.from_dict({"text": ["ROMEO: But soft, what light", "JULIET: Ay me!", "To be, or not to be",
                                       "A horse! a horse!"]})
    args = trl_args(trl.SFTConfig, tmp_path, max_length=32, trust_remote_code=True)
    trainer = trl.SFTTrainer(model=folder, args=args, train_dataset=data, processing_class=byte_tokenizer())
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert is_remote_code(trainer.model)  # the folder's own code ran
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


def test_trl_dpo_trainer_on_a_remote_code_folder(tmp_path):
    trl = pytest.importorskip("trl")
    folder = saved_member("evolving", tmp_path / "base")
    data = Dataset.from_dict({"prompt": ["ROMEO:", "JULIET:", "HAMLET:", "LEAR:"],
                              "chosen": [" O, she doth", " Ay me!", " To be", " Blow, winds"],
                              "rejected": [" qzx", " vvv", " zzq", " kkx"]})
    # DPOTrainer reloads the reference model from the policy's folder: it needs trust_remote_code in DPOConfig.
    args = trl_args(trl.DPOConfig, tmp_path, max_length=32, trust_remote_code=True)
    trainer = trl.DPOTrainer(model=folder, args=args, train_dataset=data, processing_class=byte_tokenizer())
    assert is_remote_code(trainer.model) and is_remote_code(trainer.ref_model)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2 and all(torch.isfinite(torch.tensor(entry["loss"])) for entry in logged)
    # The reference model stays the saved one: its logits are the folder's.
    ids = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(trainer.ref_model.cpu()(input_ids=ids).logits, remote(folder)(input_ids=ids).logits)
