"""Early stopping on the selection metric (`train.select_metric`; PSNR for pixel losses), with
patience counted in iterations (not validations).

A validation improves when it beats the best by more than `min_delta` (in the metric's units: dB
for PSNR). The run stops at the first validation at or after `min_iter` that comes `patience`
iterations or more after the best one. `best_iter` is where the best weights were seen (the loop
keeps them as best.safetensors).

With `past_bicubic` it never stops a run whose best is not yet better than bicubic upscaling on
the same held-out images (`val/bicubic_<metric>`, where the validation measured it): such a
network has not started to learn, and its best weights are worth less than the bicubic upscale.
Measured: Compact (64 features) sat at its starting level, 29.73 dB against bicubic's 31.18, for
450 iterations before it rose; a 600-iteration run at the usual patience stopped it at 200.
"""

from __future__ import annotations

from typing import Mapping

from zerosr.automations.base import Automation, Decision, is_finite, param
from zerosr.metrics.catalog import METRICS, Metric


def should_stop(iteration: int, best_iter: int, patience: int, min_iter: int) -> bool:
    return iteration >= min_iter and iteration - best_iter >= patience


class EarlyStopping(Automation):
    name = "early_stop"
    STATE = ("best_value", "best_iter", "should_stop")

    def __init__(self, cfg, select: Metric = METRICS["psnr"]):
        super().__init__(param(cfg, "enabled", True))
        self.select = select
        self.patience = int(param(cfg, "patience"))
        self.min_delta = float(param(cfg, "min_delta", select.min_delta))
        self.min_iter = int(param(cfg, "min_iter", 0))
        self.past_bicubic = bool(param(cfg, "past_bicubic", True))
        self.best_value = select.worst
        self.best_iter = 0
        self.should_stop = False

    def on_validation(self, iteration: int, metrics: Mapping[str, float]) -> list[Decision]:
        value, select = metrics.get(self.select.key), self.select
        if is_finite(value) and select.better(float(value), self.best_value, self.min_delta):
            self.best_value, self.best_iter = float(value), int(iteration)
            return []
        if not self.enabled or self.should_stop or not should_stop(iteration, self.best_iter,
                                                                   self.patience, self.min_iter):
            return []
        bicubic = metrics.get(f"val/bicubic_{select.name}")
        if self.past_bicubic and is_finite(bicubic) and not select.better(self.best_value, float(bicubic)):
            return []  # not started: below bicubic, stopping would keep weights worth less than it
        self.should_stop = True
        return [self.decision(iteration, f"validation {select.label} has not beaten {select.show(self.best_value)} "
                              f"(by {self.min_delta:g}) since iteration {self.best_iter}: "
                              f"{iteration - self.best_iter} iterations >= patience {self.patience}",
                              should_stop=(False, True))]
