import pytest
import torch

from attnlab.members import MEMBERS


@pytest.fixture(params=sorted(MEMBERS), ids=sorted(MEMBERS))
def member(request):
    return MEMBERS[request.param]


@pytest.fixture
def model(member):
    torch.manual_seed(0)
    return member.causal_lm_class(member.test_config()).eval()
