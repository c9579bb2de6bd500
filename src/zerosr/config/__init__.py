"""Config: schemas, presets, derivation rules and their registration with Hydra (`store.register`)."""

from zerosr.paths import CONFIG_DIR

__all__ = ["CONFIG_DIR"]
