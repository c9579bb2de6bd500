"""Building a ParagonSR2 variant by name: the one path from `VARIANTS` to a network."""

from __future__ import annotations

import inspect

from torch import nn

from zerosr.errors import UserError

from .paragonsr2 import ParagonSR2
from .variants import SCALES, VARIANTS

# Constructor keywords a caller may override (everything but the scale).
PARAMETERS = tuple(name for name in inspect.signature(ParagonSR2.__init__).parameters if name not in ("self", "scale"))


def build(name: str, scale: int, **overrides) -> nn.Module:
    """The network for variant `name` at `scale`, with optional hyper-parameter overrides.

    `checkpointing=True` enables gradient checkpointing; it is a run option, not a property of
    the weights, so it is not recorded in `model.arch_params`.
    """
    if name not in VARIANTS:
        raise UserError(f"unknown architecture {name!r}: choose one of {', '.join(VARIANTS)}")
    if isinstance(scale, bool) or scale not in SCALES:
        raise UserError(f"{name} does not support scale {scale!r}: use one of {', '.join(map(str, SCALES))}")
    unknown = sorted(set(overrides) - set(PARAMETERS))
    if unknown:
        raise UserError(f"unknown parameter(s) {', '.join(unknown)} for {name}: valid ones are {', '.join(PARAMETERS)}")
    params = {**VARIANTS[name], **overrides}
    checkpointing = bool(params.pop("checkpointing", False))
    try:
        model = ParagonSR2(scale=int(scale), checkpointing=checkpointing, **params)
    except (TypeError, ValueError) as exc:
        raise UserError(f"invalid parameters for {name}: {exc}") from None
    model.arch_name = name
    model.arch_params = params
    return model
