"""Run an SR model over a large image tile by tile: validation, `zerosr.upscale` and `zerosr.evaluate`.

Each tile's output is used only for its core: the tile is the core plus `overlap` LR pixels of
context on every side (shifted inward at the image edges). The cores partition the image, so
there is no seam to blend away: for a network whose receptive field reaches at most `overlap` LR
pixels, the result is exactly the whole-image forward. What a network needs beyond that is its
family's `Tiling` (`zerosr.archs.spec`), read here and nowhere else:

- `context`: the overlap is at least this many LR pixels;
- `grid`: tiles start at multiples of it (and the overlap is rounded up to one), so e.g. every
  tile attends over the same attention windows as the whole image;
- `whole_image`: forward inputs computed once over the whole image (a global statistic, such as
  a detail gain from the image's average content) and given to every tile.

Tiles of one shape run `batch_size` at a time. Call it under `torch.no_grad()`.
"""

from __future__ import annotations

from typing import Callable

import torch

from zerosr.archs.io import unwrap
from zerosr.archs.spec import Tiling, tiling
from zerosr.errors import UserError

# LR pixels of context each tile carries on every side, unless a caller asks otherwise.
DEFAULT_OVERLAP = 8


def _spans(length: int, tile: int, overlap: int, align: int = 1) -> list[tuple[int, int, int, int]]:
    """(core_start, core_end, input_start, input_end) along one axis.

    Inputs are `tile` long (the last one may be up to `align - 1` shorter) and start at multiples
    of `align`; with align 1 every input is exactly `tile` long, shifted inward at the far edge.
    """
    if length <= tile:
        return [(0, length, 0, length)]
    core = tile - 2 * overlap
    last_input = -(-(length - tile) // align) * align  # rounded up, so it stays within `tile`
    spans = []
    for start in range(0, length, core):
        end = min(start + core, length)
        input_start = max(0, min(start - overlap, last_input))
        spans.append((start, end, input_start, min(input_start + tile, length)))
    return spans


def tile_geometry(model, tile: int, overlap: int) -> tuple[int, int, int]:
    """(tile, overlap, align) as `tiled_forward` uses them for this model.

    The overlap is raised to the family's context, rounded up to a multiple of its grid, and the
    tile rounded down to one (never below the smallest tile that leaves a core of one grid step).
    """
    needs = _needs(model)
    align = int(needs.grid)
    overlap = max(overlap, int(needs.context))
    if align > 1:
        overlap = -(-overlap // align) * align
        tile = max(tile // align * align, 2 * overlap + align)
    return tile, overlap, align


def _needs(model) -> Tiling:
    return tiling(unwrap(model)) if isinstance(model, torch.nn.Module) else Tiling()


def tiled_forward(
    model: Callable[..., torch.Tensor], lq: torch.Tensor, scale: int, tile: int, overlap: int, batch_size: int = 1
) -> torch.Tensor:
    """model(lq) computed on tiles of at most `tile` x `tile` LR pixels; lq is N x C x H x W."""
    _, _, height, width = lq.shape
    if tile >= height and tile >= width:
        return model(lq)
    tile, overlap, align = tile_geometry(model, tile, overlap)
    if overlap < 0 or tile - 2 * overlap <= 0:
        raise UserError(
            f"tile size {tile} must exceed twice the tile overlap {overlap}: "
            "raise the tile size or lower the overlap"
        )
    whole = _needs(model).whole_image
    shared = whole(unwrap(model), lq, tile) if whole is not None else {}

    # Tiles grouped by input shape (at most four: inner, last column, last row, corner), so a
    # batch stacks tiles of one size.
    groups: dict[tuple[int, int], list[tuple]] = {}
    for y0, y1, in_y0, in_y1 in _spans(height, tile, overlap, align):
        for x0, x1, in_x0, in_x1 in _spans(width, tile, overlap, align):
            groups.setdefault((in_y1 - in_y0, in_x1 - in_x0), []).append((y0, y1, in_y0, x0, x1, in_x0))

    output = None
    n = lq.shape[0]
    for (tile_h, tile_w), placements in groups.items():
        for first in range(0, len(placements), max(1, batch_size)):
            chunk = placements[first : first + max(1, batch_size)]
            patches = torch.cat([lq[:, :, iy : iy + tile_h, ix : ix + tile_w] for _, _, iy, _, _, ix in chunk])
            result = model(patches, **{key: value.repeat(len(chunk), *([1] * (value.dim() - 1)))
                                       for key, value in shared.items()})
            expected = (tile_h * scale, tile_w * scale)
            if tuple(result.shape[2:]) != expected:
                raise ValueError(
                    f"model turned a {(tile_h, tile_w)} tile into {tuple(result.shape[2:])}, "
                    f"expected {expected} at scale {scale}"
                )
            if output is None:
                output = result.new_empty(n, result.shape[1], height * scale, width * scale)
            for i, (y0, y1, in_y, x0, x1, in_x) in enumerate(chunk):
                oy, ox = (y0 - in_y) * scale, (x0 - in_x) * scale
                output[:, :, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = result[
                    i * n : (i + 1) * n, :, oy : oy + (y1 - y0) * scale, ox : ox + (x1 - x0) * scale
                ]
    return output
