"""Validation: PSNR/SSIM on Y (border cropped by the scale), and LPIPS/DISTS when asked
(`train.val_metrics`), of the model and of bicubic upscaling.

Images larger than `tile` LR pixels run in tiles; an out-of-memory error halves the tile (down to
a core of `MIN_CORE` pixels inside the overlap) and runs the image again. A few SR results and a
side-by-side comparison (bicubic | SR | HR) are written under `RUN/visualization/<iteration>/` at every validation.
`python -m zerosr.evaluate` scores a model with these same functions.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, ContextManager, Sequence

import numpy as np
import torch

from zerosr.data.degrade import resize_weights
from zerosr.engine.tiling import DEFAULT_OVERLAP, tile_geometry, tiled_forward
from zerosr.errors import UserError
from zerosr.metrics import calculate_psnr, calculate_ssim, tensor_to_uint8
from zerosr.metrics.scorer import Scorer
from zerosr.report.images import save_comparison, save_image


def bicubic_upscale(lq: torch.Tensor, scale: int) -> torch.Tensor:
    """MATLAB `imresize(lq, scale, 'bicubic')`, the "bicubic" row of SR papers (N, C, H, W)."""
    h, w = lq.shape[-2:]
    rows = torch.from_numpy(resize_weights(h, h * scale, float(scale))).to(lq)
    cols = torch.from_numpy(resize_weights(w, w * scale, float(scale))).to(lq)
    return torch.einsum("ih,nchw,jw->ncij", rows, lq, cols).clamp_(0, 1)


def score(sr: torch.Tensor, hr: torch.Tensor, scale: int) -> tuple[float, float]:
    """(PSNR, SSIM) on Y with `scale` border pixels cropped, of CHW tensors rounded to 8 bits."""
    a, b = tensor_to_uint8(sr), tensor_to_uint8(hr)
    return (calculate_psnr(a, b, crop_border=scale, test_y_channel=True),
            calculate_ssim(a, b, crop_border=scale, test_y_channel=True))


def validation_items(dataset, scale: int):
    """(index, name, lq, gt) per image, batched (1, C, H, W), HR cropped to LR * scale."""
    for index in range(len(dataset)):
        item = dataset[index]
        lq, gt = item["lq"].unsqueeze(0), item["gt"].unsqueeze(0)
        h, w = lq.shape[-2] * scale, lq.shape[-1] * scale
        yield index, item.get("name", str(index)), lq, gt[..., :h, :w]


MIN_CORE = 8  # LR pixels of a tile's core: below this the overlap costs more than the tile


class Validator:
    def __init__(self, dataset, scale: int, tile: int, device: torch.device, out_dir: Path,
                 images_to_save: int = 3, overlap: int = DEFAULT_OVERLAP,
                 free_memory: Callable[[], None] = lambda: None, inject_oom: Callable[[], None] = lambda: None,
                 host: Callable[[], ContextManager] = contextlib.nullcontext, metrics: Sequence[str] = ("psnr", "ssim")):
        self.dataset, self.scale, self.tile, self.overlap = dataset, scale, tile, overlap
        self.device, self.out_dir, self.images_to_save = device, Path(out_dir), images_to_save
        self.free_memory, self.inject_oom = free_memory, inject_oom  # inject_oom: debug.inject_oom_at
        self.host = host  # scoring and saving run in host memory (the accelerator's `host`)
        self.scorer = Scorer(metrics, device)  # perceptual networks on the validation device
        with host():
            self.baseline = self._bicubic_baseline()

    def _upscale(self, model: torch.nn.Module, lq: torch.Tensor) -> torch.Tensor:
        """The model's output for one image, tile by tile; out of memory halves the tile and retries."""
        _, overlap, align = tile_geometry(model, self.tile, self.overlap)
        smallest = 2 * overlap + max(MIN_CORE, align)
        while True:
            tile = min(self.tile, max(lq.shape[-2:]))
            try:
                self.inject_oom()
                return tiled_forward(model, lq, self.scale, tile, self.overlap)
            except torch.OutOfMemoryError:
                if tile <= smallest:
                    raise UserError(f"validation runs out of memory even in {tile}px tiles: use fewer or "
                                    "smaller validation images, or a smaller arch") from None
            # Outside the except block: its traceback would keep the failed tile's tensors alive.
            self.tile = max(smallest, tile // 2)
            self.free_memory()
            print(f"validation: out of memory in {tile}px tiles, now {self.tile}px", flush=True)

    def _items(self):
        """The validation images, read in host memory (the model's first operator moves `lq`)."""
        items = validation_items(self.dataset, self.scale)
        while True:
            with self.host():
                item = next(items, None)
            if item is None:
                return
            yield item

    def _bicubic_baseline(self) -> dict[str, float]:
        scores, self.largest = [], (0, 0)  # the largest LR image (H, W): what `fit_tile` runs
        for _, _, lq, gt in self._items():  # on the CPU, in any run
            scores.append(self.scorer(bicubic_upscale(lq, self.scale)[0], gt[0], self.scale))
            if lq.shape[-2] * lq.shape[-1] > self.largest[0] * self.largest[1]:
                self.largest = tuple(lq.shape[-2:])
        return {f"val/bicubic_{name}": float(np.mean([s[name] for s in scores])) for name in self.scorer.names}

    @torch.no_grad()
    def fit_tile(self, model: torch.nn.Module, channels_last: bool = False) -> int:
        """An image of the largest validation image's size through `model`, tile by tile, with the
        training's memory in use: a tile that does not fit (with the image and its output) is
        halved now, before training, and kept. Returns the tile."""
        if not self.largest[0]:
            return self.tile
        lq = torch.rand(1, 3, *self.largest, device=self.device)
        if channels_last:
            lq = lq.contiguous(memory_format=torch.channels_last)
        was_training = model.training
        model.eval()
        self._upscale(model, lq)
        model.train(was_training)
        return min(self.tile, max(self.largest))

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, iteration: int, channels_last: bool = False) -> dict[str, float]:
        was_training = model.training
        model.eval()
        scores = []
        folder = self.out_dir / f"{iteration:08d}"
        for index, name, lq, gt in self._items():
            lq = lq.to(self.device)
            if channels_last:
                lq = lq.contiguous(memory_format=torch.channels_last)
            sr = self._upscale(model, lq).float().clamp_(0, 1)
            with self.host():
                sr = sr.cpu()
                scores.append(self.scorer(sr[0], gt[0], self.scale))
                if index < self.images_to_save:
                    save_image(sr[0], folder / f"{name}_sr.png")
                    save_comparison(lq[0].cpu(), sr[0], gt[0], folder / f"{name}_compare.png", self.scale)
        model.train(was_training)
        means = {f"val/{name}": float(np.mean([s[name] for s in scores])) for name in self.scorer.names}
        return {**means, **self.baseline}
