"""The path a researcher takes with a mixer written outside attnlab, at tiny size: scaffold -> audit -> train on the
embedded corpus -> bench against Llama -> save -> load as remote code with attnlab and the mixer's module blocked."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from attnlab.workbench.cli import main as cli_main
from attnlab.workbench.contract import run_checks
from attnlab.workbench.contract_tests import mixer_models
from attnlab.workbench.scaffold import write_scaffold

pytestmark = pytest.mark.slow


def test_new_mixer_writes_a_mixer_that_passes_the_contract_as_generated(tmp_path, monkeypatch, capsys):
    cli_main(["new-mixer", "gated_decay", "--output_dir", str(tmp_path / "mine")])
    assert "attnlab audit --mixer gated_decay:GatedDecayMixer" in capsys.readouterr().out
    files = sorted(os.listdir(tmp_path / "mine"))
    assert files == ["README.md", "gated_decay.py", "test_gated_decay.py"]
    test_source = (tmp_path / "mine" / "test_gated_decay.py").read_text()
    assert 'mixer = "gated_decay:GatedDecayMixer"' in test_source and "MixerContractTests" in test_source
    monkeypatch.syspath_prepend(str(tmp_path / "mine"))
    for kind, make in mixer_models("gated_decay:GatedDecayMixer").items():
        failed = [(r.check, r.value) for r in run_checks(make()) if r.status == "FAIL"]
        assert not failed, (kind, failed)
    with pytest.raises(ValueError, match="never overwrites"):  # a second run leaves the edited files alone
        write_scaffold("gated_decay", tmp_path / "mine")
    with pytest.raises(SystemExit) as exit:
        cli_main(["new-mixer", "Not-A-Name", "--output_dir", str(tmp_path / "other")])
    assert exit.value.code == 2 and "lower-case Python identifier" in capsys.readouterr().err


REMOTE_PIPELINE = textwrap.dedent("""
    import sys
    sys.modules["attnlab"] = None
    sys.modules["retention"] = None
    from transformers import pipeline
    generator = pipeline("text-generation", model=sys.argv[1], trust_remote_code=True)
    print(repr(generator("ROMEO:", max_new_tokens=12, do_sample=False)[0]["generated_text"]))
""")


def test_the_example_mixer_from_audit_to_a_remote_code_folder(tmp_path, text_files, capsys):
    mixer = "retention:Retention"
    with pytest.raises(SystemExit) as exit:
        cli_main(["audit", "--mixer", mixer, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert exit.value.code == 0 and report["passed"], report

    train_files, validation_files = text_files
    run = tmp_path / "run"
    cli_main(["train", "--mixer", f"{mixer}+attention", "--preset", "tiny", "--max_steps", "6", "--block_size", "32",
              "--batch_size", "4", "--train_files", *train_files, "--validation_files", *validation_files,
              "--output_dir", str(run), "--num_threads", "1"])
    metrics = json.loads((run / "metrics.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert config["mixer_types"] == [mixer, "attention"] and metrics["model"] == f"{mixer}+attention"
    assert (run / "mixer_retention.py").is_file()

    cli_main(["bench", "speed", "--quick", "--models", "llama", "--mixer", mixer, "--output-dir", str(tmp_path / "b")])
    record = json.loads((tmp_path / "b" / "speed-quick.json").read_text())
    measured = {r["label"] for r in record["records"]}
    assert {mixer, f"{mixer}+attention", "llama"} <= measured, measured

    with torch.no_grad():
        from attnlab.workbench.evaluation import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(str(run))
        ids = tokenizer("ROMEO:", return_tensors="pt").input_ids
        expected = tokenizer.decode(model.generate(ids, max_new_tokens=12, do_sample=False)[0])
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", REMOTE_PIPELINE, str(run)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == repr(expected)
