"""Typed schemas for every config group: Hydra rejects unknown keys and ill-typed values at compose time.

Values may be `${...}` interpolations (the derived ones are); their type is checked when resolved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from zerosr.degradation_settings import DegradationSettings


@dataclass
class LossSchedulePreset:
    momentum: float = MISSING  # smoothing of each loss's velocity
    adaptation_rate: float = MISSING  # largest move of a weight multiplier per step (log space)
    max_weight: float = MISSING  # multiplier ceiling
    adaptation_threshold: float = MISSING  # dead band around the balanced value
    baseline_iterations: int = MISSING  # steps before each loss's reference is taken


@dataclass
class ArchPreset:
    lr: float | None = MISSING  # base learning rate at the batch hint; null: measured at start-up (arch=custom)
    lr_source: str = MISSING  # long-run benchmark | short-run benchmark | range-test rule | by hand | measured at start-up
    divergence_lr: list[float] | None = None  # LR range test, seeds 0 and 1: where the loss diverged
    anchor_divergence_lr: list[float] | None = None  # the anchor's, measured in the same runs (null: its own)
    lr_anchor: bool = False  # the one variant the range-test rule scales every other LR from
    lr_family_anchor: bool = False  # its family's LRs scale from this variant instead (config.presets)
    family_lr_exponent: float = 1.0  # an anchor's: how its family's LRs follow the divergence LR (fitted)
    batch_size: int = MISSING  # batch-size hint, scaled by the tier
    total_iter: int = MISSING  # default run length
    warmup_iter: int = MISSING  # linear LR warm-up iterations
    ema_decay: float = MISSING  # decay of the weights' moving average (the validated model)
    betas: list[float] = MISSING  # AdamW betas
    weight_decay: float = MISSING  # AdamW weight decay
    lq_size: int = MISSING  # preferred LR patch side, in pixels
    lq_size_min: int = MISSING  # smallest patch side the batch search may pick
    lq_size_max: int = MISSING  # largest patch side the batch search may pick
    clip_percentile: float = MISSING  # AutoClip: clip at this percentile of recent gradient norms
    short_run_clip_percentile: float | None = None  # the same for a short run (config.derive); null: as above
    loss_schedule: LossSchedulePreset = field(default_factory=LossSchedulePreset)  # the loss-weight controller


@dataclass
class ArchConfig:
    name: str = MISSING  # the option: a conf/arch/<name>.yaml, or custom
    family: str = MISSING  # the architecture family (zerosr/archs/spec.py), or custom
    variant: str | None = None  # the variant inside its family, e.g. nano
    _target_: str | None = None  # arch=custom: import path of your nn.Module, e.g. my_pkg.MyNet
    params: dict[str, Any] = field(default_factory=dict)  # the network's hyper-parameters
    preset: ArchPreset = field(default_factory=ArchPreset)  # how to train it


@dataclass
class HardwareTierConfig:
    name: str = MISSING  # cpu | budget | mid_range | high_end | workstation
    target_vram_usage: float | None = None  # fraction of VRAM the batch search aims at (GPU tiers)
    safety_margin: float = 0.1  # fraction of VRAM kept free on top of the target
    ram_budget_fraction: float = 0.5  # cpu tier: share of available RAM a batch may use
    max_batch_size: int = 16  # ceiling for the batch size on this tier
    batch_scale: float = 1.0  # multiplies the arch preset's batch-size hint
    max_lq_size: int = 128  # ceiling for the LR patch side on this tier
    precision: str = "fp32"  # bf16 | fp16 | fp32
    compile: bool = False  # torch.compile the generator (CUDA only)
    channels_last: bool = False  # NHWC memory format (CUDA only)
    num_workers: int = 1  # data-loader worker processes
    pin_memory: bool = False  # page-locked batches for faster host-to-GPU copies
    prefetch_factor: int = 2  # batches each worker loads ahead
    patience_scale: float = 1.0  # slower, steadier tiers wait longer before an LR change
    adjust_scale: float = 1.0  # how often memory is re-checked, relative to run length


@dataclass
class LRAutomation:
    enabled: bool = True  # false: the fixed warm-up + cosine schedule
    find: bool = False  # LR range test at start
    run_length_factor: float = MISSING  # the preset LR's factor for a run this short (1 for long runs)
    plateau_patience: int = MISSING  # iterations without improvement before the LR drops
    reduce_factor: float = 0.5  # what a plateau or blow-up multiplies the LR factor by
    improvement_threshold: float = 1e-3  # least relative gain of a window's mean loss that counts (and 2 std errors)
    blowup_factor: float = 2.0  # smoothed loss this many times its best = a blow-up
    blowup_hold: int = MISSING  # iterations left alone after a blow-up cut
    cooldown_fraction: float = 0.2  # the run's last share, over which the LR falls to zero (0: none)
    min_lr_factor: float = MISSING  # the LR never goes below this times the base
    max_lr_factor: float = MISSING  # ... nor above this times the base


@dataclass
class BatchAutomation:
    enabled: bool = True  # false: the batch stays as configured (out-of-memory still halves it)
    target_vram_usage: float | None = None  # fraction of VRAM the search and the watch aim at
    safety_margin: float = MISSING  # fraction of VRAM kept free on top of the target
    ram_budget_fraction: float = MISSING  # cpu: share of available RAM a batch may use
    adjust_every: int = MISSING  # iterations between memory checks
    min_batch_size: int = 1  # never below this
    max_batch_size: int = MISSING  # never above this
    search_share: float = 0.05  # the most the start-up search may cost, as a share of the run's steps


@dataclass
class ClipAutomation:
    enabled: bool = True  # false: no gradient clipping
    percentile: float = MISSING  # clip at this percentile of recent gradient norms
    history: int = MISSING  # how many recent norms count
    min_clip: float = 1e-3  # the threshold never goes below this
    max_clip: float = 100.0  # ... nor above this (also its value until the history fills)


@dataclass
class EarlyStopAutomation:
    enabled: bool = True  # false: always run total_iter
    patience: int = MISSING  # iterations without a better validation PSNR
    min_delta: float = 0.01  # the least gain of the selection metric that counts (its units: dB for PSNR)
    min_iter: int = MISSING  # never stop before this iteration
    past_bicubic: bool = True  # never stop while the best is no better than bicubic upscaling


@dataclass
class LossScheduleAutomation:
    enabled: bool = True  # false: the loss weights stay as configured
    auto_calibrate: bool = True  # adjust the preset for run length, data, GAN and phase
    momentum: float = MISSING  # smoothing of each loss's velocity (logged trend)
    adaptation_rate: float = MISSING  # largest move of a weight multiplier per step (log space)
    max_weight: float = MISSING  # multiplier ceiling
    min_weight: float = 1e-6  # multiplier floor
    adaptation_threshold: float = MISSING  # dead band: smaller gaps to the balanced value do nothing
    baseline_iterations: int = MISSING  # steps before each loss's reference is taken
    gan_delay: int = MISSING  # iterations before a GAN loss joins the objective (0: from the start)


@dataclass
class DatasetAnalysisAutomation:
    enabled: bool = True  # false: the loss schedule is not calibrated from the data
    batches: int = MISSING  # training batches analysed at start-up


@dataclass
class AutomationConfig:
    name: str = MISSING  # auto | off
    enabled: bool = True  # master switch: false turns every automation off
    lr: LRAutomation = field(default_factory=LRAutomation)
    batch: BatchAutomation = field(default_factory=BatchAutomation)
    clip: ClipAutomation = field(default_factory=ClipAutomation)
    early_stop: EarlyStopAutomation = field(default_factory=EarlyStopAutomation)
    loss_schedule: LossScheduleAutomation = field(default_factory=LossScheduleAutomation)
    dataset_analysis: DatasetAnalysisAutomation = field(default_factory=DatasetAnalysisAutomation)


@dataclass
class DataConfig:
    name: str = MISSING  # demo | paired | realistic
    gt_path: str | None = None  # folder of HR images
    lq_path: str | None = None  # omitted: LR made from HR by bicubic downscaling
    val_gt_path: str | None = None  # folder of validation HR images (else pairs are held out)
    val_lq_path: str | None = None  # their LR images (omitted: bicubic downscaling)
    n_val: int = 4  # pairs held out for validation when no val folders are given
    run_iter: int | None = None  # a dataset may ask for a shorter run than the arch preset
    cache: bool = True  # keep decoded images in RAM
    target_path: str | None = None  # data=realistic: images like those to upscale; calibrates degradation
    # data=realistic: every range and probability of the degradation pipeline (Real-ESRGAN x4 defaults)
    degradation: DegradationSettings = field(default_factory=DegradationSettings)


@dataclass
class TrainConfig:
    total_iter: int = MISSING  # iterations (optimizer steps) in the run
    lr: float | None = MISSING  # base learning rate (null until arch=custom measured its preset)
    lr_scale: float = 1.0  # multiplies train.lr wherever it is used (what an Optuna sweep tunes)
    batch_size: int = MISSING  # samples per step and rank
    lq_size: int = MISSING  # LR patch side, in pixels
    warmup_iter: int = MISSING  # linear LR warm-up iterations
    val_freq: int = MISSING  # iterations between validations
    save_freq: int = MISSING  # iterations between checkpoints
    log_freq: int = MISSING  # iterations between metrics lines
    seed: int = 0  # seeds the weights, the data order and the augmentations
    deterministic: bool = False  # bit-exact runs on CPU (deterministic kernels on CUDA)
    resume: str | None = None  # auto | PATH | null
    pretrain: str | None = None  # weights to start from (safetensors or traiNNer .pth)
    ema_decay: float = MISSING  # decay of the weights' moving average (the validated model)
    grad_accum: int = 1  # batches accumulated into one step
    max_minutes: float | None = None  # wall-clock budget: stop (validate, save) when it is spent
    keep_checkpoints: int = 3  # newest checkpoints kept of each kind
    val_tile: int = 256  # LR pixels; larger validation images are run in tiles
    optimizer: dict[str, Any] = field(default_factory=dict)  # {_target_: ..., lr: ..., ...}
    losses: list[Any] = field(default_factory=list)  # [{_target_: ..., weight: W, ...}, ...]
    val_metrics: list[str] = MISSING  # computed at validation (psnr, ssim always): psnr ssim lpips lpips_vgg dists
    select_metric: str = MISSING  # picks the best model, drives early stop, LR plateaus and sweeps
    weights_dir: str | None = None  # folder holding pretrained files (offline machines); see zerosr.pretrained


@dataclass
class DebugConfig:
    inject_oom_at: list[Any] = field(default_factory=list)  # ITER or POINT:ITER: a real out-of-memory error there
    inject_nan_at: list[int] = field(default_factory=list)  # iterations whose loss is made NaN
    kill_at: list[str] = field(default_factory=list)  # POINT:ITER, see zerosr.engine.killpoints


@dataclass
class ZeroSRConfig:
    name: str = MISSING  # run name: outputs/<name>/<time>
    scale: int = 2  # upscaling factor: 2, 3, 4 or 8
    dry_run: bool = False  # compose, validate, record and explain the run, then stop before training
    arch: ArchConfig = MISSING  # the network and its training preset
    hardware_tier: HardwareTierConfig = MISSING  # what the hardware decides
    automation: AutomationConfig = MISSING  # the adaptive controllers
    data: DataConfig = MISSING  # the images
    train: TrainConfig = field(default_factory=TrainConfig)  # the run
    debug: DebugConfig = field(default_factory=DebugConfig)  # fault injection for tests and demos
    set_by_user: list[str] | None = None  # the keys the user set, recorded in the configs zerosr writes
    logger: Any = "tensorboard"  # tensorboard | wandb | [tensorboard, wandb]: W&B beside TensorBoard
