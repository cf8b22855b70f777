"""The contract suite for pytest: one test per check of `contract.py`, for a mixer or any model fixture.

    from attnlab.workbench.contract_tests import MixerContractTests

    class TestGatedMixer(MixerContractTests):
        mixer = "mypkg.mixers:GatedMixer"          # on the Python path of the test run

runs every check on a tiny stack of the mixer and on its hybrid with attention. `ContractTests` does the same for
any `model` fixture you define (attnlab's own suite runs it over every member, hybrid and stack).
"""

from typing import Callable

import pytest
import torch

from .contract import CHECKS, TINY_STACK, Check, ContractInputs, run_check



def mixer_models(mixer: str, **overrides) -> dict[str, Callable]:
    """Builders of the two models a mixer is checked as: a stack of it and its hybrid with attention."""
    from ..members import mixer_member

    def build(hybrid: bool):
        def make():
            torch.manual_seed(0)
            member = mixer_member(mixer, hybrid=hybrid)
            return member.causal_lm_class(member.build_config({**TINY_STACK, **overrides})).eval()
        return make

    return {"stack": build(False), "hybrid": build(True)}


class ContractTests:
    """Subclass and give a `model` fixture (or, for a mixer, use `MixerContractTests`): every check of the
    contract becomes one test, named after the check."""

    @pytest.fixture(params=[check.name for check in CHECKS])
    def check(self, request) -> Check:
        return next(c for c in CHECKS if c.name == request.param)

    def test_contract(self, model, check):
        result = run_check(check, model, ContractInputs.for_model(model))
        assert result.status != "FAIL", f"{result.check}: {result.value}"


class MixerContractTests(ContractTests):
    """The whole contract on a mixer given by import path (or registered name): set `mixer` (and optionally
    `config_overrides`, e.g. `{"mixer_options": {...}}`)."""

    mixer: str = None
    config_overrides: dict = {}

    @pytest.fixture(params=["stack", "hybrid"])
    def model(self, request):
        if not self.mixer:
            pytest.fail(f"{type(self).__name__}: set the class attribute `mixer` to your mixer's import path")
        return mixer_models(self.mixer, **self.config_overrides)[request.param]()
