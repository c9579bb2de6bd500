"""The automations' contract: decision records, building from the real config, the suite's
routing (batch change -> LR), and every automation's state surviving a weights-only checkpoint."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch

from zerosr.automations import Automations, Decision, build_automations
from zerosr.automations.schedule import scheduled_lr
from zerosr.config.compose import compose_config
from zerosr.engine.checkpoint import to_weights_only

GIB = 2**30
WEIGHTS = {"charbonnier": 1.0, "perceptual": 0.1}


def test_decision_record_is_one_json_line():
    decision = Decision(12, "lr", {"lr_factor": (1.0, np.float32(0.5)), "batch_size": (torch.tensor(16), 8)},
                        "plateau")
    record = decision.to_record()
    assert record == {"iter": 12, "automation": "lr", "change": {"lr_factor": [1.0, 0.5], "batch_size": [16, 8]},
                      "reason": "plateau"}
    assert json.loads(json.dumps(record)) == record


def compose_automation(fake_hardware, *overrides):
    fake_hardware(gpus=[])
    cfg = compose_config(["train.total_iter=2000", *overrides])
    return cfg, cfg.automation


def build(cfg, automation, total_memory=None, **kwargs) -> Automations:
    return build_automations(automation, base_lr=cfg.train.lr, total_iter=cfg.train.total_iter,
                             warmup_iter=cfg.train.warmup_iter, batch_size=cfg.train.batch_size,
                             base_weights=kwargs.pop("base_weights", WEIGHTS), total_memory=total_memory, **kwargs)


def test_builds_from_the_composed_config(fake_hardware):
    cfg, automation = compose_automation(fake_hardware, "arch=paragonsr2_s")
    suite = build(cfg, automation)
    assert suite.lr.enabled and suite.clip.enabled and suite.early_stop.enabled
    assert suite.lr.patience == automation.lr.plateau_patience
    assert suite.clip.history == automation.clip.history
    assert suite.loss_schedule.preset["momentum"] == 0.93  # the s preset, not nano's
    assert not suite.batch.watching_memory  # cpu tier: no VRAM target
    assert suite.analyse_batches == automation.dataset_analysis.batches
    assert suite.lr.lr_at(cfg.train.warmup_iter) == pytest.approx(cfg.train.lr)


@pytest.mark.parametrize("arch, total_iter, percentile", [
    ("paragonsr2_nano", 600, 90.0), ("paragonsr2_nano", 900, 93.54), ("paragonsr2_nano", 1500, 98.0),
    ("paragonsr2_nano", 40000, 98.0), ("span", 600, 93.43),  # no short-run percentile: the preset's
])
def test_a_short_run_clips_at_its_short_run_percentile(fake_hardware, arch, total_iter, percentile):
    cfg, automation = compose_automation(fake_hardware, f"arch={arch}", f"train.total_iter={total_iter}")
    clip = build(cfg, automation).clip
    assert clip.percentile == percentile
    for norm in range(1, 101):  # norms 1..100: the threshold is their percentile
        clip.observe(float(norm))
    assert clip.threshold == pytest.approx(1 + 0.99 * percentile)


def test_master_switch_turns_everything_off(fake_hardware):
    cfg, automation = compose_automation(fake_hardware, "automation=off")
    suite = build(cfg, automation)
    assert not any(a.enabled for a in suite.members.values()) and suite.analyse_batches == 0
    assert suite.lr.lr_at(700) == scheduled_lr(cfg.train.lr, 700, cfg.train.warmup_iter, 2000)
    assert suite.clip.threshold == math.inf
    for it in range(1, 1500):
        assert suite.on_step_end(it, {"loss": 1.0, "grad_norm": 5.0, "loss/charbonnier": 1.0}) == []
    assert suite.loss_schedule.weights == WEIGHTS


def test_one_automation_back_on_alone(fake_hardware):
    cfg, automation = compose_automation(fake_hardware, "automation=off", "automation.enabled=true",
                                         "automation.clip.enabled=true")
    suite = build(cfg, automation)
    assert [name for name, a in suite.members.items() if a.enabled] == ["clip"]


BATCH_CFG = {"target_vram_usage": 0.8, "safety_margin": 0.1, "ram_budget_fraction": 0.5, "adjust_every": 100,
             "min_batch_size": 1, "max_batch_size": 64}


def gpu_suite(fake_hardware) -> tuple:
    cfg, automation = compose_automation(fake_hardware)
    automation.batch.target_vram_usage = 0.8
    automation.batch.safety_margin = 0.1
    automation.batch.adjust_every = 100
    automation.batch.max_batch_size = 64
    return cfg, build(cfg, automation, total_memory=10 * GIB)


def test_oom_halves_the_batch_and_the_lr_follows_the_square_root_rule(fake_hardware):
    cfg, suite = gpu_suite(fake_hardware)
    old_batch = suite.batch.batch_size
    decisions = suite.on_oom(50)
    assert suite.batch.batch_size == old_batch // 2
    assert suite.lr.factor == pytest.approx(math.sqrt((old_batch // 2) / old_batch))
    assert [d.automation for d in decisions] == ["batch", "lr"]


def test_batch_growth_from_memory_raises_the_lr(fake_hardware):
    cfg, suite = gpu_suite(fake_hardware)
    old_batch = suite.batch.batch_size
    decisions = []
    for it in range(1, 101):
        decisions += suite.on_step_end(it, {"loss": 1.0 / it, "grad_norm": 1.0, "peak_mem_bytes": GIB // 2})
    assert suite.batch.batch_size == min(2 * old_batch, 64)
    assert suite.lr.factor == pytest.approx(min(math.sqrt(suite.batch.batch_size / old_batch), suite.lr.max_factor))
    assert {"batch", "lr"} <= {d.automation for d in decisions}


def test_nonfinite_steps_route_to_the_lr_controller(fake_hardware):
    cfg, suite = gpu_suite(fake_hardware)
    for it in (10, 11, 12):
        suite.on_nonfinite(it)
    assert suite.lr.take_rollback() and suite.lr.factor < 1.0


def run_a_while(suite: Automations, steps: int) -> None:
    rng = np.random.default_rng(0)
    for it in range(1, steps + 1):
        suite.on_step_end(it, {"loss": 1.0 + 0.1 * rng.standard_normal(), "grad_norm": float(rng.gamma(2.0)),
                               "loss/charbonnier": 0.1 * math.exp(-it / 300) + 0.03, "loss/perceptual": 2.0,
                               "peak_mem_bytes": 3 * GIB})
        if it % 200 == 0:
            suite.on_validation(it, {"val/psnr": 30.0, "val/ssim": 0.9})
    suite.on_oom(steps)
    suite.on_nonfinite(steps)


def test_every_state_survives_a_weights_only_checkpoint(fake_hardware):
    cfg, suite = gpu_suite(fake_hardware)
    suite.loss_schedule.calibrate({"texture_variance": 0.5, "edge_density": 0.3, "colour_variation": 0.4})
    run_a_while(suite, 1200)
    buffer = io.BytesIO()
    torch.save(to_weights_only(suite.state_dict()), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    _, fresh = gpu_suite(fake_hardware)
    fresh.load_state_dict(state)
    assert fresh.state_dict() == suite.state_dict()
    assert fresh.lr.lr_at(1300) == suite.lr.lr_at(1300)
    assert fresh.clip.threshold == suite.clip.threshold
    assert fresh.batch.batch_size == suite.batch.batch_size
    assert fresh.loss_schedule.weights == suite.loss_schedule.weights
    # ...and both continue identically.
    stats = {"loss": 0.9, "grad_norm": 1.0, "loss/charbonnier": 0.03, "loss/perceptual": 2.0}
    for it in range(1201, 1301):
        assert ([d.to_record() for d in fresh.on_step_end(it, stats)]
                == [d.to_record() for d in suite.on_step_end(it, stats)])
    assert fresh.state_dict() == suite.state_dict()


def test_missing_state_keys_are_refused(fake_hardware):
    cfg, suite = gpu_suite(fake_hardware)
    state = suite.state_dict()
    del state["lr"]["factor"]
    with pytest.raises(KeyError):
        suite.load_state_dict(state)
