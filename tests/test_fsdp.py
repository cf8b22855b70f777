"""FSDP2 through accelerate with 2 CPU processes (gloo) for every member: training, a sharded checkpoint and its
resume, and the gathered final save, which loads as a plain model and scores what the sharded run reported.
depth_recurrent's entropy-bonus step count is a training counter outside the state dict (accelerate's FSDP2 loads
every state-dict entry as a sharded parameter): the checkpoint carries it, and the resumed run's losses show it.

One launch trains every member (tests/fsdp_cpu_worker.py; tiny configs, 3 steps), so the suite pays the start-up of
two processes once.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnlab.members import MEMBERS
from attnlab.tokenization_attnlab import byte_tokenizer, token_byte_lengths
from attnlab.workbench.data import shakespeare_text
from attnlab.workbench.evaluation import evaluate_blocks, load_model_and_tokenizer
from attnlab.workbench.training import TrainArgs, load_blocks

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("fsdp")
    text = shakespeare_text()
    (work_dir / "train.txt").write_text(text[:2000])
    (work_dir / "valid.txt").write_text(text[2000:2600])
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--use_fsdp", "--fsdp_version", "2",
               "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP", "--fsdp_state_dict_type", "SHARDED_STATE_DICT",
               str(REPO / "tests" / "fsdp_cpu_worker.py"), str(work_dir), str(work_dir / "train.txt"),
               str(work_dir / "valid.txt")]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=500)
    assert result.returncode == 0 and (work_dir / "results.json").is_file(), result.stderr[-3000:]
    return work_dir, json.loads((work_dir / "results.json").read_text())


@pytest.mark.parametrize("name", sorted(MEMBERS))
def test_fsdp_trains_resumes_and_saves_the_gathered_model(fsdp_run, name):
    work_dir, results = fsdp_run
    result = results[name]
    assert "error" not in result, result.get("traceback")
    assert result["distributed_type"] == "FSDP"
    full, resumed = result["full"], result["resumed"]
    assert full["num_processes"] == 2 and full["steps"] == 3
    # The resumed run (stopped after one step, continued from the sharded checkpoint) is the uninterrupted one.
    assert result["stopped_steps"] == 1
    assert resumed["train_loss"] == pytest.approx(full["train_loss"], abs=1e-5)
    assert resumed["final_eval"] == pytest.approx(full["final_eval"], abs=1e-5)
    # The final save gathered the full weights: a plain model (one process) scores what the sharded run reported,
    # and the folder holds the member's own code, not torch's FSDP classes.
    folder = work_dir / f"{name}-full"
    assert not list(folder.glob("checkpoint-*")) and not list(folder.glob("_fsdp*.py"))
    model, tokenizer = load_model_and_tokenizer(str(folder))
    assert type(model) is MEMBERS[name].causal_lm_class
    args = TrainArgs(train_files=[str(work_dir / "train.txt")], validation_files=[str(work_dir / "valid.txt")],
                     block_size=32)
    _, validation = load_blocks(args, tokenizer)
    single = evaluate_blocks(model, validation, token_byte_lengths(tokenizer), batch_size=2)
    assert single.to_dict() == pytest.approx(full["final_eval"], rel=1e-5)
