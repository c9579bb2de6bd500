"""Checks of what the config names by import path (`_target_`) and of the settings handed to
libraries as they are: losses, optimizers, the DataLoader. A mistake here is one line before the
start-up screen, not a traceback from the library after it."""

from __future__ import annotations

import math
from collections.abc import Iterator

from omegaconf import DictConfig, OmegaConf

from zerosr.errors import UserError

_LOSS_EXAMPLE = "e.g. {_target_: zerosr.losses.CharbonnierLoss, weight: 1.0}"


def locate(path: str, key: str):
    """The object `path` names; UserError naming `key` when it cannot be imported."""
    from hydra._internal.utils import _locate  # what hydra.utils.instantiate imports with, without its log line

    try:
        return _locate(str(path))
    except Exception as error:  # noqa: BLE001 - ImportError, AttributeError, ValueError: all "not found"
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        cause = lines[-1] if lines else type(error).__name__
        raise UserError(f"{key}={path} cannot be imported ({cause}): check the spelling of the module and "
                        "class, e.g. zerosr.losses.L1Loss or torch.optim.AdamW") from None


def targets(node, key: str = "") -> Iterator[tuple[str, object]]:
    """(dotted key of the `_target_`, its value) for every `_target_` in a plain (resolved) config."""
    if isinstance(node, dict):
        for name, value in node.items():
            child = f"{key}.{name}" if key else str(name)
            if name == "_target_":
                yield child, value
            else:
                yield from targets(value, child)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from targets(value, f"{key}.{index}")


def check_targets(cfg: DictConfig) -> None:
    """Every `_target_` imports; losses are nn.Modules with a usable weight; the optimizer is one."""
    import torch

    for key, path in targets(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)):
        if key == "arch._target_":
            continue  # the network: built and checked by preflight (zerosr.archs.custom)
        if not isinstance(path, str):
            raise UserError(f"{key}={path} must be an import path (a string), e.g. zerosr.losses.L1Loss")
        locate(path, key)
    optimizer = cfg.train.optimizer
    if "_target_" not in optimizer:
        raise UserError("train.optimizer has no _target_: e.g. 'train.optimizer={_target_: torch.optim.AdamW, "
                        "lr: ${train.lr}}'")
    found = locate(optimizer._target_, "train.optimizer._target_")
    if not (isinstance(found, type) and issubclass(found, torch.optim.Optimizer)):
        raise UserError(f"train.optimizer._target_={optimizer._target_} is not a torch optimizer: name a "
                        "torch.optim.Optimizer class, e.g. torch.optim.AdamW")
    for index, entry in enumerate(cfg.train.losses):
        _check_loss(entry, f"train.losses.{index}", torch.nn.Module)


def _check_loss(entry, key: str, module_type: type) -> None:
    if not isinstance(entry, DictConfig):
        raise UserError(f"{key}={entry} is not a loss entry: give a mapping with _target_ and weight, {_LOSS_EXAMPLE}")
    if "_target_" not in entry:
        raise UserError(f"{key} has no _target_: {_LOSS_EXAMPLE}")
    found = locate(entry._target_, f"{key}._target_")
    if not (isinstance(found, type) and issubclass(found, module_type)):
        raise UserError(f"{key}._target_={entry._target_} is not a loss module (a torch.nn.Module class): "
                        "e.g. zerosr.losses.L1Loss")
    weight = entry.get("weight", 1.0)
    try:
        number = float(weight)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(weight, bool) or not (math.isfinite(number) and number >= 0):
        raise UserError(f"{key}.weight={weight} must be a number, 0 or more: e.g. {key}.weight=0.1")


def check_loader(tier: DictConfig) -> None:
    """The DataLoader's own rules, which it would raise only when the first batch is read."""
    workers, prefetch = tier.num_workers, tier.prefetch_factor
    if workers < 0:
        raise UserError(f"hardware_tier.num_workers={workers} must be 0 or more (0 loads in the training process)")
    if workers > 0 and (prefetch is None or prefetch < 1):
        raise UserError(f"hardware_tier.prefetch_factor={prefetch} must be at least 1 with "
                        f"hardware_tier.num_workers={workers}: e.g. hardware_tier.prefetch_factor=2")
