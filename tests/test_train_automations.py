"""Each automation acting on a real (tiny) run, not only its maths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_train import make_dataset, run, tiny_overrides


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


def auto_overrides(data, **extra):
    values = {"automation": "auto", "automation.batch.enabled": False, "automation.dataset_analysis.batches": 2}
    values.update(extra)
    return tiny_overrides(data, **values)


def records(run_dir: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


def test_plateau_lowers_the_lr_in_the_optimizer(data, tmp_path):
    # No relative improvement can reach 100 %: every window is a plateau once patience is up.
    run(auto_overrides(data, **{"train.total_iter": 16, "automation.lr.plateau_patience": 4,
                                "automation.lr.improvement_threshold": 1.0, "train.warmup_iter": 0}),
        tmp_path / "run")
    cuts = [r for r in records(tmp_path / "run", "automation.jsonl")
            if r["automation"] == "lr" and "lr_factor" in r["change"]]
    assert cuts and all(new < old for old, new in (c["change"]["lr_factor"] for c in cuts))
    lrs = [r["lr"] for r in records(tmp_path / "run", "metrics.jsonl") if "lr" in r]
    assert lrs[-1] < lrs[0]  # the optimizer really ran at the lower LR


def test_injected_oom_halves_batch_and_keeps_the_samples(data, tmp_path):
    run(auto_overrides(data, **{"automation.batch.enabled": True, "train.batch_size": 4,
                                "debug.inject_oom_at": "[2]", "automation.batch.max_batch_size": 4}),
        tmp_path / "run")
    steps = {r["iter"]: r for r in records(tmp_path / "run", "metrics.jsonl") if "loss" in r}
    decisions = [r for r in records(tmp_path / "run", "automation.jsonl") if r["automation"] == "batch"]
    oom = [d for d in decisions if d["iter"] == 2]
    assert oom and oom[0]["change"]["batch_size"][1] == oom[0]["change"]["batch_size"][0] // 2
    before = oom[0]["change"]["batch_size"][0]
    assert steps[2]["batch_size"] == before  # the OOM step still trained on all its samples
    assert steps[3]["batch_size"] == before // 2 and max(steps) == 6  # smaller from then on, run finished


def test_injected_nans_are_skipped_then_rolled_back(data, tmp_path):
    run(auto_overrides(data, **{"debug.inject_nan_at": "[2,3,4]"}), tmp_path / "run")
    log = records(tmp_path / "run", "automation.jsonl")
    assert sum("step skipped" in r["reason"] for r in log if r["automation"] == "guard") == 3
    assert any("rolled back" in r["reason"] for r in log)
    model = load_file(tmp_path / "run" / "models" / "net_g_00000006.safetensors")
    assert all(torch.isfinite(t).all() for t in model.values())


def test_clip_threshold_follows_the_gradient_history(data, tmp_path):
    run(auto_overrides(data, **{"train.total_iter": 14, "automation.clip.history": 4,
                                "automation.early_stop.enabled": False}), tmp_path / "run")
    steps = [r for r in records(tmp_path / "run", "metrics.jsonl") if "clip_threshold" in r]
    assert steps[0]["clip_threshold"] == pytest.approx(100.0)  # max_clip until history fills
    assert steps[-1]["clip_threshold"] < 1.0  # then a percentile of the real norms


def test_no_improvement_stops_early_with_best_kept(data, tmp_path):
    run(auto_overrides(data, **{"train.total_iter": 30, "train.val_freq": 2, "automation.early_stop.patience": 4,
                                "automation.early_stop.min_iter": 6, "automation.early_stop.min_delta": 100.0}),
        tmp_path / "run")
    vals = [r["iter"] for r in records(tmp_path / "run", "metrics.jsonl") if "val/psnr" in r]
    # First validation (2) is the best; nothing beats it by 100 dB, patience 4 -> stop at 6 (min_iter).
    assert vals[-1] == 6
    assert (tmp_path / "run" / "models" / "best.safetensors").exists()


def test_resume_restores_every_automation(data, tmp_path):
    over = auto_overrides(data, **{"automation.clip.history": 2})
    run(over, tmp_path / "straight")
    run(over, tmp_path / "first")
    run(over + [f"train.resume={tmp_path / 'first' / 'training_state' / 'state_00000003.pt'}"], tmp_path / "resumed")
    a = load_file(tmp_path / "straight" / "models" / "net_g_00000006.safetensors")
    b = load_file(tmp_path / "resumed" / "models" / "net_g_00000006.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    from zerosr.engine.checkpoint import load_training_state

    sa = load_training_state(tmp_path / "straight" / "training_state" / "state_00000006.pt")["automations"]
    sb = load_training_state(tmp_path / "resumed" / "training_state" / "state_00000006.pt")["automations"]
    assert json.dumps(sa, sort_keys=True, default=str) == json.dumps(sb, sort_keys=True, default=str)
