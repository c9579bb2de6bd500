"""Bicubic downscaling with antialiasing, as MATLAB's `imresize(img, 1/scale, 'bicubic')`.

SR benchmarks (Set5, DIV2K's bicubic LR, BSD100) made their LR images with MATLAB, so a model
trained on LR made here sees the same degradation it is scored on. The resize is separable: one
(out x in) weight matrix per axis, built from the cubic kernel (a = -0.5) stretched by the scale
(the antialiasing) with mirrored borders folded into the matrix, then two matrix products.
`torch.nn.functional.interpolate(mode="bicubic", antialias=True)` uses the same kernel but
renormalises at the borders instead of mirroring, so it differs from MATLAB near the edges only.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np


def _cubic(x: np.ndarray) -> np.ndarray:
    absx = np.abs(x)
    absx2, absx3 = absx**2, absx**3
    near = (1.5 * absx3 - 2.5 * absx2 + 1.0) * (absx <= 1)
    far = (-0.5 * absx3 + 2.5 * absx2 - 4.0 * absx + 2.0) * ((absx > 1) & (absx <= 2))
    return near + far


@lru_cache(maxsize=64)
def resize_weights(in_len: int, out_len: int, factor: float) -> np.ndarray:
    """Weight matrix (out_len, in_len) for resizing one axis by `factor` (< 1 shrinks)."""
    kernel_scale = min(factor, 1.0)  # shrinking stretches the kernel: that is the antialiasing
    kernel_width = 4.0 / kernel_scale
    # Output pixel centres mapped into input coordinates (1-based, as MATLAB computes them).
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / factor + 0.5 * (1.0 - 1.0 / factor)
    left = np.floor(u - kernel_width / 2.0)
    taps = math.ceil(kernel_width) + 2
    indices = left[:, None] + np.arange(taps)[None, :]
    weights = kernel_scale * _cubic(kernel_scale * (u[:, None] - indices))
    weights /= weights.sum(axis=1, keepdims=True)

    # Out-of-range taps read the mirrored pixel (symmetric padding).
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])
    columns = mirror[(indices.astype(np.int64) - 1) % (2 * in_len)]
    matrix = np.zeros((out_len, in_len), dtype=np.float64)
    rows = np.repeat(np.arange(out_len)[:, None], taps, axis=1)
    np.add.at(matrix, (rows, columns), weights)
    return matrix


def bicubic_downscale(hr: np.ndarray, scale: int) -> np.ndarray:
    """Downscale a float HWC (or HW) image by an integer `scale`; result is float32 in [0, 1].

    The HR is first cropped to a multiple of `scale` (the usual "mod crop"), so the LR is exactly
    (H // scale, W // scale) and LR * scale lines up with the HR pixel for pixel.
    """
    if scale < 1 or int(scale) != scale:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    scale = int(scale)
    height, width = (hr.shape[0] // scale) * scale, (hr.shape[1] // scale) * scale
    if height == 0 or width == 0:
        raise ValueError(f"image of shape {hr.shape} is smaller than the scale {scale}")
    image = np.asarray(hr[:height, :width], dtype=np.float32)
    if scale == 1:
        return image.copy()
    rows = resize_weights(height, height // scale, 1.0 / scale).astype(np.float32)
    cols = resize_weights(width, width // scale, 1.0 / scale).astype(np.float32)
    trailing = image.shape[2:]
    out = rows @ image.reshape(height, -1)  # (h, W*C)
    out = out.reshape(height // scale, width, -1).transpose(1, 0, 2).reshape(width, -1)
    out = (cols @ out).reshape(width // scale, height // scale, -1).transpose(1, 0, 2)
    return np.clip(out.reshape(height // scale, width // scale, *trailing), 0.0, 1.0)
