"""The job `train.py` runs: validate the composed config, record it, explain it, train."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from zerosr.config.resolved import resolved_dict, write_replayable
from zerosr.config.validate import validate
from zerosr.detect import probe
from zerosr.report.choices import describe_choices


def run_dir_of(cfg: DictConfig) -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def run(cfg: DictConfig) -> float:
    """Returns the best validation PSNR, the value sweepers maximise."""
    validate(cfg)
    run_dir = run_dir_of(cfg)
    write_replayable(resolved_dict(cfg), run_dir / "resolved_config.yaml")
    print(describe_choices(cfg, probe()), flush=True)
    if cfg.dry_run:
        print(f"dry run: config saved to {run_dir / 'resolved_config.yaml'}; no training")
        return float("nan")
    from zerosr.engine.loop import train

    return train(cfg, run_dir)
