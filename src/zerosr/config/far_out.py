"""Start-up warnings for values the user set far outside what works.

One rule per value, in one table (`RULES`): the key it names, the keys whose being set by the user
arms it, and a check of the resolved config that returns the warning (the value, zerosr's own
value for this run, the risk) or None. A warning changes nothing: the run uses the user's value.
The automations may still rescue such a run within their bounds; the warning says what to expect.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from zerosr.config import derive
from zerosr.losses import is_adversarial

LR_ABOVE = 10.0  # an LR this many times the preset, or more
LR_BELOW = 30.0  # ... or this many times below it
MIN_LQ_SIZE = 16  # LR patch side, pixels
BETA2_MIN = 0.9
WEIGHT_DECAY_MAX = 0.1
GAN_WEIGHT_MAX = 0.1  # published SR GANs use 0.005 (ESRGAN) to 0.1 (Real-ESRGAN) beside a pixel loss
EMA_PRESET_MARGIN = 10.0  # the EMA's memory also this many times the preset's


@dataclass(frozen=True)
class Rule:
    key: str  # the key the warning names
    armed_by: tuple[str, ...]  # set by the user -> the rule is checked
    check: Callable[[DictConfig], str | None]  # the warning's text, or None


def _lr(cfg: DictConfig) -> float:
    return float(cfg.train.lr) * float(cfg.train.lr_scale)


def _check_lr(cfg: DictConfig) -> str | None:
    if cfg.train.lr is None or cfg.arch.preset.lr is None:
        return None  # arch=custom before its start-up measurement: nothing to compare with yet
    lr, preset = _lr(cfg), float(cfg.arch.preset.lr)
    if lr >= LR_ABOVE * preset * (1 - 1e-9):  # 1e-2 / 1e-3 is not exactly 10 in floating point
        return (f"train.lr={lr:g} is {lr / preset:.0f}x the preset {preset:g}: training may diverge (a loss "
                "that climbs or turns NaN); the LR automation and the clip rescue it only within their bounds")
    if lr < preset / LR_BELOW:
        return (f"train.lr={lr:g} is {preset / lr:.0f}x below the preset {preset:g}: the network will barely "
                f"move from its start in {cfg.train.total_iter} iterations, and the LR automation never raises "
                f"the LR above {cfg.automation.lr.max_lr_factor}x the given one")
    return None


def _check_warmup(cfg: DictConfig) -> str | None:
    if cfg.train.lr is None or cfg.arch.preset.lr is None:
        return None
    lr, preset = _lr(cfg), float(cfg.arch.preset.lr)
    if int(cfg.train.warmup_iter) == 0 and lr > preset:
        derived = derive.warmup_iter(int(cfg.arch.preset.warmup_iter), int(cfg.train.total_iter))
        return (f"train.warmup_iter=0 with lr {lr:g} above the preset {preset:g} (preset warm-up {derived} "
                "iterations): full-size steps from random weights may blow up in the first iterations")
    return None


def _check_batch(cfg: DictConfig) -> str | None:
    if int(cfg.train.batch_size) > 1:
        return None
    tier = cfg.hardware_tier
    derived = derive.batch_size(int(cfg.arch.preset.batch_size), float(tier.batch_scale), int(tier.max_batch_size))
    return (f"train.batch_size=1 (preset {derived} on this tier): every step follows a single patch, so the "
            "gradients are noisy and the LR that works is lower")


def _check_lq_size(cfg: DictConfig) -> str | None:
    size = int(cfg.train.lq_size)
    if size >= MIN_LQ_SIZE:
        return None
    preset = cfg.arch.preset
    derived = derive.lq_size(int(preset.lq_size), int(cfg.hardware_tier.max_lq_size), int(preset.lq_size_min),
                             int(preset.lq_size_max))
    return (f"train.lq_size={size} px (preset {derived} px on this tier, at least {MIN_LQ_SIZE}): most pixels "
            "of so small a patch sit at its border, so the network learns from little context")


def _check_ema(cfg: DictConfig) -> str | None:
    decay, preset, total = float(cfg.train.ema_decay), float(cfg.arch.preset.ema_decay), int(cfg.train.total_iter)
    memory, preset_memory = 1.0 / (1.0 - decay), 1.0 / (1.0 - preset)
    if memory <= total or memory <= EMA_PRESET_MARGIN * preset_memory * (1 + 1e-6):  # 0.9999 vs 0.999: 10x
        return None
    return (f"train.ema_decay={decay:g} averages over ~{memory:.0f} iterations, more than the run's {total} "
            f"(preset {preset:g}: ~{preset_memory:.0f}): the validated and saved EMA weights lag behind the "
            "trained ones")


def _check_betas(cfg: DictConfig) -> str | None:
    betas = cfg.train.optimizer.get("betas")
    if betas is None or len(betas) != 2:
        return None
    beta1, beta2 = (float(b) for b in betas)
    preset = [float(b) for b in cfg.arch.preset.betas]
    if beta2 < BETA2_MIN:
        risk = f"a beta2 below {BETA2_MIN} makes Adam's step size jump with every batch"
    elif beta1 > math.sqrt(beta2):
        risk = "a beta1 above sqrt(beta2) lets Adam's updates grow without bound"
    else:
        return None
    return f"train.optimizer.betas=[{beta1:g}, {beta2:g}] (preset {preset}): {risk}"


def _check_weight_decay(cfg: DictConfig) -> str | None:
    decay = cfg.train.optimizer.get("weight_decay")
    if decay is None or float(decay) <= WEIGHT_DECAY_MAX:
        return None
    return (f"train.optimizer.weight_decay={float(decay):g} (preset {float(cfg.arch.preset.weight_decay):g}, "
            f"at most {WEIGHT_DECAY_MAX:g}): AdamW pulls every weight towards 0 by lr x {float(decay):g} each "
            "step, and the network underfits")


def _check_gan(cfg: DictConfig) -> str | None:
    if cfg.train.pretrain:
        return None
    for index, entry in enumerate(cfg.train.losses):
        if not (OmegaConf.is_dict(entry) and is_adversarial(entry.get("_target_", ""))):
            continue
        weight = float(entry.get("weight", 1.0))
        if weight <= GAN_WEIGHT_MAX:
            return None
        delay = int(cfg.automation.loss_schedule.gan_delay)
        when = f"it joins after iteration {delay}" if delay else "it trains from the first iteration"
        return (f"train.losses.{index}.weight={weight:g} for a GAN trained from scratch (the preset has no GAN; "
                f"published recipes use 0.005 to {GAN_WEIGHT_MAX:g}): the adversarial term can outweigh the "
                f"pixel loss and pull the network away from the HR ({when})")
    return None


RULES: tuple[Rule, ...] = (
    Rule("train.lr", ("train.lr", "train.lr_scale"), _check_lr),
    Rule("train.warmup_iter", ("train.warmup_iter",), _check_warmup),
    Rule("train.batch_size", ("train.batch_size",), _check_batch),
    Rule("train.lq_size", ("train.lq_size",), _check_lq_size),
    Rule("train.ema_decay", ("train.ema_decay",), _check_ema),
    Rule("train.optimizer.betas", ("train.optimizer.betas",), _check_betas),
    Rule("train.optimizer.weight_decay", ("train.optimizer.weight_decay",), _check_weight_decay),
    Rule("train.losses", ("train.losses",), _check_gan),
)


def _set_by_user(key: str, user_set: set[str]) -> bool:
    """`key` itself, a node above it (`train.optimizer={...}`) or a key below it was set."""
    return any(k == key or key.startswith(k + ".") or k.startswith(key + ".") for k in user_set)


def far_out_warnings(cfg: DictConfig, user_set: Iterable[str]) -> list[str]:
    """One line per value the user set far outside what works (values zerosr derived are not judged)."""
    user_set = set(user_set)
    lines = []
    for rule in RULES:
        if any(_set_by_user(key, user_set) for key in rule.armed_by):
            line = rule.check(cfg)
            if line is not None:
                lines.append(line)
    return lines
