"""Composition: tier chosen from (fake) hardware, overrides win, schemas and bounds reject bad values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from conftest import RTX_3090
from zerosr.config.compose import compose_config
from zerosr.config.validate import validate
from zerosr.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["nano", "micro", "tiny", "xs", "s", "m", "l", "xl"]


def resolved(overrides=()):
    return OmegaConf.to_container(compose_config(overrides), resolve=True)


@pytest.mark.parametrize("gpus, tier, precision", [
    ([], "cpu", "fp32"),
    ([{"name": "GTX 1650", "vram_gb": 4.0, "compute_capability": [7, 5]}], "budget", "fp16"),
    ([{"name": "RTX 3070", "vram_gb": 8.0, "compute_capability": [8, 6]}], "mid_range", "bf16"),
    ([{"name": "RTX 2080 Ti", "vram_gb": 11.0, "compute_capability": [7, 5]}], "high_end", "fp16"),
    ([RTX_3090], "high_end", "bf16"),
    ([{"name": "A100", "vram_gb": 80.0, "compute_capability": [8, 0]}], "workstation", "bf16"),
])
def test_every_tier_from_fake_hardware(fake_hardware, gpus, tier, precision):
    fake_hardware(gpus=gpus)
    cfg = resolved()
    assert cfg["hardware_tier"]["name"] == tier
    assert cfg["hardware_tier"]["precision"] == precision
    assert 0.70 <= (cfg["automation"]["batch"]["target_vram_usage"] or 0.70) <= 0.95
    assert 500 <= cfg["automation"]["lr"]["plateau_patience"] <= 3000
    assert cfg["train"]["batch_size"] <= cfg["hardware_tier"]["max_batch_size"]


def test_command_line_tier_wins_over_detection(fake_hardware):
    fake_hardware(gpus=[])
    cfg = resolved(["hardware_tier=high_end"])
    assert cfg["hardware_tier"]["name"] == "high_end"
    fake_hardware(gpus=[RTX_3090])
    assert resolved(["hardware_tier=budget"])["hardware_tier"]["name"] == "budget"


def test_derived_values_follow_overrides(fake_hardware):
    fake_hardware(gpus=[RTX_3090])
    short = resolved(["data=paired", "data.gt_path=/x", "train.total_iter=10000"])
    long = resolved(["data=paired", "data.gt_path=/x", "train.total_iter=200000"])
    assert short["train"]["val_freq"] < long["train"]["val_freq"]
    assert short["automation"]["lr"]["plateau_patience"] < long["automation"]["lr"]["plateau_patience"]
    # One automation key overridden alone; the others stay derived.
    one = resolved(["automation.lr.plateau_patience=800"])
    assert one["automation"]["lr"]["plateau_patience"] == 800
    assert one["automation"]["clip"]["history"] == resolved()["automation"]["clip"]["history"]


def test_arch_presets_scale_with_model_size(fake_hardware):
    fake_hardware(gpus=[RTX_3090])
    cfgs = [resolved([f"arch=paragonsr2_{v}", "data=paired", "data.gt_path=/x"]) for v in VARIANTS]
    lrs = [c["arch"]["preset"]["lr"] for c in cfgs]
    iters = [c["train"]["total_iter"] for c in cfgs]
    assert lrs[0] == 4e-3 and lrs[-1] == 6.8e-4 and lrs == sorted(lrs, reverse=True)
    assert iters[0] == 40_000 and iters[-1] == 150_000 and iters == sorted(iters)
    # Loss-schedule presets matched on the exact variant (a loose pattern would send all to nano).
    momenta = [c["automation"]["loss_schedule"]["momentum"] for c in cfgs]
    assert momenta == [0.85, 0.87, 0.89, 0.91, 0.93, 0.95, 0.96, 0.97]


def test_automation_off_can_switch_one_back_on():
    auto = resolved(["automation=off", "automation.clip.enabled=true"])["automation"]
    assert auto["clip"]["enabled"] and not auto["lr"]["enabled"]


def test_automation_off_disables_everything():
    cfg = resolved(["automation=off"])
    auto = cfg["automation"]
    assert auto["name"] == "off"
    assert not any(auto[k]["enabled"] for k in ("lr", "batch", "clip", "early_stop", "loss_schedule",
                                                 "dataset_analysis"))


@pytest.mark.parametrize("override", ["train.batch_size=big", "train.no_such_key=1", "scale=two",
                                      "hardware_tier.precision_mode=fp16"])
def test_schema_rejects_at_composition(override):
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_config([override])


@pytest.mark.parametrize("override, words", [
    ("train.lr=-1", "train.lr"), ("scale=5", "scale=5"), ("train.batch_size=0", "train.batch_size"),
    ("train.total_iter=0", "train.total_iter"), ("train.ema_decay=1.5", "ema_decay"),
    ("automation.clip.history=0", "clip.history"), ("automation.clip.percentile=150", "clip.percentile"),
    ("automation.early_stop.patience=-5", "early_stop.patience"), ("train.optimizer.lr=0.5", "train.optimizer.lr"),
])
def test_bounds_are_checked_before_any_work(override, words):
    cfg = compose_config([override])
    with pytest.raises(UserError, match=words.replace(".", r"\.")):
        validate(cfg)


def run_train(*args, env=None):
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_cli_bad_value_is_one_line_exit_2(tmp_path):
    out = run_train("train.lr=-1", f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: train.lr=-1.0 must be positive")
    assert "Traceback" not in out.stderr


def test_cli_cfg_job_shows_cpu_tier_and_info_defaults_shows_choice():
    out = run_train("--cfg", "job", "--resolve", env={"ZEROSR_FAKE_HARDWARE": ""})
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["hardware_tier"]["name"] == "cpu"
    info = run_train("--info", "defaults")
    assert "hardware_tier/cpu" in info.stdout and "hardware_tier/auto" in info.stdout


def test_cli_fake_gpu_selects_high_end_bf16(tmp_path):
    fake = tmp_path / "hw.json"
    fake.write_text('{"gpus": [{"name": "NVIDIA GeForce RTX 3090", "vram_gb": 24.0, '
                    '"compute_capability": [8, 6]}], "cpu_cores": 16, "ram_gb": 64.0}')
    out = run_train("--cfg", "job", "--resolve", env={"ZEROSR_FAKE_HARDWARE": str(fake)})
    tier = yaml.safe_load(out.stdout)["hardware_tier"]
    assert (tier["name"], tier["precision"]) == ("high_end", "bf16")


def test_multirun_four_jobs_with_their_own_values(tmp_path):
    sweep = tmp_path / "sweep"
    out = run_train("-m", "hardware_tier=budget,workstation", "arch=paragonsr2_nano,paragonsr2_xl",
                    "dry_run=true", f"hydra.sweep.dir={sweep}")
    assert out.returncode == 0, out.stderr
    saved = [yaml.safe_load(p.read_text()) for p in sorted(sweep.glob("*/resolved_config.yaml"))]
    assert len(saved) == 4
    combos = {(c["hardware_tier"]["name"], c["arch"]["name"]) for c in saved}
    assert combos == {(t, a) for t in ("budget", "workstation") for a in ("paragonsr2_nano", "paragonsr2_xl")}
    for c in saved:  # derived values follow each job's own tier and arch
        scale = {"budget": 0.25, "workstation": 2.0}[c["hardware_tier"]["name"]]
        assert c["hardware_tier"]["batch_scale"] == scale
        assert c["automation"]["loss_schedule"]["momentum"] == (0.85 if c["arch"]["name"].endswith("nano") else 0.97)
    batches = {(c["hardware_tier"]["name"], c["arch"]["name"]): c["train"]["batch_size"] for c in saved}
    # xl's hint of 4 at the budget tier's quarter would be 1: one patch per step; the floor is 2.
    assert batches[("budget", "paragonsr2_xl")] == 2
    assert batches[("workstation", "paragonsr2_xl")] == 8


def test_run_saves_resolved_config_beside_hydra_dir(tmp_path):
    run_dir = tmp_path / "run"
    out = run_train("dry_run=true", f"hydra.run.dir={run_dir}")
    assert out.returncode == 0, out.stderr
    assert (run_dir / ".hydra" / "config.yaml").exists()
    saved = yaml.safe_load((run_dir / "resolved_config.yaml").read_text())
    assert "${" not in yaml.safe_dump({k: v for k, v in saved.items() if k != "hydra"})
    assert saved["train"]["batch_size"] >= 1


def test_composition_path_does_not_import_torch():
    code = ("import sys; from zerosr.config.store import register; register(); "
            "from zerosr.config.compose import compose_config; compose_config([]); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"
