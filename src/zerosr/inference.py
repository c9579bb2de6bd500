"""Applying a trained model: what `zerosr.upscale` and `zerosr.evaluate` share.

The model is loaded by `archs.read_weights` (the reader behind `train.pretrain`) and run through
`engine.tiling.tiled_forward` (validation's tiling), so a model gives here what it gave in
validation. `Upscaler` adds what a user's images need: the device and precision, a tile size
from the free (V)RAM that halves when memory runs out, and gray / alpha handling.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from zerosr import archs
from zerosr.archs.io import unwrap
from zerosr.archs.spec import feature_width
from zerosr.engine.accelerator import CpuAccelerator, current
from zerosr.engine.tiling import DEFAULT_OVERLAP, tile_geometry, tiled_forward
from zerosr.errors import UserError

# Context every tile carries on each side, unless the network's family asks for more (tiling
# also rounds it up to the family's grid, e.g. an attention window's step).
OVERLAP = DEFAULT_OVERLAP
MAX_TILE = 512  # LR pixels; larger tiles are no faster, on GPU the batch grows instead
MAX_BATCH = 8
MIN_TILE = 32
# Share of the free memory a forward may plan to use, and activation bytes per LR pixel per
# feature channel of the network (conv input and output, the expanded FFN, the pixel shuffle).
MEMORY_SHARE = {"cuda": 0.5, "cpu": 0.25}
FEATURE_COPIES = 12


def resolve_model_path(path: str | Path) -> Path:
    """A weights file, or a run directory's `models/best.safetensors`."""
    path = Path(path)
    if path.is_dir():
        best = path / "models" / "best.safetensors"
        if not best.is_file():
            raise UserError(
                f"{path} is a folder without models/best.safetensors: pass a weights file, or a run "
                "directory whose training has validated at least once"
            )
        return best
    return path


def load_model(path: str | Path, device: torch.device) -> torch.nn.Module:
    """The network in a weights file or run directory, in eval mode on `device`."""
    return archs.load(resolve_model_path(path), device=device)


def check_writable(folder: Path, what: str) -> None:
    """Create `folder` and write a scratch file there: no permission is one line before any work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=".zerosr-write-test-", dir=folder)
        os.close(handle)
        os.unlink(name)
    except OSError as err:
        raise UserError(f"cannot write to {what} {folder} ({err.strerror or err}): "
                        "choose a folder you may write to") from None


def pick_accelerator() -> CpuAccelerator:
    """The device training would use: CUDA when present (or the simulated card), else the CPU."""
    return current()


def autocast_dtype(accelerator: CpuAccelerator, high_depth: bool) -> torch.dtype | None:
    """The card's low precision (the accelerator's, as training's) on a GPU; fp32 (None) on the
    CPU and for 16-bit images: bf16 keeps 8 significant bits, enough for an 8-bit image only."""
    return None if high_depth else accelerator.low_precision_dtype()


def _free_bytes(accelerator: CpuAccelerator) -> int:
    if accelerator.is_gpu:
        return int(accelerator.free_memory())
    import psutil  # what zerosr.detect reads the RAM with, without its GPU probe and warnings

    return int(psutil.virtual_memory().available)


def auto_tile(model: torch.nn.Module, accelerator: CpuAccelerator, dtype: torch.dtype | None) -> tuple[int, int]:
    """(tile, batch) that the free memory allows for this model run in `dtype` (None: fp32),
    from a per-pixel estimate."""
    net = unwrap(model)
    features = feature_width(net)
    scale = int(getattr(net, "scale", 4))
    bytes_per_value = 4 if dtype is None else torch.finfo(dtype).bits // 8
    per_pixel = bytes_per_value * features * (FEATURE_COPIES + 2 * scale * scale)
    budget = _free_bytes(accelerator) * MEMORY_SHARE["cuda" if accelerator.is_gpu else "cpu"]
    side = int(math.sqrt(max(budget, 1) / per_pixel))
    tile = max(MIN_TILE, min(MAX_TILE, side // 16 * 16))
    batch = 1
    if accelerator.is_gpu:
        batch = int(max(1, min(MAX_BATCH, budget // (per_pixel * tile * tile))))
    return tile, batch


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


class Upscaler:
    """model(image) on (N, 3, H, W) in [0, 1] tensors or numpy images, tiled and memory-safe.

    `tile` None picks the tile from the free memory, 0 runs whole images; once memory runs
    out the tile is halved (and stays halved for the next images) down to the smallest tile.
    """

    def __init__(self, model: torch.nn.Module, accelerator: CpuAccelerator, tile: int | None = None,
                 batch: int | None = None, low_precision: bool = True):
        self.model, self.accelerator, self.low_precision = model, accelerator, low_precision
        self.device = accelerator.device
        self.scale = int(unwrap(model).scale)
        self.whole = tile == 0
        # Tiles for the low precision and for fp32 (16-bit images), each from its bytes per value.
        self.tiles, batches = {}, []
        for dtype in {autocast_dtype(accelerator, False) if low_precision else None, None}:
            size, auto_batch = auto_tile(model, accelerator, dtype)
            self.tiles[dtype] = size if tile is None else tile
            batches.append(auto_batch)
        self.batch = batch or (min(batches) if tile is None else 1)
        # The smallest tile that still leaves a core between the overlaps.
        self.min_tile = tile_geometry(model, MIN_TILE, OVERLAP)[0]

    def _forward(self, lq: torch.Tensor, tile: int, dtype: torch.dtype | None) -> torch.Tensor:
        context = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with torch.no_grad(), context:
            return tiled_forward(self.model, lq, self.scale, tile, OVERLAP, self.batch).float()

    def upscale_tensor(self, lq: torch.Tensor, high_depth: bool = False) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, 3, sH, sW) float32 in [0, 1] on the CPU."""
        lq = lq.to(self.device)
        dtype = autocast_dtype(self.accelerator, high_depth) if self.low_precision else None
        while True:
            tile = max(lq.shape[-2:]) if self.whole else self.tiles[dtype]
            try:
                sr = self._forward(lq, tile, dtype)
                if dtype is not None and not torch.isfinite(sr).all():
                    sr = self._forward(lq, self.tiles[None], None)  # fp16 overflowed: this image in fp32
                return sr.clamp_(0, 1).cpu()
            except (torch.OutOfMemoryError, RuntimeError) as error:
                if not is_out_of_memory(error):
                    raise
            # Out of memory: the cache is emptied here, outside the `except` block, whose traceback
            # still holds the failed tile's tensors.
            self._release()
            if self.whole:
                raise UserError(f"out of memory for the whole {lq.shape[-1]}x{lq.shape[-2]} image "
                                "(--tile 0): leave --tile out to run it in tiles")
            if self.batch > 1:  # the batch halves first, then the tile
                self.batch //= 2
            elif tile // 2 >= self.min_tile:
                self.tiles = {key: min(size, tile // 2) for key, size in self.tiles.items()}
            else:
                raise UserError(f"out of memory even with {tile}x{tile} tiles: close other "
                                "programs using the memory, or use a smaller model")

    @property
    def tile(self) -> int:
        """The tile an 8-bit image runs in now."""
        return self.tiles[autocast_dtype(self.accelerator, False) if self.low_precision else None]

    def _release(self) -> None:
        self.accelerator.free_cache()

    def upscale_image(self, image: np.ndarray, high_depth: bool = False) -> np.ndarray:
        """An HW gray, HWC RGB or RGBA float image in [0, 1] -> the same layout, float32, upscaled.

        Gray runs as RGB with equal channels and comes back as their mean; alpha runs through
        the model on its own, as a gray image, in the same batch as the colour. `high_depth`
        (a 16-bit source) keeps the model in fp32.
        """
        gray = image.ndim == 2
        planes = image[:, :, None] if gray else image
        color = planes[:, :, :3] if planes.shape[2] >= 3 else np.repeat(planes[:, :, :1], 3, axis=2)
        batch = [color]
        if planes.shape[2] == 4:
            batch.append(np.repeat(planes[:, :, 3:], 3, axis=2))
        lq = torch.from_numpy(np.stack(batch).transpose(0, 3, 1, 2).copy())
        sr = self.upscale_tensor(lq, high_depth).numpy().transpose(0, 2, 3, 1)
        result = sr[0].mean(axis=2) if gray else sr[0]
        if len(batch) == 2:
            result = np.concatenate([result, sr[1].mean(axis=2, keepdims=True)], axis=2)
        return np.ascontiguousarray(result, dtype=np.float32)
