"""Compose zerosr's config from Python (the Compose API), exactly as `train.py` would."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from zerosr.config import CONFIG_DIR
from zerosr.config.overrides import complete_overrides
from zerosr.config.store import register


def compose_config(overrides: list[str] | tuple[str, ...] = (), config_dir=None,
                   config_name: str = "train") -> DictConfig:
    """The composed (unresolved) job config for these command-line style overrides."""
    register()
    with initialize_config_dir(config_dir=str(config_dir or CONFIG_DIR), version_base="1.3",
                               job_name="zerosr"):
        return compose(config_name=config_name, overrides=complete_overrides(list(overrides)))
