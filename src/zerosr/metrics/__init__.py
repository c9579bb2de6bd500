"""PSNR and SSIM as SR papers report them (the BasicSR / traiNNer-redux convention).

Inputs are uint8 (or float in [0, 255]) HWC arrays in **RGB** order. BasicSR reads images with
OpenCV and its functions take BGR; the numbers are the same, only the channel order of the input
differs. With `test_y_channel=True` both images become the luma of MATLAB's `rgb2ycbcr`
(Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 for R, G, B in [0, 1], kept unrounded in [16, 235])
and `crop_border` pixels (usually the scale) are cut from every edge first.

SSIM follows Wang et al. 2004 as BasicSR computes it: an 11x11 Gaussian window with sigma 1.5,
only where the window fits (the "valid" region), C1 = (0.01*255)^2, C2 = (0.03*255)^2, the mean of
the SSIM map, averaged over channels when not on Y.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # composing a config imports this package (the metric catalog): no torch there
    import torch

_Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0  # on RGB in [0, 255]


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """Luma Y in [16, 235] (float64, HW) of an RGB HWC image in [0, 255]."""
    return image.astype(np.float64) @ _Y_WEIGHTS + 16.0


def _prepare(img: np.ndarray, img2: np.ndarray, crop_border: int, test_y_channel: bool) -> tuple:
    if img.shape != img2.shape:
        raise ValueError(f"image shapes differ: {img.shape} vs {img2.shape}")
    if img.ndim == 2:
        img, img2 = img[:, :, None], img2[:, :, None]
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border]
        img2 = img2[crop_border:-crop_border, crop_border:-crop_border]
    if test_y_channel and img.shape[2] == 3:
        return rgb_to_y(img)[:, :, None], rgb_to_y(img2)[:, :, None]
    return img.astype(np.float64), img2.astype(np.float64)


def calculate_psnr(img: np.ndarray, img2: np.ndarray, crop_border: int, test_y_channel: bool = True) -> float:
    """PSNR in dB for a peak of 255; `inf` for identical images."""
    a, b = _prepare(img, img2, crop_border, test_y_channel)
    mse = np.mean((a - b) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(255.0**2 / mse))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    offsets = np.arange(size) - (size - 1) / 2
    kernel = np.exp(-(offsets**2) / (2 * sigma**2))
    return kernel / kernel.sum()


_WINDOW = _gaussian_window()


def _filter_valid(image: np.ndarray) -> np.ndarray:
    """Separable Gaussian filtering of a 2-D image, kept only where the 11x11 window fits."""
    k = len(_WINDOW)
    rows = np.lib.stride_tricks.sliding_window_view(image, k, axis=0) @ _WINDOW
    return np.lib.stride_tricks.sliding_window_view(rows, k, axis=1) @ _WINDOW


def _ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = _filter_valid(a), _filter_valid(b)
    var_a = _filter_valid(a * a) - mu_a**2
    var_b = _filter_valid(b * b) - mu_b**2
    cov = _filter_valid(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def calculate_ssim(img: np.ndarray, img2: np.ndarray, crop_border: int, test_y_channel: bool = True) -> float:
    """SSIM in [-1, 1]; the images must be at least 11x11 after cropping."""
    a, b = _prepare(img, img2, crop_border, test_y_channel)
    if min(a.shape[:2]) < len(_WINDOW):
        raise ValueError(f"SSIM needs at least {len(_WINDOW)}x{len(_WINDOW)} pixels after cropping, got {a.shape[:2]}")
    return float(np.mean([_ssim_channel(a[:, :, c], b[:, :, c]) for c in range(a.shape[2])]))


def tensor_to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """CHW (or 1xCxHxW) float tensor in [0, 1] -> HWC uint8, rounded as when saving a PNG."""
    if tensor.dim() == 4 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 3:
        raise ValueError(f"expected a CHW tensor, got shape {tuple(tensor.shape)}")
    import torch

    array = tensor.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
    return array.transpose(1, 2, 0)
