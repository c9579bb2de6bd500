"""Dynamic loss scheduling: bounded balancing multipliers, baseline, calibration, user keys, phases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from zerosr.automations.loss_schedule import (
    SAFE_BOUNDS,
    SMOOTHING,
    TUNABLE,
    LossSchedule,
    balance_targets,
    calibrated_params,
    phase_of,
    step_multiplier,
    update_trend,
)
from zerosr.config.presets import loss_schedule_preset
from zerosr.errors import UserError

NANO = {"enabled": True, "auto_calibrate": True, "min_weight": 1e-6, **loss_schedule_preset("paragonsr2_nano")}
WEIGHTS = {"charbonnier": 1.0, "perceptual": 0.1}


def schedule(total_iter=10_000, weights=WEIGHTS, **kwargs) -> LossSchedule:
    cfg = {**NANO, **kwargs.pop("cfg", {})}
    return LossSchedule(cfg, weights, total_iter, **kwargs)


def feed(sched: LossSchedule, steps: int, losses, start: int = 1) -> list:
    """losses(i) -> {name: value}."""
    decisions = []
    for i in range(start, start + steps):
        decisions += sched.on_step_end(i, {"loss": 0.0, **{f"loss/{k}": v for k, v in losses(i).items()}})
    return decisions


def diverging(i):
    """charbonnier falls to ~30 % of its start, perceptual stays where it was."""
    return {"charbonnier": 0.1 * (0.3 + 0.7 * math.exp(-i / 300)), "perceptual": 2.0}


def test_trend_follows_the_seed_formulas():
    s, v, r = update_trend(None, 0.0, 2.0, 0.9)
    assert (s, v, r) == (2.0, 0.0, 0.0)
    s2, v2, r2 = update_trend(s, v, 4.0, 0.9)
    assert s2 == pytest.approx(SMOOTHING * 4.0 + (1 - SMOOTHING) * 2.0)
    assert v2 == pytest.approx(0.1 * (s2 - 2.0))
    assert r2 == pytest.approx((4.0 - s2) / s2)


def test_step_multiplier_is_bounded_per_update_and_has_a_dead_band():
    assert step_multiplier(1.0, 5.0, 0.01, 0.05, 1e-6, 10.0) == pytest.approx(math.exp(0.01))
    assert step_multiplier(1.0, 0.2, 0.01, 0.05, 1e-6, 10.0) == pytest.approx(math.exp(-0.01))
    assert step_multiplier(1.0, 1.03, 0.01, 0.05, 1e-6, 10.0) == 1.0
    assert step_multiplier(1.5, 9.0, 0.5, 0.05, 1e-6, 1.6) == 1.6
    assert balance_targets({"a": 0.3, "b": 0.9}) == pytest.approx({"a": 0.5, "b": 1.5})
    assert balance_targets({"a": 0.3}) == {"a": 1.0}


def test_nothing_changes_during_the_baseline():
    sched = schedule()
    baseline = sched.effective["baseline_iterations"]
    feed(sched, baseline + 1, diverging)
    assert sched.multipliers == {"charbonnier": 1.0, "perceptual": 1.0}
    assert sched.weights == WEIGHTS


def test_lagging_loss_gains_weight_within_bounds_and_rate():
    sched = schedule()
    previous = dict(sched.multipliers)
    rate = None
    for i in range(1, 3001):
        feed(sched, 1, diverging, start=i)
        rate = sched.effective["adaptation_rate"]
        for name, m in sched.multipliers.items():
            assert abs(math.log(m / previous[name])) <= rate + 1e-12
            assert sched.min_weight <= m <= sched.effective["max_weight"]
        previous = dict(sched.multipliers)
    m = sched.multipliers
    assert m["perceptual"] > 1.3 and m["charbonnier"] < 0.8
    # Settles near the balanced targets (progress 100 % vs ~30 %: 1.54 and 0.46).
    assert m["perceptual"] == pytest.approx(1.54, rel=0.15)
    assert sched.weights["perceptual"] == pytest.approx(0.1 * m["perceptual"])


def test_equal_progress_with_noise_does_not_random_walk():
    rng = np.random.default_rng(0)
    sched = schedule()
    feed(sched, 5000, lambda i: {"charbonnier": 0.1 * math.exp(-i / 2000) * (1 + 0.2 * rng.standard_normal()),
                                 "perceptual": 2.0 * math.exp(-i / 2000) * (1 + 0.2 * rng.standard_normal())})
    assert all(0.85 < m < 1.15 for m in sched.multipliers.values())


def test_a_single_loss_is_never_reweighted():
    sched = schedule(weights={"charbonnier": 1.0})
    assert feed(sched, 2000, lambda i: {"charbonnier": 1.0 / i}) == []
    assert sched.weights == {"charbonnier": 1.0}


def test_gan_loss_keeps_its_weight_and_calibration_is_more_careful():
    weights = {**WEIGHTS, "gan": 0.05}
    sched = schedule(weights=weights, gan_name="gan")
    plain = schedule()
    assert sched.params["adaptation_rate"] < plain.params["adaptation_rate"]
    feed(sched, 3000, lambda i: {**diverging(i), "gan": 5.0 if i % 2 else 0.1})
    assert sched.multipliers["gan"] == 1.0 and sched.weights["gan"] == 0.05
    assert sched.multipliers["perceptual"] > 1.3


def test_max_weight_bounds_the_multiplier():
    sched = schedule(cfg={"max_weight": 1.2}, user_set={"max_weight"})
    feed(sched, 3000, lambda i: {"charbonnier": 0.1 * math.exp(-i / 100) + 1e-9, "perceptual": 2.0})
    threshold = sched.effective["adaptation_threshold"]  # the dead band stops it just short of the bound
    assert 1.2 * math.exp(-threshold) <= sched.multipliers["perceptual"] <= 1.2


def test_dataset_calibration_moves_params_within_bounds_and_explains():
    preset = loss_schedule_preset("paragonsr2_s")
    flat = {"texture_variance": 0.0, "edge_density": 0.0, "colour_variation": 0.0}
    busy = {"texture_variance": 1.0, "edge_density": 1.0, "colour_variation": 1.0}
    p_flat, _ = calibrated_params(preset, 80_000, flat, False)
    p_busy, notes = calibrated_params(preset, 80_000, busy, False)
    assert p_busy["adaptation_rate"] < p_flat["adaptation_rate"]
    assert p_busy["adaptation_threshold"] > p_flat["adaptation_threshold"]
    assert p_busy["max_weight"] > p_flat["max_weight"]
    assert p_busy["momentum"] > p_flat["momentum"]
    assert any("texture" in note for note in notes)
    for params in (p_flat, p_busy):
        for key in TUNABLE:
            assert SAFE_BOUNDS[key][0] <= params[key] <= SAFE_BOUNDS[key][1]
    sched = LossSchedule({"enabled": True, "auto_calibrate": True, "min_weight": 1e-6, **preset}, WEIGHTS, 80_000)
    decisions = sched.calibrate(busy)
    assert decisions and decisions[0].change["adaptation_rate"][0] == preset["adaptation_rate"]
    assert sched.params == p_busy and sched.dataset_info == busy


def test_short_runs_get_a_short_baseline():
    xl = loss_schedule_preset("paragonsr2_xl")
    assert calibrated_params(xl, 1000, None, False)[0]["baseline_iterations"] == 50  # 5 % of the run
    assert calibrated_params(xl, 150_000, None, False)[0]["baseline_iterations"] == 300  # the preset


def test_user_keys_win_over_every_adjustment():
    busy = {"texture_variance": 1.0, "edge_density": 1.0, "colour_variation": 1.0}
    sched = schedule(total_iter=1000, cfg={"adaptation_rate": 0.05, "baseline_iterations": 200},
                     user_set={"adaptation_rate", "baseline_iterations", "not_a_schedule_key"}, gan_name="gan",
                     weights={**WEIGHTS, "gan": 0.1})
    sched.calibrate(busy)
    assert sched.params["adaptation_rate"] == 0.05 and sched.params["baseline_iterations"] == 200
    for phase in ("early", "middle", "late"):
        sched.phase = phase
        assert sched.effective["adaptation_rate"] == 0.05
    assert sched.params["adaptation_threshold"] != NANO["adaptation_threshold"]  # not the user's: adjusted


def test_without_auto_calibrate_the_config_is_used_as_given():
    sched = schedule(total_iter=1000, cfg={"auto_calibrate": False}, gan_name="gan", weights={**WEIGHTS, "gan": 1})
    assert sched.calibrate({"texture_variance": 1.0, "edge_density": 1.0, "colour_variation": 1.0}) == []
    assert sched.params == {key: float(NANO[key]) for key in TUNABLE}


def test_phase_changes_are_decided_and_recorded():
    assert [phase_of(i, 1000) for i in (0, 99, 100, 800, 801)] == ["early", "early", "middle", "middle", "late"]
    sched = schedule(total_iter=1000)
    early_rate = sched.effective["adaptation_rate"]
    decisions = feed(sched, 1000, lambda i: {"charbonnier": 0.1, "perceptual": 2.0})
    phases = [d for d in decisions if "phase" in d.change]
    assert [(d.iteration, d.change["phase"]) for d in phases] == [(100, ("early", "middle")), (801, ("middle", "late"))]
    assert phases[0].change["adaptation_rate"] == (early_rate, sched.params["adaptation_rate"])
    assert sched.effective["adaptation_rate"] < sched.params["adaptation_rate"]


def test_bad_bounds_are_a_user_error():
    with pytest.raises(UserError):
        schedule(cfg={"max_weight": 0.5})


def test_disabled_schedule_keeps_base_weights():
    sched = schedule(cfg={"enabled": False})
    assert feed(sched, 2000, diverging) == [] and sched.weights == WEIGHTS


def test_state_round_trip():
    sched = schedule()
    sched.calibrate({"texture_variance": 0.4, "edge_density": 0.3, "colour_variation": 0.6})
    feed(sched, 1500, diverging)
    clone = schedule()
    clone.load_state_dict(sched.state_dict())
    assert clone.state_dict() == sched.state_dict()
    assert clone.weights == sched.weights and clone.effective == sched.effective
    assert feed(clone, 10, diverging, start=1501) == feed(sched, 10, diverging, start=1501)
