"""The Python API: a complete training config from three arguments."""

from __future__ import annotations

from omegaconf import OmegaConf

from zerosr.config.compose import compose_config
from zerosr.config.presets import leave_lr_to_measurement
from zerosr.config.resolved import replayable, resolved_dict
from zerosr.config.user_set import RECORD_KEY, leaves
from zerosr.config.validate import validate
from zerosr.hardware import HardwareDetector, print_hardware_report


def create_zero_config_training(architecture: str, dataset_gt_path: str, dataset_lq_path: str | None,
                                val_gt_path: str | None = None, val_lq_path: str | None = None,
                                custom_overrides: dict | None = None) -> dict:
    """The fully resolved config `train.py arch=<architecture> data=paired ...` would run, as a plain dict.

    `custom_overrides` is a nested dict merged before resolution, so values derived from what it
    changes (e.g. validation frequency from `train.total_iter`) follow. Written with
    `yaml.safe_dump`, the result replays through `python train.py --config-dir DIR --config-name NAME`.
    """
    cfg = compose_config([f"arch={architecture}", "data=paired"])
    data = {"gt_path": str(dataset_gt_path), "lq_path": None if dataset_lq_path is None else str(dataset_lq_path),
            "val_gt_path": None if val_gt_path is None else str(val_gt_path),
            "val_lq_path": None if val_lq_path is None else str(val_lq_path)}
    cfg = OmegaConf.merge(cfg, {"data": data}, custom_overrides or {})
    validate(cfg)
    # What the caller gave stays fixed when the YAML runs: the rest is derived and may be measured.
    given = {f"data.{key}" for key, value in data.items() if value is not None}
    given |= set(leaves(OmegaConf.create(custom_overrides or {})))
    cfg = leave_lr_to_measurement(cfg, given)  # other arch.params: another network, measured at start-up
    return replayable({**resolved_dict(cfg), RECORD_KEY: sorted(given)})


__all__ = ["create_zero_config_training", "print_hardware_report", "HardwareDetector"]
