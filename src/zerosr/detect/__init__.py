"""Hardware detection (no torch import on this path) and tiering."""

from zerosr.detect.hardware import FAKE_ENV, GPUInfo, Hardware, probe
from zerosr.detect.tiers import TIERS, generation, loader_workers, precision_for, tier_for

__all__ = ["FAKE_ENV", "GPUInfo", "Hardware", "probe", "TIERS", "tier_for", "precision_for",
           "loader_workers", "generation"]
