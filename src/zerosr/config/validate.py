"""Bounds checks on the resolved config: a bad value stops the run with one line before any work."""

from __future__ import annotations

from omegaconf import DictConfig

from zerosr.errors import UserError

SCALES = (2, 3, 4, 8)
PRECISIONS = ("bf16", "fp16", "fp32")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def validate(cfg: DictConfig) -> None:
    """Raise UserError naming the first out-of-bounds value and the fix."""
    train = cfg.train
    _require(cfg.scale in SCALES, f"scale={cfg.scale} is not supported: use one of {', '.join(map(str, SCALES))}")
    _require(train.lr > 0, f"train.lr={train.lr} must be positive: try train.lr=2e-4 (or leave it unset)")
    _require(train.batch_size >= 1, f"train.batch_size={train.batch_size} must be at least 1 (or leave it unset)")
    _require(train.total_iter >= 1, f"train.total_iter={train.total_iter} must be at least 1")
    _require(train.lq_size >= 8, f"train.lq_size={train.lq_size} is too small: use 16 or more (LR pixels)")
    for key in ("val_freq", "save_freq", "log_freq", "grad_accum", "keep_checkpoints"):
        _require(train[key] >= 1, f"train.{key}={train[key]} must be at least 1")
    _require(0 <= train.warmup_iter <= train.total_iter,
             f"train.warmup_iter={train.warmup_iter} must be between 0 and train.total_iter={train.total_iter}")
    _require(0.0 <= train.ema_decay < 1.0, f"train.ema_decay={train.ema_decay} must be in [0, 1): try 0.999")
    _require(train.val_tile >= 16, f"train.val_tile={train.val_tile} must be at least 16 (LR pixels)")
    _require(len(train.losses) > 0, "train.losses is empty: give at least one loss, e.g. the default Charbonnier")
    _require(cfg.hardware_tier.precision in PRECISIONS,
             f"hardware_tier.precision={cfg.hardware_tier.precision} is not one of {', '.join(PRECISIONS)}")
    _require(cfg.hardware_tier.num_workers >= 0, "hardware_tier.num_workers must be 0 or more")
    if cfg.data.name != "demo":
        _require(bool(cfg.data.gt_path), "data.gt_path is not set: give your HR folder, data.gt_path=PATH/TO/HR")
    if (cfg.data.val_gt_path is None) != (cfg.data.val_lq_path is None) and cfg.data.val_lq_path is not None:
        raise UserError("data.val_lq_path is set without data.val_gt_path: give both validation folders")
