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

    its anchor's LR x (its divergence LR / the anchor's) ** exponent
                    x sqrt(its batch hint / the anchor's),

the square-root rule because a preset applies at the variant's own tier batch; the preset is the
geometric mean over the seeds, rounded down to the E6 series (1, 1.5, 2.2, 3.3, 4.7, 6.8): up to
a step below the measurement, whose seed-to-seed spread is about 30 %.

The anchor (`zerosr.archs.spec.anchor`): a family's own variant marked `preset.lr_family_anchor:
true`, one whose LR training chose, where it has one; else the one variant marked
`preset.lr_anchor: true`, the smallest built-in network, "nano", whose LR the long-run benchmark
chose. `arch=custom` is measured at start-up against nano, on the same data.

The exponent. Across families, and within a family until training fits another, it is 1: the
LR in proportion to the divergence LR. An LR too high can kill a network for good, one too low
only trains slower, and across families the proportional rule is what training showed: scaled
from nano by the fourth root, SuperUltraCompact (which diverges at about s's LR) got 2.2e-3 and
its network died on BSD100 under PyTorch's default init (held-out PSNR stuck at 29.73 dB, below
bicubic's 31.18), where at 1e-3 it reached 33.06 and beat every hand-set LR; span_s got 1.5e-3
and trained 0.26 dB below its trained 6.8e-4. An anchor's `preset.family_lr_exponent` sets its family's exponent where training
fitted one. nano's is 1/4: within nano's family the best LR falls far more slowly than the
divergence LR. In proportion s got 1e-3; trained for 1500 iterations at 1e-3 / 2e-3 / 4e-3 it
scored 32.555 / 32.764 / 32.870 dB, and for 600 iterations it trained best starting at 4e-3 of
1e-3..8e-3. The fourth root gives it 2.2e-3. Compact's stays 1: its divergence LRs do not tell
compact from ultracompact (0.0145 each, seed 0), yet compact's network died from a start of
1.32e-3, where ultracompact trained best, so no exponent fits both; the lower LR only trains slower.

nano's LR: `python bench/quality.py --iters 6000` and `--iters 600 --seeds 0 1 2` (batch 8, 32 px,
BSD100 x2): warm-up + cosine gave 32.37 / 32.52 / 32.66 / 32.65 dB at 1e-3 / 2e-3 / 4e-3 / 8e-3
after 6000 iterations, so its preset is 4e-3. (The rule scaled from nano's earlier 1e-3 before;
training at 0.5x, 1x, 2x and 4x those presets, `bench/quality.py --iters 600 --arch OPTION`, put
the best run at 4x: that quarter was too low.)
"""

from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf, open_dict

E6 = (1.0, 1.5, 2.2, 3.3, 4.7, 6.8)
LOSS_SCHEDULE_KEYS = ("momentum", "adaptation_rate", "max_weight", "adaptation_threshold", "baseline_iterations")


def round_down_e6(value: float) -> float:
    """The largest E6 value (1, 1.5, 2.2, 3.3, 4.7, 6.8 times a power of ten) not above `value`."""
    exponent = math.floor(math.log10(value))
    mantissa = value / 10**exponent
    step = max(m for m in E6 if m <= mantissa * (1 + 1e-9))
    return float(f"{step}e{exponent}")


def rule_exponent(anchor_preset: dict, same_family: bool) -> float:
    """The exponent on the divergence LR's ratio (see the module docstring): the anchor's
    `family_lr_exponent` for its own family's variants, 1 for any other network."""
    return float(anchor_preset.get("family_lr_exponent", 1.0)) if same_family else 1.0


def lr_from_range_test(divergence: list[float], anchor_divergence: list[float], batch_hint: int,
                       anchor_batch_hint: int, anchor_lr: float, exponent: float = 1.0) -> float:
    """The preset LR the range-test rule gives (see the module docstring): one divergence LR per
    seed for the network and for its anchor; `exponent` from `rule_exponent`."""
    if not divergence or len(divergence) != len(anchor_divergence):
        raise ValueError("the rule needs one divergence LR per seed for the network and for the anchor")
    per_seed = [anchor_lr * (ours / theirs) ** exponent * math.sqrt(batch_hint / anchor_batch_hint)
                for ours, theirs in zip(divergence, anchor_divergence)]
    return round_down_e6(math.exp(sum(map(math.log, per_seed)) / len(per_seed)))


def training_preset(option: str) -> dict:
    """The preset of a built-in arch option, as its conf/arch file gives it."""
    from zerosr.archs.spec import variant

    return dict(variant(option).preset)


def loss_schedule_preset(option: str) -> dict:
    return dict(training_preset(option)["loss_schedule"])


def leave_lr_to_measurement(cfg: DictConfig, user_set: set[str]) -> DictConfig:
    """`cfg` with the preset LR left to the start-up measurement (`zerosr.engine.preset_lr`) where
    the option's own preset was measured for another network: a built-in option whose
    `arch.params` differ from its file's (`arch=span_s arch.params.feature_channels=16`) is a
    network of its own, measured by the range-test rule against its family's anchor as arch=custom
    is against nano. Unchanged where the user set the LR (`train.lr`, `arch.preset.lr`) or turned
    the LR automation off: their value, or the option's preset, is then what trains."""
    from zerosr.archs.spec import is_reshaped

    if not cfg.automation.lr.enabled or user_set & {"train.lr", "arch.preset.lr"}:
        return cfg
    if not OmegaConf.is_interpolation(cfg.train, "lr"):  # a written-out config: its LR trains as written
        return cfg
    if not is_reshaped(cfg.arch.name, OmegaConf.to_container(cfg.arch.params, resolve=True)):
        return cfg
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.arch.preset.lr = None
        cfg.arch.preset.lr_source = "measured at start-up"
        if "arch.preset.divergence_lr" not in user_set:
            cfg.arch.preset.divergence_lr = None  # the file's network's, not this one's
    return cfg
