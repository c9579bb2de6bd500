"""The automations' shared contract: a decision record, and the hooks every automation offers.

An automation watches measurements (`on_step_end`, `on_validation`), decides, and exposes the
resulting values as plain attributes (`factor`, `threshold`, `batch_size`, ...) that the training
loop writes into the optimizer, the loader or the objective. Every decision is also returned as a
`Decision`, which the loop logs: a decision that is only logged and never applied is a bug.

State dicts hold only what `torch.load(weights_only=True)` reads back (dict, list, str, int,
float, bool, None), because they travel inside the training-state checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping


def _plain(value: Any) -> Any:
    """A JSON- and checkpoint-friendly copy: numpy/torch scalars become Python numbers."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if hasattr(value, "item") and callable(value.item):  # numpy or torch scalar
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Iterable):  # list, tuple, deque
        return [_plain(v) for v in value]
    raise TypeError(f"cannot record {type(value).__name__} {value!r} in a decision")


@dataclass(frozen=True)
class Decision:
    """One change an automation made: at `iteration`, `change[what] = (old, new)`, because `reason`."""

    iteration: int
    automation: str
    change: dict[str, tuple[Any, Any]]
    reason: str

    def to_record(self) -> dict:
        """The `automation.jsonl` line: {"iter", "automation", "change": {what: [old, new]}, "reason"}."""
        return {
            "iter": int(self.iteration),
            "automation": self.automation,
            "change": {what: [_plain(old), _plain(new)] for what, (old, new) in self.change.items()},
            "reason": self.reason,
        }


def param(cfg: Any, key: str, default: Any = None) -> Any:
    """`cfg[key]` for a dict or an OmegaConf node, `default` when absent or null."""
    if cfg is None:
        return default
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def is_finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


class Automation:
    """Base class: a name, an on/off switch, checkpointable state and two measurement hooks.

    Subclasses list the attributes that make up their state in `STATE`; `state_dict()` copies
    them and `load_state_dict()` restores them, so nothing decided is forgotten on resume.
    """

    name: str = "automation"
    STATE: tuple[str, ...] = ()

    def __init__(self, enabled: bool = True):
        self.enabled = bool(enabled)

    def on_step_end(self, iteration: int, stats: Mapping[str, float]) -> list[Decision]:
        """After each optimizer step. `stats`: loss, `loss/<name>`, grad_norm, lr, batch_size,
        peak_mem_bytes (when known)."""
        return []

    def on_validation(self, iteration: int, metrics: Mapping[str, float]) -> list[Decision]:
        """After each validation. `metrics`: `val/psnr`, `val/ssim`, ..."""
        return []

    def decision(self, iteration: int, reason: str, **change: tuple[Any, Any]) -> Decision:
        return Decision(iteration=int(iteration), automation=self.name, change=dict(change), reason=reason)

    def state_dict(self) -> dict:
        return {key: _plain(getattr(self, key)) for key in self.STATE}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = [key for key in self.STATE if key not in state]
        if missing:
            raise KeyError(f"{self.name} state lacks {missing}")
        for key in self.STATE:
            setattr(self, key, self._restore(key, state[key]))

    def _restore(self, key: str, value: Any) -> Any:
        """Hook for attributes that are not stored as they live (e.g. a deque saved as a list)."""
        return value
