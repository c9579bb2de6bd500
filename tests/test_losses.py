"""Every loss: value on known inputs, forward and backward, and its configuration errors."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from zerosr.errors import UserError
from zerosr.losses import (
    CharbonnierLoss,
    GANLoss,
    L1Loss,
    MSSSIMLoss,
    PerceptualLoss,
    UNetDiscriminatorSN,
    VGG19Features,
)
from zerosr.losses.msssim import scales_for

# Indices of the convolutions in torchvision's vgg19().features.
TORCHVISION_VGG19_CONVS = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]


def pair(size: int, seed: int = 0, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    gt = torch.rand(batch, 3, size, size, generator=generator)
    sr = (gt + 0.1 * torch.randn(gt.shape, generator=generator)).clamp(0, 1).requires_grad_()
    return sr, gt


def assert_backward_ok(loss: torch.Tensor, sr: torch.Tensor) -> None:
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert sr.grad is not None and torch.isfinite(sr.grad).all() and sr.grad.abs().sum() > 0


def test_l1_and_charbonnier_values_and_gradients():
    sr, gt = torch.tensor([0.0, 0.5]), torch.tensor([0.0, 0.0])
    assert L1Loss()(sr, gt).item() == pytest.approx(0.25)
    expected = (1e-3 + math.sqrt(0.25 + 1e-6)) / 2
    assert CharbonnierLoss(eps=1e-3)(sr, gt).item() == pytest.approx(expected)
    for loss_fn in (L1Loss(), CharbonnierLoss()):
        sr, gt = pair(16)
        assert_backward_ok(loss_fn(sr, gt), sr)


def test_msssim_scale_count_follows_patch_size():
    assert scales_for(192) == 5
    assert scales_for(96) == 4
    assert scales_for(64) == 3
    assert scales_for(11) == 1
    assert scales_for(10) == 0


@pytest.mark.parametrize("size", [96, 64, 32])
def test_msssim_on_small_patches(size):
    loss_fn = MSSSIMLoss()
    _, gt = pair(size)
    assert loss_fn(gt, gt).item() == pytest.approx(0.0, abs=1e-5)
    sr, gt = pair(size)
    assert_backward_ok(loss_fn(sr, gt), sr)
    mild, strong = (loss_fn((gt + n * torch.randn_like(gt)).clamp(0, 1), gt).item() for n in (0.02, 0.2))
    assert 0 < mild < strong <= 1


def test_msssim_anticorrelated_input_has_finite_gradient_and_tiny_patch_errors():
    gt = torch.rand(1, 3, 48, 48)
    sr = (1 - gt).requires_grad_()
    loss = MSSSIMLoss()(sr, gt)
    loss.backward()
    assert loss.item() > 0.9 and torch.isfinite(sr.grad).all()  # clamped: no NaN from negative powers
    with pytest.raises(UserError, match="at least 11x11"):
        MSSSIMLoss()(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


def test_vgg19_features_use_torchvision_key_names():
    keys = set(VGG19Features().state_dict())
    expected = {f"features.{i}.{p}" for i in TORCHVISION_VGG19_CONVS for p in ("weight", "bias")}
    assert keys == expected
    assert set(VGG19Features("relu2_2").state_dict()) == {f"features.{i}.{p}" for i in (0, 2, 5, 7) for p in ("weight", "bias")}


@pytest.fixture(scope="module")
def vgg_weights(tmp_path_factory):
    """A full torchvision-style vgg19 state dict (random weights) plus classifier keys, in both formats."""
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in VGG19Features().state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 4)
    folder = tmp_path_factory.mktemp("vgg")
    torch.save(state, folder / "vgg19.pth")
    save_file(state, str(folder / "vgg19.safetensors"))
    return folder


@pytest.mark.parametrize("filename", ["vgg19.pth", "vgg19.safetensors"])
def test_perceptual_loss_loads_weights_and_backpropagates(vgg_weights, filename):
    loss_fn = PerceptualLoss(vgg_weights / filename, layer_weights={"conv1_2": 0.1, "relu2_2": 1.0, "conv3_1": 0.5})
    reference = torch.load(vgg_weights / "vgg19.pth", weights_only=True)
    assert torch.equal(loss_fn.vgg.features[2].weight, reference["features.2.weight"])
    loss_fn.train()
    assert not loss_fn.vgg.training
    sr, gt = pair(24)
    assert loss_fn(gt, gt).item() == 0.0
    assert_backward_ok(loss_fn(sr, gt), sr)
    assert all(p.grad is None for p in loss_fn.parameters())


def test_perceptual_loss_errors(vgg_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("ZEROSR_CACHE", str(tmp_path / "cache"))  # empty; the index points nowhere
    (tmp_path / "index.json").write_text('{"vgg19": {"url": "http://127.0.0.1:9/vgg19.pth"}}')
    monkeypatch.setenv("ZEROSR_WEIGHTS_INDEX", str(tmp_path / "index.json"))
    with pytest.raises(UserError, match="vgg19-dcbb9e9d.pth .* cannot be downloaded"):
        PerceptualLoss()
    with pytest.raises(UserError, match="does not exist"):
        PerceptualLoss(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(UserError, match="cannot read VGG19 weights") as err:
        PerceptualLoss(tmp_path / "junk.pth")
    assert "\n" not in str(err.value)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(UserError, match="cannot read VGG19 weights"):
        PerceptualLoss(tmp_path / "junk.safetensors")
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(UserError, match="lack 'features.0.bias'"):
        PerceptualLoss(tmp_path / "partial.pth", layer_weights={"conv1_1": 1.0})
    with pytest.raises(UserError, match="unknown VGG19 layer"):
        PerceptualLoss(vgg_weights / "vgg19.pth", layer_weights={"conv9_9": 1.0})
    with pytest.raises(UserError, match="criterion"):
        PerceptualLoss(vgg_weights / "vgg19.pth", criterion="cosine")


@pytest.mark.parametrize("size", [96, 64, 50])
def test_unet_discriminator_gives_a_realness_map(size):
    torch.manual_seed(0)
    net = UNetDiscriminatorSN(num_in_ch=3, num_feat=8)
    x = torch.rand(1, 3, size, size, requires_grad=True)
    out = net(x)
    assert out.shape == (1, 1, size, size)
    out.mean().backward()
    assert torch.isfinite(x.grad).all()
    assert hasattr(net.down1, "weight_orig")  # spectral norm is applied
    plain = UNetDiscriminatorSN(num_feat=8, skip_connection=False)
    assert plain(x).shape == (1, 1, size, size)


def test_gan_loss_values():
    zeros = torch.zeros(4, 1, 2, 2)
    vanilla = GANLoss("vanilla")
    assert vanilla.generator_loss(zeros).item() == pytest.approx(math.log(2))
    assert vanilla.discriminator_loss(zeros, zeros).item() == pytest.approx(2 * math.log(2))
    confident = vanilla.discriminator_loss(torch.full_like(zeros, 20.0), torch.full_like(zeros, -20.0))
    assert confident.item() < 1e-6

    hinge = GANLoss("hinge")
    assert hinge.discriminator_loss(torch.ones_like(zeros), -torch.ones_like(zeros)).item() == 0.0
    assert hinge.discriminator_loss(zeros, zeros).item() == pytest.approx(2.0)
    assert hinge.generator_loss(torch.full_like(zeros, 3.0)).item() == pytest.approx(-3.0)
    with pytest.raises(UserError, match="gan_type 'wgan' is unknown"):
        GANLoss("wgan")


@pytest.mark.parametrize("gan_type", ["vanilla", "hinge"])
def test_gan_generator_and_discriminator_steps_backpropagate(gan_type):
    torch.manual_seed(0)
    net, loss_fn = UNetDiscriminatorSN(num_feat=8), GANLoss(gan_type)
    sr, gt = pair(32)
    assert_backward_ok(loss_fn.generator_loss(net(sr)), sr)
    net.zero_grad()
    d_loss = loss_fn.discriminator_loss(net(gt), net(sr.detach()))
    d_loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    assert net.head.weight.grad.abs().sum() > 0
