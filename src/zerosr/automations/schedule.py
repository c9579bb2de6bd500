"""The fixed learning-rate schedule: linear warm-up, then cosine decay to a floor."""

from __future__ import annotations

import math


def scheduled_lr(base_lr: float, iteration: int, warmup_iter: int, total_iter: int,
                 floor_factor: float = 0.01) -> float:
    """LR for 1-based `iteration`: warm-up from base/warmup to base, then cosine to base*floor."""
    if warmup_iter > 0 and iteration <= warmup_iter:
        return base_lr * iteration / warmup_iter
    span = max(1, total_iter - warmup_iter)
    progress = min(1.0, (iteration - warmup_iter) / span)
    return base_lr * (floor_factor + (1 - floor_factor) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
