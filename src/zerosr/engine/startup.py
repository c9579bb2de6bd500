"""What a fresh run measures before its first step: batch size, dataset character, base LR.

Every probe here runs real training steps on copies of the model's and optimizer's state and puts
both back afterwards, so the run itself starts from the same weights whatever was measured. The
probes use synthetic patches (no training sample is consumed), except the dataset analysis, which
reads its own stream of HR patches.
"""

from __future__ import annotations

import copy
import math
import time
from typing import TYPE_CHECKING

import psutil
import torch

from zerosr.automations import (analyse, cpu_batch_size, find_batch_size, lr_range_test,
                                peak_memory_of)
from zerosr.automations.base import Decision
from zerosr.automations.batch import lq_candidates
from zerosr.config.user_set import user_set_keys
from zerosr.engine.data import BatchStream

if TYPE_CHECKING:
    from zerosr.engine.loop import Trainer


class _Restored:
    """Snapshot model, optimizer, scaler and objective (a GAN's discriminator: its spectral-norm
    vectors move on every forward) on entry; restore them on exit. The EMA is not touched."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def __enter__(self):
        t = self.trainer
        self.model = copy.deepcopy(t.model.state_dict())
        self.optimizer = copy.deepcopy(t.optimizer.state_dict())
        self.scaler = copy.deepcopy(t.precision.scaler.state_dict())
        self.objective = copy.deepcopy(t.objective.state_dict())
        self.rng = torch.get_rng_state()
        return self

    def restore(self) -> None:
        t = self.trainer
        t.model.load_state_dict(self.model)
        t.optimizer.load_state_dict(self.optimizer)
        t.precision.scaler.load_state_dict(self.scaler)
        t.objective.load_state_dict(self.objective)
        t.optimizer.zero_grad(set_to_none=True)
        torch.set_rng_state(self.rng)

    def __exit__(self, *exc):
        self.restore()
        if self.trainer.device.type == "cuda":
            torch.cuda.empty_cache()


def _synthetic_step(trainer: Trainer, batch: int, lq_size: int, lr: float | None = None) -> float:
    """One real forward/backward/optimizer step on random patches; returns the loss."""
    scale = trainer.cfg.scale
    lq = torch.rand(batch, 3, lq_size, lq_size, device=trainer.device)
    gt = torch.rand(batch, 3, lq_size * scale, lq_size * scale, device=trainer.device)
    if lr is not None:
        for group in trainer.optimizer.param_groups:
            group["lr"] = lr
    return trainer.train_on(lq, gt, accumulate=1, step=True)


def search_batch_size(trainer: Trainer) -> list[Decision]:
    """The largest batch (and patch) fitting the tier's memory target (GPU), or the fastest batch
    within a RAM budget (CPU). Changes `trainer.stream` and the LR controller (square-root rule)."""
    cfg, suite = trainer.cfg, trainer.suite
    auto, preset = cfg.automation.batch, cfg.arch.preset
    old_batch, old_lq = trainer.stream.batch_size, int(cfg.train.lq_size)
    started = time.perf_counter()
    with _Restored(trainer):
        if trainer.device.type == "cuda":
            total = torch.cuda.get_device_properties(trainer.device).total_memory

            def try_batch(batch: int, lq_size: int) -> int | None:
                return peak_memory_of(lambda: _synthetic_step(trainer, batch, lq_size), trainer.device)

            lq_sizes = [s for s in lq_candidates(old_lq, preset.lq_size_min, preset.lq_size_max)
                        if s <= cfg.hardware_tier.max_lq_size] or [old_lq]
            if "lq_size" in user_set_keys("train"):  # the user's patch size wins
                lq_sizes = [old_lq]
            batch, lq, probes = find_batch_size(try_batch, old_batch, auto.max_batch_size, lq_sizes,
                                                auto.target_vram_usage, auto.safety_margin, total,
                                                auto.min_batch_size)
            why = f"{len(probes)} real steps: largest fitting {auto.target_vram_usage:.0%} of {total / 2**30:.1f} GiB"
        else:
            lq = old_lq
            per_sample = _bytes_per_sample(trainer, lq)
            budget = auto.ram_budget_fraction * psutil.virtual_memory().available

            def samples_per_second(batch: int) -> float:
                _synthetic_step(trainer, batch, lq)  # warm-up: allocator, Adam state
                best = math.inf
                for _ in range(3):  # best of three: one timed step swung the choice between runs
                    begin = time.perf_counter()
                    _synthetic_step(trainer, batch, lq)
                    best = min(best, time.perf_counter() - begin)
                return batch / best

            # One octave either side of the tier's batch: throughput on a CPU is flat beyond that.
            candidates = [b for b in (old_batch // 2, old_batch, old_batch * 2)
                          if auto.min_batch_size <= b <= auto.max_batch_size]
            batch, speeds = cpu_batch_size(samples_per_second, candidates or [old_batch], budget, per_sample,
                                           preferred=old_batch)
            rates = ", ".join(f"{b}: {s:.0f}" for b, s in sorted(speeds.items()))
            why = (f"measured samples/s ({rates}) within {budget / 2**30:.1f} GiB RAM: the tier's {old_batch} "
                   "unless another is over 5 % faster")
    seconds = time.perf_counter() - started
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)  # the probes' peaks must not judge the run
    change = {}
    if batch != old_batch:
        change["batch_size"] = (old_batch, batch)
    if lq != old_lq:
        change["lq_size"] = (old_lq, lq)
    # Recorded even when nothing changed: the measurement is what justifies keeping the size.
    decisions = [Decision(0, "batch", change, f"start-up search in {seconds:.1f} s: {why}")]
    if change:
        suite.batch.batch_size = batch
        decisions += suite.lr.scale_for_batch(old_batch, batch, 0)
        trainer.apply_batch_and_patch(batch, lq)
    return decisions


def _bytes_per_sample(trainer: Trainer, lq_size: int) -> float:
    """RAM one sample costs in a step: input, target, and activations (measured on a tiny forward
    would need a profiler; estimated as 40 feature maps of the model's width at HR size)."""
    scale, width = trainer.cfg.scale, int(trainer.cfg.arch.params.get("num_feat", 64))
    hr_pixels = (lq_size * scale) ** 2
    return 4.0 * hr_pixels * (3 + 3 + 40 * width / scale**2)


def analyse_dataset(trainer: Trainer, batches: int) -> dict[str, float]:
    """Scores of the first `batches` HR batches, from a stream of its own (the run's is untouched)."""
    stream = BatchStream(trainer.data.train, trainer.stream.batch_size, trainer.cfg.train.seed + 1)
    try:
        return analyse(stream.next_batch()["gt"] for _ in range(batches))
    finally:
        stream.close()


def find_lr(trainer: Trainer) -> list[Decision]:
    """Lightning-style LR range test on real batches from a side stream; model and optimizer restored."""
    stream = BatchStream(trainer.data.train, trainer.stream.batch_size, trainer.cfg.train.seed + 2)
    with _Restored(trainer) as snapshot:

        def step_at(lr: float) -> float:
            batch = stream.next_batch()
            for group in trainer.optimizer.param_groups:
                group["lr"] = lr
            return trainer.train_on(batch["lq"].to(trainer.device), batch["gt"].to(trainer.device),
                                    accumulate=1, step=True)

        result = lr_range_test(step_at, snapshot.restore)
    stream.close()
    if result.lr is None:
        return [Decision(0, "lr", {}, "LR range test found no clear descent: keeping the preset LR")]
    return trainer.suite.lr.adopt_base_lr(result.lr, 0)
