"""Measure an image's degradations: noise level, JPEG quality, blur. No reference image needed.

- Noise: Immerkaer's fast estimator (a 3x3 operator that cancels planes and ramps, so what is left
  is noise), per channel on the 0-255 scale, skipping edges (the strongest tenth of the Sobel
  gradients) and clipped pixels, where image structure or saturation would bias it.
- JPEG quality: a JPEG file's own luminance quantisation table, matched against the standard
  table scaled for every quality 1-100 as libjpeg scales it. Other files: the 8x8 block grid shows
  as a step in the pixel differences; where it does, the quality is the one at which compressing
  the image again changes it least (JPEG re-compressed at its own quality is nearly idempotent).
  The grid is faint above quality ~75 in photos, so lighter compression of a PNG goes unseen.
- Flat-area noise: Immerkaer's operator on the flattest 30 % of an image (lowest 7x7 variance).
  Not a calibrated sigma, but a level that follows the noise and much less the image's texture
  (which the whole-image estimate confuses with noise once JPEG has smoothed the noise away);
  calibration compares it between the target and LR it makes itself.
- Blur: at the peaks of the gradient along strong edges, the ratio of the gradient to that of the
  image re-blurred by a known Gaussian r; for a step edge blurred by s it is sqrt(s^2 + r^2) / s
  (with the gradient operator's own spread added to both).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from zerosr.data.io import read_image_raw, to_float32
from zerosr.data.jpeg import LUMA_TABLE

_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
_ZIGZAG = np.array(sorted(range(64), key=lambda i: (i // 8 + i % 8, (i // 8) if (i // 8 + i % 8) % 2 else (i % 8))))
REBLUR_SIGMA = 2.0
BLOCKINESS_THRESHOLD = 1.12  # block-boundary over in-block pixel differences above this: JPEG grid


@dataclass
class Estimate:
    noise_sigma: float  # 0-255 scale
    jpeg_quality: float | None  # None: no sign of JPEG
    blur_sigma: float  # pixels; NaN: too few edges to tell
    jpeg_source: str | None  # "tables" | "blockiness" | None
    flat_noise: float = float("nan")  # 0-255 scale; see flat_noise()


def _gray(image: np.ndarray) -> np.ndarray:
    return (image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).astype(np.float32)


def noise_sigma(image: np.ndarray) -> float:
    """Noise standard deviation (0-255) of an HWC image in 0-255 (float)."""
    gray = _gray(image)
    gx, gy = cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1)
    gradient = np.hypot(gx, gy)[1:-1, 1:-1]
    keep = gradient <= np.percentile(gradient, 90)
    low, high = cv2.erode(image.min(2), np.ones((3, 3))), cv2.dilate(image.max(2), np.ones((3, 3)))
    keep &= ((low > 0.5) & (high < 254.5))[1:-1, 1:-1]  # clipped neighbourhoods hide noise
    if keep.sum() < 64:
        keep = np.ones_like(keep)
    sigmas = []
    for c in range(image.shape[2]):
        response = np.abs(cv2.filter2D(image[:, :, c], cv2.CV_32F, _IMMERKAER))[1:-1, 1:-1]
        sigmas.append(math.sqrt(math.pi / 2) * float(response[keep].mean()) / 6.0)
    return float(np.mean(sigmas))


def flat_noise(image: np.ndarray) -> float:
    """Immerkaer's level (0-255) of the grey image over its flattest 30 % (7x7 variance), clipped
    neighbourhoods skipped."""
    gray = _gray(image)
    mean = cv2.blur(gray, (7, 7))
    variance = (cv2.blur(gray * gray, (7, 7)) - mean * mean)[1:-1, 1:-1]
    low, high = cv2.erode(image.min(2), np.ones((3, 3))), cv2.dilate(image.max(2), np.ones((3, 3)))
    unclipped = ((low > 0.5) & (high < 254.5))[1:-1, 1:-1]
    if unclipped.sum() >= 64:
        variance = np.where(unclipped, variance, np.inf)
    keep = variance <= np.percentile(variance[np.isfinite(variance)], 30)
    response = np.abs(cv2.filter2D(gray, cv2.CV_32F, _IMMERKAER))[1:-1, 1:-1]
    return math.sqrt(math.pi / 2) * float(response[keep].mean()) / 6.0


def _standard_tables() -> np.ndarray:
    q = np.arange(1, 101, dtype=np.float64)[:, None]
    scale = np.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q)
    return np.clip(np.floor((np.asarray(LUMA_TABLE, dtype=np.float64).reshape(1, 64) * scale + 50) / 100), 1, 255)


def quality_from_table(table: list[int] | np.ndarray) -> float:
    """Quality 1-100 whose scaled standard table is nearest (natural or zigzag order)."""
    table = np.asarray(table, dtype=np.float64).reshape(64)
    standard = _standard_tables()
    errors = [np.abs(np.log(standard) - np.log(order)).mean(axis=1) for order in (table, table[np.argsort(_ZIGZAG)])]
    best = np.minimum(*errors)
    return float(np.argmin(best) + 1)


def jpeg_table_quality(path: Path) -> float | None:
    """Quality from a JPEG file's luminance table; None for other formats."""
    try:
        with Image.open(path) as image:
            tables = getattr(image, "quantization", None) if image.format == "JPEG" else None
    except OSError:
        return None
    if not tables:
        return None
    return quality_from_table(tables[min(tables)])


def _blockiness(gray: np.ndarray) -> tuple[float, int, int]:
    """(ratio, row offset, column offset) of the 8x8 grid that shows most. Only small differences
    count: JPEG's block steps are a few levels in smooth areas, and a few strong edges that happen
    to share a phase must not look like a grid."""
    ratios = []
    for axis in (1, 0):
        diff = np.abs(np.diff(gray, axis=axis))
        diff = diff if axis == 1 else diff.T  # (rows, columns): phase runs along the columns
        small = diff < 12.0
        sums, counts = (diff * small).sum(axis=0), small.sum(axis=0)
        per_phase = np.array([sums[p::8].sum() / max(int(counts[p::8].sum()), 1) for p in range(8)])
        phase = int(np.argmax(per_phase))
        others = np.delete(per_phase, phase)
        ratios.append((per_phase[phase] / max(float(np.median(others)), 1e-6), (phase + 1) % 8))
    (col_ratio, col_offset), (row_ratio, row_offset) = ratios
    return float(min(col_ratio, row_ratio)), row_offset, col_offset


def ghost_quality(image: np.ndarray, row: int = 0, col: int = 0) -> float:
    """Quality at which re-compressing the (8-bit, block-aligned) image changes it least."""
    pixels = np.ascontiguousarray(np.clip(np.round(image[row:, col:]), 0, 255).astype(np.uint8)[:, :, ::-1])

    def change(quality: int) -> float:
        _, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        return float(np.mean((cv2.imdecode(encoded, cv2.IMREAD_COLOR).astype(np.float32) - pixels) ** 2))

    coarse = min(range(5, 101, 5), key=change)
    return float(min(range(max(1, coarse - 4), min(100, coarse + 4) + 1), key=change))


def blur_sigma(image: np.ndarray) -> float:
    """Gaussian-equivalent blur (pixels) of an HWC image in 0-255, from its strongest edges; NaN
    when it has too few clear edges to tell."""
    gray = _gray(image)
    reblurred = cv2.GaussianBlur(gray, (0, 0), REBLUR_SIGMA)

    def gradient(plane: np.ndarray) -> np.ndarray:
        return np.hypot(cv2.Sobel(plane, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(plane, cv2.CV_32F, 0, 1, ksize=3)) / 8

    g, g_reblurred = gradient(gray), gradient(reblurred)
    border = int(3 * REBLUR_SIGMA) + 2
    inner = np.zeros_like(g, dtype=bool)
    inner[border:-border, border:-border] = True
    peaks = (g >= cv2.dilate(g, np.ones((3, 3)))) & inner
    strong = peaks & (g >= np.percentile(g[inner], 97)) & (g > 4 * noise_sigma(image) + 1.0)
    if strong.sum() < 16:
        return float("nan")  # too few clear edges to tell
    spread = cv2.dilate(g_reblurred, np.ones((5, 5)))  # the re-blurred peak may sit a pixel aside
    ratio = g[strong] / np.maximum(spread[strong], 1e-6)
    ratio = ratio[ratio > 1.0 + 1e-3]
    if ratio.size == 0:
        return float("inf")
    # The central difference spreads an edge by a box of 2 pixels (variance 1/3): not the image's.
    spread = float(np.median(REBLUR_SIGMA**2 / (ratio**2 - 1.0)))
    return math.sqrt(max(spread - 1.0 / 3.0, 0.0))


def estimate_image(path: Path) -> Estimate:
    """Every estimate for one image file."""
    image = to_float32(read_image_raw(path)) * 255.0
    quality, source = jpeg_table_quality(path), "tables"
    if quality is None:
        source = None
        ratio, row, col = _blockiness(_gray(image))
        if ratio > BLOCKINESS_THRESHOLD:
            # A never-compressed image changes least at quality 100: then the grid was a coincidence.
            quality = ghost_quality(image, row, col)
            quality, source = (quality, "blockiness") if quality < 98 else (None, None)
    return Estimate(noise_sigma(image), quality, blur_sigma(image), source, flat_noise(image))
