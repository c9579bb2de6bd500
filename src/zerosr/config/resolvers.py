"""Register `zerosr.*` OmegaConf resolvers: the rules of `derive.py` plus the detected-hardware facts."""

from __future__ import annotations

from omegaconf import OmegaConf

from zerosr.config import derive
from zerosr.detect import compile_for, loader_workers, precision_for, probe
from zerosr.metrics import catalog


def job_dir(num, overrides: str = "", limit: int = 120) -> str:
    """A multirun job's folder: `<num>_<overrides>`, or `<num>` alone when the overrides would make
    an unwieldy name (file names stop at 255 bytes; an Optuna trial's floats are long)."""
    overrides = str(overrides or "").replace("/", "_")
    return f"{num}_{overrides}" if overrides and len(overrides) <= limit else str(num)


_RULES = {
    "job_dir": job_dir,
    "first": derive.first,
    "clamp": derive.clamp,
    "batch_size": derive.batch_size,
    "lq_size": derive.lq_size,
    "warmup_iter": derive.warmup_iter,
    "val_freq": derive.val_freq,
    "save_freq": derive.save_freq,
    "log_freq": derive.log_freq,
    "plateau_patience": derive.plateau_patience,
    "blowup_hold": derive.blowup_hold,
    "min_lr_factor": derive.min_lr_factor,
    "run_length_factor": derive.run_length_factor,
    "max_lr_factor": derive.max_lr_factor,
    "target_vram_usage": derive.target_vram_usage,
    "batch_adjust_every": derive.batch_adjust_every,
    "clip_history": derive.clip_history,
    "clip_percentile": derive.clip_percentile,
    "early_stop_patience": derive.early_stop_patience,
    "early_stop_min_iter": derive.early_stop_min_iter,
    "gan_delay": derive.gan_delay,
    "analysis_batches": derive.analysis_batches,
    "val_metrics": catalog.val_metrics,
    "select_metric": catalog.select_metric,
    "early_stop_min_delta": catalog.early_stop_min_delta,
    "sweep_direction": lambda name: catalog.metric(str(name)).direction,
    # Facts of this machine (the probe is cached, so these cost nothing after the first call).
    "precision": lambda no_gpu_default: precision_for(probe(), no_gpu_default),
    "compile": lambda wanted: compile_for(bool(wanted)),
    "loader_workers": lambda cap, share=0.5, data="": loader_workers(probe(), int(cap), float(share), str(data)),
}


def register_resolvers() -> None:
    for name, rule in _RULES.items():
        # replace=True: registering twice (tests, multirun jobs in one process) is harmless.
        OmegaConf.register_new_resolver(f"zerosr.{name}", rule, replace=True)
