"""Super-resolution networks, by family (see `spec.py`: how a family is described and added).

    model = build(option, scale=4)                    # hyper-parameters from conf/arch/<option>.yaml
    save(model, "x4.safetensors")                     # weights + family, variant, scale and params
    model = load("x4.safetensors")                    # rebuilt from the file alone

The trainer calls `build(cfg.arch.name, cfg.scale, cfg.arch._target_, **cfg.arch.params)`;
`arch=custom` builds the user's own network by its import path (`custom.py`).
"""

from __future__ import annotations

import importlib

# The spec is plain data and functions: importing it (as config code does) must not import
# torch. Everything else loads on first use.
from .spec import CUSTOM, Family, Recognised, Tiling, Variant, build, families, family, options, variant, variants

_LAZY = {
    "identify": ".io",
    "infer": ".io",
    "load": ".io",
    "load_state_dict_file": ".io",
    "load_weights": ".io",
    "read_weights": ".io",
    "Weights": ".io",
    "save": ".io",
}

__all__ = ["CUSTOM", "Family", "Recognised", "Tiling", "Variant", "build", "families", "family", "options", "variant",
           "variants", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
