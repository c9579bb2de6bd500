"""Reading a network's hyper-parameters back from its state dict: helpers the families share."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import nn

from .spec import Recognised


def seq_len(state: Mapping[str, object], prefix: str) -> int:
    """1 + the highest index N among keys `prefix.N...` (0 when there are none)."""
    start = prefix + "."
    indices = [key[len(start) :].split(".", 1)[0] for key in state if key.startswith(start)]
    numbers = [int(index) for index in indices if index.isdigit()]
    return max(numbers) + 1 if numbers else 0


def shuffle_scale(channels: int, out_channels: int = 3) -> int | None:
    """The scale s with out_channels * s^2 == channels (a pixel-shuffle layer's input), else None."""
    ratio, rest = divmod(channels, out_channels)
    scale = math.isqrt(ratio)
    return scale if not rest and scale * scale == ratio and scale > 0 else None


def shapes_of(make: Callable[[], nn.Module]) -> dict[str, tuple[int, ...]]:
    """Every state-dict entry's shape of the network `make()` builds, built without memory."""
    with torch.device("meta"):
        model = make()
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def same_layout(state: Mapping[str, torch.Tensor], make: Callable[[], nn.Module]) -> bool:
    """Whether `state` has exactly the keys and shapes of the network `make()` builds."""
    try:
        expected = shapes_of(make)
    except (ValueError, RuntimeError, TypeError):
        return False
    return expected == {key: tuple(value.shape) for key, value in state.items()}


def recognise_option(read: Callable[[dict], tuple[int, dict] | None]):
    """A family's `recognise` made from `read(state) -> (scale, hyper-parameters) | None`: the
    option named is the variant those hyper-parameters fit (`option_for`)."""

    def recognise(state: dict, variants: dict[str, dict]) -> Recognised | None:
        found = read(state)
        return None if found is None else Recognised(option_for(found[1], variants), *found)

    return recognise


def option_for(params: dict, variants: dict[str, dict]) -> str:
    """The variant whose hyper-parameters are exactly `params`; for custom settings, the variant
    sharing the most of them (the file's own hyper-parameters still decide what is built)."""
    return max(variants, key=lambda name: (variants[name] == params, sum(params.get(k) == v for k, v in variants[name].items())))
