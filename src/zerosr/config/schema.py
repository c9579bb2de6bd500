"""Typed schemas for every config group: Hydra rejects unknown keys and ill-typed values at compose time.

Values may be `${...}` interpolations (the derived ones are); their type is checked when resolved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING


@dataclass
class ArchPreset:
    lr: float = MISSING
    batch_size: int = MISSING
    total_iter: int = MISSING
    warmup_iter: int = MISSING
    ema_decay: float = MISSING
    betas: List[float] = MISSING
    weight_decay: float = MISSING
    lq_size: int = MISSING
    lq_size_min: int = MISSING
    lq_size_max: int = MISSING


@dataclass
class ArchConfig:
    name: str = MISSING
    params: Dict[str, Any] = field(default_factory=dict)
    preset: ArchPreset = field(default_factory=ArchPreset)


@dataclass
class HardwareTierConfig:
    name: str = MISSING
    target_vram_usage: Optional[float] = None  # fraction of VRAM the batch search aims at (GPU tiers)
    safety_margin: float = 0.1  # fraction of VRAM kept free on top of the target
    ram_budget_fraction: float = 0.5  # cpu tier: share of available RAM a batch may use
    max_batch_size: int = 16
    batch_scale: float = 1.0  # multiplies the arch preset's batch-size hint
    max_lq_size: int = 128
    precision: str = "fp32"  # bf16 | fp16 | fp32
    compile: bool = False
    channels_last: bool = False
    num_workers: int = 1
    pin_memory: bool = False
    prefetch_factor: int = 2
    patience_scale: float = 1.0  # slower, steadier tiers wait longer before an LR change
    adjust_scale: float = 1.0  # how often memory is re-checked, relative to run length


@dataclass
class LRAutomation:
    enabled: bool = True
    find: bool = False  # LR range test at start
    plateau_patience: int = MISSING
    reduce_factor: float = 0.5
    improvement_threshold: float = 1e-3  # relative improvement of the smoothed loss that counts
    blowup_factor: float = 2.0  # smoothed loss this many times its best = a blow-up
    cooldown: int = MISSING
    min_lr_factor: float = MISSING
    max_lr_factor: float = MISSING


@dataclass
class BatchAutomation:
    enabled: bool = True
    target_vram_usage: Optional[float] = None
    safety_margin: float = MISSING
    ram_budget_fraction: float = MISSING
    adjust_every: int = MISSING
    min_batch_size: int = 1
    max_batch_size: int = MISSING


@dataclass
class ClipAutomation:
    enabled: bool = True
    percentile: float = MISSING
    history: int = MISSING
    min_clip: float = 1e-3
    max_clip: float = 100.0


@dataclass
class EarlyStopAutomation:
    enabled: bool = True
    patience: int = MISSING  # iterations without a better validation PSNR
    min_delta: float = 0.01  # dB
    min_iter: int = MISSING


@dataclass
class LossScheduleAutomation:
    enabled: bool = True
    auto_calibrate: bool = True
    momentum: float = MISSING
    adaptation_rate: float = MISSING
    max_weight: float = MISSING
    min_weight: float = 1e-6
    adaptation_threshold: float = MISSING
    baseline_iterations: int = MISSING


@dataclass
class DatasetAnalysisAutomation:
    enabled: bool = True
    batches: int = MISSING


@dataclass
class AutomationConfig:
    name: str = MISSING
    enabled: bool = True
    lr: LRAutomation = field(default_factory=LRAutomation)
    batch: BatchAutomation = field(default_factory=BatchAutomation)
    clip: ClipAutomation = field(default_factory=ClipAutomation)
    early_stop: EarlyStopAutomation = field(default_factory=EarlyStopAutomation)
    loss_schedule: LossScheduleAutomation = field(default_factory=LossScheduleAutomation)
    dataset_analysis: DatasetAnalysisAutomation = field(default_factory=DatasetAnalysisAutomation)


@dataclass
class DataConfig:
    name: str = MISSING
    gt_path: Optional[str] = None
    lq_path: Optional[str] = None  # omitted: LR made from HR by bicubic downscaling
    val_gt_path: Optional[str] = None
    val_lq_path: Optional[str] = None
    n_val: int = 4  # pairs held out for validation when no val folders are given
    run_iter: Optional[int] = None  # a dataset may ask for a shorter run than the arch preset
    cache: bool = True  # keep decoded images in RAM


@dataclass
class TrainConfig:
    total_iter: int = MISSING
    lr: float = MISSING
    lr_scale: float = 1.0  # multiplies train.lr wherever it is used (what an Optuna sweep tunes)
    batch_size: int = MISSING
    lq_size: int = MISSING
    warmup_iter: int = MISSING
    val_freq: int = MISSING
    save_freq: int = MISSING
    log_freq: int = MISSING
    seed: int = 0
    deterministic: bool = False
    resume: Optional[str] = None  # auto | PATH | null
    pretrain: Optional[str] = None
    ema_decay: float = MISSING
    grad_accum: int = 1
    max_minutes: Optional[float] = None  # wall-clock budget: stop (validate, save) when it is spent
    keep_checkpoints: int = 3
    val_tile: int = 256  # LR pixels; larger validation images are run in tiles
    optimizer: Dict[str, Any] = field(default_factory=dict)
    losses: List[Any] = field(default_factory=list)


@dataclass
class DebugConfig:
    inject_oom_at: List[int] = field(default_factory=list)
    inject_nan_at: List[int] = field(default_factory=list)
    kill_at: List[str] = field(default_factory=list)  # POINT:ITER, see zerosr.engine.killpoints


@dataclass
class ZeroSRConfig:
    name: str = MISSING
    scale: int = 2
    dry_run: bool = False  # compose, validate, record and explain the run, then stop before training
    arch: ArchConfig = MISSING
    hardware_tier: HardwareTierConfig = MISSING
    automation: AutomationConfig = MISSING
    data: DataConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
