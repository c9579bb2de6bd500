"""Training and validation data for a run, and the batch stream the loop draws from.

The stream is deterministic and resumable: epoch `e` visits the samples in a permutation drawn
from (seed, e), and sample `k` of that epoch gets its own augmentation seed. The stream's state is
(epoch, position), so a resumed run reads exactly the samples an uninterrupted one would have,
whatever the batch size or the number of loader workers, and a batch-size change simply makes the
next batches longer or shorter.

`data=realistic` trains on HR images alone: each sample's LR comes from the degradation pipeline,
seeded by the sample's key, in the loader workers on the CPU, or on the device when the stream is
given the run's GPU (`BatchStream(degrade_device=...)`, after the batch arrives). With `data.target_path` the
pipeline's ranges are first calibrated on the user's target images: `RunData.decisions`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from zerosr.automations.base import Decision
from zerosr.config.user_set import user_set_keys
from zerosr.data import (
    PairedImageDataset,
    PairedPatchDataset,
    PatchDataset,
    ensure_demo_dataset,
    list_images,
    pair_images,
    seed_worker,
    split_validation,
)
from zerosr.data.calibrate import calibrate, profile_folder
from zerosr.data.realistic import DegradationSettings
from zerosr.data.realistic_data import RealisticImageDataset, RealisticPatchDataset
from zerosr.errors import UserError


def cache_dir() -> Path:
    return Path(os.environ.get("ZEROSR_CACHE_DIR") or Path.home() / ".cache" / "zerosr")


@dataclass
class RunData:
    train: PatchDataset
    val: PairedImageDataset | RealisticImageDataset
    description: str
    # Start-up decisions taken while building the data (the degradation calibration): the engine
    # records them in automation.jsonl with the others.
    decisions: list[Decision] = field(default_factory=list)


def _pairs(gt: str, lq: str | None, scale: int, gt_key: str, lq_key: str) -> list:
    if lq is None:  # LR made from HR by bicubic downscaling with antialiasing
        return [(path, None) for path in list_images(gt, gt_key)]
    return pair_images(gt, lq, scale, gt_key=gt_key, lq_key=lq_key)


def calibrated_settings(cfg: DictConfig, hr_images: Iterable, user_set: Iterable[str]
                        ) -> tuple[DegradationSettings, list[Decision]]:
    """The run's degradation settings: the config's, centred on data.target_path's images if set."""
    settings = DegradationSettings.from_config(cfg.data.degradation)
    if not cfg.data.target_path:
        return settings, []
    target = profile_folder(list_images(cfg.data.target_path, "data.target_path"), str(cfg.data.target_path))
    settings, decision = calibrate(settings, target, hr_images, int(cfg.scale), user_set)
    return settings, [decision]


def calibration_line(decision: Decision) -> str:
    """The start-up screen's line for a calibration."""
    changes = ", ".join(f"{key} {new}" for key, (_, new) in decision.change.items()) or "no range changed"
    return f"degradation  calibrated: {changes} ({decision.reason})"


def _build_realistic(cfg: DictConfig) -> RunData:
    data, scale = cfg.data, int(cfg.scale)
    train_paths = list_images(data.gt_path, "data.gt_path")
    if data.val_gt_path:
        val_paths = list_images(data.val_gt_path, "data.val_gt_path")
    else:
        train_paths, val_paths = split_validation(train_paths, max(1, data.n_val), seed=cfg.train.seed)
    train = RealisticPatchDataset(train_paths, scale, cfg.train.lq_size, DegradationSettings.from_config(data.degradation),
                                  cache=data.cache)
    count = len(train.images)
    hr_images = [train.images[i * count // min(count, 32)][0] for i in range(min(count, 32))]
    # The run shows and logs `decisions` with the other start-up decisions (once).
    train.settings, decisions = calibrated_settings(cfg, hr_images, user_set_keys("data.degradation"))
    val = RealisticImageDataset(val_paths, scale, train.settings, cache=data.cache)
    origin = f"{data.gt_path} (realistic LR{', calibrated on ' + str(data.target_path) if data.target_path else ''})"
    return RunData(train, val, f"{len(train_paths)} training / {len(val_paths)} validation images, {origin}",
                   decisions)


def build_data(cfg: DictConfig) -> RunData:
    data, scale = cfg.data, cfg.scale
    if data.name == "realistic":
        return _build_realistic(cfg)
    if data.name == "demo" and data.gt_path is None:
        folders = ensure_demo_dataset(cache_dir() / f"demo_x{scale}", scale=scale)
        train_pairs = pair_images(folders["train_gt"], folders["train_lq"], scale)
        val_pairs = pair_images(folders["val_gt"], folders["val_lq"], scale)
        origin = f"demo dataset in {folders['train_gt'].parent.parent}"
    else:
        train_pairs = _pairs(data.gt_path, data.lq_path, scale, "data.gt_path", "data.lq_path")
        if data.val_gt_path:
            val_pairs = _pairs(data.val_gt_path, data.val_lq_path, scale, "data.val_gt_path",
                               "data.val_lq_path")
        else:
            train_pairs, val_pairs = split_validation(train_pairs, max(1, data.n_val), seed=cfg.train.seed)
        origin = f"{data.gt_path} ({'paired LR' if data.lq_path else 'bicubic LR'})"
    if not val_pairs:
        raise UserError("no validation images: set data.val_gt_path or data.n_val to 1 or more")
    train = PairedPatchDataset(train_pairs, scale, cfg.train.lq_size, augment=True, cache=data.cache)
    val = PairedImageDataset(val_pairs, scale, cache=data.cache)
    return RunData(train, val, f"{len(train_pairs)} training / {len(val_pairs)} validation images, {origin}")


class _SeededSamples(Dataset):
    """Wraps a PatchDataset so item (index, seed) draws its random crop and flips from `seed` alone.

    A private generator per sample: seeding torch's global one costs a millisecond a sample."""

    def __init__(self, inner: PatchDataset):
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        return self.inner.sample(index, torch.Generator().manual_seed(seed))


def _init_worker(worker_id: int) -> None:
    """Ctrl+C is the main process's to handle (it finishes the step and saves): workers ignore it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    seed_worker(worker_id)


class BatchStream:
    """Batches of `batch_size` samples in a deterministic, resumable order.

    Under torchrun (`world_size` > 1) the order is that of one global batch of
    `batch_size * world_size` samples per step, and rank `r` takes its slice `r` of it: the ranks
    never share a sample, and the state (epoch, position counts global samples) is the same on every
    rank, so a resumed run reads exactly what an uninterrupted one would have.
    """

    def __init__(self, dataset: PatchDataset, batch_size: int, seed: int, num_workers: int = 0,
                 pin_memory: bool = False, prefetch_factor: int = 2, rank: int = 0, world_size: int = 1,
                 degrade_device: torch.device | str | None = None, host=contextlib.nullcontext):
        self.dataset = _SeededSamples(dataset)
        # A dataset that makes its LR per batch (data=realistic) does it in the loader workers, or,
        # given the run's GPU, on that device once the HR batch is there (next_batch), so the
        # loader never waits on it. `host` marks the loading as host work (the simulated card).
        self.degrade_device = (torch.device(degrade_device) if degrade_device is not None
                               and dataset.degrades_per_batch else None)
        self.host = host
        self._warned_oom = False
        self.collate = functools.partial(dataset.collate, degrade=self.degrade_device is None)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.num_workers, self.pin_memory, self.prefetch_factor = num_workers, pin_memory, prefetch_factor
        self.epoch, self.position = 0, 0  # samples consumed in this epoch
        self._iterator = None

    # --- the order -------------------------------------------------------------------------------
    def _epoch_keys(self, epoch: int) -> list[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        seeds = torch.randint(2**62, (len(order),), generator=generator).tolist()
        return list(zip(order, seeds))

    def _batches_from(self, epoch: int, position: int):
        """Batches of keys from (epoch, position) on, running on into the next epochs."""
        batch: list[tuple[int, int]] = []
        size = self.batch_size * self.world_size  # one global batch; this rank's slice of it
        while True:
            for key in self._epoch_keys(epoch)[position:]:
                batch.append(key)
                if len(batch) == size:
                    yield batch[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
                    batch = []
            epoch, position = epoch + 1, 0

    def _restart(self) -> None:
        loader = DataLoader(
            self.dataset, batch_sampler=self._batches_from(self.epoch, self.position),
            num_workers=self.num_workers, pin_memory=self.pin_memory, worker_init_fn=_init_worker,
            collate_fn=self.collate,
            prefetch_factor=self.prefetch_factor if self.num_workers > 0 else None,
            persistent_workers=False)
        self._iterator = iter(loader)

    # --- use -------------------------------------------------------------------------------------
    def next_batch(self) -> dict:
        with self.host():
            if self._iterator is None:
                self._restart()
            batch = next(self._iterator)
        if self.degrade_device is not None:
            batch["lq"] = self._degrade_on_device(batch)
        self.epoch, self.position = divmod(self.epoch * len(self.dataset) + self.position
                                           + len(batch["index"]) * self.world_size, len(self.dataset))
        return batch

    def _degrade_on_device(self, batch: dict) -> torch.Tensor:
        """The batch's LR made on the device; a batch whose degradation does not fit beside the
        training's memory is made on the CPU instead (same seeds, the CPU's random streams)."""
        dataset = self.dataset.inner
        try:
            gt = batch["gt"].to(self.degrade_device, non_blocking=True)
            lq = dataset.degrade(gt, batch["degrade_seed"], self.degrade_device)
            batch["gt"] = gt
            return lq
        except torch.OutOfMemoryError:
            pass  # leave the except block first: its traceback keeps the failed tensors alive
        if not self._warned_oom:
            self._warned_oom = True
            print(f"warning: the degradation of a batch of {len(batch['index'])} did not fit on "
                  f"{self.degrade_device}: made on the CPU (shown once)", file=sys.stderr, flush=True)
        with self.host():
            return dataset.degrade(batch["gt"], batch["degrade_seed"], "cpu")

    def set_batch_size(self, batch_size: int) -> None:
        """Takes effect from the next batch (batches already prefetched are dropped, not skipped)."""
        if int(batch_size) != self.batch_size:
            self.batch_size = int(batch_size)
            self.close()

    def close(self) -> None:
        self._iterator = None  # the DataLoader's workers exit with their iterator

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.batch_size = int(state["batch_size"])
        self.close()
