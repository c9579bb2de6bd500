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
                                "automation.early_stop.min_iter": 6, "automation.early_stop.min_delta": 100.0,
                                "automation.early_stop.past_bicubic": False}),  # 2 steps in, below bicubic
        tmp_path / "run")
    vals = [r["iter"] for r in records(tmp_path / "run", "metrics.jsonl") if "val/psnr" in r]
    # First validation (2) is the best; nothing beats it by 100 dB, patience 4 -> stop at 6 (min_iter),
    # then the cool-down: 20 % of the 6 iterations done, rounded to 1.
    assert vals[-1] == 7
    assert (tmp_path / "run" / "models" / "best.safetensors").exists()


def test_a_run_still_below_bicubic_is_not_stopped_early(data, tmp_path):
    run(auto_overrides(data, **{"train.total_iter": 30, "train.val_freq": 2, "automation.early_stop.patience": 4,
                                "automation.early_stop.min_iter": 6, "automation.early_stop.min_delta": 100.0}),
        tmp_path / "run")
    vals = [r for r in records(tmp_path / "run", "metrics.jsonl") if "val/psnr" in r]
    assert all(r["val/psnr"] < r["val/bicubic_psnr"] for r in vals)  # it never started to learn
    assert vals[-1]["iter"] == 30  # so the same settings as above ran every iteration
    assert not [d for d in records(tmp_path / "run", "automation.jsonl") if d["automation"] == "early_stop"]


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


def test_resume_mid_run_restores_decisions_of_every_kind(data, tmp_path):
    """Two scheduled losses, forced LR cuts, OOM-halved batches and AutoClip, all acting before the
    iteration-6 checkpoint and deciding again after it: the resumed run must end exactly where the
    straight one does, with the same decisions."""
    losses = ("[{_target_:zerosr.losses.CharbonnierLoss,weight:1.0},"
              "{_target_:zerosr.losses.MSSSIMLoss,weight:0.5,window_size:5,max_scales:2}]")
    over = auto_overrides(data, **{
        "train.total_iter": 12, "train.save_freq": 6, "train.val_freq": 2, "train.warmup_iter": 0,
        "train.batch_size": 8, "automation.batch.enabled": True, "automation.batch.max_batch_size": 8,
        "debug.inject_oom_at": "[2,8]", "automation.lr.plateau_patience": 2, "automation.lr.improvement_threshold": 1.0,
        "automation.clip.history": 2, "automation.early_stop.patience": 100,
        # Taken as given (no calibration): no dead band, so the two losses' weights move from iteration 2.
        "automation.loss_schedule.auto_calibrate": False, "automation.loss_schedule.baseline_iterations": 1,
        "automation.loss_schedule.adaptation_rate": 0.1, "automation.loss_schedule.adaptation_threshold": 1e-6,
        "train.losses": losses})
    straight = tmp_path / "straight"
    run(over, straight)
    log = records(straight, "automation.jsonl")
    steps = [r for r in records(straight, "metrics.jsonl") if "loss" in r]
    assert {"loss_trend/msssim/velocity", "loss_trend/msssim/deviation", "loss_weight/msssim"} <= set(steps[-1])
    for kind in ("lr", "batch", "clip", "loss_schedule"):  # each acted before the checkpoint
        assert any(0 < r["iter"] <= 6 for r in log if r["automation"] == kind), kind
    assert {"lr", "batch"} <= {r["automation"] for r in log if r["iter"] > 6}  # and decisions follow it
    from zerosr.engine.checkpoint import load_training_state

    middle = load_training_state(straight / "training_state" / "state_00000006.pt")
    assert middle["automations"]["loss_schedule"]["multipliers"]["msssim"] < 1.0  # the weights had moved
    resumed = tmp_path / "resumed"
    run(over + [f"train.resume={straight / 'training_state' / 'state_00000006.pt'}"], resumed)
    a = load_file(straight / "models" / "net_g_00000012.safetensors")
    b = load_file(resumed / "models" / "net_g_00000012.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)

    sa = load_training_state(straight / "training_state" / "state_00000012.pt")
    sb = load_training_state(resumed / "training_state" / "state_00000012.pt")
    for key in ("automations", "objective"):
        assert json.dumps(sa[key], sort_keys=True, default=str) == json.dumps(sb[key], sort_keys=True, default=str)
    tail = [(r["iter"], r["automation"], r["change"]) for r in log if r["iter"] > 6]
    assert tail == [(r["iter"], r["automation"], r["change"]) for r in records(resumed, "automation.jsonl")
                    if r["iter"] > 6]  # the same decisions after the resume point


def test_start_up_probes_leave_a_gan_discriminator_untouched(data, tmp_path):
    """The batch search runs real generator losses, whose discriminator forward moves its
    spectral-norm vectors; the probes must leave it (and the generator) as they found it."""
    from zerosr.config.compose import compose_config
    from zerosr.engine.loop import Trainer
    from zerosr.engine.startup import search_batch_size

    gan = ("[{_target_:zerosr.losses.CharbonnierLoss,weight:1.0},"
           "{_target_:zerosr.losses.GANLoss,weight:0.05,discriminator:{_target_:zerosr.losses.UNetDiscriminatorSN,num_feat:8}}]")
    # 400 iterations: a run long enough for the search (nothing trains here).
    trainer = Trainer(compose_config(auto_overrides(data, **{"automation.batch.enabled": True, "train.losses": gan,
                                                             "train.total_iter": 400,
                                                             "train.deterministic": False})),
                      tmp_path / "run")
    learner = trainer.learner
    before = {k: v.clone() for k, v in learner.objective.state_dict()["discriminator"].items()}
    model_before = {k: v.clone() for k, v in learner.module.state_dict().items()}
    _, _, decision = search_batch_size(learner, trainer.cfg, trainer.stream.batch_size, 16, keep_lq_size=True)
    assert "measured samples/s" in decision.reason  # real timed steps ran
    after = learner.objective.state_dict()["discriminator"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(model_before[k], v) for k, v in learner.module.state_dict().items())
    trainer.close()


def test_a_deterministic_run_makes_no_timed_batch_choice(data, tmp_path):
    run(auto_overrides(data, **{"automation.batch.enabled": True}), tmp_path / "run")
    search = [r for r in records(tmp_path / "run", "automation.jsonl") if r["automation"] == "batch"]
    assert len(search) == 1 and search[0]["change"] == {} and "train.deterministic" in search[0]["reason"]
    steps = [r for r in records(tmp_path / "run", "metrics.jsonl") if "loss" in r]
    assert {r["batch_size"] for r in steps} == {2}  # the configured batch trained
