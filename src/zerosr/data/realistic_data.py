"""Datasets for `data=realistic`: HR images only, LR made by the realistic degradation pipeline.

Training items carry the HR patch and a degradation seed drawn from the sample's own generator;
the LR is made per batch by `collate` (in the loader worker, on the CPU) or, when the batch stream
is given a GPU, by `degrade` on the device after the batch arrives. Either way sample k of epoch e
gets the same seed, so a resumed run sees the same LR images. Validation images are degraded once,
each with a fixed seed, so every validation of a run scores the same inputs.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch.utils.data import Dataset

from zerosr.data.datasets import PairImages, PatchDataset, _rand_below, _to_tensor, as_pairs
from zerosr.data.realistic import DegradationSettings, degrade_batch

VALIDATION_SEED = 20_210_731  # fixed: validations are comparable within a run and across runs


class RealisticPatchDataset(PatchDataset):
    """Random HR patches of `lq_size * scale` with flips and 90-degree turns; LR made per batch."""

    degrades_per_batch = True

    def __init__(self, hr_paths: Iterable, scale: int, lq_size: int, settings: DegradationSettings,
                 augment: bool = True, cache: bool = True, length: int | None = None,
                 cache_max_bytes: int | None = None):
        self.images = PairImages(as_pairs(hr_paths), scale, cache, cache_max_bytes, hr_only=True)
        self.scale, self.lq_size, self.augment = int(scale), int(lq_size), augment
        self.settings = settings
        self.length = len(self.images) if length is None else int(length)
        self._check_patch_fits(lambda path, h, w: (
            f"train.lq_size={self.lq_size} needs HR images of at least {self.lq_size * self.scale} pixels a "
            f"side; '{path}' is {w * self.scale}x{h * self.scale}: lower train.lq_size or remove that image"))

    def sample(self, index: int, generator: torch.Generator | None = None) -> dict:
        """HR patch of item `index` and its degradation seed, all drawn from `generator`."""
        pair_index = index % len(self.images)
        gt, _ = self.images[pair_index]
        size = self.lq_size * self.scale
        top = _rand_below(gt.shape[0] - size + 1, generator)
        left = _rand_below(gt.shape[1] - size + 1, generator)
        (gt,) = self._flip(generator, gt[top:top + size, left:left + size])
        seed = int(torch.randint(2**62, (), generator=generator))
        return {"gt": _to_tensor(gt), "index": pair_index, "degrade_seed": seed}

    def degrade(self, gt: torch.Tensor, seeds: Sequence[int] | torch.Tensor,
                device: torch.device | str | None = None) -> torch.Tensor:
        """LR batch for an HR batch and its seeds, computed on `device` (default: where `gt` is)."""
        return degrade_batch(gt, seeds, self.settings, self.scale, device)

    def collate(self, items: list[dict], degrade: bool = True) -> dict:
        """One batch; with `degrade` its LR is made here (in the worker), else left to the consumer."""
        batch = {"gt": torch.stack([item["gt"] for item in items]),
                 "index": torch.tensor([item["index"] for item in items]),
                 "degrade_seed": torch.tensor([item["degrade_seed"] for item in items], dtype=torch.int64)}
        if degrade:
            batch["lq"] = self.degrade(batch["gt"], batch["degrade_seed"])
        return batch

    def __getitem__(self, index: int) -> dict:
        item = self.sample(index)
        item["lq"] = self.degrade(item["gt"][None], [item["degrade_seed"]])[0]
        return item


class RealisticImageDataset(Dataset):
    """Whole HR images (cropped to a multiple of the scale) with LR degraded once, seed fixed per image."""

    def __init__(self, hr_paths: Iterable, scale: int, settings: DegradationSettings, cache: bool = False,
                 seed: int = VALIDATION_SEED):
        self.images = PairImages(as_pairs(hr_paths), scale, cache, hr_only=True)
        self.scale, self.settings = int(scale), settings
        self._lq = []
        for index in range(len(self.images)):
            gt, _ = self.images[index]
            self._lq.append(degrade_batch(_to_tensor(gt)[None], [seed + index], settings, self.scale)[0])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        gt, _ = self.images[index]
        name = self.images.pairs[index][0].stem
        return {"lq": self._lq[index], "gt": _to_tensor(gt), "index": index, "name": name}
