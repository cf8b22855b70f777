"""The CLI a new user meets: every bad input is one line naming the problem (never a traceback), no run destroys
data it did not write, and the options a first hour needs (--init_from, --trust_remote_code, an empty prompt)."""

import json
import logging
import re
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import transformers
from huggingface_hub import constants

from attnlab.members import MEMBERS
from attnlab.workbench import bench, cli, report
from attnlab.workbench.cli import build_parser, check_demo_folder, generate_text, main
from attnlab.workbench.data import shakespeare_text
from attnlab.workbench.evaluation import load_model_and_tokenizer
from attnlab.workbench.training import RESUME_KEYS, TrainArgs, build_config, train
from attnlab.tokenization_attnlab import byte_tokenizer

WORKBENCH = Path(cli.__file__).parent


@pytest.fixture
def args(text_files, tmp_path):
    train_files, validation_files = text_files
    return TrainArgs(model="triple_product", preset="tiny", train_files=train_files, validation_files=validation_files,
                     block_size=32, batch_size=4, max_steps=2, eval_every=0, eval_blocks=2, save_every=0,
                     output_dir=str(tmp_path / "run"), num_threads=1)


@pytest.fixture(scope="module")
def trained(text_files, tmp_path_factory):
    """A finished 2-step run's folder (read-only for the tests that share it)."""
    train_files, validation_files = text_files
    folder = tmp_path_factory.mktemp("trained") / "run"
    train(TrainArgs(model="triple_product", preset="tiny", train_files=train_files, validation_files=validation_files,
                    block_size=32, batch_size=4, max_steps=2, eval_every=0, save_every=0, output_dir=str(folder),
                    num_threads=1))
    return folder


def cli_args(args: TrainArgs, **changes) -> list[str]:
    """`attnlab train` options for `args` (with `changes`)."""
    args = replace(args, **changes)
    argv = ["train"]
    for name, value in vars(args).items():
        if value is None or value is False:
            continue
        if value is True:
            argv.append(f"--{name}")
        elif isinstance(value, list):
            if value:
                argv += [f"--{name}", *map(str, value)]
        else:
            argv += [f"--{name}", str(value)]
    return argv


def one_line_error(argv: list[str], capsys) -> str:
    """Run the CLI, expect exit status 2 and return its error: the last line (above it only progress bars, or
    argparse's usage), no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("attnlab "), err
    return last


# --- one-line errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("option, value, message", [
    ("--max_steps", "0", "--max_steps must be >= 1, got 0"),
    ("--max_steps", "-5", "--max_steps must be >= 1, got -5"),
    ("--gradient_accumulation_steps", "0", "--gradient_accumulation_steps must be >= 1"),
    ("--num_threads", "0", "--num_threads must be >= 1"),
    ("--batch_size", "0", "--batch_size must be >= 1"),
    ("--learning_rate", "0", "--learning_rate must be > 0"),
    ("--learning_rate", "nan", "--learning_rate must be > 0, got nan"),
    ("--warmup_ratio", "1.5", "--warmup_ratio must be below 1"),
    ("--save_every", "-1", "--save_every must be >= 0"),
    ("--eval_blocks", "0", "--eval_blocks must be >= 1"),
    ("--time_limit", "-1", "--time_limit must be >= 0"),
    ("--block_size", "1", "--block_size must be >= 2"),
])
def test_numeric_options_are_checked_up_front(option, value, message, tmp_path, capsys):
    error = one_line_error(["train", option, value, "--output_dir", str(tmp_path / "run")], capsys)
    assert message in error
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_config_override_of_the_wrong_type(tmp_path, capsys):
    error = one_line_error(["train", "--config_overrides", "num_hidden_layers=abc", "--output_dir", str(tmp_path)],
                           capsys)
    assert "num_hidden_layers" in error and "int" in error and "'abc'" in error


def test_non_utf8_data_file_names_the_file_and_the_byte(tmp_path, capsys):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"To be, or not to be\n\n" * 10 + "caf\xe9".encode("latin-1"))
    error = one_line_error(["train", "--train_files", str(path), "--output_dir", str(tmp_path / "run")], capsys)
    assert str(path) in error and "byte 213" in error and "UTF-8" in error


def test_eval_split_choices(trained, capsys):
    error = one_line_error(["eval", str(trained), "--split", "test"], capsys)
    assert "invalid choice: 'test'" in error and "validation" in error


def test_missing_model_folder(tmp_path, capsys):
    error = one_line_error(["eval", str(tmp_path / "nothing-here")], capsys)
    assert error.endswith(f"model folder not found: {tmp_path / 'nothing-here'}")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_weights_are_named(trained, tmp_path, damage, capsys):
    folder = tmp_path / "copy"
    shutil.copytree(trained, folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not safetensors at all" * 10)
    for command in ("eval", "generate"):
        error = one_line_error([command, str(folder)], capsys)
        assert f"{weights} is corrupt or truncated" in error


def test_truncated_checkpoint_on_resume(args, capsys):
    train(replace(args, time_limit=0.0))  # stops after one step, leaving checkpoint-1
    checkpoint = Path(args.output_dir) / "checkpoint-1"
    weights = next(checkpoint.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    error = one_line_error(cli_args(args, resume=True), capsys)
    assert "cannot be loaded" in error and str(checkpoint) in error
    (checkpoint / "trainer_state.json").write_text("{trunc")
    error = one_line_error(cli_args(args, resume=True), capsys)
    assert "trainer_state.json is missing or unreadable" in error


def test_unreachable_dataset_fails_fast(tmp_path, monkeypatch, capsys):
    # No network here; an endpoint nobody listens on stands for it anywhere.
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    start = time.perf_counter()
    error = one_line_error(["train", "--dataset_name", "nobody/no-such-dataset", "--output_dir", str(tmp_path)],
                           capsys)
    assert "nobody/no-such-dataset" in error and "cannot be reached" in error
    assert time.perf_counter() - start < 20


def test_offline_dataset_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    error = one_line_error(["train", "--dataset_name", "nobody/no-such-dataset", "--output_dir", str(tmp_path)],
                           capsys)
    assert "--dataset_name nobody/no-such-dataset" in error


def test_too_short_data_names_the_split(args, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("Too short.")
    error = one_line_error(cli_args(args, validation_files=[str(short)]), capsys)
    assert "the validation split has" in error and "--block_size" in error


def test_every_option_an_error_suggests_exists():
    """Messages suggest options by name: each `--name` in the workbench's source is a real option."""
    options = set()
    for parser in (build_parser(), bench.build_parser()):  # `attnlab bench` parses its own options
        for action in parser._subparsers._group_actions:
            for subparser in action.choices.values():
                options |= {s for a in subparser._actions for s in a.option_strings}
    options |= {s for a in report.build_parser()._actions for s in a.option_strings}  # parses its own options
    named = set()
    for module in ("cli", "training", "data", "evaluation", "hub", "audit", "export"):
        named |= set(re.findall(r"(?<![\w-])--[a-z][a-z_-]+", (WORKBENCH / f"{module}.py").read_text()))
    assert named and not named - options, sorted(named - options)


def test_holding_out_too_little_suggests_a_real_option(tmp_path, capsys):
    one_document = tmp_path / "one.txt"
    one_document.write_text("A single paragraph of text, long enough for blocks of 32 bytes. " * 10)
    error = one_line_error(["train", "--train_files", str(one_document), "--output_dir", str(tmp_path / "run"),
                            "--block_size", "32"], capsys)
    assert "--validation_files" in error


# --- runs never overwrite what they did not write ----------------------------------------------------------------


def test_demo_refuses_a_folder_that_is_not_an_earlier_demo(tmp_path, capsys):
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    error = one_line_error(["demo", "--output_dir", str(precious)], capsys)
    assert "not an earlier demo's output" in error
    assert (precious / "chapter1.tex").read_text() == "years of work"
    # An earlier demo's folder (metrics.json marked demo) is the demo's to replace; an empty or new one is fine.
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "metrics.json").write_text(json.dumps({"demo": True, "files": []}))
    assert check_demo_folder(tmp_path / "demo") is True
    assert check_demo_folder(tmp_path / "new") is False


def test_a_finished_run_is_not_overwritten(args, tmp_path, capsys):
    first = train(replace(args, model="retention:Retention"))  # a stack of the example mixer: its module is saved
    error = one_line_error(cli_args(args, model="elita"), capsys)
    assert "already holds an earlier run" in error and "--overwrite_output_dir" in error
    folder = Path(args.output_dir)
    assert "mixer_retention.py" in first["files"] and (folder / "mixer_retention.py").is_file()
    (folder / "notes.txt").write_text("mine")  # not written by a run: kept
    second = train(replace(args, model="elita", overwrite_output_dir=True))
    names = {path.name for path in folder.iterdir()}
    # No stale file of the earlier model stays beside the new one; the user's file does.
    assert "mixer_retention.py" not in names and "modeling_elita.py" in names and "notes.txt" in names
    assert set(second["files"]) == names - {"notes.txt"}
    assert json.loads((folder / "config.json").read_text())["model_type"] == "elita"


def test_other_files_are_not_overwritten(args, capsys):
    Path(args.output_dir).mkdir()
    (Path(args.output_dir) / "data.csv").write_text("a,b")
    assert "already holds other files (data.csv)" in one_line_error(cli_args(args), capsys)


def test_an_interrupted_run_needs_resume_or_overwrite(args, capsys):
    train(replace(args, time_limit=0.0))
    assert "already holds a checkpoint" in one_line_error(cli_args(args), capsys)
    assert train(replace(args, overwrite_output_dir=True))["steps"] == args.max_steps
    assert not list(Path(args.output_dir).glob("checkpoint-*"))


def test_resume_checks_every_option_that_shapes_data_or_model(args, tmp_path, capsys):
    assert {"validation_files", "train_files", "tokenizer", "init_from", "dataset_name", "text_column",
            "config_file", "config_overrides"} <= set(RESUME_KEYS)
    train(replace(args, time_limit=0.0))
    other = tmp_path / "other.txt"
    other.write_text(shakespeare_text()[5000:6000])
    error = one_line_error(cli_args(args, resume=True, validation_files=[str(other)]), capsys)
    assert "validation_files" in error


def test_resume_checks_the_config_file_contents(args, tmp_path, capsys):
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(dict(hidden_size=32, num_attention_heads=4)))
    args = replace(args, config_file=str(config_file))
    train(replace(args, time_limit=0.0))
    config_file.write_text(json.dumps(dict(hidden_size=48, num_attention_heads=4)))  # edited in place
    error = one_line_error(cli_args(args, resume=True), capsys)
    assert "hidden_size=32" in error and "hidden_size=48" in error


# --- config files and overrides ----------------------------------------------------------------------------------


def test_config_file_from_another_folder(args, tmp_path, capsys):
    # A config.json copied from a saved elita folder: refused for another member, ...
    MEMBERS["elita"].causal_lm_class(MEMBERS["elita"].test_config()).save_pretrained(tmp_path / "elita")
    error = one_line_error(cli_args(args, config_file=str(tmp_path / "elita" / "config.json")), capsys)
    assert "'elita' config" in error and "--model triple_product" in error
    # ... and for elita, its auto_map and architectures do not decide the new folder's (they are rebuilt).
    values = json.loads((tmp_path / "elita" / "config.json").read_text())
    values.update(architectures=["SomethingElse"], auto_map={"AutoModel": "modeling_other.Other"})
    (tmp_path / "config.json").write_text(json.dumps(values))
    train(replace(args, model="elita", config_file=str(tmp_path / "config.json")))
    saved = json.loads((Path(args.output_dir) / "config.json").read_text())
    assert saved["architectures"] == ["ElitaForCausalLM"] and saved["auto_map"]["AutoModel"].startswith("modeling_elita")
    # Unknown keys are refused as in --config_overrides.
    (tmp_path / "typo.json").write_text(json.dumps(dict(hiden_size=8)))
    error = one_line_error(cli_args(args, config_file=str(tmp_path / "typo.json"), output_dir=str(tmp_path / "x")),
                           capsys)
    assert "hiden_size" in error


def test_vocabulary_overrides_are_refused_or_reported(tmp_path, caplog):
    with pytest.raises(ValueError, match="vocab_size comes from --tokenizer"):
        build_config("triple_product", "tiny", byte_tokenizer(), 32, ["vocab_size=300"])
    (tmp_path / "config.json").write_text(json.dumps(dict(vocab_size=5)))
    with caplog.at_level(logging.WARNING):
        config = build_config("triple_product", "tiny", byte_tokenizer(), 32, config_file=str(tmp_path / "config.json"))
    assert config.vocab_size == 259 and "vocab_size=5 replaced by the tokenizer's 259" in caplog.text


def test_fp16_on_cpu_is_refused(args, capsys):
    assert "fp16 needs a GPU" in one_line_error(cli_args(args, mixed_precision="fp16"), capsys)


# --- continuing from a saved folder, generation, other libraries' folders ----------------------------------------


def test_init_from_a_saved_folder(args, trained):
    from safetensors.torch import load_file

    start = load_file(trained / "model.safetensors")
    metrics = train(replace(args, model="elita", init_from=str(trained), max_steps=1, learning_rate=1e-12))
    assert metrics["model"] == "triple_product" and metrics["args"]["tokenizer"] == str(trained)
    finetuned = load_file(Path(args.output_dir) / "model.safetensors")
    assert finetuned.keys() == start.keys()
    for name in start:  # a step at a negligible learning rate: the weights are the saved ones
        torch.testing.assert_close(finetuned[name], start[name], atol=1e-6, rtol=0)


def test_init_from_refuses_config_changes(args, trained, capsys):
    error = one_line_error(cli_args(args, init_from=str(trained), config_overrides=["num_hidden_layers=3"]), capsys)
    assert "--init_from" in error and "--config_overrides" in error


def test_empty_prompt_starts_from_bos(trained, capsys):
    main(["generate", str(trained), "--prompt", "", "--max_new_tokens", "5", "--greedy"])  # no error
    model, tokenizer = load_model_and_tokenizer(str(trained))
    torch.manual_seed(0)
    expected = model.generate(torch.tensor([[tokenizer.bos_token_id]]), max_new_tokens=5, do_sample=False)
    assert generate_text(model, tokenizer, "", max_new_tokens=5, do_sample=False) == tokenizer.decode(
        expected[0], skip_special_tokens=True)


def test_generation_is_cut_to_max_position_embeddings(tmp_path, caplog):
    member = MEMBERS["elita"]
    tokenizer = byte_tokenizer()
    config = member.test_config(vocab_size=259, pad_token_id=256, bos_token_id=257, eos_token_id=258,
                                max_position_embeddings=16)
    model = member.causal_lm_class(config).eval()
    with caplog.at_level(logging.WARNING):
        text = generate_text(model, tokenizer, "ROMEO:", max_new_tokens=100, do_sample=False,
                             min_new_tokens=10, eos_token_id=None)
    assert "generating 10 tokens instead of 100" in caplog.text
    assert text.startswith("ROMEO:") and len(tokenizer(text)["input_ids"]) <= 16
    with pytest.raises(ValueError, match="leaves no room"):
        generate_text(model, tokenizer, "x" * 16, max_new_tokens=1)


def test_trust_remote_code_for_other_libraries_folders(trained, tmp_path, capsys):
    """A folder whose model type attnlab does not register loads only with --trust_remote_code."""
    folder = tmp_path / "other"
    shutil.copytree(trained, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "someone_elses_model"
    config["mixer_types"] = ["someone_elses_model"] * config["num_hidden_layers"]  # its own mixer's name
    (folder / "config.json").write_text(json.dumps(config))
    code = folder / "configuration_triple_product.py"
    code.write_text(code.read_text().replace('model_type = "triple_product"', 'model_type = "someone_elses_model"'))
    error = one_line_error(["generate", str(folder), "--max_new_tokens", "2"], capsys)
    assert "trust_remote_code" in error
    main(["generate", str(folder), "--max_new_tokens", "2", "--greedy", "--trust_remote_code"])
    (tmp_path / "text.txt").write_text(shakespeare_text()[:300])
    main(["eval", str(folder), "--trust_remote_code", "--files", str(tmp_path / "text.txt"), "--block_size", "16",
          "--max_blocks", "2"])
    assert "bits/byte" in capsys.readouterr().out


def test_demo_helpers():
    assert cli.real_word_share("And with thee heart reeven, coull!") == pytest.approx(4 / 6)
    tiny = replace(TrainArgs(**cli.DEMO_ARGS), block_size=16, batch_size=2,
                   config_overrides=["hidden_size=32", "intermediate_size=64"])
    threads, seconds = cli.measure_threads(tiny)
    assert threads in (1, 2) and 0 < seconds < 60
    assert len(shakespeare_text()) > 0 and cli.DEMO_SAMPLE_TOKENS + len("ROMEO:\n") <= cli.DEMO_ARGS["block_size"]


# --- no silent wrong answers -----------------------------------------------------------------------------------


def test_weights_corrupted_in_place_are_named(trained, tmp_path, capsys):
    folder = tmp_path / "copy"
    shutil.copytree(trained, folder)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4096:] = b"\xff" * 4096  # same size, header intact: the last tensor's values become NaN
    weights.write_bytes(bytes(data))
    for command in ("eval", "generate"):
        error = one_line_error([command, str(folder)], capsys)
        assert f"{weights}: the weight " in error and "non-finite value(s)" in error


def test_a_non_finite_loss_in_eval_is_an_error_naming_the_folder(trained, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "copy"
    shutil.copytree(trained, folder)
    weights = load_file(folder / "model.safetensors")
    # Finite weights whose logits overflow: the final norm's gain at 3e38 makes them +-inf, the loss NaN.
    weights["model.norm.weight"] = torch.full_like(weights["model.norm.weight"], 3e38)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    for extra in ([], ["--window", "16"]):
        error = one_line_error(["eval", str(folder), "--max_blocks", "2", "--max_tokens", "64", *extra], capsys)
        assert error.startswith(f"attnlab eval: error: evaluating {folder}: the loss is not finite"), error


# --- options reach what they set ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["eval", "generate"])
def test_num_threads_for_eval_and_generate(trained, command, capsys):
    torch.set_num_threads(2)
    extra = ["--max_blocks", "1"] if command == "eval" else ["--max_new_tokens", "2"]
    main([command, str(trained), "--num_threads", "1", *extra])
    assert torch.get_num_threads() == 1
    assert "--num_threads must be >= 1" in one_line_error([command, str(trained), "--num_threads", "0"], capsys)


def test_generate_options_reach_generate(trained, monkeypatch, capsys):
    seen = {}
    original = transformers.GenerationMixin.generate

    def recording_generate(self, *args, **kwargs):
        seen.update(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(transformers.GenerationMixin, "generate", recording_generate)
    main(["generate", str(trained), "--max_new_tokens", "3", "--top_p", "0.7", "--top_k", "5", "--temperature",
          "0.5", "--repetition_penalty", "1.3"])
    assert seen["top_p"] == 0.7 and seen["top_k"] == 5 and seen["temperature"] == 0.5 and seen["do_sample"] is True
    assert seen["repetition_penalty"] == 1.3 and seen["max_new_tokens"] == 3
    seen.clear()
    main(["generate", str(trained), "--max_new_tokens", "3", "--greedy", "--top_p", "0.7"])
    assert "top_p" not in seen and not seen.get("do_sample")


def test_eval_defaults_are_the_documented_ones(trained, monkeypatch, capsys):
    """`attnlab eval` scores packed blocks of 256 tokens (README: "held-out plays, packed blocks of 256"); --window N
    without --stride slides by N // 2 (its --help: "default: window // 2")."""
    seen = {}
    real_pack, real_window = cli.pack_blocks, cli.evaluate_sliding_window

    def pack(text, tokenizer, block_size, **kwargs):
        seen["block_size"] = block_size
        return real_pack(text, tokenizer, block_size, **kwargs)

    def window(model, tokens, byte_lengths, window, stride, **kwargs):
        seen["window"], seen["stride"] = window, stride
        return real_window(model, tokens, byte_lengths, window, stride, **kwargs)

    monkeypatch.setattr(cli, "pack_blocks", pack)
    monkeypatch.setattr(cli, "evaluate_sliding_window", window)
    main(["eval", str(trained), "--max_blocks", "1"])
    assert seen["block_size"] == 256
    main(["eval", str(trained), "--window", "24", "--max_tokens", "100"])
    assert (seen["window"], seen["stride"]) == (24, 12)
    main(["eval", str(trained), "--window", "24", "--stride", "5", "--max_tokens", "100"])
    assert seen["stride"] == 5
    # The sliding window scores every token after the first exactly once, whatever the stride.
    assert "99 tokens" in capsys.readouterr().out.strip().splitlines()[-1]


def test_the_demo_time_limit_is_a_backstop():
    # Measured: the demo's steps took about 1.0 s each on a 2-core VM at load 7-9 (0.5 s idle); the limit must
    # leave a loaded machine twice that, so only a far slower one ends training early.
    assert cli.DEMO_ARGS["time_limit"] >= 2 * 1.0 * cli.DEMO_ARGS["max_steps"]
    assert "about 4 minutes on an idle 2-core machine" in " ".join(build_parser().format_help().split())
