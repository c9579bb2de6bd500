"""AutoClip's percentile threshold and clip rate; early stopping on validation PSNR."""

from __future__ import annotations

import math

import numpy as np
import pytest

from zerosr.automations.clip import AutoClip, percentile_threshold, warmup_norms
from zerosr.automations.early_stop import EarlyStopping

CLIP = {"enabled": True, "percentile": 90.0, "history": 200, "min_clip": 1e-3, "max_clip": 100.0}


def spiky_norms(n: int, base: float, seed: int = 0) -> list[float]:
    """Mostly ~base, one step in ten a 20x spike."""
    rng = np.random.default_rng(seed)
    return [base * (20.0 if i % 10 == 9 else 1.0) * (1 + 0.1 * rng.standard_normal()) for i in range(n)]


def test_threshold_is_max_clip_until_enough_history():
    clip = AutoClip(CLIP)
    for norm in [1.0] * (warmup_norms(200) - 1):
        clip.observe(norm)
        assert clip.threshold == 100.0
    clip.observe(1.0)
    assert clip.threshold == pytest.approx(1.0)


def test_threshold_follows_the_percentile_on_spiky_norms():
    norms = spiky_norms(400, base=1.0)
    low, high = AutoClip({**CLIP, "percentile": 50.0}), AutoClip({**CLIP, "percentile": 95.0})
    for norm in norms:
        low.observe(norm)
        high.observe(norm)
    assert low.threshold == pytest.approx(np.percentile(norms[-200:], 50))
    assert 0.8 < low.threshold < 1.3  # the median ignores the spikes
    assert high.threshold > 10  # p95 sits inside the spikes
    # Only spikes get clipped at p50 half the time; at p95 about one step in twenty.
    assert 0.4 < low.clip_rate < 0.6 and high.clip_rate < 0.1


def test_threshold_moves_when_the_norms_change_scale_and_is_logged():
    clip = AutoClip({**CLIP, "percentile": 75.0})
    decisions = []
    for it, norm in enumerate(spiky_norms(300, 1.0) + spiky_norms(300, 0.01, seed=1), start=1):
        decisions += clip.on_step_end(it, {"grad_norm": norm})
    assert clip.threshold < 0.05
    assert decisions and all("clip_threshold" in d.change for d in decisions)
    assert len(decisions) < 30  # logged on real moves only, not every step


def test_bounds_and_non_finite_norms():
    assert percentile_threshold([1e-9] * 20, 90, 1e-3, 100.0) == 1e-3
    assert percentile_threshold([1e9] * 20, 90, 1e-3, 100.0) == 100.0
    clip = AutoClip(CLIP)
    assert clip.observe(float("nan")) is False and len(clip.norms) == 0


def test_disabled_clip_never_clips():
    clip = AutoClip({**CLIP, "enabled": False})
    assert clip.threshold == math.inf
    assert clip.on_step_end(1, {"grad_norm": 1e6}) == []


def test_clip_state_round_trip():
    clip = AutoClip(CLIP)
    for norm in spiky_norms(300, 1.0):
        clip.observe(norm)
    clone = AutoClip(CLIP)
    clone.load_state_dict(clip.state_dict())
    assert clone.state_dict() == clip.state_dict()
    assert clone.threshold == clip.threshold and clone.clip_rate == clip.clip_rate
    assert clone.norms.maxlen == 200


STOP = {"enabled": True, "patience": 300, "min_delta": 0.01, "min_iter": 500}


def validate(stop: EarlyStopping, psnrs: dict[int, float]) -> list:
    decisions = []
    for it, psnr in psnrs.items():
        decisions += stop.on_validation(it, {"val/psnr": psnr, "val/ssim": 0.9})
    return decisions


def test_stops_patience_iterations_after_the_best():
    stop = EarlyStopping(STOP)
    decisions = validate(stop, {100: 30.0, 200: 31.0, 300: 31.005, 400: 30.9})
    assert decisions == [] and stop.best_iter == 200  # +0.005 dB is under min_delta
    decisions = validate(stop, {500: 31.0})
    assert stop.should_stop and [d.iteration for d in decisions] == [500]
    assert decisions[0].change == {"should_stop": (False, True)}
    assert validate(stop, {600: 30.0}) == []  # decided once


def test_never_stops_before_min_iter():
    stop = EarlyStopping(STOP)
    validate(stop, {100: 30.0, 200: 29.0, 300: 29.0, 400: 29.0})
    assert not stop.should_stop  # 300 iterations since the best, but before min_iter
    validate(stop, {500: 29.0})
    assert stop.should_stop


def test_a_run_still_below_bicubic_is_not_stopped():
    stop = EarlyStopping(STOP)
    for it in range(100, 1001, 100):  # flat at its starting level, below bicubic (a Compact network's first phase)
        assert stop.on_validation(it, {"val/psnr": 29.73, "val/bicubic_psnr": 31.18}) == []
    assert not stop.should_stop
    decisions = stop.on_validation(1100, {"val/psnr": 29.73, "val/bicubic_psnr": 29.0})  # above it: a plateau
    assert stop.should_stop and [d.iteration for d in decisions] == [1100]


def test_improvements_keep_the_run_going():
    stop = EarlyStopping(STOP)
    validate(stop, {it: 25.0 + it / 1000 for it in range(100, 5001, 100)})
    assert not stop.should_stop and stop.best_iter == 5000


def test_disabled_early_stop_tracks_but_never_stops():
    stop = EarlyStopping({**STOP, "enabled": False})
    validate(stop, {100: 30.0, 2000: 20.0, 9000: 20.0})
    assert not stop.should_stop and stop.best_iter == 100


def test_early_stop_state_round_trip():
    stop = EarlyStopping(STOP)
    validate(stop, {100: 30.0, 200: 31.0})
    clone = EarlyStopping(STOP)
    clone.load_state_dict(stop.state_dict())
    assert (clone.best_value, clone.best_iter, clone.should_stop) == (31.0, 200, False)
