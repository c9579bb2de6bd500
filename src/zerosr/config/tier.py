"""The hardware tier is decided in the process that trains.

`hardware_tier/auto` names the tier detected where the config is composed. A launcher may compose
on another machine: Hydra's submitit launcher pickles the ConfigStore on the submitting (often
GPU-less) login node, so the job on the GPU node would get that node's tier while the precision
resolver runs on the GPU node. `settle_tier` detects again in the job and, when the tier differs,
composes the config again with the same overrides and this machine's tier; either way Hydra's
record (`hydra.runtime.choices`, `.hydra/`) then names the tier used instead of `auto`.

A config without VRAM targets (the cpu tier: `hardware_tier=cpu`, or a config resolved on a
GPU-less machine and replayed here) that trains on a GPU takes the detected GPU tier's memory
targets for the batch search and the memory watch, with one warning (`gpu_memory_targets`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from zerosr.config import CONFIG_DIR, derive
from zerosr.detect import probe, tier_for


def settle_tier(cfg: DictConfig) -> DictConfig:
    """The job's config with this machine's tier where the tier was left to detection."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return gpu_memory_targets(cfg)  # the Compose API and doctor compose in the process that checks
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.runtime.choices.get("hardware_tier") != "auto":
        return gpu_memory_targets(cfg)  # named by the user (or already settled), or a replay
    tier = tier_for(probe())
    changed = cfg.hardware_tier.name != tier
    if changed:
        from hydra import compose

        overrides = [o for o in hydra_cfg.overrides.task if o.split("=", 1)[0].lstrip("+~") != "hardware_tier"]
        cfg = compose(config_name=hydra_cfg.job.config_name, overrides=[*overrides, f"hardware_tier={tier}"])
    with read_write(hydra_cfg):
        hydra_cfg.runtime.choices["hardware_tier"] = tier
    _rewrite_record(hydra_cfg, cfg if changed else None)
    return gpu_memory_targets(cfg)


def gpu_memory_targets(cfg: DictConfig) -> DictConfig:
    """`cfg` with the detected GPU tier's VRAM target and safety margin where it has no target but
    this machine has a GPU (else the GPU batch search would have nothing to aim at). The rest of
    the tier (precision, patch sizes) stays as configured."""
    batch = cfg.automation.batch
    hardware = probe()
    if batch.target_vram_usage is not None or not hardware.has_gpu:
        return cfg
    tier = tier_for(hardware)
    values = OmegaConf.load(CONFIG_DIR / "hardware_tier" / f"{tier}.yaml")
    target = derive.target_vram_usage(float(values.target_vram_usage))
    with open_dict(cfg), read_write(cfg):
        batch.target_vram_usage, batch.safety_margin = target, float(values.safety_margin)
    gpu = hardware.gpus[0]
    print(f"warning: hardware_tier={cfg.hardware_tier.name} has no VRAM target, but this machine has a GPU "
          f"({gpu.name}, {gpu.vram_gb:g} GB): the batch search and memory watch use the {tier} tier's "
          f"target {target:.0%} (margin {batch.safety_margin:.0%}); for that tier's precision and "
          f"patch sizes too, use hardware_tier={tier}", file=sys.stderr, flush=True)
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
