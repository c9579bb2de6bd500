"""Bounds checks on the resolved config: a bad value stops the run with one line before any work."""

from __future__ import annotations

import dataclasses

from omegaconf import DictConfig, OmegaConf

from zerosr.config.targets import check_loader, check_targets
from zerosr.degradation_settings import DegradationSettings
from zerosr.errors import UserError
from zerosr.metrics import catalog
from zerosr.report.wandb_log import LOGGERS, logger_names

SCALES = (2, 3, 4, 8)
PRECISIONS = ("bf16", "fp16", "fp32")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def validate(cfg: DictConfig) -> None:
    """Raise UserError naming the first unknown key, out-of-bounds value or unusable `_target_`,
    and the fix. Imports what the config names (torch included)."""
    check_known_keys(cfg)
    train = cfg.train
    _require(cfg.scale in SCALES, f"scale={cfg.scale} is not supported: use one of {', '.join(map(str, SCALES))}")
    # null only where the start-up measures the preset (arch=custom, zerosr.engine.preset_lr)
    _require(train.lr is not None or cfg.arch.preset.lr is None,
             "train.lr is null: give a positive LR, e.g. train.lr=2e-4 (or leave it unset)")
    _require(train.lr is None or train.lr > 0, f"train.lr={train.lr} must be positive: try train.lr=2e-4 (or leave it unset)")
    _require(train.lr_scale > 0, f"train.lr_scale={train.lr_scale} must be positive: it multiplies train.lr, e.g. 0.5")
    _require(train.batch_size >= 1, f"train.batch_size={train.batch_size} must be at least 1 (or leave it unset)")
    _require(train.total_iter >= 1, f"train.total_iter={train.total_iter} must be at least 1")
    _require(train.lq_size >= 8, f"train.lq_size={train.lq_size} is too small: use 16 or more (LR pixels)")
    for key in ("val_freq", "save_freq", "log_freq", "grad_accum", "keep_checkpoints"):
        _require(train[key] >= 1, f"train.{key}={train[key]} must be at least 1")
    _require(0 <= train.warmup_iter <= train.total_iter,
             f"train.warmup_iter={train.warmup_iter} must be between 0 and train.total_iter={train.total_iter}")
    _require(0.0 <= train.ema_decay < 1.0, f"train.ema_decay={train.ema_decay} must be in [0, 1): try 0.999")
    _require(train.max_minutes is None or train.max_minutes > 0,
             f"train.max_minutes={train.max_minutes} must be positive (or null for no time limit)")
    _require(train.val_tile >= 16, f"train.val_tile={train.val_tile} must be at least 16 (LR pixels)")
    _require(len(train.losses) > 0, "train.losses is empty: give at least one loss, e.g. the default Charbonnier")
    catalog.check_names(train.val_metrics)
    catalog.metric(train.select_metric)
    _require(cfg.hardware_tier.precision in PRECISIONS,
             f"hardware_tier.precision={cfg.hardware_tier.precision} is not one of {', '.join(PRECISIONS)}")
    check_loader(cfg.hardware_tier)
    if "lr" in train.optimizer and train.optimizer.lr != train.lr and (
            None in (train.optimizer.lr, train.lr) or float(train.optimizer.lr) != float(train.lr)):
        raise UserError(f"train.optimizer.lr={train.optimizer.lr} differs from train.lr={train.lr}: set train.lr "
                        "(the schedule and the automations start from it)")
    _validate_automation(cfg.automation)
    if cfg.data.name != "demo":
        _require(bool(cfg.data.gt_path), "data.gt_path is not set: give your HR folder, data.gt_path=PATH/TO/HR")
    elif cfg.data.gt_path:
        raise UserError(f"data.gt_path={cfg.data.gt_path} is set but the dataset is demo (the built-in synthetic "
                        "one): choose data=paired for your folders (in a config file: "
                        "defaults: [train, {override data: paired}, _self_])")
    if (cfg.data.val_gt_path is None) != (cfg.data.val_lq_path is None) and cfg.data.val_lq_path is not None:
        raise UserError("data.val_lq_path is set without data.val_gt_path: give both validation folders")
    check_targets(cfg)
    _validate_realistic(cfg.data)
    unknown = [name for name in logger_names(cfg.logger) if name not in LOGGERS]
    _require(not unknown, f"logger={unknown[0] if unknown else ''} is not a logger: use one of {', '.join(LOGGERS)}, "
             "or a list such as logger=[tensorboard,wandb]")


def check_known_keys(cfg: DictConfig) -> None:
    """Keys the schema does not know, also ones added with `+` (Hydra then lets them in, and the run
    would save and ignore them): one line naming the first."""
    def walk(node: DictConfig, prefix: str) -> None:
        schema = OmegaConf.get_type(node)
        known = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
        for key in node.keys():
            full = f"{prefix}{key}"
            if known is not None and key not in known and full != "hydra":
                raise UserError(f"{full} is not a config key: check the spelling (a '+' does not add keys to "
                                f"zerosr's config); python train.py --cfg job lists every key and value")
            child = node._get_node(key)
            if isinstance(child, DictConfig) and known is not None and not (child._is_none() or child._is_missing()):
                walk(child, f"{full}.")

    walk(cfg, "")


def _validate_realistic(data: DictConfig) -> None:
    """data=realistic makes its own LR: no LR folders; the degradation keys within bounds."""
    if data.name != "realistic":
        _require(data.get("target_path") is None, "data.target_path calibrates the realistic degradations: "
                 "use it with data=realistic (HR images only)")
        return
    for key in ("lq_path", "val_lq_path"):
        _require(data[key] is None, f"data.{key} is set, but data=realistic makes the LR from the HR images: "
                 f"drop data.{key} (or use data=paired for your own LR)")
    DegradationSettings.from_config(data.degradation).check()


def _validate_automation(auto: DictConfig) -> None:
    """Bounds of the automation keys a user may override one at a time."""
    lr, batch, clip, stop, schedule = auto.lr, auto.batch, auto.clip, auto.early_stop, auto.loss_schedule
    checks = [
        (lr.plateau_patience >= 1, "automation.lr.plateau_patience must be at least 1"),
        (0 < lr.reduce_factor < 1, "automation.lr.reduce_factor must be in (0, 1), e.g. 0.5"),
        (0 < lr.min_lr_factor <= 1 <= lr.max_lr_factor,
         "automation.lr needs 0 < min_lr_factor <= 1 <= max_lr_factor"),
        (lr.run_length_factor > 0, "automation.lr.run_length_factor must be positive, e.g. 1 (the preset as it is)"),
        (lr.blowup_hold >= 0, "automation.lr.blowup_hold must be 0 or more"),
        (0 <= lr.cooldown_fraction < 1, "automation.lr.cooldown_fraction must be in [0, 1), e.g. 0.2"),
        (lr.blowup_factor > 1, "automation.lr.blowup_factor must be above 1, e.g. 2.0"),
        (1 <= batch.min_batch_size <= batch.max_batch_size,
         "automation.batch needs 1 <= min_batch_size <= max_batch_size"),
        (batch.search_share >= 0, "automation.batch.search_share must be 0 or more (0: no start-up search)"),
        (batch.adjust_every >= 1, "automation.batch.adjust_every must be at least 1"),
        (batch.target_vram_usage is None or 0 < batch.target_vram_usage <= 1,
         "automation.batch.target_vram_usage must be in (0, 1]"),
        (0 < clip.percentile <= 100, "automation.clip.percentile must be in (0, 100], e.g. 98"),
        (clip.history >= 1, "automation.clip.history must be at least 1"),
        (0 < clip.min_clip <= clip.max_clip, "automation.clip needs 0 < min_clip <= max_clip"),
        (stop.patience >= 1, "automation.early_stop.patience must be at least 1 (iterations)"),
        (stop.min_delta >= 0, "automation.early_stop.min_delta must be 0 or more (dB)"),
        (stop.min_iter >= 0, "automation.early_stop.min_iter must be 0 or more"),
        (0 <= schedule.momentum < 1, "automation.loss_schedule.momentum must be in [0, 1)"),
        (0 < schedule.min_weight <= schedule.max_weight,
         "automation.loss_schedule needs 0 < min_weight <= max_weight"),
        (schedule.adaptation_rate > 0, "automation.loss_schedule.adaptation_rate must be positive"),
        (schedule.gan_delay >= 0, "automation.loss_schedule.gan_delay must be 0 or more (iterations)"),
        (auto.dataset_analysis.batches >= 1, "automation.dataset_analysis.batches must be at least 1"),
    ]
    for ok, message in checks:
        _require(bool(ok), message)
