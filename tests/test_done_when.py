"""The GPU path end to end: real `train.py` processes on simulated cards of both precision kinds,
scaled down so CI runs them in seconds (a 4 GB-class fp16 card on the budget tier, a 24 GB-class
bf16 card on the high_end tier), and bench/gpu.py's JSON on the same kind of card."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_gpu_oom import GAN
from test_simulated_gpu import records, sim_overrides
from test_train import make_dataset

ROOT = Path(__file__).resolve().parents[1]
# (card, tier, its target): capability < 8 runs fp16 with a GradScaler, >= 8 bf16.
CARDS = {
    "fp16_4gb_class": ({"name": "GTX 1650 (scaled down)", "vram_gb": 0.0035, "compute_capability": [7, 5]},
                       "budget", 0.75),
    "bf16_24gb_class": ({"name": "RTX 3090 (scaled down)", "vram_gb": 0.0035, "compute_capability": [8, 6]},
                        "high_end", 0.88),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def large_data(tmp_path_factory):
    # 96px LR validation images, so an out-of-memory error in validation can halve nano's tile.
    return make_dataset(tmp_path_factory.mktemp("large"), size=192)


def train_py(tmp_path: Path, card: dict, overrides: list[str]) -> tuple[subprocess.CompletedProcess, Path]:
    hardware = tmp_path / "card.json"
    hardware.write_text(json.dumps({"gpus": [card], "cpu_cores": 2}))
    run_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=900,
                         env={**os.environ, "ZEROSR_SIMULATE_GPU": "1", "ZEROSR_FAKE_HARDWARE": str(hardware)})
    assert out.returncode == 0, out.stderr[-3000:]
    return out, run_dir


def searched(run_dir: Path) -> int:
    search = [d for d in records(run_dir, "automation.jsonl") if d["automation"] == "batch"][0]
    assert search["iter"] == 0 and search["reason"].startswith("start-up search in"), search
    return search["change"]["batch_size"][1]


@pytest.mark.parametrize("kind", list(CARDS))
def test_a_watched_run_keeps_the_searched_batch_within_target(kind, data, tmp_path):
    card, tier, target = CARDS[kind]
    out, run_dir = train_py(tmp_path, card, sim_overrides(data, **{
        "hardware_tier": tier, "data.n_val": 1, "train.lq_size": 8, "train.total_iter": 300, "train.val_freq": 150,
        "train.save_freq": 300, "train.log_freq": 1, "automation.batch.adjust_every": 10,
        "automation.batch.max_batch_size": 64, "automation.early_stop.enabled": False}))
    assert f"{card['name']} (simulated)" in out.stdout
    batch = searched(run_dir)
    steps = [r for r in records(run_dir, "metrics.jsonl") if "peak_mem_bytes" in r]
    total = card["vram_gb"] * 2**30
    assert len(steps) == 300 and 2 < batch < 64
    assert all(0 < r["peak_mem_bytes"] <= target * total for r in steps)  # nothing over target ...
    decisions = [d for d in records(run_dir, "automation.jsonl") if d["automation"] == "batch"]
    assert not [d for d in decisions if "shrink" in d["reason"] or "out of memory" in d["reason"]]
    assert steps[-1]["batch_size"] >= batch / 2  # ... so the batch did not ratchet down
    assert len([r for r in records(run_dir, "metrics.jsonl") if "val/psnr" in r]) == 2


@pytest.mark.parametrize("kind", list(CARDS))
def test_a_searched_gan_run_survives_an_oom_at_every_point(kind, large_data, tmp_path):
    card, tier, _ = CARDS[kind]
    card = {**card, "vram_gb": 0.06}  # room for the discriminator and a searched batch of 16 or more
    out, run_dir = train_py(tmp_path, card, sim_overrides(large_data, **{
        "hardware_tier": tier, "data.n_val": 1, "train.lq_size": 8, "train.total_iter": 120, "train.val_freq": 60,
        "train.save_freq": 120, "train.losses": GAN, "automation.batch.max_batch_size": 16,
        "debug.inject_oom_at": "[forward:2,backward:3,discriminator:4,optimizer:5,validation:60]",
        "automation.early_stop.enabled": False, "automation.loss_schedule.gan_delay": 0}))  # the GAN from step 1
    batch = searched(run_dir)
    assert batch == 16
    halvings = [(d["iter"], d["change"]["batch_size"]) for d in records(run_dir, "automation.jsonl")
                if d["automation"] == "batch" and "out of memory" in d["reason"]]
    assert halvings == [(2, [16, 8]), (3, [8, 4]), (4, [4, 2]), (5, [2, 1])]
    steps = {r["iter"]: r for r in records(run_dir, "metrics.jsonl") if "loss" in r}
    assert [steps[i]["batch_size"] for i in range(1, 7)] == [16, 16, 8, 4, 2, 1]  # each retry trained its samples
    assert "validation: out of memory in 96px tiles, now 72px" in out.stdout
    assert "4 out-of-memory retries" in out.stdout and len(steps) == 120


def test_bench_gpu_on_a_simulated_card_searches_within_target_and_near_the_largest_fit(tmp_path):
    hardware = tmp_path / "card.json"
    # 30 MiB and 16px patches: the demo's validation fits, and memory (not max_batch_size) bounds the batch.
    hardware.write_text(json.dumps({"gpus": [{**CARDS["bf16_24gb_class"][0], "vram_gb": 0.03}], "cpu_cores": 2}))
    out = subprocess.run([sys.executable, "bench/gpu.py", "--simulate", str(hardware), "--tier", "high_end",
                          "--archs", "nano", "--lq", "16", "--steps", "3", "--agreement-steps", "3",
                          "--num-workers", "0"], cwd=ROOT, capture_output=True, text=True,
                         timeout=900, env={**os.environ, "ZEROSR_CACHE_DIR": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)["results"]["nano"]
    search, step = result["search"], result["step"]
    assert step["within_target"] and step["peak_of_card"] <= 0.88
    assert search["batch"] >= 0.8 * search["largest_fitting"], search
    assert result["oom"]["survived"] and result["oom"]["samples_trained"] == step["batch"]
    assert result["agreement"]["precision"] == "bf16" and result["agreement"]["max_rel_diff"] < 0.1
