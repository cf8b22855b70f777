import pytest
import torch

from attnlab.members import HYBRIDS, MEMBERS

# The contract suite runs over every registered member and every hybrid stack.
CONTRACT_MODELS = {**MEMBERS, **HYBRIDS}


@pytest.fixture(params=sorted(CONTRACT_MODELS), ids=sorted(CONTRACT_MODELS))
def member(request):
    return CONTRACT_MODELS[request.param]


@pytest.fixture
def model(member):
    torch.manual_seed(0)
    return member.causal_lm_class(member.test_config()).eval()
