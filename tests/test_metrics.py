"""PSNR/SSIM against independently computed values (a direct formula and scikit-image)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zerosr.metrics import calculate_psnr, calculate_ssim, rgb_to_y, tensor_to_uint8


def image_pair(seed: int, height: int = 48, width: int = 40, noise: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([127 + 100 * np.sin(x / 5.0 + c) * np.cos(y / 7.0) for c in range(3)], axis=2)
    clean = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
    noisy = np.clip(clean + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8)
    return clean, noisy


def luma_reference(img: np.ndarray) -> np.ndarray:
    """MATLAB rgb2ycbcr luma written out per channel, on [0, 1] data, scaled back to [0, 255]."""
    r, g, b = (img[:, :, c].astype(np.float64) / 255.0 for c in range(3))
    return 16.0 + 65.481 * r + 128.553 * g + 24.966 * b


def test_rgb_to_y_range_and_order():
    black, white = np.zeros((1, 1, 3), np.uint8), np.full((1, 1, 3), 255, np.uint8)
    assert rgb_to_y(black)[0, 0] == pytest.approx(16.0)
    assert rgb_to_y(white)[0, 0] == pytest.approx(235.0)
    red = np.array([[[255, 0, 0]]], np.uint8)  # RGB order: red weighs 65.481, not 24.966
    assert rgb_to_y(red)[0, 0] == pytest.approx(16.0 + 65.481)


@pytest.mark.parametrize("crop", [0, 2, 4])
def test_psnr_matches_direct_formula(crop):
    clean, noisy = image_pair(0)
    sl = slice(crop, -crop) if crop else slice(None)
    y_a, y_b = luma_reference(clean[sl, sl]), luma_reference(noisy[sl, sl])
    expected_y = 10 * math.log10(255.0**2 / np.mean((y_a - y_b) ** 2))
    assert calculate_psnr(clean, noisy, crop, test_y_channel=True) == pytest.approx(expected_y, abs=0.01)

    diff = clean[sl, sl].astype(np.float64) - noisy[sl, sl]
    expected_rgb = 20 * math.log10(255.0) - 10 * math.log10(np.mean(diff**2))
    assert calculate_psnr(clean, noisy, crop, test_y_channel=False) == pytest.approx(expected_rgb, abs=0.01)


def test_psnr_identical_and_border_only_differences():
    clean, _ = image_pair(1)
    assert calculate_psnr(clean, clean, 0) == math.inf
    damaged = clean.copy()
    damaged[:2] = 0
    assert calculate_psnr(clean, damaged, 0) < 30
    assert calculate_psnr(clean, damaged, 2) == math.inf


@pytest.mark.parametrize("seed,noise,crop", [(0, 4.0, 0), (1, 12.0, 2), (2, 30.0, 4)])
def test_ssim_matches_scikit_image(seed, noise, crop):
    metrics = pytest.importorskip("skimage.metrics")
    clean, noisy = image_pair(seed, noise=noise)
    sl = slice(crop, -crop) if crop else slice(None)
    options = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)

    expected_y = metrics.structural_similarity(luma_reference(clean[sl, sl]), luma_reference(noisy[sl, sl]), **options)
    assert calculate_ssim(clean, noisy, crop, test_y_channel=True) == pytest.approx(expected_y, abs=5e-4)

    expected_rgb = metrics.structural_similarity(
        clean[sl, sl].astype(np.float64), noisy[sl, sl].astype(np.float64), channel_axis=2, **options
    )
    assert calculate_ssim(clean, noisy, crop, test_y_channel=False) == pytest.approx(expected_rgb, abs=5e-4)


def test_ssim_identical_is_one_and_tiny_images_are_rejected():
    clean, _ = image_pair(3)
    assert calculate_ssim(clean, clean, 4) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="11x11"):
        calculate_ssim(clean[:14, :14], clean[:14, :14], 2)


def test_tensor_to_uint8_rounds_and_clamps():
    tensor = torch.tensor([[[0.0, 0.5 / 255, 1.6 / 255], [-0.2, 1.0, 1.3]]])  # 1 x 2 x 3
    out = tensor_to_uint8(tensor.expand(3, 2, 3))
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert out[:, :, 0].tolist() == [[0, 0, 2], [0, 255, 255]]
    assert np.array_equal(tensor_to_uint8(tensor.expand(3, 2, 3)[None]), out)
