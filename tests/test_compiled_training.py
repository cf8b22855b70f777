"""`attnlab train --compile`: the compiled training step gives the eager run's losses and weights.

The test compiles with the aot_eager backend: dynamo captures the graph and AOTAutograd traces forward and backward
(what inductor would compile), but runs the captured aten graph eagerly, because inductor's C++ code generation takes
minutes on a 2-core machine. Inductor itself is exercised by `attnlab bench speed --compile`.
"""

import pytest
import torch
from safetensors.torch import load_file

from attnlab.workbench.cli import build_parser
from attnlab.workbench.data import shakespeare_text
from attnlab.workbench.training import TrainArgs, train


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_compiled_training_matches_eager(tmp_path):
    text = shakespeare_text()
    (tmp_path / "train.txt").write_text(text[:3000])
    (tmp_path / "valid.txt").write_text(text[3000:3600])
    common = dict(model="triple_product", preset="tiny", train_files=[str(tmp_path / "train.txt")],
                  validation_files=[str(tmp_path / "valid.txt")], block_size=32, batch_size=4, max_steps=4,
                  eval_every=0, eval_blocks=2, save_every=0, learning_rate=3e-3, num_threads=1)
    eager = train(TrainArgs(**common, output_dir=str(tmp_path / "eager")))
    compiled = train(TrainArgs(**common, compile=True, compile_backend="aot_eager",
                               output_dir=str(tmp_path / "compiled")))
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-5)
    assert compiled["final_eval"]["loss"] == pytest.approx(eager["final_eval"]["loss"], rel=1e-5)
    eager_weights, compiled_weights = (load_file(tmp_path / folder / "model.safetensors")
                                       for folder in ("eager", "compiled"))
    assert eager_weights.keys() == compiled_weights.keys()  # saved from the eager module: no _orig_mod. prefixes
    for name, weight in eager_weights.items():
        torch.testing.assert_close(compiled_weights[name], weight, rtol=1e-4, atol=1e-6)
    # Compilation is reported apart from the steady step time, and only when compiling.
    assert compiled["compile_seconds"] > 0 and compiled["step_seconds"] > 0 and eager["compile_seconds"] is None


def test_compile_flags_on_the_command_line():
    args = build_parser().parse_args(["train", "--compile", "--compile_backend", "aot_eager"])
    assert args.compile and args.compile_backend == "aot_eager"
