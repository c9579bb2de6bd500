"""hydra/launcher=slurm_ddp: what srun is told (SLURM itself cannot run here)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]


def test_srun_ends_every_rank_when_one_fails():
    # One rank's fatal out-of-memory error must not leave the others in a collective for hours.
    launcher = OmegaConf.load(ROOT / "conf" / "hydra" / "launcher" / "slurm_ddp.yaml")
    assert "--kill-on-bad-exit=1" in list(launcher.srun_args)
