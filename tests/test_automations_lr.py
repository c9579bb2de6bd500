"""LR controller: warm-up, plateau and blow-up reductions, bounds, square-root rule, rollbacks, LR finder."""

from __future__ import annotations

import math

import numpy as np
import pytest

from zerosr.automations.lr import (
    LRController,
    lr_range_test,
    smoothing_window,
    sqrt_batch_scale,
    steepest_descent_index,
    warmup_ramp,
)
from zerosr.automations.schedule import scheduled_lr
from zerosr.errors import UserError

CFG = {"enabled": True, "plateau_patience": 100, "reduce_factor": 0.5, "improvement_threshold": 1e-3,
       "blowup_factor": 2.0, "blowup_hold": 50, "min_lr_factor": 0.1, "max_lr_factor": 2.0}


def controller(**overrides) -> LRController:
    return LRController({**CFG, **overrides}, base_lr=1e-3, total_iter=10_000, warmup_iter=10)


def run(lr: LRController, losses, start: int = 1) -> list:
    decisions = []
    for i, loss in enumerate(losses, start=start):
        decisions += lr.on_step_end(i, {"loss": loss})
    return decisions


def test_warmup_ramp_then_factor():
    lr = controller()
    assert warmup_ramp(1, 10) == pytest.approx(0.1) and warmup_ramp(10, 10) == 1.0 and warmup_ramp(5, 0) == 1.0
    assert lr.lr_at(1) == pytest.approx(1e-4)
    assert lr.lr_at(10) == pytest.approx(1e-3)
    lr.factor = 0.5
    assert lr.lr_at(500) == pytest.approx(5e-4)


def test_flat_loss_is_a_plateau_and_factor_halves_per_patience_down_to_the_floor():
    lr = controller()
    window = smoothing_window(100)
    first_best = 2 * window - 1  # the first window of trusted steps ends here and is the best
    assert run(lr, [1.0] * (first_best + 99)) == []
    assert lr.factor == 1.0
    decisions = run(lr, [1.0], start=first_best + 100)
    assert lr.factor == 0.5
    assert decisions[0].change["lr_factor"] == (1.0, 0.5) and decisions[0].reason.startswith("plateau")
    run(lr, [1.0] * 1000, start=first_best + 101)
    assert lr.factor == pytest.approx(0.1)  # 0.5, 0.25, 0.125, then held at the floor


def realistic(**overrides) -> LRController:
    """The derived settings of a 10k-iteration run: patience 500, the default 1e-3 threshold."""
    return controller(**{"plateau_patience": 500, **overrides})


def test_batch_noise_on_a_flat_loss_is_still_a_plateau():
    # A loss that stopped improving, with the batch-to-batch spread of real training (15 %): noise
    # alone must not keep passing for improvement.
    rng = np.random.default_rng(1)
    lr = realistic()
    decisions = run(lr, list(0.05 * (1 + 0.15 * rng.standard_normal(2000))))
    cuts = [d.iteration for d in decisions if d.reason.startswith("plateau")]
    assert cuts and cuts[0] <= 500 + 3 * smoothing_window(500)


def test_noisy_improvement_at_the_real_patience_holds():
    rng = np.random.default_rng(2)
    lr = realistic()
    losses = [0.05 * math.exp(-i / 2500) * (1 + 0.15 * rng.standard_normal()) for i in range(1, 3000)]
    assert [d for d in run(lr, losses) if d.reason.startswith("plateau")] == []


def test_steady_improvement_holds_the_factor():
    lr = controller()
    assert run(lr, [math.exp(-i / 2000) for i in range(1, 2000)]) == []
    assert lr.factor == 1.0


def test_blowup_reduces_then_holds():
    lr = controller()
    run(lr, [1.0 / (1 + i / 100) for i in range(1, 301)])
    best = lr.best_loss
    decisions = run(lr, [10 * best] * 10, start=301)
    assert lr.factor == 0.5
    assert any(d.reason.startswith("blow-up") for d in decisions)
    hit = next(d.iteration for d in decisions if d.reason.startswith("blow-up"))
    # Still blown up, but held: no further cut for `blowup_hold` iterations.
    run(lr, [10 * best] * (50 - (310 - hit) - 1), start=311)
    assert lr.factor == 0.5
    run(lr, [10 * best] * 2, start=hit + 50)
    assert lr.factor == 0.25


def test_a_loss_blown_up_past_the_untrained_level_rolls_back_and_reduces():
    # It explodes before the EMA is trusted: its best is itself blown up, the first steps are not.
    lr = controller()
    window = smoothing_window(100)
    decisions = run(lr, [0.04] * 5 + [1000.0] * (window - 5))
    assert [d.change for d in decisions] == [{"rollback": (0, 1)}, {"lr_factor": (1.0, 0.5), "lr": decisions[1].change["lr"]}]
    assert decisions[0].iteration == window and lr.take_rollback() and not lr.take_rollback()
    # From the restored weights the LR warms up again (10 iterations here), to the lowered level.
    assert lr.lr_at(window + 1) == pytest.approx(1e-3 * 0.5 / 10) and lr.lr_at(window + 10) == pytest.approx(5e-4)
    # The statistics start afresh after the rollback: the next judgement needs a new window.
    assert run(lr, [1000.0] * (window - 1), start=window + 1) == []
    assert any("rollback" in d.change for d in run(lr, [1000.0], start=2 * window))
    # A healthy run far below its start never sees it.
    healthy = controller()
    assert not any("rollback" in d.change for d in run(healthy, [0.04] * 5 + [0.02] * 500))
    assert not healthy.take_rollback()


def test_validation_psnr_plateau_counts_even_when_loss_improves():
    lr = controller()
    decisions = []
    for it in range(1, 601):
        decisions += lr.on_step_end(it, {"loss": math.exp(-it / 500)})
        if it % 100 == 0:
            decisions += lr.on_validation(it, {"val/psnr": 30.0, "val/ssim": 0.9})
    # best at 100; misses at 200 (stalled 100, one miss), 300 (two misses) -> cut at 300
    assert [d.iteration for d in decisions] == [300, 500]
    assert lr.factor == 0.25 and "validation PSNR" in decisions[0].reason


def test_a_flat_loss_does_not_cut_while_validation_psnr_still_rises():
    def cuts(psnr_at):
        lr = controller()
        decisions = []
        for it in range(1, 1201):
            decisions += lr.on_step_end(it, {"loss": 1.0})
            if it % 100 == 0:
                decisions += lr.on_validation(it, {"val/psnr": psnr_at(it)})
        return [d.iteration for d in decisions if d.reason.startswith("plateau")]

    assert cuts(lambda it: 25.0 + it / 100) == []  # the held-out images say it still learns
    assert cuts(lambda it: 32.0 + 0.005 * it / 100) == []  # a long run's slow late gains count too
    stalled = cuts(lambda it: 25.0 + min(it, 600) / 100)  # PSNR stops rising at 600
    assert stalled and all(it > 600 for it in stalled)


def test_improving_psnr_never_cuts():
    lr = controller()
    for it in range(100, 2001, 100):
        assert lr.on_validation(it, {"val/psnr": 25.0 + it / 100}) == []


def test_factor_bounds_and_square_root_rule():
    lr = controller()
    assert sqrt_batch_scale(16, 4) == 0.5
    lr.scale_for_batch(16, 4, iteration=5)
    assert lr.factor == pytest.approx(0.5)
    decisions = lr.scale_for_batch(4, 64, iteration=6)
    assert lr.factor == 2.0  # sqrt(16) * 0.5 = 2.0, exactly the ceiling
    lr.scale_for_batch(4, 64, iteration=7)
    assert lr.factor == 2.0 and decisions[0].change["lr_factor"] == (0.5, 2.0)
    lr.scale_for_batch(64, 1, iteration=8)
    assert lr.factor == pytest.approx(0.25)
    lr.scale_for_batch(64, 1, iteration=9)
    assert lr.factor == pytest.approx(0.1)  # floor
    assert lr.scale_for_batch(8, 8, iteration=10) == []


def test_three_nonfinite_steps_in_a_window_roll_back_and_lower_the_lr():
    lr = controller()
    assert len(lr.on_nonfinite(100)) == 1 and not lr.take_rollback()
    lr.on_nonfinite(150)
    decisions = lr.on_nonfinite(199)
    assert lr.take_rollback() and not lr.take_rollback()
    assert lr.factor == 0.5 and lr.hold_until == 199 + 50
    assert any("rollback" in d.change for d in decisions)
    # Spread out, they are single bad batches: no rollback.
    for it in (1000, 1200, 1400):
        lr.on_nonfinite(it)
    assert not lr.take_rollback()


def test_rollback_at_the_floor_gives_up():
    lr = controller(min_lr_factor=0.5)
    for it in (1, 2, 3):
        lr.on_nonfinite(it)
    assert lr.factor == 0.5 and not lr.give_up
    for it in (4, 5, 6):
        lr.on_nonfinite(it)
    assert lr.give_up


def test_disabled_controller_gives_the_fixed_schedule():
    lr = controller(enabled=False)
    assert lr.lr_at(500) == scheduled_lr(1e-3, 500, 10, 10_000)
    assert run(lr, [1.0] * 1000) == [] and lr.factor == 1.0


def test_bad_bounds_are_a_user_error():
    with pytest.raises(UserError):
        controller(min_lr_factor=1.5)


def test_state_round_trip_keeps_decisions():
    lr = controller()
    run(lr, [1.0] * 300)
    lr.on_nonfinite(301)
    clone = controller()
    clone.load_state_dict(lr.state_dict())
    assert clone.state_dict() == lr.state_dict()
    assert clone.factor == lr.factor < 1.0 and clone.lr_at(400) == lr.lr_at(400)


def test_a_measured_divergence_ratio_moves_the_preset_within_bounds_and_keeps_the_batch_factor():
    lr = controller()
    lr.scale_for_batch(8, 32, 0)
    assert lr.factor == 2.0
    lr.adopt_divergence_ratio(0.5, "test")
    assert lr.base_lr == pytest.approx(0.5 * lr.preset_lr) and lr.factor == 2.0
    decisions = lr.adopt_divergence_ratio(100.0, "test")
    assert lr.base_lr == pytest.approx(4 * lr.preset_lr) and "kept within" in decisions[0].reason
    lr.adopt_divergence_ratio(1e-3, "test")
    assert lr.base_lr == pytest.approx(0.25 * lr.preset_lr)


def synthetic_curve(center: float, noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)

    def step(lr: float) -> float:
        if lr > 3e-2:
            return 50.0
        x = math.log10(lr / center)
        return 1 - 0.9 / (1 + math.exp(-2.5 * x)) + noise * rng.standard_normal()

    return step


@pytest.mark.parametrize("center", [3e-5, 3e-4, 1e-3])
def test_range_test_finds_the_steepest_descent_and_restores(center):
    restored = []
    result = lr_range_test(synthetic_curve(center, noise=0.02), lambda: restored.append(True))
    assert restored == [True]
    assert result.diverged and len(result.lrs) < 100
    assert center / 2 <= result.lr <= center * 2


def test_range_test_restores_even_when_a_step_fails():
    restored = []

    def step(lr):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        lr_range_test(step, lambda: restored.append(True))
    assert restored == [True]


def test_range_test_stops_on_nan():
    result = lr_range_test(lambda lr: float("nan") if lr > 1e-3 else 1.0 - lr, lambda: None)
    assert result.diverged and max(result.lrs) <= 1e-3


def test_steepest_descent_index_needs_a_curve():
    assert steepest_descent_index([1.0] * 12) is None
    curve = [1.0] * 20 + [0.9, 0.6, 0.3, 0.25] + [0.24] * 10
    assert steepest_descent_index(curve) in (21, 22)


# --- the cool-down -----------------------------------------------------------------------------

def test_the_last_share_of_the_run_cools_down_to_zero():
    lr = controller(cooldown_fraction=0.2)  # 10k iterations: the cool-down is 8001..10000
    assert lr.end_iter == 10_000 and lr.cooldown_start == 8_000
    assert lr.lr_at(8_000) == pytest.approx(1e-3)
    lrs = [lr.lr_at(i) for i in range(8_001, 10_001)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # falls at every step
    assert lr.lr_at(9_000) == pytest.approx(1e-3 * (1 - math.sqrt(1000 / 2001)))  # 1 - sqrt(progress)
    assert 0 < lrs[-1] < 0.03 * 1e-3
    lr.factor = 0.5  # a plateau cut before the cool-down scales it too
    assert lr.lr_at(9_000) == pytest.approx(0.5e-3 * (1 - math.sqrt(1000 / 2001)))


def test_no_plateau_cut_in_the_cool_down():
    lr = controller(cooldown_fraction=0.5, plateau_patience=100)
    lr.total_iter = 400  # the cool-down is 201..400
    decisions = run(lr, [1.0] * 400)
    assert decisions and all(d.iteration <= 200 for d in decisions)


def test_an_early_stop_begins_a_cool_down_instead_of_ending_the_run():
    lr = controller(cooldown_fraction=0.2)
    decisions = lr.on_early_stop(3_000)
    assert lr.end_iter == 3_600 and lr.cooldown_start == 3_000  # 20 % of the 3000 done
    assert decisions[0].change["end_iter"] == (10_000, 3_600) and decisions[0].reason.startswith("early stop")
    assert lr.lr_at(3_000) == pytest.approx(1e-3) and lr.lr_at(3_600) < 0.03 * 1e-3
    assert lr.on_early_stop(3_100) == [] and lr.end_iter == 3_600  # once begun, the end stays


def test_the_end_only_moves_earlier_and_a_state_round_trip_keeps_it():
    lr = controller(cooldown_fraction=0.2)
    assert lr.finish_in(9_000, 2_000, "time budget") == []  # later than total_iter: no change
    assert lr.finish_in(7_000, 500, "time budget")[0].change["end_iter"] == (10_000, 7_500)
    restored = controller(cooldown_fraction=0.2)
    restored.load_state_dict(lr.state_dict())
    assert (restored.cooldown_start, restored.end_iter) == (7_000, 7_500)
    assert restored.lr_at(7_250) == pytest.approx(lr.lr_at(7_250))


def test_without_the_controller_an_early_stop_ends_the_run_at_once():
    lr = controller(enabled=False, cooldown_fraction=0.2)
    assert lr.end_iter == 10_000
    lr.on_early_stop(3_000)
    assert lr.end_iter == 3_000
    assert lr.lr_at(2_000) == pytest.approx(scheduled_lr(1e-3, 2_000, 10, 10_000))  # the fixed schedule


def test_cooldown_fraction_out_of_range_is_a_user_error():
    with pytest.raises(UserError, match="cooldown_fraction"):
        controller(cooldown_fraction=1.0)


def test_a_restarted_baseline_takes_a_new_loss_level_without_a_blow_up():
    # A delayed GAN term joins the total loss: ten times the pixel loss, and no blow-up.
    def jump(restart: bool) -> list:
        lr = controller()
        run(lr, [0.03 / (1 + i / 100) for i in range(1, 301)])
        if restart:
            lr.restart_loss_baseline()
        return [d for d in run(lr, [0.3] * 200, start=301) if d.reason.startswith("blow-up")]

    assert jump(restart=False) and jump(restart=True) == []
