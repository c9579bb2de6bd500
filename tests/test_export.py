"""ONNX export: `python -m zerosr.export`, dynamic batch/height/width, onnxruntime parity."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from zerosr.archs import build, save
from zerosr.export import main

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def weights_file(tmp_path, name="paragonsr2_nano", scale=2, **overrides):
    torch.manual_seed(0)
    model = build(name, scale, **overrides)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if key.endswith("gamma"):
                param.fill_(0.3)  # attention and layer scales start near zero; make them count
    return model.eval(), save(model, tmp_path / f"{name}_x{scale}.safetensors")


def run_onnx(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


@pytest.mark.parametrize("name, scale", [("paragonsr2_nano", 2), ("paragonsr2_tiny", 3)])
def test_exported_graph_matches_pytorch_at_different_sizes(tmp_path, name, scale, capsys):
    model, weights = weights_file(tmp_path, name, scale)
    out = tmp_path / "model.onnx"
    assert main([str(weights), str(out)]) == 0
    assert f"{name} x{scale}" in capsys.readouterr().out
    onnx.checker.check_model(onnx.load(str(out)))
    # Sizes on both sides of the 32-pixel window, batch 1 and 2, not multiples of anything.
    for shape in [(1, 3, 20, 27), (2, 3, 45, 38)]:
        x = torch.rand(shape)
        with torch.no_grad():
            expected = model(x).numpy()
        got = run_onnx(out, x)
        assert got.shape == expected.shape == (shape[0], 3, shape[2] * scale, shape[3] * scale)
        assert np.abs(got - expected).max() <= 1e-4


def test_fp16_export_has_half_io_and_stays_close(tmp_path):
    model, weights = weights_file(tmp_path)
    out = tmp_path / "model_fp16.onnx"
    assert main([str(weights), str(out), "--fp16", "--opset", "18"]) == 0
    graph = onnx.load(str(out))
    assert graph.opset_import[0].version == 18
    half = onnx.TensorProto.FLOAT16
    assert graph.graph.input[0].type.tensor_type.elem_type == half
    assert graph.graph.output[0].type.tensor_type.elem_type == half
    x = torch.rand(1, 3, 36, 22)
    with torch.no_grad():
        expected = model(x).numpy()
    got = run_onnx(out, x.half()).astype(np.float32)
    assert np.abs(got - expected).max() <= 5e-3


def test_traiNNer_pth_exports_too(tmp_path):
    model, _ = weights_file(tmp_path, "paragonsr2_micro", 4)
    pth = tmp_path / "net_g_ema.pth"
    torch.save({"params_ema": model.state_dict()}, pth)
    assert main([str(pth), str(tmp_path / "micro.onnx")]) == 0
    x = torch.rand(1, 3, 17, 33)
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(run_onnx(tmp_path / "micro.onnx", x) - expected).max() <= 1e-4


def test_errors_print_one_line_and_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "missing.safetensors"), str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no such weights file" in err and err.count("\n") == 1

    _, weights = weights_file(tmp_path)
    assert main([str(weights), str(tmp_path)]) == 2  # a directory, not a file
    assert "is a directory" in capsys.readouterr().err
    assert main([str(weights), str(tmp_path / "old.onnx"), "--opset", "9"]) == 2
    assert "opset 9 is too old" in capsys.readouterr().err


def test_module_entry_point(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "zerosr.export", str(tmp_path / "none.pth"), str(tmp_path / "x.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "none.pth" in result.stderr
