"""Which keys the user set: explicit values win over start-up measurement and calibration."""

from __future__ import annotations


def user_set_keys(prefix: str) -> set[str]:
    """Keys under `prefix` the user set on the command line (explicit keys win over calibration)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    keys = set()
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.startswith(prefix + "."):
            keys.add(key[len(prefix) + 1:])
        elif key == prefix:
            keys.add("")
    return keys
