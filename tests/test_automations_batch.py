"""Batch size: finder on a fake memory model, CPU throughput pick, OOM halving, memory watch."""

from __future__ import annotations

import pytest
import torch

from zerosr.automations.batch import (
    BatchController,
    adjusted_batch,
    cpu_batch_size,
    find_batch_size,
    lq_candidates,
    memory_budget,
    peak_memory_of,
)
from zerosr.engine.accelerator import CpuAccelerator
from zerosr.errors import UserError

GIB = 2**30


def fake_gpu(fixed=1.0 * GIB, per_pixel=40.0, physical=10 * GIB):
    """memory = fixed + per_pixel * batch * lq^2; out of memory above the physical size."""
    calls = []

    def try_batch(batch: int, lq: int) -> int:
        calls.append((batch, lq))
        memory = fixed + per_pixel * batch * lq * lq
        if memory > physical:
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")
        return int(memory)

    return try_batch, calls


def largest_fitting(budget, fixed, per_pixel, lq, max_batch):
    return min(max_batch, int((budget - fixed) // (per_pixel * lq * lq)))


@pytest.mark.parametrize("start, max_batch", [(1, 512), (8, 512), (64, 512), (500, 512), (8, 40)])
def test_finder_gets_90_percent_of_the_largest_fit_and_never_repeats_a_probe(start, max_batch):
    try_batch, calls = fake_gpu()
    batch, lq, probes = find_batch_size(try_batch, start, max_batch, [64], 0.9, 0.1, 10 * GIB)
    best = largest_fitting(memory_budget(10 * GIB, 0.9, 0.1), 1.0 * GIB, 40.0, 64, max_batch)
    assert lq == 64
    assert 0.9 * best <= batch <= best
    assert len(calls) == len(set(calls)) == len(probes)
    assert len(calls) <= 16
    failed = [p.batch for p in probes if not p.fits]
    assert all(b > batch for b in failed)


def test_finder_counts_over_budget_and_oom_as_failures():
    try_batch, _ = fake_gpu(per_pixel=4000.0, physical=8 * GIB)  # OOM before the 9 GiB budget
    batch, _, probes = find_batch_size(try_batch, 8, 1024, [64], 0.95, 0.05, 10 * GIB)
    assert any(p.why == "out of memory" for p in probes)
    assert 1.0 * GIB + 4000.0 * batch * 64 * 64 <= 8 * GIB


def test_finder_grows_the_patch_when_max_batch_fits():
    try_batch, _ = fake_gpu()
    batch, lq, _ = find_batch_size(try_batch, 8, 16, lq_candidates(64, 32, 128), 0.9, 0.1, 10 * GIB)
    assert batch == 16
    assert lq == 128  # 16 x 128^2 x 40 B = 10.5 MB, far under budget


def test_finder_shrinks_the_patch_only_when_nothing_fits():
    try_batch, _ = fake_gpu(fixed=7.8 * GIB, per_pixel=60_000.0)  # 64px: not even one sample fits
    batch, lq, _ = find_batch_size(try_batch, 4, 16, [64, 32, 48], 0.9, 0.1, 10 * GIB)
    assert (batch, lq) == (1, 48)  # the largest smaller patch that fits
    with pytest.raises(UserError):
        find_batch_size(fake_gpu(fixed=9 * GIB)[0], 4, 16, [64, 32], 0.9, 0.1, 10 * GIB)


def test_budget_must_leave_room():
    with pytest.raises(UserError):
        memory_budget(10 * GIB, 0.5, 0.5)


def test_peak_memory_of_runs_the_step_on_cpu():
    ran = []
    assert peak_memory_of(lambda: ran.append(1), CpuAccelerator()) is None
    assert ran == [1, 1]


def test_cpu_pick_keeps_the_tier_size_unless_a_larger_one_is_clearly_faster_within_ram():
    speeds = {1: 10.0, 2: 18.0, 4: 30.0, 8: 32.0, 16: 40.0, 32: 80.0}
    measured = []

    def measure(batch):
        measured.append(batch)
        return speeds[batch]

    batch, seen = cpu_batch_size(measure, speeds, ram_budget_bytes=8 * 100, bytes_per_sample=100, preferred=4)
    assert batch == 4  # 32 is within 10 % of 30: the tier's size stays
    assert set(seen) == set(measured) == {4, 8}  # 16 and 32 over the RAM budget; smaller sizes not measured
    assert sorted(measured) == sorted([4, 8] * 3)  # three rounds
    measured.clear()
    batch, _ = cpu_batch_size(measure, speeds, ram_budget_bytes=16 * 100, bytes_per_sample=100, preferred=4)
    assert batch == 16  # the fastest of the clearly faster larger sizes
    speeds[2] = 300.0
    batch, _ = cpu_batch_size(measure, speeds, ram_budget_bytes=16 * 100, bytes_per_sample=100, preferred=8)
    assert batch == 16 and 2 not in measured  # a smaller batch, however fast, trains on fewer samples
    batch, _ = cpu_batch_size(measure, speeds, ram_budget_bytes=3 * 100, bytes_per_sample=100, preferred=4)
    assert batch == 2  # 4 does not fit the RAM budget: the fastest that does


def test_with_one_size_to_choose_from_the_cpu_pick_times_nothing():
    measured = []
    batch, seen = cpu_batch_size(lambda b: measured.append(b) or 1.0, [2, 4, 8], ram_budget_bytes=7 * 100,
                                 bytes_per_sample=100, preferred=4)
    assert (batch, seen, measured) == (4, {}, [])  # 8 over the RAM budget, 2 below the tier's 4 that fits
    batch, seen = cpu_batch_size(lambda b: measured.append(b) or 1.0, [2, 4, 8], ram_budget_bytes=50,
                                 bytes_per_sample=100, preferred=4)
    assert (batch, seen, measured) == (2, {}, [])  # none fits: the smallest, untimed


def test_a_busy_moment_does_not_flip_the_cpu_pick():
    """One round measured while a neighbour process ran: the larger batch looks 20 % faster there
    only. A single reading would have picked it."""
    calls = {4: 0, 8: 0}
    rounds = {8: [18.0, 16.0, 16.1], 4: [15.0, 16.2, 16.0]}

    def measure(batch):
        calls[batch] += 1
        return rounds[batch][calls[batch] - 1]

    batch, medians = cpu_batch_size(measure, [4, 8], 1e12, 1.0, preferred=4)
    assert batch == 4 and medians == {8: 16.1, 4: 16.0}


def test_cpu_rounds_are_interleaved():
    measured = []
    cpu_batch_size(lambda b: measured.append(b) or 1.0, [2, 4, 8], 1e12, 1.0, preferred=2)
    assert measured == [2, 4, 8, 4, 8, 2, 8, 2, 4]  # each size in each place: load meets all alike


CFG = {"enabled": True, "target_vram_usage": 0.8, "safety_margin": 0.1, "ram_budget_fraction": 0.5,
       "adjust_every": 100, "min_batch_size": 1, "max_batch_size": 64}


def test_oom_halves_and_never_returns_to_a_failed_size():
    control = BatchController(CFG, 16, total_memory=10 * GIB)
    decisions = control.on_oom(5)
    assert control.batch_size == 8 and decisions[0].change == {"batch_size": (16, 8)}
    assert control.ceiling == 16
    # Memory is nearly idle: grow, but only below the size that failed.
    control.on_step_end(105, {"peak_mem_bytes": 1 * GIB})
    assert control.batch_size == 15
    for it in range(205, 2000, 100):
        control.on_step_end(it, {"peak_mem_bytes": 1 * GIB})
        assert control.batch_size < 16


def test_oom_at_the_minimum_or_when_off_is_a_user_error():
    with pytest.raises(UserError):
        BatchController(CFG, 1, total_memory=10 * GIB).on_oom(1)
    with pytest.raises(UserError):
        BatchController({**CFG, "enabled": False}, 16, total_memory=10 * GIB).on_oom(1)


def test_memory_watch_grows_at_most_2x_and_shrinks_when_over_target():
    control = BatchController(CFG, 8, total_memory=10 * GIB)
    assert control.on_step_end(50, {"peak_mem_bytes": 1 * GIB}) == []  # not yet a full window
    control.on_step_end(100, {"peak_mem_bytes": 1 * GIB})
    assert control.batch_size == 16
    control.on_step_end(150, {"peak_mem_bytes": 9 * GIB})
    assert control.batch_size == 16  # the window restarted at the change
    decisions = control.on_step_end(200, {"peak_mem_bytes": 5 * GIB})
    assert control.batch_size < 16 and "over the 80% target" in decisions[0].reason
    before = control.batch_size
    control.on_step_end(300, {"peak_mem_bytes": int(7.5 * GIB)})  # between budget and target: hold
    assert control.batch_size == before


def test_adjusted_batch_rules():
    assert adjusted_batch(8, 1 * GIB, 10 * GIB, 0.8, 0.1, 1, 64, None) == 16
    assert adjusted_batch(8, 1 * GIB, 10 * GIB, 0.8, 0.1, 1, 12, None) == 12
    assert adjusted_batch(8, 1 * GIB, 10 * GIB, 0.8, 0.1, 1, 64, 10) == 9
    assert adjusted_batch(8, 9 * GIB, 10 * GIB, 0.8, 0.1, 1, 64, None) == 6
    assert adjusted_batch(1, 9 * GIB, 10 * GIB, 0.8, 0.1, 1, 64, None) == 1


def test_cpu_tier_has_no_memory_watch():
    control = BatchController({**CFG, "target_vram_usage": None}, 8)
    assert control.on_step_end(1000, {"peak_mem_bytes": 9 * GIB}) == [] and control.batch_size == 8


def test_state_round_trip():
    control = BatchController(CFG, 16, total_memory=10 * GIB)
    control.on_oom(3)
    control.on_step_end(50, {"peak_mem_bytes": 2 * GIB})
    clone = BatchController(CFG, 16, total_memory=10 * GIB)
    clone.load_state_dict(control.state_dict())
    assert clone.state_dict() == control.state_dict()
    assert clone.batch_size == 8 and clone.ceiling == 16 and clone.window_peak == 2 * GIB
