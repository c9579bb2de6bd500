"""Pure rules that turn (arch preset, tier, run length, detected hardware) into concrete values.

Each rule is registered as an OmegaConf resolver `zerosr.<name>` (see `resolvers.py`) and used by
`conf/`, so `--cfg job --resolve` shows its result and any key can still be overridden. Every rule
clamps its result to safety bounds: a strange input gives a safe value, never a crazy one.
"""

from __future__ import annotations

import math

from zerosr.bounds import clamp


def first(*values):
    """The first value that is not null: lets a data option shorten the run without hiding the preset."""
    return next((v for v in values if v is not None), None)


def _nice(value: float) -> int:
    """Round to 1, 2 or 5 times a power of ten, so derived frequencies read naturally (250, 500, 1000)."""
    if value <= 1:
        return 1
    exponent = 10 ** math.floor(math.log10(value))
    return int(min((m * exponent for m in (1, 2, 5, 10)), key=lambda c: abs(c - value)))


# --- train ---------------------------------------------------------------------------------------

# A batch of 1 follows one patch per step: esrgan_lite at batch 1 swung by 2.5 dB of held-out PSNR
# between validations and ended 1.1 dB below batch 2 after 600 iterations (0.12 dB at equal time).
MIN_TIER_BATCH = 2


def batch_size(hint: int, tier_scale: float, tier_max: int) -> int:
    """Preset batch scaled for the tier's memory, rounded down to a multiple of 2, within
    [MIN_TIER_BATCH, tier_max]; the batch search still shrinks it where memory says so."""
    scaled = int(hint * tier_scale)
    scaled -= scaled % 2
    return int(clamp(scaled, min(MIN_TIER_BATCH, tier_max), tier_max))


def lq_size(preset: int, tier_max: int, low: int, high: int) -> int:
    return int(clamp(min(preset, tier_max), low, high))


def warmup_iter(preset: int, total_iter: int) -> int:
    """The preset's warm-up, but never more than a tenth of a short run."""
    return int(clamp(min(preset, total_iter // 10), 0, total_iter))


def val_freq(total_iter: int) -> int:
    """About 20 validations a run, at least every 50 and at most every 5000 iterations."""
    return int(clamp(_nice(total_iter / 20), 50, 5000)) if total_iter >= 100 else max(1, total_iter)


def save_freq(total_iter: int, validation_every: int) -> int:
    """Every second validation (a checkpoint after each `best` candidate is checked twice)."""
    return int(min(max(total_iter, 1), 2 * validation_every))


def log_freq(total_iter: int) -> int:
    """About 500 log lines a run, between every iteration and every 100."""
    return int(clamp(_nice(total_iter / 500), 1, 100))


# --- automations ---------------------------------------------------------------------------------

def plateau_patience(total_iter: int, tier_patience_scale: float) -> int:
    """Iterations without improvement before the LR drops: 5 % of the run, scaled by tier, in [500, 3000]."""
    return int(clamp(0.05 * total_iter * tier_patience_scale, 500, 3000))


def blowup_hold(total_iter: int) -> int:
    """Iterations the LR is left alone after a blow-up cut: 1 % of the run, in [100, 1000]."""
    return int(clamp(0.01 * total_iter, 100, 1000))


def min_lr_factor(total_iter: int) -> float:
    """Long runs may decay further: 0.1 of the base LR at 10k iterations, 0.01 at 200k and more."""
    return round(clamp(0.1 * (10_000 / max(total_iter, 1)) ** 0.77, 0.01, 0.2), 4)


# Short runs train best at a higher LR than the presets, which are measured for long runs:
# nano x2 at 600 iterations scored best at twice its preset, at 1500 and 6000 at the preset.
SHORT_RUN = (600, 2.0)  # at or under this many iterations, this factor on the preset LR
LONG_RUN = 1500  # from here on the preset itself


def run_length_position(total_iter: int) -> float:
    """Where a run of `total_iter` iterations stands between short and long: 0 up to SHORT_RUN's
    length, 1 from LONG_RUN, log-linear in the run length between."""
    short_iter = SHORT_RUN[0]
    position = (math.log(max(total_iter, 1)) - math.log(short_iter)) / (math.log(LONG_RUN) - math.log(short_iter))
    return clamp(position, 0.0, 1.0)


def run_length_factor(total_iter: int, pretrain: str | None = None) -> float:
    """The preset LR's factor for a run of `total_iter` iterations: SHORT_RUN's factor up to its
    length, 1 from LONG_RUN, log-linear in the run length between (3 decimals). 1 from
    `train.pretrain` weights: the measurement was from scratch, and a short fine-tune must not
    throw away what the weights learned."""
    if pretrain:
        return 1.0
    return round(SHORT_RUN[1] ** (1 - run_length_position(total_iter)), 3)


def clip_percentile(preset: float, short_run: float | None, total_iter: int) -> float:
    """AutoClip's percentile: the preset's, or for a short run its `short_run_clip_percentile`
    where it has one, moving to the preset's along the same run-length scale as the LR factor;
    within [80, 99]. Measured on nano x2: at 600 iterations (twice the preset LR) p90 beat p98 on
    three seeds out of three, by 0.035 dB; at x4 and 1500 iterations (the preset LR) p98 beat p90
    by 0.037 dB."""
    value = preset if short_run is None else short_run + (preset - short_run) * run_length_position(total_iter)
    return round(clamp(value, 80.0, 99.0), 2)


# The square-root rule may raise the LR at most this far: 4x, a 16x batch. Beyond that the base
# LR, measured at the preset batch, says too little about the step a far larger batch can take.
MAX_LR_FACTOR_CAP = 4.0


def max_lr_factor(batch_size: int, max_batch_size: int) -> float:
    """Room for the square-root rule to follow the batch from the tier's `batch_size` (where the
    preset LR applies) up to the largest the batch search may pick: sqrt(max / batch), in
    [1, MAX_LR_FACTOR_CAP]. Only a batch change raises the LR factor, so this bound is all it needs.
    Rounded up (3 decimals), so the largest batch itself is never held below the rule."""
    wanted = math.sqrt(max(max_batch_size, 1) / max(batch_size, 1))
    return clamp(math.ceil(round(wanted * 1000, 6)) / 1000, 1.0, MAX_LR_FACTOR_CAP)


def target_vram_usage(tier_target: float | None) -> float | None:
    return None if tier_target is None else round(clamp(tier_target, 0.70, 0.95), 3)


def batch_adjust_every(total_iter: int, tier_adjust_scale: float) -> int:
    """Memory is re-checked at most every 1 % of the run, in [100, 2000] iterations."""
    return int(clamp(0.01 * total_iter * tier_adjust_scale, 100, 2000))


def clip_history(total_iter: int) -> int:
    """AutoClip's gradient-norm history: 1 % of the run, in [100, 1000] steps."""
    return int(clamp(0.01 * total_iter, 100, 1000))


def early_stop_patience(total_iter: int, validation_every: int, lr_plateau_patience: int = 0) -> int:
    """A quarter of the run without a better PSNR, never fewer than three validations, and never
    fewer than twice the LR's plateau patience: a stall at a high LR is the LR controller's to
    answer first (a plateau cut, then time for the lower LR to show). Measured: at 600 iterations a
    stop after 150 stalled iterations cost nano 0.021 dB against the same run's cool-down at its end."""
    return int(max(3 * validation_every, 2 * lr_plateau_patience, clamp(total_iter // 4, 0, total_iter)))


def early_stop_min_iter(total_iter: int) -> int:
    """Never stop in the first 30 % of a run: warm-up and the first LR cuts need it."""
    return int(0.3 * total_iter)


# A GAN trained from scratch: the share of the run trained on the other losses alone before the
# adversarial term joins (ESRGAN and Real-ESRGAN start their GAN from a network the pixel loss
# has already trained; a discriminator facing an untrained generator pulls it away from the HR).
GAN_DELAY_SHARE = 0.5


def gan_delay(total_iter: int, pretrain: str | None) -> int:
    """Iterations before a GAN loss starts: half the run from scratch, none from `train.pretrain`
    weights (they are the settled network the adversarial term needs)."""
    return 0 if pretrain else int(GAN_DELAY_SHARE * total_iter)


def analysis_batches(total_iter: int) -> int:
    """Batches read for dataset analysis: 50, fewer for short runs (never over 1 % of it)."""
    return int(clamp(total_iter // 100, 5, 50))
