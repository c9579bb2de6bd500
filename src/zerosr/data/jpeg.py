"""Baseline JPEG compression and decompression in torch: batched, per-sample quality, any device.

What libjpeg does at its defaults, step for step: RGB to YCbCr (JFIF), 4:2:0 chroma subsampling,
8x8 orthonormal DCT, quantisation by the standard tables (ITU T.81 Annex K) scaled by the quality
as libjpeg scales them, then the inverse with the decoder's rounding to 8 bits and its "fancy"
(triangle) chroma upsampling, which bilinear interpolation at half-pixel centres reproduces.
Entropy coding is lossless and skipped. Running in torch keeps the degradation pipeline on the
training device (no copy to the CPU for a codec) and makes a batch of qualities one call.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61), (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56), (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77), (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101), (72, 92, 95, 98, 112, 100, 103, 99),
)
CHROMA_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99), (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99), (47, 66, 99, 99, 99, 99, 99, 99),
) + ((99,) * 8,) * 4


def scaled_table(base: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """libjpeg's quality scaling of a base table: (N,) qualities in 1..100 -> (N, 8, 8) tables."""
    q = quality.clamp(1, 100).to(base.dtype)
    scale = torch.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q)
    return torch.floor((base[None] * scale[:, None, None] + 50.0) / 100.0).clamp(1, 255)


@lru_cache(maxsize=16)
def _base_table(kind: str, device: str) -> torch.Tensor:
    """The standard quantisation table, made on each device once (a copy per call would sync)."""
    return torch.tensor(LUMA_TABLE if kind == "luma" else CHROMA_TABLE, dtype=torch.float32, device=device)


@lru_cache(maxsize=8)
def _dct_matrix(device: str) -> torch.Tensor:
    k = torch.arange(8, dtype=torch.float64)[:, None]
    n = torch.arange(8, dtype=torch.float64)[None, :]
    matrix = torch.cos((2 * n + 1) * k * math.pi / 16) * math.sqrt(2 / 8)
    matrix[0] /= math.sqrt(2)
    return matrix.float().to(device)


def _blocks(plane: torch.Tensor) -> torch.Tensor:
    n, h, w = plane.shape
    return plane.reshape(n, h // 8, 8, w // 8, 8).transpose(2, 3)  # (N, h/8, w/8, 8, 8)


def _unblocks(blocks: torch.Tensor) -> torch.Tensor:
    n, bh, bw = blocks.shape[:3]
    return blocks.transpose(2, 3).reshape(n, bh * 8, bw * 8)


def _quantise_plane(plane: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """One component (N, H, W) in 0..255 through DCT, quantisation and the decoder's inverse."""
    dct = _dct_matrix(str(plane.device))
    coeffs = dct @ (_blocks(plane) - 128.0) @ dct.T
    table = tables[:, None, None]
    coeffs = torch.round(coeffs / table) * table
    decoded = dct.T @ coeffs @ dct + 128.0
    return torch.round(_unblocks(decoded)).clamp_(0, 255)


def jpeg_roundtrip(images: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Compress and decompress RGB images (N, 3, H, W) in [0, 1] at per-image `quality` (N,)."""
    n, _, h, w = images.shape
    pad_h, pad_w = (-h) % 16, (-w) % 16  # whole 16x16 macroblocks, edge pixels repeated as encoders do
    x = images.clamp(0, 1) * 255.0
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    r, g, b = x.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128.0
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128.0
    chroma = F.avg_pool2d(torch.stack([cb, cr], 1), 2)  # 4:2:0
    quality = quality.to(images.device)
    luma_tables = scaled_table(_base_table("luma", str(images.device)), quality)
    chroma_tables = scaled_table(_base_table("chroma", str(images.device)), quality)
    y = _quantise_plane(y, luma_tables)
    chroma = torch.stack([_quantise_plane(chroma[:, i], chroma_tables) for i in range(2)], 1)
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)
    cb, cr = chroma[:, 0] - 128.0, chroma[:, 1] - 128.0
    rgb = torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], 1)
    return (torch.round(rgb).clamp_(0, 255) / 255.0)[:, :, :h, :w]
