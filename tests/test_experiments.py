"""The comparison recipe's pieces that decide its numbers: equal parameter counts and the mean ± std summary."""

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
