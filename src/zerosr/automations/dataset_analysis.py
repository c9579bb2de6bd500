"""Dataset analysis on the first training batches: how textured, edgy and colourful the HR data is.

Three scores in [0, 1], each moving with the content (the loss schedule's calibration uses them):

- texture_variance: mean local (3x3) variance of the Sobel gradient magnitude of luma, mapped by
  1 - exp(-v / TEXTURE_SCALE). Flat areas and smooth ramps give 0; fine irregular texture (foliage,
  noise, fabric) scores high; isolated clean edges score in between.
- edge_density: share of pixels whose luma gradient exceeds EDGE_THRESHOLD (an absolute slope, in
  luma per pixel). An absolute threshold, because a percentile threshold makes the share constant.
- colour_variation: normalised entropy of the 2-D histogram of the chroma pair (Cb, Cr) over all
  analysed pixels: 0 for a grey dataset, 1 for colours spread evenly over the chroma plane.

Batches are HR tensors (N, 3, H, W) in [0, 1]; a (N, 1, H, W) batch is treated as grey.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F

EDGE_THRESHOLD = 0.05  # luma change per pixel, a clearly visible edge (BSD100 crops: median density ~0.28)
TEXTURE_SCALE = 1.5e-3  # local gradient variance giving 1 - 1/e (BSD100 crops: median ~0.4)
CHROMA_BINS = 32  # per axis, over the chroma range actually used by natural images
CHROMA_RANGE = 0.3  # |Cb|, |Cr| beyond this are counted in the edge bins (rare saturated colours)

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0  # slope per pixel


def luma(images: torch.Tensor) -> torch.Tensor:
    """BT.601 luma (N, 1, H, W) of RGB (or grey) images in [0, 1]."""
    if images.shape[1] == 1:
        return images
    r, g, b = images[:, 0:1], images[:, 1:2], images[:, 2:3]
    return 0.299 * r + 0.587 * g + 0.114 * b


def chroma(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BT.601 Cb, Cr (each in about [-0.5, 0.5]); zero for grey images."""
    y = luma(images)
    if images.shape[1] == 1:
        return torch.zeros_like(y), torch.zeros_like(y)
    return 0.564 * (images[:, 2:3] - y), 0.713 * (images[:, 0:1] - y)


def gradient_magnitude(y: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude, in luma per pixel, on the valid (unpadded) interior."""
    kernel_x = _SOBEL_X.to(y.dtype).view(1, 1, 3, 3)
    gx = F.conv2d(y, kernel_x)
    gy = F.conv2d(y, kernel_x.transpose(2, 3))
    return torch.sqrt(gx * gx + gy * gy)


def local_variance(x: torch.Tensor) -> torch.Tensor:
    """Variance over each 3x3 neighbourhood (valid interior)."""
    mean = F.avg_pool2d(x, 3, stride=1)
    mean_sq = F.avg_pool2d(x * x, 3, stride=1)
    return (mean_sq - mean * mean).clamp_min(0.0)


def chroma_histogram(cb: torch.Tensor, cr: torch.Tensor) -> torch.Tensor:
    """Counts on a CHROMA_BINS x CHROMA_BINS grid over [-CHROMA_RANGE, CHROMA_RANGE]^2."""
    def index(c: torch.Tensor) -> torch.Tensor:
        scaled = (c.flatten() + CHROMA_RANGE) / (2 * CHROMA_RANGE) * CHROMA_BINS
        return scaled.long().clamp(0, CHROMA_BINS - 1)

    flat = index(cb) * CHROMA_BINS + index(cr)
    return torch.bincount(flat, minlength=CHROMA_BINS * CHROMA_BINS).double()


def normalised_entropy(counts: torch.Tensor) -> float:
    total = float(counts.sum())
    if total <= 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * p.log()).sum()) / math.log(counts.numel())


def analyse(batches: Iterable[torch.Tensor]) -> dict[str, float]:
    """Scores of the HR `batches` (N, C, H, W) in [0, 1]: texture_variance, edge_density,
    colour_variation, each in [0, 1]. Images need at least 5x5 pixels."""
    texture_sum = edge_count = images_seen = 0.0
    histogram = torch.zeros(CHROMA_BINS * CHROMA_BINS, dtype=torch.float64)
    seen = 0
    with torch.no_grad():
        for batch in batches:
            if batch.dim() != 4 or batch.shape[1] not in (1, 3) or min(batch.shape[-2:]) < 5:
                raise ValueError(f"dataset analysis wants (N, 3, H>=5, W>=5) images, got {tuple(batch.shape)}")
            images = batch.detach().to("cpu", torch.float32).clamp(0.0, 1.0)
            magnitude = gradient_magnitude(luma(images))
            texture_sum += float(local_variance(magnitude).mean(dim=(1, 2, 3)).sum())
            edge_count += float((magnitude > EDGE_THRESHOLD).float().mean(dim=(1, 2, 3)).sum())
            histogram += chroma_histogram(*chroma(images))
            images_seen += images.shape[0]
            seen += 1
    if not seen:
        raise ValueError("dataset analysis got no batches")
    texture = texture_sum / images_seen
    return {
        "texture_variance": 1.0 - math.exp(-texture / TEXTURE_SCALE),
        "edge_density": edge_count / images_seen,
        "colour_variation": normalised_entropy(histogram),
    }
