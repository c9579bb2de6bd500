"""Training presets: each arch option's starting point, which the tier, the run and the automations
refine, and the rule that turns LR range tests into preset LRs.

The presets themselves are fields of each `conf/arch/<option>.yaml` (the one home of a variant's
numbers, see `zerosr.archs.spec`): LR, where the LR comes from, batch hint, run length, warm-up,
EMA, betas, weight decay, patch sizes, the clip percentile and the loss-schedule values.

The range-test rule (`lr_from_range_test`). `bench/lr_presets.py` runs zerosr's own LR range test
(batch 4, 24 px LR patches, the run's 100-point grid 1e-7..1, real batches of BSD100 x2) for a
variant and records the LR at which its loss diverges, with seeds 0 and 1. The steepest-descent
point is not used: at this batch it moves tenfold with the order of the batches, while the
divergence LR falls steadily with network size. A variant's LR is then, per seed,

    the anchor's LR x (its divergence LR / the anchor's) x sqrt(its batch hint / the anchor's),

the square-root rule because a preset applies at the variant's own tier batch; the preset is the
geometric mean over the seeds, rounded down to the E6 series (1, 1.5, 2.2, 3.3, 4.7, 6.8): up to
a step below the measurement, whose seed-to-seed spread is about 30 %.

The anchor is the one option with `preset.lr_anchor: true` (the smallest built-in variant, "nano"
below), whose LR was chosen by training: `python bench/quality.py --iters 6000` and `--iters 600
--seeds 0 1 2` (batch 8, 32 px, BSD100 x2): warm-up + cosine gave 32.37 / 32.52 / 32.66 / 32.65 dB
at 1e-3 / 2e-3 / 4e-3 / 8e-3 after 6000 iterations, so its preset is 4e-3, and the rule scales
from that LR. (It scaled from nano's earlier 1e-3 before; training at 0.5x, 1x, 2x and 4x those
presets, `bench/quality.py --iters 600 --arch OPTION`, put the best run at 4x: that quarter was
too low.) A network measured at start-up (`arch=custom`) gets the same rule, with the anchor
measured on the same data beside it.
"""

from __future__ import annotations

import math

E6 = (1.0, 1.5, 2.2, 3.3, 4.7, 6.8)
LOSS_SCHEDULE_KEYS = ("momentum", "adaptation_rate", "max_weight", "adaptation_threshold", "baseline_iterations")


def round_down_e6(value: float) -> float:
    """The largest E6 value (1, 1.5, 2.2, 3.3, 4.7, 6.8 times a power of ten) not above `value`."""
    exponent = math.floor(math.log10(value))
    mantissa = value / 10**exponent
    step = max(m for m in E6 if m <= mantissa * (1 + 1e-9))
    return float(f"{step}e{exponent}")


def lr_from_range_test(divergence: list[float], anchor_divergence: list[float], batch_hint: int,
                       anchor_batch_hint: int, anchor_lr: float) -> float:
    """The preset LR the range-test rule gives (see the module docstring); one value per seed."""
    if not divergence or len(divergence) != len(anchor_divergence):
        raise ValueError("the rule needs one divergence LR per seed for the network and for the anchor")
    per_seed = [anchor_lr * ours / theirs * math.sqrt(batch_hint / anchor_batch_hint)
                for ours, theirs in zip(divergence, anchor_divergence)]
    return round_down_e6(math.exp(sum(map(math.log, per_seed)) / len(per_seed)))


def training_preset(option: str) -> dict:
    """The preset of a built-in arch option, as its conf/arch file gives it."""
    from zerosr.archs.spec import variant

    return dict(variant(option).preset)


def loss_schedule_preset(option: str) -> dict:
    return dict(training_preset(option)["loss_schedule"])
