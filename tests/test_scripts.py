"""The record-writing scripts still run against the current package (a script that reads a removed field fails here,
not when someone next regenerates its record)."""

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prompt_lookup_script_writes_a_record_for_a_hybrid(tmp_path):
    script = load_script("prompt_lookup_speedup")
    script.main(["--models", "elita_attention", "--steps", "2", "--passage", "48", "--repeat", "16",
                 "--new-tokens", "6", "--rounds", "1", "--out", str(tmp_path)])
    record = json.loads(next(tmp_path.glob("**/prompt-lookup.json")).read_text())
    (row,) = record["rows"]
    assert row["model"] == "elita_attention"
    assert row["outputs_equal"]  # prompt lookup decodes exactly what greedy decodes
    assert row["new_tokens"] == 6
