"""Super-resolution networks: the ParagonSR2 family, nano to xl.

    model = build("paragonsr2_s", scale=4)            # hyper-parameters from VARIANTS
    save(model, "s_x4.safetensors")                   # weights + variant, scale and params
    model = load("s_x4.safetensors")                  # rebuilt from the file alone

`VARIANTS` is the one place each variant's numbers live; the Hydra `arch` group is generated
from it and the trainer calls `build(cfg.arch.name, cfg.scale, **cfg.arch.params)`.
"""

from __future__ import annotations

import importlib

# The table of variants is plain data: importing it (as config composition does, before every
# run) must not import torch. Everything else loads on first use.
from .variants import ARCHITECTURE, SCALES, VARIANTS

_LAZY = {
    "PARAMETERS": ".registry",
    "build": ".registry",
    "ParagonSR2": ".paragonsr2",
    "identify": ".io",
    "load": ".io",
    "load_state_dict_file": ".io",
    "load_weights": ".io",
    "read_weights": ".io",
    "Weights": ".io",
    "save": ".io",
}

__all__ = ["ARCHITECTURE", "SCALES", "VARIANTS", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
