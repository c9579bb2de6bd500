"""Learning rate: a warm-up ramp, a factor on the base LR adapted from real measurements, and a
cool-down that ends the run.

`lr_at(i) = base_lr * warmup_ramp(i) * factor * cooldown(i)`, with `factor` always in
[min_lr_factor, max_lr_factor]. A fresh run on its preset's LR starts `base_lr` at the preset times
`run_length_factor` (2 for 600 iterations or fewer, 1 from 1500: `zerosr.config.derive`). The
factor moves only for a stated reason:

- plateau: for `plateau_patience` iterations no window of steps had a mean training loss
  significantly below the best window's (by `PLATEAU_Z` standard errors of the difference, and by
  `improvement_threshold` relative: smaller gains are what batch noise gives) while validation
  the selection metric (`train.select_metric`, PSNR for pixel losses) did not improve either, or it
  has not improved by the same relative fall of the error it measures
  (`Metric.error_margin`: 0.0043 dB of PSNR for 1e-3) for two validations and `plateau_patience`
  iterations -> factor * reduce_factor. The held-out images outrank the training loss: while
  PSNR still rises the network still learns at this LR, however flat the loss looks (measured:
  cuts on the loss alone put a 6000-iteration run at its floor LR by iteration 2400 while PSNR
  rose 0.16 dB per 400 iterations);
- blow-up: the EMA-smoothed loss exceeds `blowup_factor` times its best -> factor * reduce_factor,
  then `blowup_hold` iterations in which nothing else moves it;
- blow-up past the start: the smoothed loss exceeds `blowup_factor` times the median loss of the
  first `START_STEPS` steps (the untrained network; a loss that explodes before the EMA is trusted
  leaves a best that is itself blown up) -> the weights are worse than untrained, so roll back to
  the last good state, reduce, and warm up again from there (the restored weights meet the hot
  LR as the untrained ones did); the loss statistics start afresh, so no hold;
- batch change: square-root rule, factor * sqrt(new / old);
- repeated non-finite steps: roll back to the last good state and reduce, then hold.

The cool-down: over the last `cooldown_fraction` of the run the LR falls from its level to zero
along 1 - sqrt(progress). It knows where the run ends: `train.total_iter`; or earlier, when early
stopping fires (the stop begins a cool-down of `cooldown_fraction` of the iterations done instead
of cutting the run) or when `train.max_minutes` says only that share of the time is left
(`finish_in`). `end_iter` is where the run ends; the loop reads it. No plateau cut in a cool-down.

With `enabled=false` the controller gives the project's fixed schedule (warm-up then cosine,
`zerosr.automations.schedule.scheduled_lr`); only the non-finite rollback still lowers it, because
that is fault handling, not tuning; an early stop then ends the run at once.

`lr_range_test` is the LR range test (Lightning-style) behind the presets and the optional start-up
measurement (`automation.lr.find`, which moves the base LR by `adopt_divergence_ratio`); it takes
callables, so it needs no trainer and is tested with a synthetic loss curve.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from zerosr.automations.base import Automation, Decision, is_finite, param
from zerosr.automations.schedule import scheduled_lr
from zerosr.bounds import clamp
from zerosr.errors import UserError
from zerosr.metrics.catalog import METRICS, Metric

# The start-up LR measurement may move the base LR at most this far from the preset: data unlike
# any the presets were measured on must not turn a 2e-4 preset into 1e-1.
FINDER_BOUNDS = (0.25, 4.0)
# Non-finite steps: this many within this many iterations means the weights, not one batch, are bad.
NONFINITE_LIMIT = 3
NONFINITE_WINDOW = 100
# Validations in a row without a better selection metric before they count as a plateau: one noisy
# validation is not a plateau.
VAL_MISSES_FOR_PLATEAU = 2
# Steps whose median loss is the untrained network's level: a smoothed loss far above it means
# weights worse than untrained.
START_STEPS = 5
# A window-mean gain under this many standard errors is what batch noise alone gives (a flat
# loss beats it ~2 % of the time).
PLATEAU_Z = 2.0


# --- pure maths ----------------------------------------------------------------------------------

def ema_alpha(window: float) -> float:
    """Weight of the newest value in an EMA whose memory is about `window` steps."""
    return 1.0 - math.exp(-1.0 / max(window, 1.0))


def smoothing_window(plateau_patience: int) -> int:
    """EMA memory for the loss: a tenth of the patience (so a plateau spans ~10 independent
    averages), at least 20 steps (batch noise) and at most 200 (a blow-up must show quickly)."""
    return int(min(200, max(20, plateau_patience // 10)))


def smooth(previous: float | None, value: float, alpha: float) -> float:
    return value if previous is None else alpha * value + (1.0 - alpha) * previous


def warmup_ramp(iteration: int, warmup_iter: int) -> float:
    """Linear ramp for the 1-based `iteration` about to run: 1/warmup, 2/warmup, ..., then 1."""
    if warmup_iter <= 0:
        return 1.0
    return min(1.0, max(iteration, 1) / warmup_iter)



def significant_gain(best, window, rel_threshold: float, z: float = PLATEAU_Z) -> bool:
    """Whether the window mean `window` = (mean, standard error) is below `best` (the same, or None)
    by more than `z` standard errors of the difference and by more than `rel_threshold` of |best|."""
    if best is None:
        return True
    gain = best[0] - window[0]
    return gain > z * math.hypot(best[1], window[1]) and gain > rel_threshold * abs(best[0])


def window_stats(total: float, total_sq: float, n: int) -> tuple[float, float]:
    """(mean, standard error of the mean) of `n` values from their sum and sum of squares."""
    mean = total / n
    variance = max(total_sq / n - mean * mean, 0.0) * n / max(n - 1, 1)
    return mean, math.sqrt(variance / n)


def cooldown_scale(iteration: int, start: int, end: int) -> float:
    """1 up to `start`, then 1 - sqrt(progress) to just above 0 at `end` (the last step still moves)."""
    if iteration <= start or end <= start:
        return 1.0
    progress = min(1.0, (iteration - start) / (end - start + 1))
    return 1.0 - math.sqrt(progress)


def blew_up(smoothed: float, best: float | None, blowup_factor: float) -> bool:
    return best is not None and best > 0 and smoothed > blowup_factor * best


def sqrt_batch_scale(old_batch: int, new_batch: int) -> float:
    """Square-root rule: gradient noise scales as 1/sqrt(batch), so does the safe LR step."""
    return math.sqrt(new_batch / old_batch)


# --- the controller ------------------------------------------------------------------------------

class LRController(Automation):
    name = "lr"
    STATE = ("base_lr", "factor", "warmup_from", "smoothed", "best_loss", "start_losses", "window_sum", "window_sum_sq", "window_n",
             "best_window", "last_loss_improvement", "best_val", "last_val_improvement", "val_misses", "hold_until", "steps_seen",
             "nonfinite_iters", "rollbacks", "rollback_pending", "give_up", "cut")

    def __init__(self, cfg, base_lr: float, total_iter: int, warmup_iter: int, select: Metric = METRICS["psnr"]):
        super().__init__(param(cfg, "enabled", True))
        self.select = select  # the validation signal: train.select_metric
        self.total_iter, self.warmup_iter = int(total_iter), int(warmup_iter)
        self.patience = int(param(cfg, "plateau_patience"))
        self.reduce_factor = float(param(cfg, "reduce_factor", 0.5))
        self.threshold = float(param(cfg, "improvement_threshold", 1e-3))
        self.blowup_factor = float(param(cfg, "blowup_factor", 2.0))
        self.blowup_hold = int(param(cfg, "blowup_hold"))
        self.cooldown_fraction = float(param(cfg, "cooldown_fraction", 0.0))
        self.min_factor = float(param(cfg, "min_lr_factor"))
        self.max_factor = float(param(cfg, "max_lr_factor"))
        if not 0 < self.min_factor <= 1 <= self.max_factor:
            raise UserError(f"automation.lr: need 0 < min_lr_factor <= 1 <= max_lr_factor, got "
                            f"{self.min_factor} and {self.max_factor}: fix the override")
        if not 0 < self.reduce_factor < 1:
            raise UserError(f"automation.lr.reduce_factor={self.reduce_factor} must be in (0, 1)")
        if not 0 <= self.cooldown_fraction < 1:
            raise UserError(f"automation.lr.cooldown_fraction={self.cooldown_fraction} must be in [0, 1)")
        self.window = smoothing_window(self.patience)
        self.alpha = ema_alpha(self.window)
        self.run_length_factor = float(param(cfg, "run_length_factor", 1.0))
        self.preset_lr = float(base_lr)  # what the start-up measurements start from
        self.base_lr = float(base_lr)
        self.length_factor = 1.0  # run_length_factor, once a fresh run with the preset's LR applied it
        self.factor = 1.0
        self.warmup_from = 0  # the warm-up ramp starts here: 0, or the last blow-up rollback
        self.smoothed: float | None = None  # EMA of the loss: the blow-up test
        self.best_loss: float | None = None
        self.start_losses: list[float] = []  # the first START_STEPS raw losses: the untrained level
        # The plateau test: the loss summed over the current window of steps, and the best
        # finished window's [mean, standard error].
        self.window_sum = self.window_sum_sq = 0.0
        self.window_n = 0
        self.best_window: list[float] | None = None
        self.last_loss_improvement = 0
        self.best_val: float | None = None
        self.last_val_improvement = 0
        self.val_misses = 0
        self.hold_until = 0
        self.steps_seen = 0
        self.nonfinite_iters: list[int] = []
        self.rollbacks = 0
        self.rollback_pending = False
        self.give_up = False  # rolled back at the floor LR: the loop should stop with an error
        self.cut: list[int] | None = None  # [cool-down start, end] when the run ends before total_iter

    # where the run ends ---------------------------------------------------------------------------
    @property
    def cools_down(self) -> bool:
        return self.enabled and self.cooldown_fraction > 0

    def cooldown_length(self, iterations: int) -> int:
        return int(round(self.cooldown_fraction * iterations)) if self.enabled else 0

    @property
    def end_iter(self) -> int:
        """The iteration the run ends at: total_iter, or earlier after an early stop or a time budget."""
        return self.total_iter if self.cut is None else self.cut[1]

    @property
    def cooldown_start(self) -> int:
        return self.total_iter - self.cooldown_length(self.total_iter) if self.cut is None else self.cut[0]

    def restart_loss_baseline(self) -> None:
        """The loss about to be measured is a new quantity (a delayed GAN term joins the total):
        its jump is neither a blow-up nor progress, so the loss statistics start afresh."""
        self._restart_loss_statistics()
        self.start_losses = []

    def _restart_loss_statistics(self) -> None:
        self.smoothed = self.best_loss = self.best_window = None
        self.window_sum = self.window_sum_sq = 0.0
        self.window_n = self.steps_seen = 0

    def cooling_down(self, iteration: int) -> bool:
        return self.enabled and iteration > self.cooldown_start

    def finish_in(self, iteration: int, iterations_left: int, reason: str) -> list[Decision]:
        """End the run `iterations_left` after `iteration`, cooling down over them (disabled: end
        now). Only ever moves the end earlier, and never once a cool-down has begun."""
        end = iteration + (int(iterations_left) if self.enabled else 0)
        if end >= self.end_iter or self.cooling_down(iteration):
            return []
        old_end, self.cut = self.end_iter, [int(iteration), int(end)]
        what = f"cool-down over iterations {iteration + 1}-{end}" if end > iteration else "the run ends now"
        return [self.decision(iteration, f"{reason}: {what}", end_iter=(old_end, end))]

    def on_early_stop(self, iteration: int) -> list[Decision]:
        """Early stopping fired: cool down for `cooldown_fraction` of the iterations done, then end."""
        return self.finish_in(iteration, self.cooldown_length(iteration), "early stop")

    # what the loop applies ---------------------------------------------------------------------
    def lr_at(self, iteration: int, factor: float | None = None) -> float:
        """LR for the 1-based `iteration` about to run (write it into every param group)."""
        factor = self.factor if factor is None else factor
        if not self.enabled:  # the fixed schedule; `factor` moves only after a non-finite rollback
            return scheduled_lr(self.base_lr, iteration, self.warmup_iter, self.total_iter) * factor
        return (self.base_lr * warmup_ramp(iteration - self.warmup_from, self.warmup_iter) * factor
                * cooldown_scale(iteration, self.cooldown_start, self.end_iter))

    def take_rollback(self) -> bool:
        """True once after `on_nonfinite` asked for a rollback (then cleared)."""
        pending, self.rollback_pending = self.rollback_pending, False
        return pending

    # hooks ---------------------------------------------------------------------------------------
    def on_step_end(self, iteration: int, stats: Mapping[str, float]) -> list[Decision]:
        loss = stats.get("loss")
        if not self.enabled or not is_finite(loss):
            return []
        loss = float(loss)
        self.smoothed = smooth(self.smoothed, loss, self.alpha)
        self.steps_seen += 1
        if len(self.start_losses) < START_STEPS:
            self.start_losses.append(loss)
        if self.steps_seen < self.window:  # the EMA still remembers the first, untrained batches
            self.last_loss_improvement = iteration
            return []
        self.best_loss = self.smoothed if self.best_loss is None else min(self.best_loss, self.smoothed)
        if iteration < self.hold_until:
            return []
        start = statistics.median(self.start_losses)
        if blew_up(self.smoothed, start, self.blowup_factor):
            smoothed = self.smoothed
            self._restart_loss_statistics()
            self.rollbacks += 1
            self.rollback_pending = True
            self.warmup_from = iteration
            rollback = self.decision(iteration, f"blow-up past the start: smoothed loss {smoothed:.4g} is over "
                                     f"{self.blowup_factor:g}x the first steps' {start:.4g}: restore the last good state",
                                     rollback=(self.rollbacks - 1, self.rollbacks))
            return [rollback] + self._reduce(iteration, "blow-up past the start: lower LR after the rollback")
        if blew_up(self.smoothed, self.best_loss, self.blowup_factor):
            return self._reduce(iteration, f"blow-up: smoothed loss {self.smoothed:.4g} is over "
                                f"{self.blowup_factor:g}x its best {self.best_loss:.4g}; holding "
                                f"{self.blowup_hold} iterations", hold=True)
        return self._plateau_window(iteration, loss)

    def _plateau_window(self, iteration: int, loss: float) -> list[Decision]:
        self.window_sum += loss
        self.window_sum_sq += loss * loss
        self.window_n += 1
        if self.window_n < self.window:
            return []
        window = list(window_stats(self.window_sum, self.window_sum_sq, self.window_n))
        self.window_sum = self.window_sum_sq = 0.0
        self.window_n = 0
        if significant_gain(self.best_window, window, self.threshold):
            self.best_window, self.last_loss_improvement = window, iteration
            return []
        stalled = iteration - self.last_loss_improvement
        if (iteration <= self.warmup_iter or stalled < self.patience or self.cooling_down(iteration)
                or self.val_rising(iteration)):
            return []
        (best, best_se), (mean, se) = self.best_window, window
        return self._reduce(iteration, f"plateau: no window's mean loss significantly below the best "
                            f"{best:.4g} +- {best_se:.2g} for {stalled} iterations (now {mean:.4g} +- {se:.2g})")

    def val_rising(self, iteration: int) -> bool:
        """The selection metric improved within the last `plateau_patience` iterations."""
        return self.best_val is not None and iteration - self.last_val_improvement < self.patience

    def on_validation(self, iteration: int, metrics: Mapping[str, float]) -> list[Decision]:
        value = metrics.get(self.select.key)
        if not self.enabled or not is_finite(value):
            return []
        value, select = float(value), self.select
        if self.best_val is None or select.better(value, self.best_val, select.error_margin(self.best_val, self.threshold)):
            self.best_val, self.last_val_improvement, self.val_misses = value, iteration, 0
            return []
        self.val_misses += 1
        stalled = iteration - self.last_val_improvement
        if (iteration > self.warmup_iter and iteration >= self.hold_until and not self.cooling_down(iteration)
                and self.val_misses >= VAL_MISSES_FOR_PLATEAU and stalled >= self.patience):
            return self._reduce(iteration, f"plateau: validation {select.label} {select.show(value)} has not beaten "
                                f"{select.show(self.best_val)} for {stalled} iterations ({self.val_misses} validations)")
        return []

    def on_nonfinite(self, iteration: int) -> list[Decision]:
        """The loop skipped a step whose loss or gradients were NaN/Inf. The third within
        NONFINITE_WINDOW iterations asks for a rollback (`take_rollback()`) and lowers the LR."""
        recent = [i for i in self.nonfinite_iters if iteration - i < NONFINITE_WINDOW] + [int(iteration)]
        self.nonfinite_iters = recent
        skipped = self.decision(iteration, f"loss or gradients not finite: step skipped ({len(recent)} "
                                f"within {NONFINITE_WINDOW} iterations)",
                                skipped_steps=(len(recent) - 1, len(recent)))
        if len(recent) < NONFINITE_LIMIT:
            return [skipped]
        self.nonfinite_iters = []
        self.rollbacks += 1
        self.rollback_pending = True
        if self.factor <= self.min_factor:
            self.give_up = True
        rollback = self.decision(iteration, f"{len(recent)} non-finite steps within {NONFINITE_WINDOW} "
                                 "iterations: restore the last good state",
                                 rollback=(self.rollbacks - 1, self.rollbacks))
        reduced = self._reduce(iteration, "non-finite steps keep coming: lower LR after the rollback", hold=True)
        return [skipped, rollback] + reduced

    # changes from outside --------------------------------------------------------------------------
    def scale_for_batch(self, old_batch: int, new_batch: int, iteration: int) -> list[Decision]:
        """Call whenever the batch size changes: LR follows by the square-root rule, within bounds."""
        if not self.enabled or old_batch == new_batch:
            return []
        return self._set_factor(iteration, self.factor * sqrt_batch_scale(old_batch, new_batch),
                                f"batch {old_batch} -> {new_batch}: square-root rule")

    def fit_run_length(self) -> None:
        """A fresh run on the preset's LR (not one the user set): the preset times
        `run_length_factor`, before any start-up measurement moves it. Presets are measured for
        long runs; a short one trains best higher."""
        if not self.enabled:
            return
        self.length_factor = self.run_length_factor
        self.preset_lr *= self.length_factor
        self.base_lr *= self.length_factor

    def adopt_divergence_ratio(self, ratio: float, why: str, iteration: int = 0) -> list[Decision]:
        """The start-up LR measurement: the preset times `ratio` (where this run's loss diverges
        against where the preset's did), within FINDER_BOUNDS. The batch's square-root factor stays:
        the ratio was measured at the range test's own batch, and the preset is for the tier's."""
        wanted = self.preset_lr * float(ratio)
        low, high = (self.preset_lr * bound for bound in FINDER_BOUNDS)
        new = clamp(wanted, low, high)
        note = "" if new == wanted else f" (it said {wanted:.3g}, kept within {low:.3g}..{high:.3g})"
        old, self.base_lr = self.base_lr, new
        return [self.decision(iteration, f"LR range test: {why}: preset x {ratio:.3g}{note}", base_lr=(old, new))]

    # internals --------------------------------------------------------------------------------------
    def _reduce(self, iteration: int, reason: str, hold: bool = False) -> list[Decision]:
        # Every reduction restarts the plateau clocks: the next one needs a fresh `patience`.
        self.best_window, self.window_sum, self.window_sum_sq, self.window_n = None, 0.0, 0.0, 0
        self.last_loss_improvement = self.last_val_improvement = iteration
        self.val_misses = 0
        if hold:
            self.hold_until = iteration + self.blowup_hold
        return self._set_factor(iteration, self.factor * self.reduce_factor, reason)

    def _set_factor(self, iteration: int, wanted: float, reason: str) -> list[Decision]:
        new = clamp(wanted, self.min_factor, self.max_factor)
        if new == self.factor:
            return []
        if new != wanted:
            reason += f" (held at the {'floor' if new == self.min_factor else 'ceiling'} {new:g})"
        old, self.factor = self.factor, new
        # `lr`: what the next step runs at, before and after this decision.
        return [self.decision(iteration, reason, lr_factor=(old, new),
                              lr=(self.lr_at(iteration + 1, old), self.lr_at(iteration + 1, new)))]

    def _restore(self, key, value):
        if key in ("nonfinite_iters", "cut", "best_window", "start_losses"):
            return None if value is None else list(value)
        return value


# --- LR range test -------------------------------------------------------------------------------

@dataclass
class RangeTestResult:
    lr: float | None  # the steepest-descent LR; None when the curve was too short to judge
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # raw, one per step run
    smoothed: list[float] = field(default_factory=list)  # what the pick was made on
    diverged: bool = False


def exponential_lrs(min_lr: float, max_lr: float, steps: int) -> list[float]:
    return [float(lr) for lr in np.geomspace(min_lr, max_lr, steps)]


def ema_series(values: list[float], beta: float) -> list[float]:
    """Bias-corrected EMA of `values` (the first points are not pulled toward 0)."""
    out, average = [], 0.0
    for i, value in enumerate(values):
        average = beta * average + (1 - beta) * value
        out.append(average / (1 - beta ** (i + 1)))
    return out


def zero_lag_smooth(values: list[float], beta: float) -> list[float]:
    """EMA forward, then backward: as smooth as two EMAs, without their delay. A one-way EMA lags
    about beta/(1-beta) steps, which on an exponential LR sweep would move the pick to a larger
    (riskier) LR."""
    return ema_series(ema_series(values, beta)[::-1], beta)[::-1]


def steepest_descent_index(smoothed: list[float], skip_begin: int = 10, skip_end: int = 1) -> int | None:
    """Index of the most negative slope of the loss curve (equal log-LR spacing), ignoring the
    noisy first points and the divergent tail, as Lightning's suggestion does."""
    end = len(smoothed) - skip_end
    if end - skip_begin < 3:
        return None
    slopes = np.gradient(np.asarray(smoothed[skip_begin:end], dtype=float))
    return skip_begin + int(np.argmin(slopes))


def lr_range_test(step_fn: Callable[[float], float], restore_fn: Callable[[], None],
                  min_lr: float = 1e-7, max_lr: float = 1.0, steps: int = 100,
                  beta: float = 0.9, divergence: float = 4.0) -> RangeTestResult:
    """Run `step_fn(lr) -> loss` (one real training step at that LR) at exponentially growing LRs;
    stop once the EMA of the loss exceeds `divergence` x its best or a loss is not finite; always
    call `restore_fn()` afterwards to put the model and optimizer back. `lr` is the steepest
    descent of the (zero-lag) smoothed curve, which `bench/lr_presets.py` reports; what zerosr uses
    is where the loss diverged (the length of `lrs`), which moves far less with the batch order."""
    result = RangeTestResult(lr=None)
    average, best = 0.0, math.inf
    try:
        for i, lr in enumerate(exponential_lrs(min_lr, max_lr, steps)):
            loss = float(step_fn(lr))
            if not math.isfinite(loss):
                result.diverged = True
                break
            average = beta * average + (1 - beta) * loss
            value = average / (1 - beta ** (i + 1))
            if value > divergence * best:  # the diverging point stays out of the curve
                result.diverged = True
                break
            best = min(best, value)
            result.lrs.append(lr)
            result.losses.append(loss)
    finally:
        restore_fn()
    result.smoothed = zero_lag_smooth(result.losses, beta)
    index = steepest_descent_index(result.smoothed)
    result.lr = None if index is None else result.lrs[index]
    return result
