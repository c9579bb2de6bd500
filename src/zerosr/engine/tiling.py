"""Run an SR model over a large image tile by tile, so validation fits in memory.

Each tile's output is used only for its core: the tile is the core plus `overlap` LR pixels of
context on every side (shifted inward at the image edges, so every tile has the full `tile` size).
The cores partition the image with no blending. For a network whose receptive field reaches at
most `overlap` LR pixels from the output pixel, the result is exactly the whole-image forward;
for larger receptive fields the seams differ only by the context cut off beyond `overlap`.
Call it under `torch.no_grad()` during validation.
"""

from __future__ import annotations

from typing import Callable

import torch

from zerosr.errors import UserError


def _spans(length: int, tile: int, overlap: int) -> list[tuple[int, int, int]]:
    """(core_start, core_end, input_start) along one axis; inputs are `tile` long (or the axis)."""
    if length <= tile:
        return [(0, length, 0)]
    core = tile - 2 * overlap
    spans = []
    for start in range(0, length, core):
        end = min(start + core, length)
        input_start = min(max(start - overlap, 0), length - tile)
        spans.append((start, end, input_start))
    return spans


def tiled_forward(
    model: Callable[[torch.Tensor], torch.Tensor], lq: torch.Tensor, scale: int, tile: int, overlap: int
) -> torch.Tensor:
    """model(lq) computed on tiles of at most `tile` x `tile` LR pixels; lq is N x C x H x W."""
    _, _, height, width = lq.shape
    if tile >= height and tile >= width:
        return model(lq)
    if overlap < 0 or tile - 2 * overlap <= 0:
        raise UserError(
            f"validation tile size {tile} must exceed twice the tile overlap {overlap}: "
            "raise the tile size or lower the overlap"
        )
    output = None
    for y0, y1, in_y in _spans(height, tile, overlap):
        for x0, x1, in_x in _spans(width, tile, overlap):
            patch = lq[:, :, in_y : in_y + tile, in_x : in_x + tile]
            result = model(patch)
            expected = (patch.shape[2] * scale, patch.shape[3] * scale)
            if tuple(result.shape[2:]) != expected:
                raise ValueError(
                    f"model turned a {tuple(patch.shape[2:])} tile into {tuple(result.shape[2:])}, "
                    f"expected {expected} at scale {scale}"
                )
            if output is None:
                output = result.new_empty(lq.shape[0], result.shape[1], height * scale, width * scale)
            oy, ox = (y0 - in_y) * scale, (x0 - in_x) * scale
            output[:, :, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = result[
                :, :, oy : oy + (y1 - y0) * scale, ox : ox + (x1 - x0) * scale
            ]
    return output
