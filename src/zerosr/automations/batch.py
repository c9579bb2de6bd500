"""Batch size: found at start from real steps, then kept inside the memory target while training.

GPU tiers. `find_batch_size` runs real training steps (`try_batch(batch, lq_size)`, which returns
the peak memory in bytes or raises `torch.OutOfMemoryError`): doubling, then a binary search
between the last size that fit and the first that did not (Lightning's BatchSizeFinder). A size
fits when its peak stays within the budget `(target_vram_usage - safety_margin) * total_memory`;
the margin covers what the probe does not see (fragmentation, the loader). Its cost is bounded:
`cost_bound` is the number of steps at the starting size it may spend (the caller gives a small
share of the run); a probe costs `PROBE_STEPS` steps scaled by its samples x pixels against the
start, and once a fitting size is known no probe past the bound runs.

While training, `BatchController` compares the peak memory of each `adjust_every`-iteration window
with the target: over `target_vram_usage` it shrinks, under the budget it grows (at most 2x), and
an out-of-memory error halves the batch. A size that ever failed is never used again, nor any
larger one (memory grows with the batch).

CPU tier. There is no VRAM: `cpu_batch_size` measures samples/s for the tier's size and the larger
candidates that fit a RAM budget, in interleaved rounds, and keeps the tier's size unless a larger
one is more than 10 % faster in every round. A single reading decided before, and a busy
neighbour process flipped it; in one round every size meets the same load. A smaller size is
tried only where the tier's does not fit the RAM budget: a run is counted in iterations, so a
smaller batch trains on fewer samples, however much faster each sample goes (on a quiet machine
nano's search picked 4 over 8, and its 600-iteration runs on BSD100 x2 ended 0.024 dB lower over
three seeds, `bench/quality.py --iters 600`).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch

from zerosr.automations.base import Automation, Decision, param
from zerosr.errors import UserError

CPU_CLEAR_GAIN = 0.10  # another batch replaces the tier's only when this much faster in every round
CPU_ROUNDS = 3
PROBE_STEPS = 2  # real steps per probe: Adam allocates its state on the first
NOT_RUN = "not run: past the search's cost bound"


@dataclass(frozen=True)
class Probe:
    batch: int
    lq_size: int
    peak_bytes: int | None  # None: out of memory, or a device that does not report memory
    fits: bool
    why: str


def memory_size(nbytes: float) -> str:
    """Bytes for a message: GiB, or MiB below one GiB (a small simulated card)."""
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def memory_budget(total_memory: int, target_fraction: float, margin: float) -> float:
    """Bytes a batch may use: the target share of memory minus the safety margin."""
    budget = (target_fraction - margin) * total_memory
    if budget <= 0:
        raise UserError(f"target_vram_usage={target_fraction} minus safety_margin={margin} leaves no memory "
                        "for training: lower the margin or raise the target")
    return budget


def lq_candidates(preferred: int, low: int, high: int, step: int = 16) -> list[int]:
    """Patch sizes for `find_batch_size`: the preferred size first, then every `step` in [low, high]."""
    others = [size for size in range(low, high + 1, step) if size != preferred]
    return [preferred] + others


def probe_cost(batch: int, lq: int, start: int, start_lq: int) -> float:
    """A probe's cost in steps at (`start`, `start_lq`): step time grows with samples x pixels."""
    return PROBE_STEPS * batch * lq * lq / (start * start_lq * start_lq)


def find_batch_size(try_batch: Callable[[int, int], float | None], start: int, max_batch: int,
                    lq_sizes: Sequence[int], target_fraction: float, margin: float, total_memory: int,
                    min_batch: int = 1, cost_bound: float = math.inf) -> tuple[int, int, list[Probe]]:
    """Largest batch (and patch size) whose real step fits the memory budget.

    `lq_sizes[0]` is the preferred patch size. Larger sizes in the list are tried only when the
    preferred one fits `max_batch` with memory to spare (more pixels per step); smaller ones only
    when not even `min_batch` fits at the preferred size. Every (batch, lq_size) is probed at most
    once. Returns (batch, lq_size, probes in the order they ran).

    `try_batch` must leave the model and optimizer usable after an out-of-memory error (zero the
    gradients, empty the CUDA cache); the caller restores their state once the search is over.
    """
    budget = memory_budget(total_memory, target_fraction, margin)
    probes: dict[tuple[int, int], Probe] = {}

    start = max(min_batch, min(start, max_batch))
    spent = [0.0]

    def fits(batch: int, lq: int) -> bool:
        if (batch, lq) not in probes:
            cost = probe_cost(batch, lq, start, lq_sizes[0])
            if spent[0] + cost > cost_bound and any(p.fits for p in probes.values()):
                probes[(batch, lq)] = Probe(batch, lq, None, False, NOT_RUN)
                return False
            spent[0] += cost
            try:
                peak = try_batch(batch, lq)
            except torch.OutOfMemoryError:
                probes[(batch, lq)] = Probe(batch, lq, None, False, "out of memory")
            else:
                ok = peak is None or peak <= budget
                probes[(batch, lq)] = Probe(batch, lq, None if peak is None else int(peak), ok,
                                            "fits" if ok else f"over the budget of {memory_size(budget)}")
        return probes[(batch, lq)].fits

    def largest(lq: int) -> int:
        """0 when not even `min_batch` fits."""
        low, high = 0, None  # low fits (0: none known), high fails (None: none known)
        batch = start
        while batch >= min_batch and not fits(batch, lq):
            # Halve, but try min_batch itself before giving up on this patch size.
            high, batch = batch, (min_batch if batch // 2 < min_batch < batch else batch // 2)
        if batch < min_batch:
            return 0
        low = batch
        while high is None and low < max_batch:
            batch = min(2 * low, max_batch)
            if fits(batch, lq):
                low = batch
            else:
                high = batch
        # Binary search to within 3 %: each probe is a real step, and 97 % of the best is enough.
        while high is not None and high - low > max(1, low // 32):
            mid = (low + high) // 2
            if fits(mid, lq):
                low = mid
            else:
                high = mid
        return low

    preferred = lq_sizes[0]
    batch, lq = largest(preferred), preferred
    if batch >= max_batch:
        for bigger in sorted(size for size in lq_sizes if size > preferred):
            if not fits(max_batch, bigger):
                break
            lq = bigger
    elif batch == 0:
        for smaller in sorted((size for size in lq_sizes if size < preferred), reverse=True):
            batch, lq = largest(smaller), smaller
            if batch:
                break
    if batch == 0:
        raise UserError(f"not even batch {min_batch} with {min(lq_sizes)}px patches fits in "
                        f"{memory_size(total_memory)}: choose a smaller arch or hardware_tier=cpu")
    return batch, lq, list(probes.values())


def peak_memory_of(step: Callable[[], None], memory, repeats: int = PROBE_STEPS) -> int | None:
    """Peak allocated device memory of `repeats` calls of `step` (a full forward, backward and
    optimizer step), read from `memory` (the engine's accelerator: `is_gpu`, `synchronize()`,
    `free_cache()`, `peak_bytes()`). Two by default, because Adam allocates its state on the first
    step. None without a GPU (no memory readings)."""
    if not memory.is_gpu:
        for _ in range(repeats):
            step()
        return None
    memory.synchronize()
    memory.free_cache()
    for _ in range(repeats):
        step()
    memory.synchronize()
    return int(memory.peak_bytes())


def cpu_sizes_to_time(candidates: Iterable[int], ram_budget_bytes: float, bytes_per_sample: float,
                      preferred: int | None = None) -> list[int]:
    """The sizes the CPU search chooses between, smallest first: the candidates within the RAM
    budget (the smallest candidate if none is), none below `preferred` while it fits (a smaller
    batch trains on fewer samples in the run's iterations, however fast each one goes)."""
    ordered = sorted(set(int(c) for c in candidates if c >= 1))
    if not ordered:
        raise ValueError("the CPU batch search needs at least one candidate batch size")
    allowed = [c for c in ordered if c * bytes_per_sample <= ram_budget_bytes] or ordered[:1]
    if preferred in allowed:
        allowed = [c for c in allowed if c >= preferred]
    return allowed


def cpu_batch_size(measure: Callable[[int], float], candidates: Iterable[int], ram_budget_bytes: float,
                   bytes_per_sample: float, preferred: int | None = None,
                   rounds: int = CPU_ROUNDS) -> tuple[int, dict[int, float]]:
    """CPU tier: measure samples/s (`measure(batch)`, one reading) for the candidates within the
    RAM budget, `rounds` times, interleaved so a change of load meets every size alike. Keep
    `preferred` (the tier's size) unless a larger size beats it by `CPU_CLEAR_GAIN` in every round;
    of those, the fastest by median. Sizes below `preferred` are not measured while it fits: they
    train on fewer samples in the run's iterations. Without `preferred` among the sizes that fit:
    the fastest of those by median. Returns (batch, median samples/s per size); with one size to
    choose from, that size and no readings."""
    allowed = cpu_sizes_to_time(candidates, ram_budget_bytes, bytes_per_sample, preferred)
    if len(allowed) == 1:
        return allowed[0], {}  # nothing to choose between: no timing
    readings: dict[int, list[float]] = {batch: [] for batch in allowed}
    for turn in range(max(1, rounds)):
        shift = turn % len(allowed)  # each size takes each place in the order
        for batch in allowed[shift:] + allowed[:shift]:
            readings[batch].append(float(measure(batch)))
    medians = {batch: statistics.median(values) for batch, values in readings.items()}
    if preferred not in readings:
        return max(medians, key=medians.get), medians
    clearly_faster = [batch for batch in allowed if batch != preferred
                      and all(other > (1 + CPU_CLEAR_GAIN) * mine
                              for other, mine in zip(readings[batch], readings[preferred]))]
    if not clearly_faster:
        return preferred, medians
    return max(clearly_faster, key=medians.get), medians


def adjusted_batch(batch: int, peak: float, total_memory: int, target_fraction: float, margin: float,
                   min_batch: int, max_batch: int, ceiling: int | None) -> int:
    """The batch for the next window given this window's peak memory.

    Over `target_fraction` of memory: shrink in proportion to the budget. Under the budget: grow in
    proportion, at most 2x, never to `ceiling` (the smallest size that failed) or beyond. The
    proportional estimate (memory ~ batch) overstates the per-sample cost, because part of the peak
    is the model and optimizer, so growing by it stays on the safe side. In between: hold.
    """
    budget = memory_budget(total_memory, target_fraction, margin)
    if peak <= 0:
        return batch
    proportional = int(batch * budget / peak)
    if peak > target_fraction * total_memory:
        return max(min_batch, min(batch - 1, proportional))
    if peak < budget:
        limit = min(2 * batch, max_batch, proportional)
        if ceiling is not None:
            limit = min(limit, ceiling - 1)
        return max(batch, limit)
    return batch


class BatchController(Automation):
    name = "batch"
    STATE = ("batch_size", "failed_sizes", "window_start", "window_peak")

    def __init__(self, cfg, batch_size: int, total_memory: int | None = None):
        super().__init__(param(cfg, "enabled", True))
        self.target = param(cfg, "target_vram_usage")  # None on the cpu tier: no memory watch
        self.margin = float(param(cfg, "safety_margin", 0.0))
        self.adjust_every = int(param(cfg, "adjust_every"))
        self.min_batch = int(param(cfg, "min_batch_size", 1))
        self.max_batch = int(param(cfg, "max_batch_size"))
        if not 1 <= self.min_batch <= self.max_batch:
            raise UserError(f"automation.batch: need 1 <= min_batch_size <= max_batch_size, got "
                            f"{self.min_batch} and {self.max_batch}")
        self.total_memory = total_memory
        self.batch_size = int(batch_size)
        self.failed_sizes: list[int] = []
        self.window_start = 0
        self.window_peak = 0

    @property
    def ceiling(self) -> int | None:
        """The smallest size that ever failed: this and anything larger are off limits."""
        return min(self.failed_sizes) if self.failed_sizes else None

    @property
    def watching_memory(self) -> bool:
        return self.enabled and self.target is not None and bool(self.total_memory)

    def on_oom(self, iteration: int) -> list[Decision]:
        """The step at `batch_size` ran out of memory: halve it (the loop retries the step).
        Raises UserError when it cannot shrink (automation off, or already at min_batch_size)."""
        old = self.batch_size
        if not self.enabled:
            raise UserError(f"out of memory at batch {old} and automation.batch is off: lower "
                            "train.batch_size or train.lq_size, or turn automation.batch.enabled on")
        if old <= self.min_batch:
            raise UserError(f"out of memory even at batch {old}: choose a smaller arch, a smaller "
                            "train.lq_size, or hardware_tier=cpu")
        self.failed_sizes = sorted(set(self.failed_sizes) | {old})
        return self._change(iteration, max(self.min_batch, old // 2),
                            f"out of memory at batch {old}: halve, and never use {old} or more again")

    def on_step_end(self, iteration: int, stats: Mapping[str, float]) -> list[Decision]:
        if not self.watching_memory:
            return []
        peak = stats.get("peak_mem_bytes")
        if peak is not None:
            self.window_peak = max(self.window_peak, int(peak))
        if iteration - self.window_start < self.adjust_every or self.window_peak <= 0:
            return []
        peak, self.window_peak, self.window_start = self.window_peak, 0, iteration
        new = adjusted_batch(self.batch_size, peak, self.total_memory, self.target, self.margin,
                             self.min_batch, self.max_batch, self.ceiling)
        used = f"peak {memory_size(peak)} = {peak / self.total_memory:.0%} of memory"
        if new < self.batch_size:
            return self._change(iteration, new, f"{used}, over the {self.target:.0%} target: shrink")
        if new > self.batch_size:
            return self._change(iteration, new, f"{used}, under the {self.target - self.margin:.0%} "
                                "budget: grow")
        return []

    def _change(self, iteration: int, new: int, reason: str) -> list[Decision]:
        old, self.batch_size = self.batch_size, int(new)
        self.window_start, self.window_peak = iteration, 0  # judge the new size on its own window
        return [self.decision(iteration, reason, batch_size=(old, self.batch_size))]

    def _restore(self, key, value):
        return list(value) if key == "failed_sizes" else value
