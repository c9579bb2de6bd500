"""Weights drawn from a seed, identical for any two networks with the same state-dict layout.

The community-architecture fixtures store only inputs and outputs: both the reference network
(when the fixtures were made) and ours get their weights from `seeded_state`, so no large state
dict is committed. Each tensor has its own generator seeded from its position in the sorted key
list; scales keep activations of a 23-block ESRGAN in range.
"""

from __future__ import annotations

import math

import torch


def seeded_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    state = {}
    for index, key in enumerate(sorted(shapes)):
        shape = tuple(shapes[key])
        generator = torch.Generator().manual_seed(seed * 100_003 + index)
        noise = torch.randn(shape, generator=generator)
        if key.endswith("no_norm"):
            value = torch.zeros(shape)
        elif len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            value = noise / math.sqrt(fan_in)
        elif key.endswith("weight"):  # norms and PReLU slopes
            value = 0.5 + 0.1 * noise
        else:
            value = 0.02 * noise
        state[key] = value
    return state


def seeded_input(height: int = 9, width: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed))
