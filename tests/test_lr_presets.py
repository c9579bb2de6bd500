"""The preset LRs the range-test measurement set: never higher for a larger network."""

from __future__ import annotations

from zerosr.archs import build
from zerosr.config.presets import VARIANT_ORDER, training_preset


def test_the_lr_never_rises_with_the_network_size():
    sizes = {v: sum(p.numel() for p in build(f"paragonsr2_{v}", scale=2).parameters()) for v in VARIANT_ORDER}
    by_size = sorted(VARIANT_ORDER, key=sizes.get)
    assert by_size == list(VARIANT_ORDER)
    lrs = [training_preset(v)["lr"] for v in by_size]
    assert lrs == sorted(lrs, reverse=True) and len(set(lrs)) == len(lrs)
