"""Tiled validation forward and the images saved at validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from zerosr.data.io import read_image_raw
from zerosr.engine.tiling import tiled_forward
from zerosr.errors import UserError
from zerosr.report.images import save_comparison, save_image


def tiny_sr(scale: int, convs: int = 3) -> nn.Module:
    """Zero-padded 3x3 convs then pixel shuffle: its receptive field reaches `convs` LR pixels."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1)]
    for _ in range(convs - 2):
        layers += [nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)]
    layers += [nn.ReLU(), nn.Conv2d(8, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale)]
    return nn.Sequential(*layers).eval()


@pytest.mark.parametrize("scale,height,width,tile", [(2, 37, 50, 16), (3, 20, 45, 12), (4, 33, 17, 10)])
def test_tiles_equal_whole_image_when_overlap_covers_receptive_field(scale, height, width, tile):
    model = tiny_sr(scale)
    lq = torch.rand(2, 3, height, width)
    with torch.no_grad():
        whole = model(lq)
        tiled = tiled_forward(model, lq, scale, tile=tile, overlap=3)
    assert tiled.shape == whole.shape
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)


def test_tiles_no_larger_than_tile_and_only_small_seams_beyond_the_overlap():
    calls = []
    model = tiny_sr(2, convs=6)

    def recording(x):
        calls.append(tuple(x.shape[2:]))
        return model(x)

    lq = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        tiled = tiled_forward(recording, lq, 2, tile=16, overlap=2)
        whole = model(lq)
    assert calls and all(h <= 16 and w <= 16 for h, w in calls)
    assert (tiled - whole).abs().mean() < 0.01 * whole.abs().mean()


def test_tile_at_least_image_size_is_one_exact_forward():
    model = tiny_sr(2)
    lq = torch.rand(1, 3, 12, 20)
    with torch.no_grad():
        assert torch.equal(tiled_forward(model, lq, 2, tile=20, overlap=4), model(lq))


def test_tiling_rejects_bad_overlap_and_wrong_scale():
    lq = torch.rand(1, 3, 30, 30)
    with pytest.raises(UserError, match="must exceed twice the tile overlap"):
        tiled_forward(tiny_sr(2), lq, 2, tile=8, overlap=4)
    with pytest.raises(ValueError, match="expected"):
        tiled_forward(tiny_sr(2), lq, 3, tile=16, overlap=2)


def test_save_image_from_tensor_and_array(tmp_path):
    tensor = torch.rand(3, 6, 9)
    save_image(tensor, tmp_path / "out" / "t.png")
    saved = read_image_raw(tmp_path / "out" / "t.png")
    assert saved.shape == (6, 9, 3)
    assert np.array_equal(saved, (tensor.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    array16 = np.full((4, 4, 3), 4242, np.uint16)
    save_image(array16, tmp_path / "a.png")
    assert np.array_equal(read_image_raw(tmp_path / "a.png"), array16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "out"]  # no temporary files left


def test_save_comparison_puts_bicubic_sr_and_hr_side_by_side(tmp_path):
    lq = torch.rand(1, 3, 10, 12)
    sr, hr = torch.zeros(1, 3, 20, 24), torch.ones(3, 20, 24)
    save_comparison(lq, sr, hr, tmp_path / "cmp.png", scale=2)
    image = read_image_raw(tmp_path / "cmp.png")
    label = image.shape[0] - 20
    assert image.shape[1] == 3 * 24 + 2 * 4 and label > 0
    assert (image[label:, 28:52] == 0).all()  # SR panel in the middle
    assert (image[label:, 56:] == 255).all()  # HR panel on the right

    big = torch.rand(3, 400, 300)
    save_comparison(big, big.repeat_interleave(2, 1).repeat_interleave(2, 2), torch.rand(3, 800, 600),
                    tmp_path / "big.png", scale=2, max_side=256)
    assert read_image_raw(tmp_path / "big.png").shape[1] == 3 * 256 + 2 * 4
