"""The fully resolved config as a plain dict, replayable with `train.py --config-dir DIR --config-name NAME`."""

from __future__ import annotations

from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

# Replays keep the schema's type checks and the usual run-directory layout (used by resume=auto).
_REPLAY_HEADER = {
    "defaults": ["zerosr_schema", "_self_"],
}
_REPLAY_HYDRA = {"hydra": {"run": {"dir": "outputs/${name}/${now:%Y-%m-%d_%H-%M-%S_%f}"}}}


def resolved_dict(cfg: DictConfig) -> dict:
    """Every interpolation replaced by its value; no `hydra` node."""
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    plain.pop("hydra", None)
    return plain


def replayable(plain: dict) -> dict:
    """A resolved config dict made into a primary config Hydra can compose on any machine."""
    return {**_REPLAY_HEADER, **plain, **_REPLAY_HYDRA}


def write_replayable(plain: dict, path: Path) -> None:
    from zerosr.atomic import atomic_write_bytes

    text = yaml.safe_dump(replayable(plain), sort_keys=False)
    atomic_write_bytes(Path(path), text.encode("utf-8"))
