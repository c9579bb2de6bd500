"""automation.lr.find: the start-up LR measurement moves the preset by where this data's loss
diverges against where the preset's did. Real train.py runs on two test-made datasets whose
range-test curves differ, read back from the optimizer state they saved."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from statistics import geometric_mean

import numpy as np
import pytest
import yaml

from test_train import bicubic_downscale, make_dataset, write_image
from zerosr import archs
from zerosr.automations.lr import exponential_lrs
from zerosr.engine.checkpoint import load_training_state, state_file_name
from zerosr.engine.preset_lr import GRID

ROOT = Path(__file__).resolve().parents[1]


def make_stripes(folder: Path, count: int = 6, size: int = 48, seed: int = 0) -> tuple[Path, Path]:
    """Binary checker patterns too fine to upscale well: the loss stays high, so it takes a larger
    LR to blow it up to 4x its best (smooth fields diverge near the preset's reference)."""
    rng = np.random.default_rng(seed)
    hr_dir, lr_dir = folder / "hr", folder / "lr"
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(count):
        f = rng.uniform(10, 20) * 2 * math.pi
        hr = ((np.sin(xx * f) * np.sin(yy * f) > 0)[..., None] * np.ones(3)).astype(np.float32)
        write_image(hr_dir / f"img{i}.png", hr)
        write_image(lr_dir / f"img{i}.png", bicubic_downscale(hr, 2))
    return hr_dir, lr_dir


def measured_run(data: tuple[Path, Path], run_dir: Path, *extra: str,
                 env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """A 6-iteration run with the measurement on; the LR its optimizer ran at in iteration 3 (after
    the 1-step warm-up, before the cool-down)."""
    hr, lr = data
    args = ["data=paired", f"data.gt_path={hr}", f"data.lq_path={lr}", "data.n_val=2", "train.total_iter=6",
            "train.warmup_iter=1", "train.lq_size=16", "train.val_freq=6", "train.save_freq=3",
            "hardware_tier.num_workers=0", "automation.dataset_analysis.batches=1", "automation.lr.find=true",
            f"hydra.run.dir={run_dir}", *extra]
    out = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "ZEROSR_FAKE_HARDWARE": "", **(env or {})})
    assert out.returncode == 0, out.stderr[-3000:]
    state = load_training_state(run_dir / "training_state" / state_file_name(3))
    return out, state["optimizer"]["param_groups"][0]["lr"]


def lr_decisions(run_dir: Path) -> list[dict]:
    lines = (run_dir / "automation.jsonl").read_text().splitlines()
    return [d for d in map(json.loads, lines) if d["automation"] == "lr"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lr_measurement")
    return {name: (root / name, *measured_run(make(root / f"{name}_data"), root / name))
            for name, make in (("smooth", make_dataset), ("stripes", make_stripes))}


def test_data_whose_loss_diverges_later_trains_at_a_higher_lr(two_runs):
    smooth, stripes = two_runs["smooth"][2], two_runs["stripes"][2]
    assert stripes > 1.5 * smooth, (smooth, stripes)


@pytest.mark.parametrize("name", ["smooth", "stripes"])
def test_the_optimizer_runs_at_the_preset_times_the_measured_ratio(two_runs, name):
    run_dir, out, optimizer_lr = two_runs[name]
    resolved = yaml.safe_load((run_dir / "resolved_config.yaml").read_text())
    preset = resolved["arch"]["preset"]
    found = next(d for d in lr_decisions(run_dir) if "base_lr" in d["change"])
    # The divergence LRs the decision names are grid points where the range test stopped.
    grid = exponential_lrs(GRID["min_lr"], GRID["max_lr"], GRID["steps"])
    measured = [float(v) for v in found["reason"].split("divergence LR ")[1].split(" on this data")[0].split(" / ")]
    assert all(min(abs(v - g) / g for g in grid) < 0.03 for v in measured)
    ratio = geometric_mean(measured) / geometric_mean(preset["divergence_lr"])
    start_lr = preset["lr"] * resolved["automation"]["lr"]["run_length_factor"]  # a 6-iteration run: x2
    assert optimizer_lr == pytest.approx(start_lr * ratio, rel=0.05)  # the decision rounds to 2 digits
    assert found["change"]["base_lr"][1] == pytest.approx(optimizer_lr, rel=1e-6)
    start = next(d for d in lr_decisions(run_dir) if "start_lr" in d["change"])
    assert start["change"]["start_lr"][1] == pytest.approx(optimizer_lr, rel=1e-6)
    assert "cost" in start["reason"] and "s of measurement" in start["reason"]
    assert f"[lr] iter 0: base_lr {start_lr:g} ->" in out.stdout


def test_a_users_lr_wins_over_the_measurement(tmp_path):
    data = make_stripes(tmp_path / "data")
    out, optimizer_lr = measured_run(data, tmp_path / "run", "train.lr=1e-3")
    assert optimizer_lr == pytest.approx(1e-3, rel=1e-6)
    assert "LR range test skipped: train.lr is set by you" in out.stdout
    assert not any("base_lr" in d["change"] for d in lr_decisions(tmp_path / "run"))


def test_a_custom_network_is_measured_against_its_start_up_preset(tmp_path):
    """arch=custom has no recorded divergence LR: its start-up preset measurement supplies one,
    carried over to the presets' data by the anchor's two measurements, and the finder uses it."""
    cache = tmp_path / "cache"
    run_dir = tmp_path / "run"
    out, optimizer_lr = measured_run(
        make_stripes(tmp_path / "data"), run_dir, "arch=custom", "arch._target_=test_custom_arch.TinyNet",
        "+arch.params={width: 8}",
        env={"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
             "ZEROSR_CACHE_DIR": str(cache)})
    (entry,) = json.loads((cache / "lr_presets.json").read_text()).values()
    shift = geometric_mean(archs.spec.anchor().preset["divergence_lr"]) / geometric_mean(entry["anchor_divergence"])
    assert "LR range test skipped" not in out.stdout
    found = next(d for d in lr_decisions(run_dir) if "base_lr" in d["change"])
    ours, reference = found["reason"].split("divergence LR ")[1].split(" in the preset")[0].split(" on this data against ")
    reference = [float(v) for v in reference.split(" / ")]
    assert reference == pytest.approx([d * shift for d in entry["divergence"]], rel=0.05)  # shown to 2 digits
    ratio = geometric_mean(float(v) for v in ours.split(" / ")) / geometric_mean(reference)
    preset = next(d for d in lr_decisions(run_dir) if "preset_lr" in d["change"])["change"]["preset_lr"][1]
    run_length = yaml.safe_load((run_dir / "resolved_config.yaml").read_text())["automation"]["lr"]["run_length_factor"]
    assert optimizer_lr == pytest.approx(preset * run_length * min(4, max(0.25, ratio)), rel=0.1)
    start = next(d for d in lr_decisions(run_dir) if "start_lr" in d["change"])
    assert "measured at start-up by the range-test rule" in start["reason"]
