"""Files chaiNNer opens and files other trainers wrote, for SPAN, Compact, PLKSR and ESRGAN.

A run's `.safetensors` holds the plain state dict in spandrel's layout (the keys the spandrel
fixtures pin, zerosr's identity only in the header), `python -m zerosr.export M out.pth` writes
it under `params_ema`, and a `.pth` from traiNNer-redux / neosr (wrapped or bare) is recognised,
fine-tuned with `train.pretrain`, upscaled and evaluated.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from test_train import make_dataset, run, tiny_overrides
from test_upscale import command, error_lines
from zerosr import archs
from zerosr.data.io import read_image

FIXTURES = Path(__file__).parent / "fixtures" / "archs" / "community"
SPANDREL_KEYS = json.loads((FIXTURES / "spandrel_keys.json").read_text())


def trained(option: str, scale: int = 2, **params) -> torch.nn.Module:
    torch.manual_seed(3)
    model = archs.build(option, scale, **params)
    with torch.no_grad():  # away from the initialisation, so a file's weights are told apart from a fresh build
        for value in model.parameters():
            value.add_(torch.randn_like(value) * 0.01)
    return model.eval()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), count=4, size=32)


def test_run_weights_are_spandrels_plain_state_dict_with_identity_in_the_header(tmp_path):
    path = archs.save(trained("superultracompact"), tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        keys = {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}
        header = handle.metadata()
    assert keys == SPANDREL_KEYS["superultracompact_x2"]["keys"]
    assert header["architecture"] == "Compact" and header["name"] == "superultracompact" and header["scale"] == "2"


def test_export_pth_writes_the_state_dict_chainner_reads(tmp_path):
    model = trained("span_s")
    source = archs.save(model, tmp_path / "span_s.safetensors")
    result = command("export", source, tmp_path / "span_s.pth")
    assert result.returncode == 0, result.stderr
    content = torch.load(tmp_path / "span_s.pth", weights_only=True)
    assert list(content) == ["params_ema"]
    state = content["params_ema"]
    assert {key: list(value.shape) for key, value in state.items()} == SPANDREL_KEYS["span_s_x2"]["keys"]
    assert all(torch.equal(state[key], value) for key, value in model.state_dict().items())
    assert "no_norm" in state  # spandrel's marker: this SPAN takes its input unnormalised

    nano = archs.save(archs.build("paragonsr2_nano", 2), tmp_path / "nano.safetensors")
    refused = command("export", nano, tmp_path / "nano.pth")
    assert refused.returncode == 2 and len(error_lines(refused)) == 1 and "export to .onnx" in refused.stderr
    assert not (tmp_path / "nano.pth").exists()


@pytest.mark.parametrize("wrapper", ["params_ema", "params", None])
def test_other_trainers_pth_is_recognised_fine_tuned_upscaled_and_evaluated(wrapper, data, tmp_path):
    model = trained("superultracompact")
    state = {f"module.{key}": value for key, value in model.state_dict().items()}  # as DDP saves it
    path = tmp_path / "other.pth"
    torch.save({wrapper: state, "iter": 1000} if wrapper else state, path)
    weights = archs.read_weights(path)
    assert (weights.name, weights.scale) == ("superultracompact", 2)

    # Fine-tuned: an LR of 1e-12 leaves the saved network where the file started it.
    run_dir = tmp_path / "run"
    run(tiny_overrides(data, arch="superultracompact", **{"train.pretrain": path, "train.lr": 1e-12,
                                                           "train.total_iter": 3}), run_dir)
    tuned = archs.load(run_dir / "models" / "net_g_00000003.safetensors")
    assert all(torch.allclose(tuned.state_dict()[key], value, atol=1e-6) for key, value in model.state_dict().items())

    hr_dir, lr_dir = data
    out = tmp_path / "up.png"
    result = command("upscale", path, lr_dir / "img0.png", out, "--tile", 0)
    assert result.returncode == 0, result.stderr
    lr = torch.from_numpy(read_image(lr_dir / "img0.png")).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = model(lr).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    assert np.abs(read_image(out) - expected).max() <= 1 / 255 + 1e-6

    report = command("evaluate", path, "--hr", hr_dir, "--lr", lr_dir, "--json", "--metrics", "psnr,ssim")  # no network here
    assert report.returncode == 0, report.stderr
    assert len(json.loads(report.stdout)["images"]) == 4


def test_a_file_no_family_recognises_is_one_line_naming_the_families(tmp_path, data):
    path = tmp_path / "foreign.pth"
    torch.save({"params_ema": {"encoder.weight": torch.zeros(4, 3, 3, 3)}}, path)
    result = command("upscale", path, data[1] / "img0.png", tmp_path / "x.png")
    assert result.returncode == 2 and len(error_lines(result)) == 1
    assert all(family in result.stderr for family in ("SPAN", "Compact", "PLKSR", "ESRGAN", "ParagonSR2"))
