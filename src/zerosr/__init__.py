"""zerosr: zero-config super-resolution training.

Names are loaded on first use, so `import zerosr.detect` (run before every config composition)
stays free of torch and Hydra imports.
"""

_API = {"create_zero_config_training": "zerosr.api", "print_hardware_report": "zerosr.hardware",
        "HardwareDetector": "zerosr.hardware"}

__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'zerosr' has no attribute {name!r}")
