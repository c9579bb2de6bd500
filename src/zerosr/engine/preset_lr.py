"""arch=custom, or a built-in option with other `arch.params`: the preset LR, measured at
start-up by the range-test rule and cached.

The built-in presets come from `bench/lr_presets.py` and the rule in `zerosr.config.presets`:
zerosr's LR range test at batch 4 on 24 px LR patches over the run's 100-point grid 1e-7..1,
seeds 0 and 1, gives the LR at which a network's loss diverges; the preset is the rule applied to
it and to the anchor variant's. A network with no preset of its own gets the same measurement on
the run's own training data, with its anchor (its family's, nano for a custom network) measured
beside it on the same batches (where a loss diverges depends on the data), and the same rule,
with its preset's batch hint.

The result is cached per family, network class, parameters, scale and tier in
`lr_presets.json` of zerosr's cache folder (`$ZEROSR_CACHE_DIR`, default `~/.cache/zerosr`): the measurement is paid once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import geometric_mean

from omegaconf import DictConfig, OmegaConf, open_dict

from zerosr.archs.spec import CUSTOM, anchor, network_params, variant
from zerosr.atomic import atomic_write_bytes
from zerosr.automations.base import Decision
from zerosr.automations.lr import exponential_lrs, lr_range_test
from zerosr.config.presets import lr_from_range_test, rule_exponent
from zerosr.engine.data import BatchStream, build_data, cache_dir
from zerosr.engine.learner import Learner

PROBE_BATCH = 4
PROBE_LQ_SIZE = 24
PROBE_LR = 1e-3  # a placeholder for the optimizer: the range test sets the LR of every step
GRID = {"min_lr": 1e-7, "max_lr": 1.0, "steps": 100}  # lr_range_test's own grid, as the run's finder uses it
SEEDS = (0, 1)


@dataclass(frozen=True)
class MeasuredLR:
    lr: float
    divergence: list[float]  # the network's, per seed
    anchor_divergence: list[float]  # the anchor's, per seed, on the same batches
    seconds: float  # what measuring it cost in this run: 0 when cached
    cached: bool
    anchor_option: str
    lq_size: int = PROBE_LQ_SIZE  # the probes' LR patch: PROBE_LQ_SIZE, or the run's own where that is smaller

    @property
    def decision(self) -> Decision:
        how = "cached" if self.cached else f"measured in {self.seconds:.0f} s"
        return Decision(0, "lr", {"preset_lr": (None, self.lr)}, (
            f"preset LR {how} by the range-test rule: divergence LR {format_lrs(self.divergence)} (seeds "
            f"{', '.join(map(str, SEEDS))}) against {self.anchor_option}'s {format_lrs(self.anchor_divergence)} on the "
            f"same batches ({PROBE_BATCH} x {self.lq_size}px)"))

    def reference_divergence(self, anchor_reference: list[float]) -> list[float]:
        """The network's divergence LRs carried over to the data the built-in presets were measured
        on: scaled by the anchor's recorded divergence LR over the anchor's on the measured batches.
        This is what `automation.lr.find` compares a run's data with, as for a built-in preset."""
        shift = geometric_mean(anchor_reference) / geometric_mean(self.anchor_divergence)
        return [float(f"{value * shift:.4g}") for value in self.divergence]


def cache_file() -> Path:
    return cache_dir() / "lr_presets.json"


def cache_key(cfg: DictConfig) -> str:
    """What the measurement depends on: the network (its run options aside), scale, tier and the
    probes' patch."""
    arch = cfg.arch
    params = OmegaConf.to_container(arch.params, resolve=True)
    if arch.name != CUSTOM:
        params = network_params(arch.name, params)
    return json.dumps({"family": arch.get("family"), "target": arch.get("_target_"), "params": params,
                       "scale": int(cfg.scale), "tier": str(cfg.hardware_tier.name),
                       "lq_size": probe_lq_size(cfg)}, sort_keys=True)


def probe_lq_size(cfg: DictConfig) -> int:
    """The probes' LR patch: PROBE_LQ_SIZE, or the run's own where that is smaller (it fits the
    run's images, which PROBE_LQ_SIZE may not)."""
    return min(PROBE_LQ_SIZE, int(cfg.train.lq_size))


def settle_preset_lr(cfg: DictConfig) -> MeasuredLR | None:
    """Fill in `arch.preset.lr` (and `train.lr` where it follows the preset) of a resolved config
    whose preset LR is still to be measured (arch=custom, or a built-in option with other
    `arch.params`: `zerosr.config.presets.leave_lr_to_measurement`), and its `divergence_lr` where
    that is missing too; returns the measurement, None if none was due (a preset LR or a train.lr
    given by the user: nothing to measure)."""
    if cfg.arch.preset.lr is not None or cfg.train.lr is not None:
        return None
    measured = measure(cfg)
    with open_dict(cfg):
        cfg.arch.preset.lr = measured.lr
        if not cfg.arch.preset.get("divergence_lr"):
            recorded = list(variant(measured.anchor_option).preset["divergence_lr"])
            cfg.arch.preset.divergence_lr = measured.reference_divergence(recorded)
        if cfg.train.lr is None:
            cfg.train.lr = measured.lr
        if "lr" in cfg.train.optimizer and cfg.train.optimizer.lr is None:
            cfg.train.optimizer.lr = measured.lr
    return measured


def measure(cfg: DictConfig) -> MeasuredLR:
    """The network's preset LR from its cache entry, or from range tests now (then cached), by the
    rule against its family's anchor (nano for arch=custom) with that family's exponent."""
    key, path, base = cache_key(cfg), cache_file(), anchor(cfg.arch.get("family"))
    cache = _read(path)
    if key in cache:
        entry = cache[key]
        return MeasuredLR(entry["lr"], entry["divergence"], entry["anchor_divergence"], 0.0, True, base.option,
                          entry.get("lq_size", PROBE_LQ_SIZE))
    started = time.perf_counter()
    probe = probe_config(cfg)
    anchor_probe = probe_config(cfg, base)
    data = build_data(probe).train
    ours = [divergence_lr(probe, data, seed) for seed in SEEDS]
    theirs = [divergence_lr(anchor_probe, data, seed) for seed in SEEDS]
    lr = lr_from_range_test(ours, theirs, int(cfg.arch.preset.batch_size), int(base.preset["batch_size"]),
                            float(base.preset["lr"]), rule_exponent(base.preset, base.family == cfg.arch.get("family")))
    seconds = time.perf_counter() - started
    cache = _read(path)  # another run may have written meanwhile
    lq_size = int(probe.train.lq_size)
    cache[key] = {"lr": lr, "divergence": ours, "anchor_divergence": theirs, "lq_size": lq_size}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(cache, indent=1, sort_keys=True) + "\n").encode())
    return MeasuredLR(lr, ours, theirs, seconds, False, base.option, lq_size)


def divergence_lr(probe: DictConfig, dataset, seed: int) -> float:
    """The LR at which the network's range-test loss diverges (the grid's top if it never does)."""
    from zerosr.engine.accelerator import current
    from zerosr.engine.loop import seed_everything

    accelerator = current()
    seed_everything(seed, bool(probe.train.deterministic), accelerator.is_gpu)
    learner = Learner(probe, accelerator)
    stream = BatchStream(dataset, PROBE_BATCH, seed + 2)
    try:
        def step_at(value: float) -> float:
            batch = stream.next_batch()
            return learner.train_on(batch["lq"], batch["gt"], value)

        result = lr_range_test(step_at, lambda: None, **GRID)
    finally:
        stream.close()
    grid = exponential_lrs(GRID["min_lr"], GRID["max_lr"], GRID["steps"])
    return float(f"{grid[min(len(result.lrs), len(grid) - 1)]:.4g}")


def probe_config(cfg: DictConfig, network=None) -> DictConfig:
    """The run's config as a range test needs it: 4 x 24 px batches (the run's patch if smaller),
    no pretrain, a placeholder LR (the test sets its own at every step); with `network` (a
    `zerosr.archs.spec.Variant`), that built-in variant instead."""
    probe = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(probe):
        probe.train.update(batch_size=PROBE_BATCH, lq_size=probe_lq_size(cfg), pretrain=None, lr=PROBE_LR, lr_scale=1.0)
        probe.train.optimizer.lr = PROBE_LR
        probe.debug.inject_oom_at = []
        if network is not None:
            probe.arch = {"name": network.option, "family": network.family, "variant": network.variant,
                          "_target_": None, "params": dict(network.params), "preset": dict(network.preset)}
    return probe


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def format_lrs(values: list[float]) -> str:
    return " / ".join(f"{v:.2g}" for v in values)

