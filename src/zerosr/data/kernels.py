"""Blur kernels of the Real-ESRGAN recipe, drawn per sample from a numpy Generator.

Six Gaussian-family shapes (isotropic and anisotropic Gaussian, generalized Gaussian, plateau)
and the circular low-pass (sinc) filter that imitates ringing and overshoot. Every kernel is a
float32 (size, size) array that sums to 1, size odd; `pad_kernel` centres it in the largest size
so a batch of kernels stacks into one tensor.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from zerosr.degradation_settings import KERNEL_TYPES

__all__ = ["KERNEL_TYPES", "gaussian_kernel", "generalized_gaussian_kernel", "plateau_kernel", "random_blur_kernel",
           "sinc_kernel", "pad_kernel"]


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    radius = (size - 1) / 2.0
    axis = np.arange(size, dtype=np.float64) - radius
    return np.meshgrid(axis, axis)  # x (columns), y (rows)


def _quadratic_form(size: int, sigma_x: float, sigma_y: float, angle: float) -> np.ndarray:
    """x^T S^-1 x over the grid, S the covariance of axes (sigma_x, sigma_y) turned by `angle`."""
    x, y = _grid(size)
    cos, sin = math.cos(angle), math.sin(angle)
    u, v = cos * x + sin * y, -sin * x + cos * y  # coordinates along the kernel's own axes
    return (u / sigma_x) ** 2 + (v / sigma_y) ** 2


def _normalised(kernel: np.ndarray) -> np.ndarray:
    return (kernel / kernel.sum()).astype(np.float32)


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None = None, angle: float = 0.0) -> np.ndarray:
    """Gaussian blur kernel; isotropic when sigma_y is None."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    return _normalised(np.exp(-0.5 * _quadratic_form(size, sigma_x, sigma_y, angle)))


def generalized_gaussian_kernel(size: int, sigma_x: float, sigma_y: float, angle: float, beta: float) -> np.ndarray:
    """exp(-(q/2)^beta): beta < 1 gives heavier tails than a Gaussian, beta > 1 a flatter top."""
    return _normalised(np.exp(-((0.5 * _quadratic_form(size, sigma_x, sigma_y, angle)) ** beta)))


def plateau_kernel(size: int, sigma_x: float, sigma_y: float, angle: float, beta: float) -> np.ndarray:
    """1 / (1 + q^beta): a flat centre falling off slowly, like an out-of-focus disc."""
    return _normalised(1.0 / (1.0 + _quadratic_form(size, sigma_x, sigma_y, angle) ** beta))


def sinc_kernel(size: int, cutoff: float) -> np.ndarray:
    """Circular ideal low-pass filter with cutoff `cutoff` (radians per pixel, up to pi)."""
    x, y = _grid(size)
    r = np.hypot(x, y)
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = cutoff * _bessel_j1(cutoff * r) / (2 * math.pi * r)
    kernel[r == 0] = cutoff**2 / (4 * math.pi)
    return _normalised(kernel)


@lru_cache(maxsize=1)
def _bessel_j1_table() -> tuple[np.ndarray, np.ndarray]:
    """J1 on [0, 96] in steps of 1/256, by its integral (1/pi) int_0^pi cos(t - x sin t) dt (no scipy)."""
    x = np.arange(0, 96 * 256 + 1) / 256.0
    t = (np.arange(256) + 0.5) * (math.pi / 256)  # midpoint rule: exact to 1e-12 for x < 100
    return x, np.cos(t[None, :] - x[:, None] * np.sin(t[None, :])).mean(axis=1)


def _bessel_j1(x: np.ndarray) -> np.ndarray:
    """Bessel function J1, 0 <= x <= 96: enough for a 41-tap sinc kernel (pi * 20 * sqrt(2) = 89)."""
    grid, values = _bessel_j1_table()
    return np.interp(x, grid, values)


def _beta(rng: np.random.Generator, low: float, high: float) -> float:
    """Half the draws below 1 and half above (when the range spans 1), as the recipe draws shape."""
    if low < 1.0 < high:
        return float(rng.uniform(low, 1.0) if rng.random() < 0.5 else rng.uniform(1.0, high))
    return float(rng.uniform(low, high))


def random_blur_kernel(rng: np.random.Generator, types: list[str], probs: list[float], sigma: tuple[float, float],
                       betag: tuple[float, float], betap: tuple[float, float], sinc_prob: float,
                       max_size: int) -> np.ndarray:
    """One random kernel of odd size in [7, max_size]: a sinc filter with `sinc_prob`, else a
    Gaussian-family kernel of a type drawn from `types` with `probs`."""
    sizes = list(range(7, max_size + 1, 2)) or [max_size]
    size = int(rng.choice(sizes))
    if rng.random() < sinc_prob:
        # Small kernels cannot hold a low cutoff's wide main lobe.
        cutoff = rng.uniform(math.pi / 3 if size < 13 else math.pi / 5, math.pi)
        return sinc_kernel(size, cutoff)
    kind = types[int(rng.choice(len(types), p=np.asarray(probs, dtype=np.float64) / sum(probs)))]
    sigma_x = float(rng.uniform(*sigma))
    if not kind.endswith("aniso"):
        sigma_y, angle = sigma_x, 0.0
    else:
        sigma_y, angle = float(rng.uniform(*sigma)), float(rng.uniform(-math.pi, math.pi))
    if kind.startswith("generalized"):
        return generalized_gaussian_kernel(size, sigma_x, sigma_y, angle, _beta(rng, *betag))
    if kind.startswith("plateau"):
        return plateau_kernel(size, sigma_x, sigma_y, angle, _beta(rng, *betap))
    return gaussian_kernel(size, sigma_x, sigma_y, angle)


def pad_kernel(kernel: np.ndarray, size: int) -> np.ndarray:
    """`kernel` centred in a (size, size) array of zeros (both sizes odd)."""
    border = (size - kernel.shape[0]) // 2
    return np.pad(kernel, border) if border > 0 else kernel
