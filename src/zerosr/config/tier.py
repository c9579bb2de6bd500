"""The hardware tier is decided in the process that trains.

`hardware_tier/auto` names the tier detected where the config is composed. A launcher may compose
on another machine: Hydra's submitit launcher pickles the ConfigStore on the submitting (often
GPU-less) login node, so the job on the GPU node would get that node's tier while the precision
resolver runs on the GPU node. `settle_tier` detects again in the job and, when the tier differs,
composes the config again with the same overrides and this machine's tier; either way Hydra's
record (`hydra.runtime.choices`, `.hydra/`) then names the tier used instead of `auto`.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf, read_write

from zerosr.detect import probe, tier_for


def settle_tier(cfg: DictConfig) -> DictConfig:
    """The job's config with this machine's tier where the tier was left to detection."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return cfg  # the Compose API and doctor compose in the process that checks
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.runtime.choices.get("hardware_tier") != "auto":
        return cfg  # named by the user (or already settled)
    tier = tier_for(probe())
    changed = cfg.hardware_tier.name != tier
    if changed:
        from hydra import compose

        overrides = [o for o in hydra_cfg.overrides.task if o.split("=", 1)[0].lstrip("+~") != "hardware_tier"]
        cfg = compose(config_name=hydra_cfg.job.config_name, overrides=[*overrides, f"hardware_tier={tier}"])
    with read_write(hydra_cfg):
        hydra_cfg.runtime.choices["hardware_tier"] = tier
    _rewrite_record(hydra_cfg, cfg if changed else None)
    return cfg


def _rewrite_record(hydra_cfg, cfg: DictConfig | None) -> None:
    """`.hydra/hydra.yaml` (the choices) and, when the config changed, `.hydra/config.yaml`."""
    if not hydra_cfg.output_subdir:
        return
    record = Path(hydra_cfg.runtime.output_dir) / str(hydra_cfg.output_subdir)
    if not record.is_dir():
        return
    from zerosr.atomic import atomic_write_bytes

    atomic_write_bytes(record / "hydra.yaml", OmegaConf.to_yaml({"hydra": hydra_cfg}).encode("utf-8"))
    if cfg is not None:
        atomic_write_bytes(record / "config.yaml", OmegaConf.to_yaml(cfg).encode("utf-8"))
