"""LPIPS and DISTS against their reference implementations, on seeded random backbones.

`tests/fixtures/perceptual_reference.json` holds the reference implementations' outputs for the
images and weights made by `images()`, `backbone()`, `lpips_heads()` and `dists_weights()` below
(seeded, so both sides make the same tensors and only numbers are committed). To regenerate it:
put the reference files in one folder, run alone -- `lpips/` from richzhang/PerceptualSimilarity
(`lpips/__init__.py`, `lpips.py`, `pretrained_networks.py`, `trainer.py`), `DISTS_pt.py` from
dingkeyan93/DISTS -- with a stub `torchvision` package whose `models.alexnet` / `models.vgg16` are
torchvision's own `alexnet.py` / `vgg.py` source files and whose `pretrained=True` loads
`backbone(net)` instead of downloading; then, with zerosr importable, for each net build
`lpips.LPIPS(net=..., version="0.1", model_path=<lpips_heads(net) saved with torch.save>)` and call
it as `model(x, y, normalize=True)` on the pairs of `images()`, build `DISTS_pt.DISTS(load_weights=False)`
with `alpha`/`beta` set from `dists_weights()` and call `model(x, y)`; write the flattened values
under "lpips_alex", "lpips_vgg" and "dists" (17 significant digits).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from zerosr.errors import UserError
from zerosr.metrics.perceptual import _ALEXNET, _VGG16_WIDTHS, DISTS, LPIPS, _build, _vgg_layout

FIXTURE = Path(__file__).parent / "fixtures" / "perceptual_reference.json"
SEED = 20240601


def _features(net: str) -> torch.nn.Sequential:
    return _build(_ALEXNET, 13) if net == "alexnet" else _build(_vgg_layout(_VGG16_WIDTHS), 31)


def backbone(net: str) -> dict[str, torch.Tensor]:
    """torchvision-layout `features.<i>.weight/bias` of `net` ("alexnet" or "vgg16"): He-scaled
    normal weights and small normal biases, drawn in key order from one seeded generator."""
    generator = torch.Generator().manual_seed(SEED)
    state = {}
    for key, tensor in _features(net).state_dict().items():
        noise = torch.randn(tensor.shape, generator=generator)
        if key.endswith("weight"):
            state[f"features.{key}"] = noise * (2.0 / tensor[0].numel()) ** 0.5
        else:
            state[f"features.{key}"] = noise * 0.1
    return state


def lpips_heads(net: str) -> dict[str, torch.Tensor]:
    """Non-negative heads (as the published ones are), in the published file's layout."""
    generator = torch.Generator().manual_seed(SEED + 1)
    return {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=generator) * 0.1
            for k, c in enumerate(LPIPS.CHANNELS[net])}


def dists_weights() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(SEED + 2)
    size = (1, sum(DISTS.CHANNELS), 1, 1)
    return {"alpha": torch.rand(size, generator=generator) + 0.01, "beta": torch.rand(size, generator=generator) + 0.01}


def images() -> tuple[torch.Tensor, torch.Tensor]:
    """Three pairs, 64 x 80: noisy copy, blurred copy, unrelated image."""
    generator = torch.Generator().manual_seed(SEED + 3)
    x = torch.rand(3, 3, 64, 80, generator=generator)
    noisy = (x[0] + 0.1 * torch.randn(3, 64, 80, generator=generator)).clamp(0, 1)
    blurred = torch.nn.functional.avg_pool2d(x[1:2], 3, 1, 1, count_include_pad=False)[0]
    other = torch.rand(3, 64, 80, generator=generator)
    return x, torch.stack([noisy, blurred, other])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("perceptual")
    for net in ("alexnet", "vgg16"):
        torch.save(backbone(net), folder / f"{net}.pth")
    for net in ("alex", "vgg"):
        torch.save(lpips_heads(net), folder / f"lpips_{net}.pth")
    torch.save(dists_weights(), folder / "dists.pt")
    return folder


@pytest.fixture(scope="module")
def reference():
    return json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("net, backbone_file", [("alex", "alexnet"), ("vgg", "vgg16")])
def test_lpips_matches_the_reference(files, reference, net, backbone_file):
    metric = LPIPS(net, files / f"{backbone_file}.pth", files / f"lpips_{net}.pth")
    x, y = images()
    values = metric(x, y)
    expected = torch.tensor(reference[f"lpips_{net}"], dtype=torch.float32)
    assert values.shape == (3,)
    torch.testing.assert_close(values, expected, rtol=0, atol=1e-5)
    assert values[0] < values[2] and values[1] < values[2]  # copies are closer than an unrelated image
    assert torch.equal(metric(x, x), torch.zeros(3))


def test_dists_matches_the_reference(files, reference):
    metric = DISTS(files / "vgg16.pth", files / "dists.pt")
    x, y = images()
    values = metric(x, y)
    torch.testing.assert_close(values, torch.tensor(reference["dists"], dtype=torch.float32), rtol=0, atol=1e-5)
    assert metric(x, x).abs().max() < 1e-5


def test_metrics_pass_gradients_to_the_input_only(files):
    metric = DISTS(files / "vgg16.pth", files / "dists.pt")
    x, y = images()
    x.requires_grad_(True)
    metric(x, y).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in metric.parameters())
    metric.train()
    assert not metric.training


def test_wrong_files_are_one_line_errors(files, tmp_path):
    with pytest.raises(UserError, match="lack 'features.0.weight'"):
        LPIPS("alex", files / "lpips_alex.pth", files / "lpips_alex.pth")
    with pytest.raises(UserError, match="shape"):
        LPIPS("alex", files / "vgg16.pth", files / "lpips_alex.pth")
    with pytest.raises(UserError, match="lin1.model.1.weight"):
        LPIPS("vgg", files / "vgg16.pth", files / "lpips_alex.pth")
    with pytest.raises(UserError, match="alpha and beta"):
        DISTS(files / "vgg16.pth", files / "lpips_vgg.pth")
    with pytest.raises(UserError, match="net 'squeeze'"):
        LPIPS("squeeze")


def test_dists_loss_trains_the_sr_image_only(files):
    from zerosr.engine.objective import build_objective

    objective = build_objective([{"_target_": "zerosr.losses.DISTSLoss", "weight": 0.5,
                                  "backbone_path": str(files / "vgg16.pth"), "weights_path": str(files / "dists.pt")}],
                                torch.device("cpu"), 1e-3)
    x, y = images()
    sr = x.clone().requires_grad_(True)
    total, parts = objective.generator_loss(sr, y)
    metric = DISTS(files / "vgg16.pth", files / "dists.pt")
    assert parts["dists"].item() == pytest.approx(metric(x, y).mean().item(), abs=1e-6)
    assert total.item() == pytest.approx(0.5 * parts["dists"].item())
    total.backward()
    assert sr.grad is not None and sr.grad.abs().sum() > 0
    assert all(p.grad is None for p in objective.terms["dists"].parameters())
    assert objective.generator_loss(y, y)[1]["dists"].abs().item() < 1e-5
