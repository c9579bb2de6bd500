"""Datasets of (LR, HR) images: random aligned patches for training, whole images for validation.

Decoded images can be held in RAM (`cache=True`): an SR epoch decodes every image once per patch,
and a 480x320 PNG costs ~4 ms to decode against ~0.1 ms to crop it (see `bench/loader.py`). The cache
is filled in the process that builds the dataset, before DataLoader workers fork, so on Linux the
workers share those pages instead of each decoding its own copy. Images stay in their stored depth
(uint8 / uint16): four times smaller than float32, converted per patch.

Randomness comes from torch's global generator, which DataLoader seeds per worker from the main
process's generator: `torch.manual_seed(s)` makes the patches reproducible for any number of workers.
"""

from __future__ import annotations

import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import psutil
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from zerosr.data.degrade import bicubic_downscale
from zerosr.data.io import quantize, read_image_raw, to_float32
from zerosr.errors import UserError

log = logging.getLogger(__name__)

Pair = tuple[Path, "Path | None"]
Size = tuple[int, int]  # (height, width)

# Without an explicit budget the cache may use this share of the RAM available at start.
DEFAULT_CACHE_RAM_FRACTION = 0.5


def as_pairs(items: Iterable[Path | str | tuple]) -> list[Pair]:
    """Accept (gt, lq) pairs, (gt, None) pairs or bare HR paths; None/bare means bicubic LR."""
    pairs: list[Pair] = []
    for item in items:
        if isinstance(item, (str, Path)):
            pairs.append((Path(item), None))
        else:
            gt, lq = item
            pairs.append((Path(gt), None if lq is None else Path(lq)))
    return pairs


def seed_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: seed numpy and `random` from the worker's torch seed.

    The datasets here draw from torch only; this keeps any numpy/`random` based transform a user
    adds just as reproducible and different across workers.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    # No cv2.setNumThreads here: in a forked worker it waits forever on the parent's thread pool.


def _header_size(path: Path) -> Size:
    """Image size read from the file header only (no decode)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except FileNotFoundError:
        raise UserError(f"image '{path}' does not exist: check the data paths in your config") from None
    except Image.DecompressionBombError:
        raise UserError(f"image '{path}' is too large to train on: cut it into tiles") from None
    except OSError:  # includes PIL.UnidentifiedImageError
        raise UserError(
            f"cannot read image '{path}': it is corrupt or not an image; re-export it or remove it"
        ) from None
    return height, width


def _lq_size_of(gt: Path, lq: Path | None, scale: int) -> Size:
    """LR size of a pair, after checking that the HR is `scale` times larger."""
    gt_h, gt_w = _header_size(gt)
    if lq is None:
        lq_h, lq_w = gt_h // scale, gt_w // scale
        if lq_h == 0 or lq_w == 0:
            raise UserError(f"HR image '{gt}' ({gt_w}x{gt_h}) is smaller than the scale {scale}: remove it")
        return lq_h, lq_w
    lq_h, lq_w = _header_size(lq)
    # An HR up to scale-1 pixels larger is accepted and cropped ("mod crop"), as benchmarks do.
    if not (0 <= gt_h - lq_h * scale < scale and 0 <= gt_w - lq_w * scale < scale):
        raise UserError(
            f"HR '{gt}' is {gt_w}x{gt_h} but LR '{lq}' is {lq_w}x{lq_h}; at scale {scale} the HR must be "
            f"{lq_w * scale}x{lq_h * scale}: fix the scale setting or the LR images"
        )
    return lq_h, lq_w


class PairImages:
    """Loads pair i as (gt, lq) arrays in stored depth, HR cropped to LR*scale; optional RAM cache.

    `hr_only`: lq is None (the LR is made later, e.g. by the realistic degradations)."""

    def __init__(self, pairs: Sequence[Pair], scale: int, cache: bool, cache_max_bytes: int | None = None,
                 hr_only: bool = False):
        if not pairs:
            raise UserError("the dataset has no images: check the data paths in your config")
        self.pairs = list(pairs)
        self.scale = int(scale)
        self.hr_only = hr_only
        self.lq_sizes = [_lq_size_of(gt, lq, self.scale) for gt, lq in self.pairs]
        self._cache: list[tuple[np.ndarray, np.ndarray]] | None = None
        if cache:
            self._fill_cache(cache_max_bytes)

    def __len__(self) -> int:
        return len(self.pairs)

    def estimated_bytes(self) -> int:
        """Decoded size of all pairs at 8 bits (16-bit files take twice this)."""
        pixels = sum(h * w * ((not self.hr_only) + self.scale**2) for h, w in self.lq_sizes)
        return 3 * pixels

    def _fill_cache(self, cache_max_bytes: int | None) -> None:
        budget = cache_max_bytes
        if budget is None:
            budget = int(psutil.virtual_memory().available * DEFAULT_CACHE_RAM_FRACTION)
        needed = self.estimated_bytes()
        if needed > budget:
            log.warning(
                "not caching %d images in RAM: about %.1f GiB needed, %.1f GiB allowed; decoding from disk",
                len(self), needed / 2**30, budget / 2**30,
            )
            return
        # Decoders and the resize matmuls release the GIL, so threads decode in parallel.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            self._cache = list(pool.map(self._decode, range(len(self))))
        used = sum(gt.nbytes + (0 if lq is None else lq.nbytes) for gt, lq in self._cache)
        log.info("cached %d image pairs in RAM (%.1f MiB)", len(self), used / 2**20)

    def _decode(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        gt_path, lq_path = self.pairs[index]
        lq_h, lq_w = self.lq_sizes[index]
        gt = read_image_raw(gt_path)[: lq_h * self.scale, : lq_w * self.scale]
        if self.hr_only:
            if gt.shape[:2] != (lq_h * self.scale, lq_w * self.scale):
                raise UserError(f"HR image '{gt_path}' decodes to a different size than its header: re-save it")
            return np.ascontiguousarray(gt), None
        if lq_path is None:
            lq = bicubic_downscale(to_float32(gt), self.scale)
            # Quantised like an LR file on disk would be, so both paths train on the same data.
            lq = lq if gt.dtype == np.float32 else quantize(lq, gt.dtype.type)
        else:
            lq = read_image_raw(lq_path)
        if lq.shape[:2] != (lq_h, lq_w):  # a header that disagrees with the decoded pixels
            raise UserError(f"LR image '{lq_path}' decodes to a different size than its header: re-save it")
        return np.ascontiguousarray(gt), lq

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        if self._cache is not None:
            return self._cache[index]
        return self._decode(index)

    @property
    def cached(self) -> bool:
        return self._cache is not None


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(to_float32(image).transpose(2, 0, 1)))


def _rand_below(n: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(n, (), generator=generator).item())


class PatchDataset(Dataset):
    """What the engine relies on in a training set, whichever data option made it.

    Items are random square patches: `lq_size` LR pixels a side (the batch search may change it,
    up to `largest_lq_size`), drawn by `sample(index, generator)`. `collate` makes a batch; a set
    whose LR is made per batch (`degrades_per_batch`) leaves it out when asked (`degrade=False`)
    and makes it with `degrade`, on any device. Subclasses give `images` (a PairImages), `scale`,
    `lq_size`, `augment`, `length` and `sample`."""

    degrades_per_batch = False
    images: PairImages
    scale: int
    lq_size: int
    augment: bool
    length: int

    def _check_patch_fits(self, too_small) -> None:
        """Every image must hold an `lq_size` patch; `too_small(path, lq_h, lq_w)` words the error."""
        for (gt_path, lq_path), (h, w) in zip(self.images.pairs, self.images.lq_sizes):
            if h < self.lq_size or w < self.lq_size:
                raise UserError(too_small(lq_path or gt_path, h, w))

    @property
    def largest_lq_size(self) -> int:
        """The largest square LR patch every training image can give (the smallest image's side)."""
        return min(min(h, w) for h, w in self.images.lq_sizes)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return self.sample(index)

    def sample(self, index: int, generator: torch.Generator | None = None) -> dict:
        raise NotImplementedError

    def _flip(self, generator: torch.Generator | None, *images: np.ndarray) -> tuple[np.ndarray, ...]:
        """The same random flip/90-degree turn of each square image (one of all 8) when augmenting."""
        if not self.augment:
            return images
        hflip, vflip, transpose = torch.randint(2, (3,), generator=generator).tolist()
        if hflip:
            images = tuple(image[:, ::-1] for image in images)
        if vflip:
            images = tuple(image[::-1] for image in images)
        if transpose:
            images = tuple(image.transpose(1, 0, 2) for image in images)
        return images

    def collate(self, items: list[dict], degrade: bool = True) -> dict:
        return default_collate(items)

    def degrade(self, gt: torch.Tensor, seeds, device: torch.device | str | None = None) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} has its LR with every sample: nothing to degrade")


class PairedPatchDataset(PatchDataset):
    """Random LR patch of `lq_size` with its HR patch; random flips and 90-degree rotations.

    `pairs`: (gt_path, lq_path) tuples, lq_path None meaning "make the LR by bicubic downscaling",
    or bare HR paths. `length` sets the epoch length (default: one patch per image); a longer epoch
    keeps DataLoader workers alive across small datasets.
    """

    def __init__(
        self,
        pairs: Iterable,
        scale: int,
        lq_size: int,
        augment: bool = True,
        cache: bool = True,
        length: int | None = None,
        cache_max_bytes: int | None = None,
    ):
        self.images = PairImages(as_pairs(pairs), scale, cache, cache_max_bytes)
        self.scale = int(scale)
        self.lq_size = int(lq_size)
        self.augment = augment
        self.length = len(self.images) if length is None else int(length)
        self._check_patch_fits(lambda path, h, w: (
            f"train.lq_size={self.lq_size} is larger than the LR of '{path}' ({w}x{h} LR pixels): "
            "lower train.lq_size or remove that image"))

    def sample(self, index: int, generator: torch.Generator | None = None) -> dict:
        """Item `index`, its crop and flips drawn from `generator` (torch's global one when None)."""
        pair_index = index % len(self.images)
        gt, lq = self.images[pair_index]
        size, scale = self.lq_size, self.scale
        top = _rand_below(lq.shape[0] - size + 1, generator)
        left = _rand_below(lq.shape[1] - size + 1, generator)
        lq = lq[top : top + size, left : left + size]
        gt = gt[top * scale : (top + size) * scale, left * scale : (left + size) * scale]
        lq, gt = self._flip(generator, lq, gt)
        return {"lq": _to_tensor(lq), "gt": _to_tensor(gt), "index": pair_index}


class PairedImageDataset(Dataset):
    """Whole (LR, HR) images for validation, HR cropped to LR*scale; adds the HR file's stem as name."""

    def __init__(self, pairs: Iterable, scale: int, cache: bool = False, cache_max_bytes: int | None = None):
        self.images = PairImages(as_pairs(pairs), scale, cache, cache_max_bytes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        gt, lq = self.images[index]
        name = self.images.pairs[index][0].stem
        return {"lq": _to_tensor(lq), "gt": _to_tensor(gt), "index": index, "name": name}
