import pytest
import torch

from attnlab.members import HYBRIDS, MEMBERS
from attnlab.workbench.data import shakespeare_text

# The contract suite runs over every registered member and every hybrid stack.
CONTRACT_MODELS = {**MEMBERS, **HYBRIDS}


@pytest.fixture(params=sorted(CONTRACT_MODELS), ids=sorted(CONTRACT_MODELS))
def member(request):
    return CONTRACT_MODELS[request.param]


@pytest.fixture
def model(member):
    torch.manual_seed(0)
    return member.causal_lm_class(member.test_config()).eval()


@pytest.fixture(autouse=True)
def restore_thread_count():
    # train() sets the thread count (one thread is several times faster for tiny models on a shared machine).
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    """A small train / validation pair (about 15 blocks of 32 bytes per epoch at batch 4, so runs cross epochs)."""
    folder = tmp_path_factory.mktemp("text")
    text = shakespeare_text()
    (folder / "train.txt").write_text(text[:2000])
    (folder / "valid.txt").write_text(text[2000:2600])
    return [str(folder / "train.txt")], [str(folder / "valid.txt")]
