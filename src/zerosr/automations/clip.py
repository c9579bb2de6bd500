"""Gradient clipping, AutoClip-style: clip to a percentile of the recent gradient-norm history.

The threshold for the next step is the `percentile` of the last `history` raw (pre-clip) gradient
norms, bounded to [min_clip, max_clip]. The current step is judged against the history before it,
so a spike is clipped relative to the past rather than to itself. Until `warmup_norms(history)`
norms are known the threshold is `max_clip`: only catastrophic spikes are cut while the history
is too short to say what normal is. With `enabled=false` the threshold is infinite (no clipping).

The threshold changes every step (and is applied every step); a decision is recorded only when it
has moved by more than LOG_CHANGE from the last recorded value, so the log stays readable.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Iterable, Mapping

import numpy as np

from zerosr.automations.base import Automation, Decision, is_finite, param

LOG_CHANGE = 0.25  # relative threshold move worth a log line


def warmup_norms(history: int) -> int:
    """Norms needed before the percentile is trusted: a tenth of the history, at least 10 (or the
    whole history when it is shorter than that)."""
    return min(history, max(10, history // 10))


def percentile_threshold(norms: Iterable[float], percentile: float, min_clip: float, max_clip: float) -> float:
    value = float(np.percentile(np.fromiter(norms, dtype=float), percentile))
    return max(min_clip, min(max_clip, value))


class AutoClip(Automation):
    name = "clip"
    STATE = ("norms", "clipped", "threshold", "logged_threshold")

    def __init__(self, cfg):
        super().__init__(param(cfg, "enabled", True))
        self.percentile = float(param(cfg, "percentile"))
        self.history = int(param(cfg, "history"))
        self.min_clip = float(param(cfg, "min_clip", 1e-3))
        self.max_clip = float(param(cfg, "max_clip", 100.0))
        self.warmup = warmup_norms(self.history)
        self.norms: deque[float] = deque(maxlen=self.history)
        self.clipped: deque[bool] = deque(maxlen=self.history)  # was each recent step clipped
        self.threshold = self.max_clip if self.enabled else math.inf
        self.logged_threshold = self.threshold

    @property
    def clip_rate(self) -> float:
        """Share of the last `history` steps whose gradient was clipped."""
        return sum(self.clipped) / len(self.clipped) if self.clipped else 0.0

    def observe(self, norm: float) -> bool:
        """Record the raw norm of the step just taken (clipped at `threshold`); True if it was clipped.
        Non-finite norms are ignored: the loop skips those steps."""
        if not self.enabled or not is_finite(norm):
            return False
        was_clipped = float(norm) > self.threshold
        self.norms.append(float(norm))
        self.clipped.append(was_clipped)
        if len(self.norms) >= self.warmup:
            self.threshold = percentile_threshold(self.norms, self.percentile, self.min_clip, self.max_clip)
        return was_clipped

    def on_step_end(self, iteration: int, stats: Mapping[str, float]) -> list[Decision]:
        if not self.enabled:
            return []
        self.observe(stats.get("grad_norm"))
        old = self.logged_threshold
        if abs(self.threshold - old) <= LOG_CHANGE * old:
            return []
        self.logged_threshold = self.threshold
        return [self.decision(iteration, f"p{self.percentile:g} of the last {len(self.norms)} gradient norms "
                              f"(clip rate {self.clip_rate:.1%})", clip_threshold=(old, self.threshold))]

    def _restore(self, key, value):
        if key == "norms":
            return deque((float(v) for v in value), maxlen=self.history)
        if key == "clipped":
            return deque((bool(v) for v in value), maxlen=self.history)
        return value
