"""Early stopping on validation PSNR, with patience counted in iterations (not validations).

A validation improves when its PSNR beats the best by more than `min_delta` dB. The run stops at
the first validation at or after `min_iter` that comes `patience` iterations or more after the
best one. `best_iter` is where the best weights were seen (the loop keeps them as best.safetensors).
"""

from __future__ import annotations

import math
from typing import Mapping

from zerosr.automations.base import Automation, Decision, is_finite, param


def should_stop(iteration: int, best_iter: int, patience: int, min_iter: int) -> bool:
    return iteration >= min_iter and iteration - best_iter >= patience


class EarlyStopping(Automation):
    name = "early_stop"
    STATE = ("best_psnr", "best_iter", "should_stop")

    def __init__(self, cfg):
        super().__init__(param(cfg, "enabled", True))
        self.patience = int(param(cfg, "patience"))
        self.min_delta = float(param(cfg, "min_delta", 0.01))
        self.min_iter = int(param(cfg, "min_iter", 0))
        self.best_psnr = -math.inf
        self.best_iter = 0
        self.should_stop = False

    def on_validation(self, iteration: int, metrics: Mapping[str, float]) -> list[Decision]:
        psnr = metrics.get("val/psnr")
        if is_finite(psnr) and float(psnr) > self.best_psnr + self.min_delta:
            self.best_psnr, self.best_iter = float(psnr), int(iteration)
            return []
        if not self.enabled or self.should_stop or not should_stop(iteration, self.best_iter,
                                                                   self.patience, self.min_iter):
            return []
        self.should_stop = True
        return [self.decision(iteration, f"validation PSNR has not beaten {self.best_psnr:.2f} dB "
                              f"(+{self.min_delta:g} dB) since iteration {self.best_iter}: "
                              f"{iteration - self.best_iter} iterations >= patience {self.patience}",
                              should_stop=(False, True))]
