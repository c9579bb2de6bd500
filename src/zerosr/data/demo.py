"""The built-in demo dataset: synthetic images generated on first use, nothing downloaded.

Each HR image is drawn at 4x its size and box-reduced, so edges are anti-aliased the way a camera
would blur them. The content mixes what upscalers get right and bicubic gets wrong: sharp edges of
shapes, thin lines, stripes and checkers near the LR Nyquist limit, and text-like glyph strokes, over
smooth gradients and blurred noise textures. Everything follows `numpy.random.default_rng(seed)`, so
a seed always gives the same images. LR images are the HR downscaled by `bicubic_downscale`.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from zerosr.data.degrade import bicubic_downscale
from zerosr.data.io import quantize, to_float32, write_image
from zerosr.errors import UserError

GENERATOR_VERSION = 1
SUPERSAMPLE = 4
_MANIFEST = "manifest.json"


def _random_color(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Noise of about `cells` blobs per side, bicubic-upsampled: a soft natural-looking texture."""
    coarse = rng.random((cells, cells, 3)).astype(np.float32)
    channels = [Image.fromarray(np.ascontiguousarray(coarse[:, :, c])).resize((size, size), Image.BICUBIC) for c in range(3)]
    return np.stack([np.asarray(ch) for ch in channels], axis=2)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = rng.integers(3)
    if kind == 0:  # linear gradient between two colours at a random angle
        angle = rng.uniform(0, np.pi)
        y, x = np.mgrid[0:size, 0:size] / size
        t = (np.cos(angle) * x + np.sin(angle) * y)
        t = (t - t.min()) / (t.max() - t.min())
        a, b = np.array(_random_color(rng)), np.array(_random_color(rng))
        return (a + (b - a) * t[:, :, None]) / 255.0
    if kind == 1:  # large soft blobs
        return _smooth_noise(rng, size, int(rng.integers(3, 7)))
    # texture: soft blobs plus finer grain, like foliage or fabric
    base = _smooth_noise(rng, size, 4)
    grain = _smooth_noise(rng, size, int(rng.integers(16, 48)))
    return np.clip(0.6 * base + 0.4 * grain, 0.0, 1.0)


def _random_box(rng: np.random.Generator, size: int, lo: float, hi: float) -> list[float]:
    w, h = rng.uniform(lo, hi, 2) * size
    x0, y0 = rng.uniform(-0.1 * size, size - 0.5 * w), rng.uniform(-0.1 * size, size - 0.5 * h)
    return [x0, y0, x0 + w, y0 + h]


def _pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """Stripes or a checkerboard with a period of 4-16 HR pixels at a random angle, uint8 RGB."""
    period = rng.uniform(4, 16) * SUPERSAMPLE
    angle = rng.uniform(0, np.pi)
    axis = np.arange(size, dtype=np.float32) / np.float32(period / 2)
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    u = np.floor(cos * axis[None, :] + sin * axis[:, None]).astype(np.int32)
    if rng.random() < 0.5:
        on = u % 2 == 0
    else:
        v = np.floor(cos * axis[:, None] - sin * axis[None, :]).astype(np.int32)
        on = (u + v) % 2 == 0
    a, b = np.array(_random_color(rng), np.uint8), np.array(_random_color(rng), np.uint8)
    return np.where(on[:, :, None], a, b)


def _glyph(draw: ImageDraw.ImageDraw, rng: np.random.Generator, x: float, y: float, w: float, h: float,
           width: int, fill: tuple) -> None:
    """A letter-like mark: 2-4 strokes between points of a 3x3 grid in the cell (segment-display style)."""
    points = [(x + w * i / 2, y + h * j / 2) for j in range(3) for i in range(3)]
    for _ in range(int(rng.integers(2, 5))):
        a, b = rng.choice(9, 2, replace=False)
        draw.line([points[a], points[b]], fill=fill, width=width)


def _draw_text_block(image: Image.Image, rng: np.random.Generator) -> None:
    size = image.size[0]
    draw = ImageDraw.Draw(image)
    cell = rng.uniform(0.05, 0.1) * size
    x0, y0, x1, y1 = _random_box(rng, size, 0.4, 0.8)
    paper, ink = _random_color(rng), _random_color(rng)
    draw.rectangle([x0, y0, x1, y1], fill=paper)
    width = max(1, int(cell / 7))
    y = y0 + cell * 0.3
    while y + cell < y1:
        x = x0 + cell * 0.3
        while x + cell * 0.6 < x1:
            if rng.random() < 0.85:  # occasional gaps read as word breaks
                _glyph(draw, rng, x, y, cell * 0.6, cell, width, ink)
            x += cell * 0.85
        y += cell * 1.4


def _draw_element(image: Image.Image, rng: np.random.Generator) -> None:
    size = image.size[0]
    draw = ImageDraw.Draw(image)
    kind = rng.integers(6)
    color = _random_color(rng)
    if kind == 0:
        draw.ellipse(_random_box(rng, size, 0.1, 0.5), fill=color)
    elif kind == 1:
        center = rng.uniform(0, size, 2)
        radius = rng.uniform(0.05, 0.3) * size
        angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 7))))
        draw.polygon([(float(center[0] + radius * np.cos(a)), float(center[1] + radius * np.sin(a)))
                      for a in angles], fill=color)
    elif kind == 2:  # thin to medium lines: 0.5 to 3 HR pixels wide
        for _ in range(int(rng.integers(1, 5))):
            ends = [tuple(float(v) for v in rng.uniform(0, size, 2)) for _ in range(2)]
            draw.line(ends, fill=color, width=int(rng.integers(2, 13)))
    elif kind == 3:
        draw.ellipse(_random_box(rng, size, 0.1, 0.6), outline=color, width=int(rng.integers(2, 13)))
    elif kind == 4:  # stripes or checker inside a rectangle or an ellipse
        mask = Image.new("L", image.size, 0)
        shape = ImageDraw.Draw(mask).rectangle if rng.random() < 0.5 else ImageDraw.Draw(mask).ellipse
        shape(_random_box(rng, size, 0.25, 0.6), fill=255)
        pattern = Image.fromarray(_pattern(rng, size))
        image.paste(pattern, (0, 0), mask)
    else:
        _draw_text_block(image, rng)


def generate_image(seed: int, size: int = 128) -> np.ndarray:
    """One synthetic HR image, float32 HWC RGB in [0, 1], fully determined by `seed`."""
    rng = np.random.default_rng(seed)
    big = size * SUPERSAMPLE
    image = Image.fromarray(quantize(_background(rng, big)))
    for _ in range(int(rng.integers(5, 12))):
        _draw_element(image, rng)
    image = image.reduce(SUPERSAMPLE)  # box average of the 4x4 sub-pixels: the anti-aliasing
    return to_float32(np.asarray(image))


def _write_split(folder: Path, seeds: range, size: int, scale: int) -> None:
    for seed in seeds:
        hr = generate_image(seed, size)
        name = f"{seed:04d}.png"
        write_image(folder / "hr" / name, quantize(hr))
        write_image(folder / "lr" / name, quantize(bicubic_downscale(hr, scale)))


def _paths(root: Path) -> dict[str, Path]:
    return {
        "train_gt": root / "train" / "hr",
        "train_lq": root / "train" / "lr",
        "val_gt": root / "val" / "hr",
        "val_lq": root / "val" / "lr",
    }


def _read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / _MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        raise UserError(f"'{root / _MANIFEST}' is damaged: delete '{root}' and zerosr regenerates it") from None


def ensure_demo_dataset(
    root: str | Path, n_train: int = 48, n_val: int = 6, size: int = 128, scale: int = 2, seed: int = 0
) -> dict[str, Path]:
    """Generate the demo dataset under `root` unless it is already there; returns its four folders.

    Generation happens in a temporary sibling folder that is renamed to `root` at the end, so a
    crash leaves nothing half-written and two processes starting together both end up with one
    complete copy (the loser of the rename discards its own).
    """
    root = Path(root)
    wanted = {"version": GENERATOR_VERSION, "n_train": n_train, "n_val": n_val, "size": size,
              "scale": scale, "seed": seed}
    if root.exists():
        _check_existing(root, wanted)
        return _paths(root)

    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        # Training and validation seeds never overlap: validation starts after the training block.
        _write_split(staging / "train", range(seed * 10_000, seed * 10_000 + n_train), size, scale)
        val_start = seed * 10_000 + 5_000
        _write_split(staging / "val", range(val_start, val_start + n_val), size, scale)
        (staging / _MANIFEST).write_text(json.dumps(wanted, indent=2), encoding="utf-8")
        try:
            staging.rename(root)
        except OSError:
            if not (root / _MANIFEST).exists():  # not a concurrent winner: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _check_existing(root, wanted)
    return _paths(root)


def _check_existing(root: Path, wanted: dict) -> None:
    found = _read_manifest(root)
    if found is None:
        raise UserError(
            f"'{root}' exists but is not a zerosr demo dataset (no {_MANIFEST}): "
            "delete it or point the demo data at another folder"
        )
    if found != wanted:
        raise UserError(
            f"demo dataset '{root}' was generated with {found}, not {wanted}: delete it to regenerate"
        )
