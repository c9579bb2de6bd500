"""Dynamic loss scheduling: per-loss weight multipliers that keep the losses' progress balanced.

Trend of each loss i, per step:
    S <- a*L + (1-a)*S with a = 1 - e^(-1/10);  V <- m*V + (1-m)*dS;  r = (L - S) / S.

The multiplier rule (designed to be stable, unlike a rule driven by per-batch noise):
- Nothing changes during the first `baseline_iterations` steps; then each loss's smoothed value
  S0_i becomes its reference.
- Progress g_i = S_i / S0_i (1: no progress yet, 0.3: down to 30 %). The balanced multiplier is
  t_i = g_i / mean_j(g_j), GradNorm's "relative inverse training rate": a loss lagging the others
  gets more weight, one racing ahead gets less, and the multipliers average 1 (the total keeps its
  scale). With a single scheduled loss t = 1, so nothing ever moves.
- The multiplier moves toward t_i in log space by at most `adaptation_rate` per step, and only
  while it is more than `adaptation_threshold` (relative, log) away from t_i: a dead band, so
  noise causes no jitter. It always stays in [min_weight, max_weight].
  t_i depends on smoothed losses only and each move is bounded, so the weights cannot random-walk
  or jump. V and r are tracked and logged (`trends`: `loss_trend/<loss>/{smoothed,velocity,deviation}`
  in metrics.jsonl and TensorBoard, next to `loss_weight/<loss>`) to explain the weights; per-batch
  V and r flip sign from one batch to the next, so they do not drive the weights (driven by them, high momentum and
  large max weights degrade training).
- The GAN loss (and any loss with base weight 0 or a non-positive reference) keeps multiplier 1:
  an adversarial loss oscillates by design, its value says nothing about progress.
- The GAN loss joins only after `gan_delay` iterations (weight 0 before: the objective then skips
  the discriminator entirely): a discriminator facing an untrained generator pulls it away from the
  HR. The delay is derived (half the run from scratch, 0 from `train.pretrain` weights) and
  recorded once at start-up, or set by the user, and then used as given. It applies with the
  schedule off too (`automation=off` sets it to 0).

Calibration (`auto_calibrate=true`) starts from the per-variant preset the config gives and adjusts
it for the run length (baseline at most 5 % of the run), the dataset analysis, a GAN loss, and the
training phase (early < 10 %, late > 80 % of the run: slower adaptation), then clamps to
SAFE_BOUNDS. Keys the user set explicitly (`user_set`) are used as given and never adjusted.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

from zerosr.automations.base import Automation, Decision, is_finite, param
from zerosr.bounds import clamp
from zerosr.errors import UserError

SMOOTHING = 1.0 - math.exp(-1.0 / 10.0)
TUNABLE = ("momentum", "adaptation_rate", "max_weight", "adaptation_threshold", "baseline_iterations")
SAFE_BOUNDS = {
    "momentum": (0.5, 0.995),
    "adaptation_rate": (1e-4, 0.1),
    "max_weight": (1.0, 1000.0),
    "adaptation_threshold": (0.005, 0.5),
    "baseline_iterations": (0, 1_000_000),
}
# Early: losses fall fast and their ratios mean little yet. Late: let the weights settle.
PHASE_SCALE = {
    "early": {"adaptation_rate": 0.5},
    "middle": {},
    "late": {"adaptation_rate": 0.5, "adaptation_threshold": 1.5},
}
LOG_CHANGE = 0.10  # relative multiplier move worth a log line


# --- pure maths ----------------------------------------------------------------------------------


def phase_of(iteration: int, total_iter: int) -> str:
    progress = iteration / max(total_iter, 1)
    return "early" if progress < 0.1 else "late" if progress > 0.8 else "middle"


def calibrated_params(preset: Mapping[str, float], total_iter: int, dataset_info: Mapping[str, float] | None,
                      has_gan: bool, user_set: Iterable[str] = ()) -> tuple[dict, list[str]]:
    """The preset adjusted for run length, dataset and GAN, clamped; user keys untouched.
    Returns (params, what was adjusted and why)."""
    fixed = set(user_set)
    params = {key: float(preset[key]) for key in TUNABLE}
    auto = params.copy()
    notes = []
    baseline_cap = max(10, total_iter // 20)
    if auto["baseline_iterations"] > baseline_cap:
        auto["baseline_iterations"] = baseline_cap
        notes.append(f"baseline at most 5 % of a {total_iter}-iteration run")
    if dataset_info is not None:
        texture = float(dataset_info["texture_variance"])
        edges = float(dataset_info["edge_density"])
        colour = float(dataset_info["colour_variation"])
        # Each score moves its parameter by at most +-20 %; 0.5 is neutral.
        # Varied content (texture, colour) makes batches differ: adapt more slowly.
        auto["adaptation_rate"] *= 1.1 - 0.2 * (texture + colour) / 2
        # Textured content makes per-batch losses noisier: smoother velocity, wider dead band.
        auto["momentum"] = 1.0 - (1.0 - auto["momentum"]) * (1.1 - 0.2 * texture)
        auto["adaptation_threshold"] *= 0.8 + 0.4 * texture
        # Edge-rich content leaves more room for detail-sensitive terms to gain weight.
        auto["max_weight"] *= 0.8 + 0.4 * edges
        notes.append(f"dataset texture {texture:.2f}, edges {edges:.2f}, colour {colour:.2f}")
    if has_gan:
        # An adversarial term makes every other loss noisier: adapt at half speed, wider dead band.
        auto["adaptation_rate"] *= 0.5
        auto["adaptation_threshold"] *= 1.5
        notes.append("GAN loss present")
    for key in TUNABLE:
        if key not in fixed:
            params[key] = clamp(auto[key], *SAFE_BOUNDS[key])
    params["baseline_iterations"] = int(params["baseline_iterations"])
    return params, notes


def phase_params(params: Mapping[str, float], phase: str, user_set: Iterable[str] = ()) -> dict:
    """`params` as they apply in `phase` (user keys unscaled)."""
    fixed = set(user_set)
    effective = dict(params)
    for key, scale in PHASE_SCALE[phase].items():
        if key not in fixed:
            effective[key] = clamp(params[key] * scale, *SAFE_BOUNDS[key])
    return effective


def update_trend(smoothed: float | None, velocity: float, loss: float, momentum: float) -> tuple[float, float, float]:
    """One step of (S, V, r) for a loss value `loss`."""
    if smoothed is None:
        return loss, 0.0, 0.0
    new = SMOOTHING * loss + (1.0 - SMOOTHING) * smoothed
    velocity = momentum * velocity + (1.0 - momentum) * (new - smoothed)
    deviation = (loss - new) / abs(new) if new != 0 else 0.0
    return new, velocity, deviation


def balance_targets(progress: Mapping[str, float]) -> dict[str, float]:
    """t_i = g_i / mean(g): lagging losses above 1, racing ones below; {} for fewer than two."""
    if len(progress) < 2:
        return {name: 1.0 for name in progress}
    mean = sum(progress.values()) / len(progress)
    if mean <= 0:
        return {name: 1.0 for name in progress}
    return {name: g / mean for name, g in progress.items()}


def step_multiplier(current: float, target: float, rate: float, threshold: float, low: float, high: float) -> float:
    """Move `current` toward `target` in log space by at most `rate`, only outside the dead band
    |log(target / current)| <= threshold; stay in [low, high]."""
    target = clamp(target, low, high)
    gap = math.log(target / current)
    if abs(gap) <= threshold:
        return current
    return clamp(current * math.exp(clamp(gap, -rate, rate)), low, high)


# --- the automation ------------------------------------------------------------------------------

class LossSchedule(Automation):
    name = "loss_schedule"
    STATE = ("params", "dataset_info", "phase", "steps", "smoothed", "velocity", "deviation", "reference",
             "multipliers", "logged")

    def __init__(self, cfg, base_weights: Mapping[str, float], total_iter: int,
                 user_set: Iterable[str] = frozenset(), gan_name: str | None = None):
        super().__init__(param(cfg, "enabled", True))
        self.auto_calibrate = bool(param(cfg, "auto_calibrate", True))
        # Without auto-calibration every key is taken as given, as if the user had set it.
        self.user_set = set(TUNABLE) if not self.auto_calibrate else set(user_set) & set(TUNABLE)
        self.preset = {key: float(param(cfg, key)) for key in TUNABLE}
        self.min_weight = float(param(cfg, "min_weight", 1e-6))
        if not 0 < self.min_weight <= 1 <= self.preset["max_weight"]:
            raise UserError(f"automation.loss_schedule: need 0 < min_weight <= 1 <= max_weight, got "
                            f"{self.min_weight} and {self.preset['max_weight']}")
        if not 0 <= self.preset["momentum"] < 1:
            raise UserError(f"automation.loss_schedule.momentum={self.preset['momentum']} must be in [0, 1)")
        self.total_iter = int(total_iter)
        self.base_weights = {name: float(w) for name, w in base_weights.items()}
        self.gan_name = gan_name
        self.scheduled = [name for name, w in self.base_weights.items() if w > 0 and name != gan_name]
        self.gan_delay = int(param(cfg, "gan_delay", 0))
        self.gan_delay_set = "gan_delay" in set(user_set)
        self.params, _ = calibrated_params(self.preset, self.total_iter, None, gan_name is not None, self.user_set)
        self.dataset_info: dict | None = None
        self.phase = phase_of(0, self.total_iter)
        self.steps = 0
        self.smoothed: dict[str, float] = {}
        self.velocity: dict[str, float] = {}
        self.deviation: dict[str, float] = {}
        self.reference: dict[str, float] = {}
        self.multipliers = {name: 1.0 for name in self.base_weights}
        self.logged = dict(self.multipliers)

    # what the loop applies ---------------------------------------------------------------------
    @property
    def weights(self) -> dict[str, float]:
        """Weight of each loss now: base weight x multiplier (write into `Objective.weights`)."""
        return {name: w * self.multipliers[name] for name, w in self.base_weights.items()}

    def weights_at(self, iteration: int) -> dict[str, float]:
        """`weights` for the 1-based `iteration` about to run: the GAN's is 0 until its delay is over."""
        weights = self.weights
        if self.gan_name is not None and iteration <= self.gan_delay:
            weights[self.gan_name] = 0.0
        return weights

    @property
    def effective(self) -> dict:
        """The parameters in force in the current phase."""
        return phase_params(self.params, self.phase, self.user_set)

    @property
    def trends(self) -> dict[str, dict[str, float]]:
        """S, V and r of each scheduled loss, for the logs."""
        return {name: {"smoothed": self.smoothed[name], "velocity": self.velocity[name],
                       "deviation": self.deviation[name]} for name in self.smoothed}

    # calibration -------------------------------------------------------------------------------
    def calibrate(self, dataset_info: Mapping[str, float] | None, iteration: int = 0) -> list[Decision]:
        """Settle the parameters for this run (call once at start, with `analyse(...)`'s scores or
        None); records every value that differs from the preset, and why."""
        if dataset_info is not None:
            self.dataset_info = {key: float(dataset_info[key])
                                 for key in ("texture_variance", "edge_density", "colour_variation")}
        self.params, notes = calibrated_params(self.preset, self.total_iter, self.dataset_info,
                                               self.gan_name is not None, self.user_set)
        change = {key: (self.preset[key], self.params[key]) for key in TUNABLE
                  if self.params[key] != self.preset[key]}
        decisions = self._gan_delay_decision(iteration)
        if not self.enabled or not change:
            return decisions
        kept = sorted(self.user_set) if self.auto_calibrate else "all (auto_calibrate=false)"
        reason = "calibrated: " + "; ".join(notes) + (f"; user keys kept: {kept}" if self.user_set else "")
        return [self.decision(iteration, reason, **change)] + decisions

    def _gan_delay_decision(self, iteration: int) -> list[Decision]:
        """The derived GAN delay, once at start-up (a delay the user set is theirs, not a decision)."""
        if self.gan_name is None or self.gan_delay_set or self.gan_delay == 0:
            return []
        return [self.decision(iteration, f"{self.gan_name} loss starts after iteration {self.gan_delay} of "
                              f"{self.total_iter}: the other losses train the network first (from scratch, "
                              f"no train.pretrain)", gan_delay=(0, self.gan_delay))]

    # hooks ---------------------------------------------------------------------------------------
    def on_step_end(self, iteration: int, stats: Mapping[str, float]) -> list[Decision]:
        if not self.enabled:
            return []
        decisions = self._follow_phase(iteration)
        if len(self.scheduled) < 2:  # nothing to balance: the phase is tracked but not worth a record
            decisions = []
        effective = self.effective
        for name in self.scheduled:
            loss = stats.get(f"loss/{name}")
            if is_finite(loss):
                self.smoothed[name], self.velocity[name], self.deviation[name] = update_trend(
                    self.smoothed.get(name), self.velocity.get(name, 0.0), float(loss), effective["momentum"])
        self.steps += 1
        if self.steps <= effective["baseline_iterations"]:
            return decisions
        if not self.reference:
            self.reference = {name: s for name, s in self.smoothed.items() if s > 0}
            return decisions
        progress = {name: self.smoothed[name] / s0 for name, s0 in self.reference.items()}
        for name, target in balance_targets(progress).items():
            self.multipliers[name] = step_multiplier(
                self.multipliers[name], target, effective["adaptation_rate"], effective["adaptation_threshold"],
                self.min_weight, effective["max_weight"])
        return decisions + self._record_moves(iteration, progress)

    # internals --------------------------------------------------------------------------------------
    def _follow_phase(self, iteration: int) -> list[Decision]:
        phase = phase_of(iteration, self.total_iter)
        if phase == self.phase:
            return []
        before = self.effective
        old_phase, self.phase = self.phase, phase
        after = self.effective
        change = {key: (before[key], after[key]) for key in TUNABLE if before[key] != after[key]}
        change["phase"] = (old_phase, phase)
        return [self.decision(iteration, f"training phase {old_phase} -> {phase} "
                              f"({iteration / max(self.total_iter, 1):.0%} of the run)", **change)]

    def _record_moves(self, iteration: int, progress: Mapping[str, float]) -> list[Decision]:
        moved = [name for name in progress
                 if abs(self.multipliers[name] - self.logged[name]) > LOG_CHANGE * self.logged[name]]
        if not moved:
            return []
        change = {}
        for name in moved:
            base = self.base_weights[name]
            change[f"weight/{name}"] = (base * self.logged[name], base * self.multipliers[name])
            self.logged[name] = self.multipliers[name]
        mean = sum(progress.values()) / len(progress)
        detail = ", ".join(f"{name} at {g:.0%}" for name, g in progress.items())
        return [self.decision(iteration, f"balancing progress since the baseline ({detail}; mean {mean:.0%})",
                              **change)]
