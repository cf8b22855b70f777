"""The training loop's safeguards, each checked by its effect: optimizer groups, clipping, checkpointing, what the
evaluations score, the saved generation config, and what a resume must match and restore. Tiny runs, one thread."""

import json
from dataclasses import asdict, fields, replace
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from transformers import AutoModelForCausalLM

from attnlab.members import MEMBERS
from attnlab.tokenization_attnlab import byte_tokenizer, token_byte_lengths
from attnlab.workbench.cli import build_parser, main
from attnlab.workbench.data import pack_blocks, shakespeare_splits, token_stream
from attnlab.workbench.evaluation import evaluate_blocks, evaluate_sliding_window
from attnlab.workbench.training import (
    RESUME_KEYS, TRAINER_STATE, TrainArgs, build_model, load_blocks, optimizer_for, resume_state, train,
)


@pytest.fixture
def args(text_files, tmp_path):
    train_files, validation_files = text_files
    return TrainArgs(model="triple_product", preset="tiny", train_files=train_files, validation_files=validation_files,
                     block_size=32, batch_size=4, max_steps=4, eval_every=0, save_every=0,
                     output_dir=str(tmp_path / "run"), num_threads=1)


# ---------------------------------------------------------------------------------------------------------------
# The model and the optimizer


@pytest.mark.parametrize("name", ["triple_product", "llama"])
def test_gradient_checkpointing_option_reaches_the_model(name):
    tokenizer = byte_tokenizer()
    def checkpointing(model):  # is_gradient_checkpointing is deprecated on transformers 5.24, absent before
        return any(getattr(module, "gradient_checkpointing", False) for module in model.modules())

    assert checkpointing(build_model(TrainArgs(model=name, block_size=32, gradient_checkpointing=True), tokenizer))
    assert not checkpointing(build_model(TrainArgs(model=name, block_size=32), tokenizer))
    parsed = build_parser().parse_args(["train", "--gradient_checkpointing"])
    assert parsed.gradient_checkpointing is True


def test_training_with_gradient_checkpointing_matches_training_without(args):
    plain = train(replace(args, max_steps=2, output_dir=args.output_dir + "-plain"))
    checkpointed = train(replace(args, max_steps=2, gradient_checkpointing=True))
    assert checkpointed["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-5)


@pytest.mark.parametrize("name", [*sorted(MEMBERS), "llama"])
def test_weight_decay_applies_to_matrices_only(name):
    model = build_model(TrainArgs(model=name, block_size=32), byte_tokenizer())
    optimizer = optimizer_for(model, TrainArgs(weight_decay=0.1))
    decayed = {id(p) for group in optimizer.param_groups if group["weight_decay"] == 0.1 for p in group["params"]}
    not_decayed = {id(p) for group in optimizer.param_groups if group["weight_decay"] == 0.0 for p in group["params"]}
    assert not decayed & not_decayed
    assert decayed | not_decayed == {id(p) for p in model.parameters()}
    matrices, gains_and_biases = 0, 0
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            assert id(module.weight) in decayed, module_name
            matrices += 1
        if "norm" in type(module).__name__.lower():
            assert id(module.weight) in not_decayed, module_name
            gains_and_biases += 1
        if getattr(module, "bias", None) is not None:
            assert id(module.bias) in not_decayed, module_name
            gains_and_biases += 1
    assert matrices and gains_and_biases


def test_gradient_clipping_bounds_the_update(args):
    """Clipped to a norm of 1e-12, gradients are far below AdamW's eps (1e-8): the weights barely move, where one
    unclipped step at this learning rate moves them by about the learning rate."""
    args = replace(args, max_steps=2, learning_rate=1e-2, weight_decay=0.0, warmup_ratio=0.0, max_grad_norm=1e-12)
    train(args)
    set_seed(args.seed)  # as train() does before building the model: the same initial weights
    initial = build_model(args, byte_tokenizer()).state_dict()
    trained = AutoModelForCausalLM.from_pretrained(args.output_dir).state_dict()
    change = max((trained[name] - weight).abs().max().item() for name, weight in initial.items())
    assert change < 1e-6


# ---------------------------------------------------------------------------------------------------------------
# What the evaluations score and what is saved


def test_periodic_and_final_evaluations_score_the_blocks_asked_for(args):
    metrics = train(replace(args, eval_every=2, eval_blocks=3, final_eval_blocks=5))
    targets_per_block = args.block_size - 1
    assert [(e["step"], e["tokens"]) for e in metrics["eval"]] == [(2, 3 * targets_per_block)]
    assert metrics["final_eval"]["tokens"] == 5 * targets_per_block

    _, validation = load_blocks(args, byte_tokenizer())
    everything = train(replace(args, output_dir=args.output_dir + "-all"))["final_eval"]
    assert everything["tokens"] == len(validation) * targets_per_block


def test_saved_configs_carry_the_tokenizer_special_ids(args):
    train(replace(args, max_steps=1))
    tokenizer = byte_tokenizer()
    expected = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id)
    assert None not in expected.values()
    for name in ("generation_config.json", "config.json"):
        saved = json.loads((Path(args.output_dir) / name).read_text())
        assert {key: saved.get(key) for key in expected} == expected, name


def test_eval_cli_without_files_scores_the_held_out_plays(tmp_path):
    tokenizer = byte_tokenizer()
    torch.manual_seed(0)
    model = build_model(TrainArgs(model="triple_product", block_size=32), tokenizer).eval()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    held_out = shakespeare_splits()["validation"]
    byte_lengths = token_byte_lengths(tokenizer)

    main(["eval", str(tmp_path / "model"), "--block_size", "32", "--max_blocks", "3",
          "--output_json", str(tmp_path / "blocks.json")])
    expected = evaluate_blocks(model, pack_blocks(held_out, tokenizer, 32), byte_lengths, max_blocks=3)
    assert json.loads((tmp_path / "blocks.json").read_text()) == pytest.approx(expected.to_dict())

    main(["eval", str(tmp_path / "model"), "--window", "16", "--stride", "8", "--max_tokens", "40",
          "--output_json", str(tmp_path / "window.json")])
    expected = evaluate_sliding_window(model, token_stream(held_out, tokenizer)[:40], byte_lengths, 16, 8)
    assert json.loads((tmp_path / "window.json").read_text()) == pytest.approx(expected.to_dict())


# ---------------------------------------------------------------------------------------------------------------
# Resuming


# One changed value per option a checkpoint can only be continued with; every other TrainArgs field is listed in
# MAY_CHANGE, so a new field must be put on one side or the other.
RESUME_CHANGES = dict(
    model="elita", mixer="retention:Retention", preset="small", config_overrides=["num_hidden_layers=3"], config_file="config.json",
    tokenizer="other-tokenizer", train_files=["other.txt"], dataset_name="wikitext", dataset_config="raw",
    text_column="content", block_size=16, batch_size=2, gradient_accumulation_steps=2, max_steps=7,
    learning_rate=1e-3, weight_decay=0.0, warmup_ratio=0.2, max_grad_norm=0.5, mixed_precision="bf16", seed=1,
    optimizer="muon", validation_files=["other-valid.txt"], gradient_checkpointing=True, init_from="other-model",
)
MAY_CHANGE = {"eval_every", "eval_blocks", "final_eval_blocks", "save_every", "time_limit", "output_dir", "resume",
              "overwrite_output_dir", "num_threads", "compile", "compile_backend", "skip_nonfinite", "keep_subnormals"}


def test_resume_refuses_a_change_to_any_option_that_shapes_the_run(args):
    assert {f.name for f in fields(TrainArgs)} == set(RESUME_CHANGES) | MAY_CHANGE
    assert set(RESUME_KEYS) == set(RESUME_CHANGES)
    checkpoint = Path(args.output_dir) / "checkpoint-1"
    checkpoint.mkdir(parents=True)
    (checkpoint / TRAINER_STATE).write_text(json.dumps(dict(step=1, args=asdict(args), num_processes=1)))
    accelerator = Accelerator()
    for key, value in RESUME_CHANGES.items():
        assert getattr(args, key) != value, key
        with pytest.raises(ValueError, match=f"trained with {key}=.*this run has {key}="):
            resume_state(replace(args, **{key: value}), accelerator, config={})
    (checkpoint / TRAINER_STATE).write_text(json.dumps(dict(step=1, args=asdict(args), num_processes=2)))
    with pytest.raises(ValueError, match="num_processes=2.*num_processes=1"):
        resume_state(args, accelerator, config={})


def test_resume_restores_the_random_state(args):
    """With dropout, the loss depends on torch's random state: a resumed run continues the same curve only if the
    checkpoint's state is restored. (attnlab members have no dropout; the Llama baseline has attention dropout.)"""
    args = replace(args, model="llama", config_overrides=["attention_dropout=0.5"], max_steps=4, save_every=2)
    uninterrupted = train(replace(args, output_dir=args.output_dir + "-uninterrupted"))

    class Interrupt(Exception):
        pass

    def interrupt(step, loss):
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(args, on_step=interrupt)
    resumed = train(replace(args, resume=True))
    assert resumed["train_loss"] == uninterrupted["train_loss"]
    assert resumed["final_eval"] == uninterrupted["final_eval"]
