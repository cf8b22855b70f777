"""Training, resuming, saving and the CLI, end to end on tiny models (one thread, a few steps each)."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, pipeline

from attnlab.workbench.cli import generate_text, main
from attnlab.workbench.data import load_text_splits, token_stream
from attnlab.workbench.evaluation import EvalResult, evaluate_blocks, evaluate_sliding_window, load_model_and_tokenizer
from attnlab.members import MEMBERS, get_member
from attnlab.tokenization_attnlab import byte_tokenizer, token_byte_lengths
from attnlab.workbench.training import TrainArgs, build_config, load_blocks, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def args(text_files, tmp_path):
    train_files, validation_files = text_files
    return TrainArgs(model="triple_product", preset="tiny", train_files=train_files, validation_files=validation_files,
                     block_size=32, batch_size=4, max_steps=6, eval_every=3, eval_blocks=2, save_every=2,
                     output_dir=str(tmp_path / "run"), num_threads=1)


def test_train_eval_generate_reload(args, capsys):
    metrics = train(args)
    folder = Path(args.output_dir)
    assert metrics["steps"] == 6 and len(metrics["train_loss"]) == 6 and [e["step"] for e in metrics["eval"]] == [3]
    assert json.loads((folder / "metrics.json").read_text())["final_eval"] == metrics["final_eval"]
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md",
                 "modeling_triple_product.py"):
        assert (folder / name).is_file(), name
    assert not list(folder.glob("checkpoint-*"))  # a complete run keeps no pickled optimizer state

    # The saved model scores the held-out blocks exactly as the run's final evaluation did.
    model, tokenizer = load_model_and_tokenizer(folder)
    _, validation = load_blocks(args, tokenizer)
    assert evaluate_blocks(model, validation, token_byte_lengths(tokenizer)).to_dict() == pytest.approx(
        metrics["final_eval"])

    # The CLI scores the files it is given with the options it is given, and prints what it saves.
    capsys.readouterr()
    main(["eval", str(folder), "--files", *args.validation_files, "--block_size", "32",
          "--output_json", str(folder / "blocks.json")])
    assert json.loads((folder / "blocks.json").read_text()) == pytest.approx(metrics["final_eval"])
    main(["eval", str(folder), "--files", *args.validation_files, "--window", "32", "--stride", "16",
          "--output_json", str(folder / "window.json")])
    stream = token_stream(load_text_splits(args.validation_files, args.validation_files)["validation"], tokenizer)
    window = evaluate_sliding_window(model, stream, token_byte_lengths(tokenizer), window=32, stride=16)
    assert json.loads((folder / "window.json").read_text()) == pytest.approx(window.to_dict())
    assert capsys.readouterr().out.splitlines() == [str(EvalResult(**metrics["final_eval"])), str(window)]
    main(["generate", str(folder), "--prompt", "ROMEO:", "--max_new_tokens", "8", "--temperature", "0.5", "--seed", "1"])
    sample = dict(max_new_tokens=8, seed=1, do_sample=True, top_k=40, top_p=1.0, repetition_penalty=1.0)
    sampled = generate_text(model, tokenizer, "ROMEO:", temperature=0.5, **sample)
    assert capsys.readouterr().out == sampled + "\n" and sampled.startswith("ROMEO:") and len(sampled) > len("ROMEO:")
    # The temperature matters here: generate()'s default (1.0) samples another continuation.
    assert sampled != generate_text(model, tokenizer, "ROMEO:", temperature=1.0, **sample)

    generator = pipeline("text-generation", model=str(folder), trust_remote_code=True)
    text = generator("ROMEO:", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("ROMEO:") and len(text) > len("ROMEO:")


def test_bpe_tokenizer_from_the_cli_sets_the_vocabulary(args, tmp_path, capsys):
    main(["tokenizer", "--files", *args.train_files, "--vocab_size", "300", "--output_dir", str(tmp_path / "bpe")])
    metrics = train(replace(args, tokenizer=str(tmp_path / "bpe"), max_steps=2))
    model, tokenizer = load_model_and_tokenizer(args.output_dir)
    assert model.config.vocab_size == len(tokenizer) == 300
    # BPE tokens span several bytes: bits per byte counts the bytes, not the tokens.
    assert metrics["final_eval"]["bytes"] > metrics["final_eval"]["tokens"]
    capsys.readouterr()
    main(["generate", args.output_dir, "--greedy", "--max_new_tokens", "4"])
    greedy = generate_text(model, tokenizer, "ROMEO:", max_new_tokens=4, do_sample=False)
    assert capsys.readouterr().out == greedy + "\n" and len(tokenizer(greedy)["input_ids"]) > 1


def test_resume_continues_the_same_loss_curve(args):
    args = replace(args, max_steps=10, gradient_accumulation_steps=2, eval_every=4)  # 20 batches: crosses an epoch
    uninterrupted = train(replace(args, output_dir=args.output_dir + "-uninterrupted"))

    class Interrupt(Exception):
        pass

    def interrupt(step, loss):
        if step == 5:  # after the checkpoint of step 4, before the one of step 6
            raise Interrupt

    with pytest.raises(Interrupt):
        train(args, on_step=interrupt)
    assert [p.name for p in Path(args.output_dir).glob("checkpoint-*")] == ["checkpoint-4"]
    resumed = train(replace(args, resume=True))
    assert resumed["train_loss"] == uninterrupted["train_loss"]
    assert resumed["eval"] == uninterrupted["eval"] and resumed["final_eval"] == uninterrupted["final_eval"]


def test_time_limit_stops_with_a_checkpoint_and_resume_finishes(args):
    stopped = train(replace(args, time_limit=0.0))
    assert stopped["steps"] == 1 and (Path(args.output_dir) / "checkpoint-1").is_dir()
    assert train(replace(args, resume=True))["steps"] == args.max_steps
    assert not list(Path(args.output_dir).glob("checkpoint-*"))


def test_resume_refuses_another_configuration(args):
    train(replace(args, time_limit=0.0))  # stops after one step with a checkpoint
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        train(args)
    with pytest.raises(ValueError, match="block_size=32.*block_size=16"):
        train(replace(args, block_size=16, resume=True))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(replace(args, output_dir=args.output_dir + "-empty", resume=True))


def test_cli_errors_are_one_line(args, capsys):
    train(replace(args, time_limit=0.0))
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["train", "--output_dir", args.output_dir, "--resume", "--block_size", "16",
              "--train_files", *args.train_files, "--validation_files", *args.validation_files])
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "block_size=32" in err and "block_size=16" in err


def test_bad_model_choices():
    tokenizer = byte_tokenizer()
    with pytest.raises(ValueError, match="unknown model 'mamba'"):
        build_config("mamba", "tiny", tokenizer, 32)
    with pytest.raises(ValueError, match="unknown size preset 'huge'"):
        build_config("triple_product", "huge", tokenizer, 32)
    with pytest.raises(ValueError, match="max_position_embeddings=4096"):
        build_config("triple_product", "tiny", tokenizer, 4096, ["max_position_embeddings=1024"])
    with pytest.raises(ValueError, match="hiden_size"):
        build_config("llama", "tiny", tokenizer, 32, ["hiden_size=8"])
    config = build_config("elita", "tiny", tokenizer, 32, ["num_hidden_layers=3", "rms_norm_eps=1e-5"])
    assert (config.vocab_size, config.num_hidden_layers, config.rms_norm_eps) == (259, 3, 1e-5)


def test_config_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(dict(hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                                                          num_attention_heads=4, vocab_size=5)))
    config = build_config("llama", "tiny", byte_tokenizer(), 32, ["num_hidden_layers=2"], str(tmp_path / "config.json"))
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (48, 2, 259)


def test_tokenizer_must_match_the_model(tmp_path):
    member = MEMBERS["triple_product"]
    member.causal_lm_class(member.test_config()).save_pretrained(tmp_path)  # vocabulary 97
    with pytest.raises(ValueError, match="259 tokens.*vocabulary of 97"):
        load_model_and_tokenizer(str(tmp_path), "bytes")


def test_missing_or_empty_data_file(args, tmp_path):
    with pytest.raises((FileNotFoundError, ValueError), match="missing.txt"):
        train(replace(args, train_files=[str(tmp_path / "missing.txt")]))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty.txt"):
        train(replace(args, train_files=[str(tmp_path / "empty.txt")]))


@pytest.mark.parametrize("name", sorted(MEMBERS))
def test_members_declare_no_split_modules(name):
    member = get_member(name)
    model = member.causal_lm_class(member.test_config())
    layer_classes = {type(module).__name__ for module in model.modules()}
    assert model._no_split_modules and set(model._no_split_modules) <= layer_classes


def test_transformers_trainer_trains_a_member(tmp_path):
    from transformers import Trainer, TrainingArguments

    member = MEMBERS["elita"]
    torch.manual_seed(0)
    model = member.causal_lm_class(member.test_config())
    ids = torch.randint(3, 97, (8, 16))
    with torch.no_grad():
        untrained_loss = model(ids, labels=ids).loss.item()
    rows = [{"input_ids": row, "labels": row} for row in ids.tolist()]
    # With gradient checkpointing, as Trainer users turn it on; one batch holds every row.
    trainer = Trainer(model=model, train_dataset=rows,
                      args=TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=8,
                                             learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True,
                                             logging_steps=1, activation_checkpointing=True))
    result = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert result.global_step == 3 and len(losses) == 3 and any(
        getattr(module, "gradient_checkpointing", False) for module in model.modules())
    # The first step scores the untrained model on the whole batch; the next ones have learned from it.
    assert losses[0] == pytest.approx(untrained_loss, rel=1e-3)
    assert losses[2] < losses[1] < losses[0]


def test_two_processes_with_accelerate_launch(text_files, tmp_path):
    train_files, validation_files = text_files
    # accelerate 1.15's `launch --cpu --num_processes 2` starts one process (its CPU path needs mpirun); two
    # gloo processes come from the multi-process launcher with ACCELERATE_USE_CPU=1.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "-m", "attnlab", "train", "--preset", "tiny", "--block_size", "32", "--batch_size", "2",
               "--max_steps", "4", "--eval_every", "2", "--eval_blocks", "3", "--save_every", "0",
               "--num_threads", "1", "--train_files", *train_files, "--validation_files", *validation_files,
               "--output_dir", str(tmp_path / "run")]
    # `python -m` from the repository root imports this checkout of attnlab.
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, cwd=REPO, env=env, check=True, timeout=120, capture_output=True, text=True)
    # The command's own summary comes from the main process only.
    assert [line.startswith("held-out:") for line in run.stdout.splitlines()].count(True) == 1, run.stdout
    assert run.stdout.count("saved the model") == 1, run.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["steps"] == 4 and metrics["tokens"] == 4 * 2 * 2 * 32

    # Two processes with batches of 2 see, step by step, the rows one process sees with batches of 4, and average
    # their gradients: the same run to rounding, learning-rate warmup and schedule included.
    one = train(TrainArgs(preset="tiny", block_size=32, batch_size=4, max_steps=4, eval_every=2, eval_blocks=3,
                          save_every=0, num_threads=1, train_files=train_files, validation_files=validation_files,
                          output_dir=str(tmp_path / "one")))
    assert metrics["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)
    # Each process scores a shard of the held-out blocks and the totals are summed: every block counts once.
    assert [e["tokens"] for e in metrics["eval"]] == [e["tokens"] for e in one["eval"]] == [3 * 31]
    assert metrics["eval"][0] == pytest.approx(one["eval"][0], rel=1e-5)
    assert metrics["final_eval"] == pytest.approx(one["final_eval"], rel=1e-5)
    two_processes = AutoModelForCausalLM.from_pretrained(tmp_path / "run").state_dict()
    for name, weight in AutoModelForCausalLM.from_pretrained(tmp_path / "one").state_dict().items():
        torch.testing.assert_close(two_processes[name], weight, atol=1e-5, rtol=1e-4, msg=name)
