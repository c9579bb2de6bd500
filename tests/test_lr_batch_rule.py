"""The LR follows the searched batch by the square-root rule, up to a stated ceiling: real train.py
runs on a simulated card (the GPU path's batch search on the CPU), read back from the optimizer
state they saved."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_train import make_dataset
from zerosr.automations.schedule import scheduled_lr
from zerosr.config.derive import MAX_LR_FACTOR_CAP, max_lr_factor, run_length_factor
from zerosr.engine.checkpoint import load_training_state, state_file_name

ROOT = Path(__file__).resolve().parents[1]
CARD = {"gpus": [{"name": "Test card", "vram_gb": 2.0, "compute_capability": [8, 6]}], "cpu_cores": 2,
        "ram_gb": 64.0}  # the budget tier: nano's tier batch is 32 x 0.25 = 8


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


def searched_run(data, tmp_path: Path, max_batch: int, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    hr, lr = data
    card = tmp_path / "card.json"
    card.write_text(json.dumps(CARD))
    run_dir = tmp_path / "run"
    args = ["data=paired", f"data.gt_path={hr}", f"data.lq_path={lr}", "data.n_val=2", "train.lq_size=8",
            "train.total_iter=10", "train.warmup_iter=1", "train.val_freq=10", "train.save_freq=5",
            "hardware_tier.num_workers=0", "automation.dataset_analysis.batches=1",
            "automation.early_stop.enabled=false", f"automation.batch.max_batch_size={max_batch}",
            "automation.batch.search_share=100",  # a 10-iteration run: let the search run anyway
            f"hydra.run.dir={run_dir}", *extra]
    out = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "ZEROSR_FAKE_HARDWARE": str(card), "ZEROSR_SIMULATE_GPU": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    return out, run_dir


def optimizer_lr(run_dir: Path) -> float:
    """The LR the optimizer ran at in iteration 5: after the warm-up, before the end-of-run cool-down."""
    state = load_training_state(run_dir / "training_state" / state_file_name(5))
    return state["optimizer"]["param_groups"][0]["lr"]


def decisions(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "automation.jsonl").read_text().splitlines()]


def searched_batch(run_dir: Path) -> tuple[int, int]:
    search = next(d for d in decisions(run_dir) if d["automation"] == "batch" and d["iter"] == 0)
    return tuple(search["change"]["batch_size"])


def starting_lr(run_dir: Path) -> dict:
    return next(d for d in decisions(run_dir) if "start_lr" in d["change"])


def preset_lr(run_dir: Path) -> float:
    """The LR zero-config starts from before the batch: the preset times the run-length factor."""
    resolved = yaml.safe_load((run_dir / "resolved_config.yaml").read_text())
    return float(resolved["train"]["lr"]) * float(resolved["automation"]["lr"]["run_length_factor"])


def test_a_batch_searched_16x_larger_runs_at_4x_the_lr(data, tmp_path):
    # 8 -> 128 wants x4 by the square-root rule (nano's old ceiling held it at x2).
    out, run_dir = searched_run(data, tmp_path, max_batch=128)
    old, new = searched_batch(run_dir)
    assert (old, new) == (8, 128), out.stdout[-2000:]
    assert optimizer_lr(run_dir) == pytest.approx(4.0 * preset_lr(run_dir), rel=1e-6)
    assert "held at the ceiling" not in out.stdout
    start = starting_lr(run_dir)  # the start-up line says the LR the optimizer then ran at, and why
    assert start["change"]["start_lr"][1] == pytest.approx(optimizer_lr(run_dir), rel=1e-6)
    assert "paragonsr2_nano's preset 0.004 (long-run benchmark)" in start["reason"]
    assert "x 2 for a 10-iteration run (automation.lr.run_length_factor)" in start["reason"]
    assert "x 4 by the square-root rule for the batch" in start["reason"]
    assert "[lr] iter 0: start_lr None -> 0.032 (starting LR 0.032" in out.stdout


def test_the_starting_lr_line_names_the_users_lr_and_scale(data, tmp_path):
    out, run_dir = searched_run(data, tmp_path, 8, "train.lr=3e-3", "train.lr_scale=0.5")
    start = starting_lr(run_dir)
    assert start["change"]["start_lr"][1] == pytest.approx(optimizer_lr(run_dir), rel=1e-6)
    assert optimizer_lr(run_dir) == pytest.approx(1.5e-3, rel=1e-6)
    assert "train.lr=0.003 set by you; x train.lr_scale 0.5;" in start["reason"]
    assert "preset" not in start["reason"] and "square-root" not in start["reason"]
    assert "for a run this short" not in out.stdout and "run_length_factor" not in start["reason"]


@pytest.mark.parametrize("overrides, expected", [
    ([], 2 * 0.004),  # 10 iterations: the short-run factor
    (["automation.lr.run_length_factor=1"], 0.004),  # told to keep the preset
    (["automation=off"], scheduled_lr(0.004, 5, 1, 10)),  # plain training: the preset's cosine schedule
])
def test_a_short_run_starts_at_twice_its_preset_unless_told_otherwise(data, tmp_path, overrides, expected):
    out, run_dir = searched_run(data, tmp_path, 8, *overrides)
    assert optimizer_lr(run_dir) == pytest.approx(expected, rel=1e-6)
    assert ("x 2 for a 10-iteration run" in out.stdout) == (not overrides)  # the start-up LR line
    assert ("lr 0.004 x 2 for a run this short" in out.stdout) == (not overrides)  # the choices screen


def test_a_short_fine_tune_keeps_its_preset_lr(data, tmp_path):
    (tmp_path / "scratch").mkdir()
    (tmp_path / "fine_tune").mkdir()
    _, first = searched_run(data, tmp_path / "scratch", 8)
    out, run_dir = searched_run(data, tmp_path / "fine_tune", 8, f"train.pretrain={first / 'models' / 'best.safetensors'}")
    assert optimizer_lr(run_dir) == pytest.approx(0.004, rel=1e-6)
    assert "run_length_factor" not in starting_lr(run_dir)["reason"]


def test_past_the_ceiling_the_lr_stops_at_it_and_the_screen_says_so(data, tmp_path):
    out, run_dir = searched_run(data, tmp_path, max_batch=256)
    old, new = searched_batch(run_dir)
    assert (old, new) == (8, 256), out.stdout[-2000:]
    assert math.sqrt(new / old) > MAX_LR_FACTOR_CAP  # the rule wants x5.66
    assert optimizer_lr(run_dir) == pytest.approx(MAX_LR_FACTOR_CAP * preset_lr(run_dir), rel=1e-6)
    decision = [line for line in out.stdout.splitlines() if line.startswith("[lr]") and "start_lr" not in line]
    assert len(decision) == 1 and "batch 8 -> 256: square-root rule" in decision[0]
    assert f"held at the ceiling {MAX_LR_FACTOR_CAP:g}" in decision[0]


def test_the_start_up_lr_measurement_moves_the_preset_and_the_batch_rule_still_applies(data, tmp_path):
    out, run_dir = searched_run(data, tmp_path, 16, "automation.lr.find=true")
    assert searched_batch(run_dir) == (8, 16), out.stdout[-2000:]
    found = next(d for d in decisions(run_dir) if "base_lr" in d["change"])
    assert found["change"]["base_lr"][0] == pytest.approx(preset_lr(run_dir))
    # Measured at the range test's own batch, relative to the preset's: the batch's factor still applies.
    assert optimizer_lr(run_dir) == pytest.approx(found["change"]["base_lr"][1] * math.sqrt(2), rel=1e-6)
    assert starting_lr(run_dir)["change"]["start_lr"][1] == pytest.approx(optimizer_lr(run_dir), rel=1e-6)


@pytest.mark.parametrize("batch, largest, factor", [(8, 128, 4.0), (8, 16, 1.415), (8, 8, 1.0), (32, 16, 1.0),
                                                     (1, 128, MAX_LR_FACTOR_CAP), (0, 0, 1.0)])
def test_the_ceiling_is_the_square_root_rule_up_to_the_largest_batch_bounded(batch, largest, factor):
    assert max_lr_factor(batch, largest) == factor


@pytest.mark.parametrize("total_iter, factor", [(1, 2.0), (600, 2.0), (900, 1.472), (1500, 1.0), (40_000, 1.0)])
def test_the_run_length_factor_falls_from_two_to_one_between_600_and_1500_iterations(total_iter, factor):
    assert run_length_factor(total_iter) == factor
    assert run_length_factor(total_iter, "pretrained.safetensors") == 1.0  # a fine-tune keeps the preset
