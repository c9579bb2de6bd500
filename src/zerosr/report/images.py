"""Images written at validation: single images and a labelled LR-bicubic | SR | HR comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from zerosr.atomic import atomic_write_bytes
from zerosr.data.io import encode_image, to_float32
from zerosr.metrics import tensor_to_uint8

_GAP = 4  # white pixels between panels
_LABEL_HEIGHT = 14


def _to_uint8_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        return tensor_to_uint8(image)
    if image.dtype == np.uint8:
        return image
    return np.round(to_float32(image) * 255).astype(np.uint8)


def _to_chw_float(image: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(to_float32(image).transpose(2, 0, 1).copy())
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    return image.detach().float().cpu().clamp(0, 1)


def save_image(image: torch.Tensor | np.ndarray, path: str | Path) -> None:
    """Save a CHW float tensor in [0, 1], or an HWC RGB array (uint8, uint16 or float in [0, 1]).

    The file appears atomically, so an image viewer or TensorBoard never reads half a file.
    """
    path = Path(path)
    array = _to_uint8_hwc(image) if isinstance(image, torch.Tensor) else image
    atomic_write_bytes(path, encode_image(array, path.suffix or ".png"))


def _center_crop(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    top, left = (image.shape[1] - height) // 2, (image.shape[2] - width) // 2
    return image[:, top : top + height, left : left + width]


def save_comparison(
    lq: torch.Tensor | np.ndarray,
    sr: torch.Tensor | np.ndarray,
    hr: torch.Tensor | np.ndarray,
    path: str | Path,
    scale: int,
    max_side: int | None = 512,
) -> None:
    """Save [LR upscaled bicubic | SR | HR] side by side with labels.

    Panels larger than `max_side` HR pixels are centre-cropped, so a 2K validation image still
    gives a comparison that can be read at 100% zoom; None keeps whole images.
    """
    lq, sr, hr = _to_chw_float(lq), _to_chw_float(sr), _to_chw_float(hr)
    bicubic = F.interpolate(lq[None], scale_factor=scale, mode="bicubic", align_corners=False)[0].clamp(0, 1)
    height = min(t.shape[1] for t in (bicubic, sr, hr))
    width = min(t.shape[2] for t in (bicubic, sr, hr))
    if max_side is not None:
        height, width = min(height, max_side), min(width, max_side)
    panels = [tensor_to_uint8(_center_crop(t, height, width)) for t in (bicubic, sr, hr)]

    canvas = np.full((height + _LABEL_HEIGHT, 3 * width + 2 * _GAP, 3), 255, dtype=np.uint8)
    for i, panel in enumerate(panels):
        x = i * (width + _GAP)
        canvas[_LABEL_HEIGHT:, x : x + width] = panel
    labelled = Image.fromarray(canvas)
    draw = ImageDraw.Draw(labelled)
    for i, label in enumerate(("bicubic", "SR", "HR")):
        draw.text((i * (width + _GAP) + 2, 1), label, fill=(0, 0, 0))
    save_image(np.asarray(labelled), path)
