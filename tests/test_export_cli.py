"""`attnlab export FOLDER --format onnx|torch --output FILE`: the written file equals eager at other lengths, appears
only once checked, replaces only a file attnlab export wrote, and bad input gets one line. A one-layer evolving
(the fastest member to export)."""

import copy
import re

import pytest
import torch

from attnlab.members import BASELINES, MEMBERS, TIME_SERIES_MEMBERS
from attnlab.workbench import cli
from attnlab.workbench import export as export_module
from attnlab.workbench.export import export_record


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "evolving"
    torch.manual_seed(0)
    MEMBERS["evolving"].causal_lm_class(MEMBERS["evolving"].test_config(num_hidden_layers=1)).save_pretrained(path)
    return path


def eager_logits(folder, input_ids):
    model = MEMBERS["evolving"].causal_lm_class.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(input_ids=input_ids, use_cache=False).logits


def printed_differences(text: str) -> dict[int, float]:
    return {int(length): float(value) for length, value in re.findall(r"length (\d+): ([0-9.e+-]+)", text)}


def one_line_error(capsys, argv) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(argv)
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1, error
    return error[0]


def test_torch_export_is_checked_and_replaces_only_what_it_wrote(folder, tmp_path, capsys):
    output = tmp_path / "out" / "evolving.pt2"
    command = ["export", str(folder), "--format", "torch", "--output", str(output), "--length", "8",
               "--num_threads", "1"]
    cli.main(command)
    differences = printed_differences(capsys.readouterr().out)
    assert sorted(differences) == [5, 17] and max(differences.values()) < 1e-4
    input_ids = torch.randint(3, 50, (1, 11))
    program = torch.export.load(output)
    assert (program.module()(input_ids) - eager_logits(folder, input_ids)).abs().max() < 1e-4
    assert export_record(output)["format"] == "torch"
    assert [path.name for path in output.parent.iterdir()] == ["evolving.pt2"]  # no scratch folder left
    # Its own file is replaced; any other one is left alone, a text file or a program it did not write.
    output.write_bytes(output.read_bytes())
    before = output.stat().st_mtime_ns
    cli.main(command)
    assert output.stat().st_mtime_ns != before
    foreign = tmp_path / "foreign.pt2"
    torch.export.save(program, foreign)
    for content in (None, b"my notes"):
        if content is not None:
            foreign.write_bytes(content)
        kept = foreign.read_bytes()
        error = one_line_error(capsys, [*command[:4], "--output", str(foreign)])
        assert "exists and was not written by attnlab export" in error
        assert foreign.read_bytes() == kept


def test_an_export_that_differs_from_eager_is_refused_and_not_written(folder, tmp_path, capsys, monkeypatch):
    export_program = export_module.export_program

    def perturbed(model, **kwargs):  # a program of other weights than the model the check runs eagerly
        other = copy.deepcopy(model)
        with torch.no_grad():
            other.lm_head.weight.add_(0.01)
        return export_program(other, **kwargs)

    monkeypatch.setattr(export_module, "export_program", perturbed)
    output = tmp_path / "bad.pt2"
    error = one_line_error(capsys, ["export", str(folder), "--format", "torch", "--output", str(output)])
    assert re.search(r"differs from the eager model by [0-9.e-]+ at length 33 \(tolerance 0.0001\); nothing was "
                     r"written", error), error
    assert list(tmp_path.iterdir()) == []


def test_bad_input_gets_one_line(folder, tmp_path, capsys):
    llama = tmp_path / "llama"
    BASELINES["llama"].causal_lm_class(BASELINES["llama"].test_config()).save_pretrained(llama)
    vq = tmp_path / "vq"
    member = TIME_SERIES_MEMBERS["vqlnmlp"]
    member.prediction_class(member.config_class(context_length=8, d_model=8, codebook_size=16)).save_pretrained(vq)
    out = str(tmp_path / "x.pt2")
    for argv, message in [
        ([str(tmp_path / "nowhere"), "--format", "torch", "--output", out], "is not a model folder"),
        ([str(folder), "--format", "tflite", "--output", out], "--format must be one of onnx, torch, got 'tflite'"),
        ([str(folder), "--format", "torch", "--output", str(tmp_path / "x.onnx")], "a torch.export program is a .pt2"),
        ([str(folder), "--format", "torch", "--output", str(tmp_path)], "is a folder"),
        ([str(folder), "--format", "torch", "--output", out, "--length", "1"], "example_length must be in \\[2, "),
        ([str(folder), "--format", "torch", "--output", out, "--length", "9999"], "example_length must be in"),
        ([str(llama), "--format", "torch", "--output", out], "holds a 'llama' model .*exports attnlab members"),
        ([str(vq), "--format", "onnx", "--output", out], "time-series member 'vqlnmlp'"),
    ]:
        error = one_line_error(capsys, ["export", *argv])
        assert error.startswith("attnlab export: error: ") and re.search(message, error), (argv, error)
    assert not (tmp_path / "x.pt2").exists()


def test_onnx_export_is_checked_with_onnxruntime(folder, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    output = tmp_path / "evolving.onnx"
    cli.main(["export", str(folder), "--format", "onnx", "--output", str(output), "--length", "8",
              "--num_threads", "1"])
    differences = printed_differences(capsys.readouterr().out)
    assert sorted(differences) == [5, 17] and max(differences.values()) < 1e-4
    input_ids = torch.randint(3, 50, (1, 11))
    (logits,) = onnxruntime.InferenceSession(str(output)).run(None, {"input_ids": input_ids.numpy()})
    assert (torch.from_numpy(logits) - eager_logits(folder, input_ids)).abs().max() < 1e-4
    assert export_record(output) == dict(folder=str(folder), model_type="evolving", format="onnx", length=8)
