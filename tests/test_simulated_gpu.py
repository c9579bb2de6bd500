"""The GPU path on a simulated card (ZEROSR_SIMULATE_GPU=1 with ZEROSR_FAKE_HARDWARE): real runs
take the GPU branches on the CPU, against a card whose memory is the run's live tensor storage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from test_train import make_dataset, tiny_overrides
from zerosr.config.compose import compose_config
from zerosr.engine import accelerator
from zerosr.engine.accelerator import SIMULATE_ENV, SimulatedAccelerator
from zerosr.engine.checkpoint import load_training_state
from zerosr.engine.learner import Learner
from zerosr.engine.loop import Trainer
from zerosr.engine.run import train

MIB = 2**20
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture
def card(fake_hardware, monkeypatch):
    """card(vram_gb, capability) -> the simulated accelerator now in force for this process."""

    def make(vram_gb: float, capability=(7, 5)):
        fake_hardware(gpus=[{"name": "Test card", "vram_gb": vram_gb, "compute_capability": list(capability)}],
                      cpu_cores=2)
        monkeypatch.setenv(SIMULATE_ENV, "1")
        accelerator.current.cache_clear()
        return accelerator.current()

    yield make
    accelerator.current.cache_clear()


def sim_overrides(data, **extra) -> list[str]:
    values = {"automation": "auto", "automation.dataset_analysis.batches": 2, "train.deterministic": False,
              "automation.lr.find": False, **extra}
    overrides = tiny_overrides(data, **values)
    # The tests' batch 2 would be a user's choice, and a user's batch is never searched.
    return overrides if "train.batch_size" in extra else [o for o in overrides if not o.startswith("train.batch_size=")]


def records(run_dir: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


def test_the_simulated_card_counts_live_tensors_and_runs_out_of_memory():
    sim = SimulatedAccelerator("Test card", 10 * MIB, (8, 6))
    with sim.active():
        weights = torch.zeros(MIB // 4, requires_grad=True)  # 1 MiB of float32
        assert sim.allocated == MIB
        loss = (weights * 2).sin().sum()  # `weights * 2` is saved for sin's backward: 1 MiB more
        assert sim.allocated == 2 * MIB + 4
        loss.backward()
        del loss
        assert sim.allocated == 2 * MIB  # the saved activation is gone, the gradient is here
        assert sim.peak >= 3 * MIB
        sim.reset_peak()
        assert sim.peak == sim.allocated
        weights.grad = None
        assert sim.allocated == MIB
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(10 * MIB, dtype=torch.uint8)
        assert sim.allocated == MIB  # the failed allocation is not held


def test_an_fp16_card_runs_fp16_autocast_with_a_scaler_and_channels_last(card, data):
    sim = card(0.5, capability=(7, 5))
    cfg = compose_config(sim_overrides(data))
    learner = Learner(cfg, sim)
    assert cfg.hardware_tier.name == "budget"
    assert learner.precision.name == "fp16" and learner.precision.scaler.is_enabled()
    assert learner.channels_last
    with learner.precision.autocast():
        out = learner.forward(torch.rand(1, 3, 8, 8).contiguous(memory_format=torch.channels_last))
    assert out.dtype == torch.float16


def test_a_bf16_card_runs_bf16_without_a_scaler(card, data):
    sim = card(24.0, capability=(8, 6))
    learner = Learner(compose_config(sim_overrides(data)), sim)
    assert learner.precision.name == "bf16" and not learner.precision.scaler.is_enabled()
    with learner.precision.autocast():
        assert learner.forward(torch.rand(1, 3, 8, 8)).dtype == torch.bfloat16


def poison_gradients_at(monkeypatch, calls: set[int]) -> list[float]:
    """An infinite gradient (the loss stays finite) at the given steps; returns the scaler's
    scale as each step began."""
    clip, count, scales = Learner.clip, [0], []

    def poisoned(self, step, threshold):
        count[0] += 1
        scales.append(self.precision.scaler.get_scale())
        if count[0] in calls:
            grad = next(self.module.parameters()).grad
            grad[(0,) * grad.dim()] = float("inf")
        clip(self, step, threshold)

    monkeypatch.setattr(Learner, "clip", poisoned)
    return scales


# The GradScaler starts at 2**16: 17 overflows take it below 1, where the guard starts counting.
@pytest.mark.parametrize("poisoned, lowered, skipped, rolled_back",
                         [({3}, 1, 0, False), (set(range(1, 21)), 17, 3, True)])
def test_fp16_non_finite_gradients_are_skipped_counted_and_rolled_back(card, data, tmp_path, monkeypatch,
                                                                       poisoned, lowered, skipped, rolled_back):
    card(0.5, capability=(7, 5))
    scales = poison_gradients_at(monkeypatch, poisoned)
    run_dir = tmp_path / "run"
    iterations = 24
    train(compose_config(sim_overrides(data, **{"train.batch_size": 2, "automation.batch.enabled": False,
                                                "train.lq_size": 8, "train.total_iter": iterations,
                                                "automation.early_stop.enabled": False})), run_dir)
    log = [r for r in records(run_dir, "automation.jsonl") if r["automation"] == "guard"]
    assert sum("GradScaler lowered its scale" in r["reason"] for r in log) == lowered  # its normal calibration
    assert sum("step skipped" in r["reason"] for r in log) == skipped  # broken gradients, counted
    assert any("rolled back" in r["reason"] for r in log) == rolled_back
    assert len(scales) == iterations
    if not rolled_back:  # the scaler backed off at the poisoned step only (update ran on the skip)
        assert [scales[i] < scales[i - 1] for i in range(1, 6)] == [i in poisoned for i in range(1, 6)]
    state = load_training_state(sorted((run_dir / "training_state").glob("state_*.pt"))[-1])
    assert all(torch.isfinite(p).all() for p in state["model"].values())


def run_train_py(tmp_path, overrides, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *overrides, f"hydra.run.dir={tmp_path / 'cli'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **env})


def test_a_card_too_small_for_batch_1_is_one_error_line_naming_it(data, tmp_path):
    hardware = tmp_path / "tiny.json"
    hardware.write_text(json.dumps({"gpus": [{"name": "Thimble", "vram_gb": 0.0005, "compute_capability": [8, 6]}]}))
    for iterations, says in ((120, "not even batch 1"), (6, "out of memory even at batch 1")):  # searched, or not
        out = run_train_py(tmp_path, sim_overrides(data, **{"train.total_iter": iterations}),
                           ZEROSR_FAKE_HARDWARE=str(hardware), ZEROSR_SIMULATE_GPU="1")
        assert out.returncode == 2, out.stderr[-2000:]
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Thimble (simulated)" in errors[0] and says in errors[0], errors
        assert "Traceback" not in out.stderr


def test_simulating_without_a_card_is_one_error_line(data, tmp_path):
    out = run_train_py(tmp_path, sim_overrides(data), ZEROSR_FAKE_HARDWARE="", ZEROSR_SIMULATE_GPU="1")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: ZEROSR_SIMULATE_GPU=1 needs ZEROSR_FAKE_HARDWARE")


def test_a_deterministic_run_on_a_gpu_fixes_the_cublas_workspace(card, data, tmp_path, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    card(24.0, capability=(8, 6))
    overrides = sim_overrides(data, **{"train.batch_size": 2, "train.deterministic": True})
    Trainer(compose_config(overrides), tmp_path / "run").close()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.are_deterministic_algorithms_enabled()


def cpu_tier_steps_on_the_card(run_dir: Path, out: subprocess.CompletedProcess, total_bytes: int) -> list[dict]:
    """What a cpu-tier config did on the simulated card: one warning, then the search and every step
    within the budget tier's 75 % target. Returns the steps."""
    assert out.returncode == 0, out.stderr[-3000:]
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "budget tier's target 75%" in warnings[0], out.stderr[-2000:]
    search = [d for d in records(run_dir, "automation.jsonl") if d["automation"] == "batch"][0]
    assert "Test card (simulated): largest fitting 75%" in search["reason"]
    steps = [r for r in records(run_dir, "metrics.jsonl") if "peak_mem_bytes" in r]
    assert steps and all(0 < r["peak_mem_bytes"] <= 0.75 * total_bytes for r in steps)
    return steps


def test_the_cpu_tier_on_a_gpu_takes_the_detected_tiers_memory_target(data, tmp_path):
    hardware = tmp_path / "card.json"
    hardware.write_text(json.dumps({"gpus": [{"name": "Test card", "vram_gb": 0.01, "compute_capability": [7, 5]}]}))
    overrides = sim_overrides(data, **{"hardware_tier": "cpu", "train.lq_size": 8, "train.total_iter": 120})
    out = run_train_py(tmp_path, overrides, ZEROSR_FAKE_HARDWARE=str(hardware), ZEROSR_SIMULATE_GPU="1")
    cpu_tier_steps_on_the_card(tmp_path / "cli", out, int(0.01 * 2**30))


def test_a_replayed_cpu_config_trains_on_a_gpu_with_its_target(data, tmp_path):
    # Resolved on a machine without a GPU (the cpu tier, no VRAM target), replayed on the card.
    no_gpu, card_file = tmp_path / "none.json", tmp_path / "card.json"
    no_gpu.write_text(json.dumps({"gpus": [], "cpu_cores": 2}))
    card_file.write_text(json.dumps({"gpus": [{"name": "Test card", "vram_gb": 0.01, "compute_capability": [7, 5]}]}))
    made = run_train_py(tmp_path / "laptop", [*sim_overrides(data, **{"train.lq_size": 8, "train.total_iter": 120}),
                                              "dry_run=true"], ZEROSR_FAKE_HARDWARE=str(no_gpu))
    assert made.returncode == 0, made.stderr[-2000:]
    resolved = tmp_path / "laptop" / "cli" / "resolved_config.yaml"
    assert "target_vram_usage: null" in resolved.read_text()
    replay = ["--config-dir", str(resolved.parent), "--config-name", "resolved_config", "dry_run=false"]
    out = subprocess.run([sys.executable, "train.py", *replay, f"hydra.run.dir={tmp_path / 'cli'}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "ZEROSR_FAKE_HARDWARE": str(card_file), "ZEROSR_SIMULATE_GPU": "1"})
    cpu_tier_steps_on_the_card(tmp_path / "cli", out, int(0.01 * 2**30))


def test_a_storage_freed_inside_the_cards_bookkeeping_does_not_hang_it():
    """A garbage collection that runs while `_track` holds the card's lock frees storages on the
    same thread, whose callbacks take the lock again: that must not deadlock the run."""
    card = SimulatedAccelerator("Test card", 2**20, (8, 6))

    def free_inside_the_lock():
        with card._lock:
            card._freed(12345, 0)  # what such a callback does

    worker = threading.Thread(target=free_inside_the_lock, daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "the card's lock deadlocked on a nested free"
