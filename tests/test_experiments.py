"""The comparison recipe's pieces that decide its numbers: equal parameter counts and the mean ± std summary."""

import json

import pytest

from attnlab.workbench.experiments import Comparison, matched_baseline_overrides, summarise
from attnlab.members import MEMBERS


@pytest.mark.parametrize("name", sorted(MEMBERS))
def test_llama_is_matched_to_the_member_parameter_count(name):
    overrides, member_parameters, llama_parameters = matched_baseline_overrides(
        Comparison(member=[name], preset="tiny", config_overrides=["num_hidden_layers=3"]))
    assert "num_hidden_layers=3" in overrides and overrides[-1].startswith("intermediate_size=")
    assert abs(llama_parameters - member_parameters) / member_parameters < 0.005


def test_summary_is_mean_and_sample_std_over_seeds():
    final = lambda loss: dict(loss=loss, accuracy=0.5, bits_per_byte=loss / 0.69, tokens=10)
    runs = [dict(model="m", seed=seed, final=final(loss), train_seconds=1.0) for seed, loss in [(0, 1.0), (1, 3.0)]]
    summary = summarise(runs)["m"]
    assert summary["loss"] == pytest.approx((2.0, 2 ** 0.5))
    assert summary["accuracy"] == (0.5, 0.0) and summary["held_out_tokens"] == 10


def test_a_comparison_record_states_its_commit_date_and_machine(tmp_path, monkeypatch):
    """`attnlab report` judges a record's age by its commit: a comparison that does not record one is shown as of
    unknown age on every page that quotes it. (Training is replaced: its final evaluation of the whole held-out
    text would take most of a minute, and this is about the record.)"""
    from attnlab.workbench import experiments
    from attnlab.workbench.benchmarking import code_commit
    from attnlab.workbench.experiments import run, write_report
    from attnlab.workbench.report import provenance

    final = dict(loss=2.0, accuracy=0.5, bits_per_byte=2.9, tokens=64)
    monkeypatch.setattr(experiments, "train", lambda args: dict(
        parameters=1, train_seconds=0.1, final_eval=final, eval=[dict(step=1, loss=2.0)]))

    comparison = Comparison(member=["elita"], preset="tiny", block_size=16, batch_size=2, steps=1, seeds=[0],
                            evaluations=1, eval_blocks=1, name="tiny_comparison")
    results = run(comparison, tmp_path / "work")
    page = write_report(results, "python scripts/compare_shakespeare.py --steps 1", tmp_path / "results")
    facts = provenance(json.loads(page.with_suffix(".json").read_text()))
    assert facts["commit"] == code_commit() and facts["commit"]
    assert facts["date"].endswith("UTC") and "CPUs usable" in facts["machine"]
    assert facts["command"] == "python scripts/compare_shakespeare.py --steps 1"
