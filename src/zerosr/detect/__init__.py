"""Hardware detection (no torch import on this path) and tiering."""

from zerosr.detect.hardware import FAKE_ENV, GPUInfo, Hardware, probe
from zerosr.detect.tiers import (
    COMPILE_OFF_ON_WINDOWS,
    TIERS,
    compile_for,
    generation,
    loader_workers,
    on_windows,
    precision_for,
    tier_for,
)

__all__ = ["FAKE_ENV", "GPUInfo", "Hardware", "probe", "TIERS", "tier_for", "precision_for",
           "loader_workers", "generation", "compile_for", "on_windows", "COMPILE_OFF_ON_WINDOWS"]
