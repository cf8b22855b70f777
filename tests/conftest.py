import sys
from pathlib import Path

import pytest
import torch

from attnlab.members import HYBRIDS, MEMBERS, STACKS
from attnlab.workbench.data import shakespeare_text

# The example mixer (examples/retention) is a module outside attnlab, imported by path as a user's would be.
EXAMPLE_MIXER_FOLDER = Path(__file__).resolve().parents[1] / "examples" / "retention"
sys.path.insert(0, str(EXAMPLE_MIXER_FOLDER))

# The contract suite runs over every registered member, every hybrid and the heterogeneous stacks.
CONTRACT_MODELS = {**MEMBERS, **HYBRIDS, **STACKS}


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


@pytest.fixture
def fail_second_save(monkeypatch):
    """Calling it makes accelerate's second `save_state` from then on fail once its files are (partly) written, as a
    full disk would. Returns the names of the folders saves were asked for, and a function restoring real saves."""
    from accelerate import Accelerator

    def arm():
        written = []
        save_state = Accelerator.save_state

        def failing_save_state(self, output_dir=None, **kwargs):
            written.append(Path(output_dir).name)
            result = save_state(self, output_dir, **kwargs)
            if len(written) == 2:
                raise OSError("No space left on device")
            return result

        monkeypatch.setattr(Accelerator, "save_state", failing_save_state)
        return written, lambda: monkeypatch.setattr(Accelerator, "save_state", save_state)

    return arm
