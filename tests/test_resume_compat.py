"""Resuming a state into a run it cannot continue: one `error:` line that names the difference
and the two ways on, exit 2, before any training step; and the saved run left as it was."""

from __future__ import annotations

import pytest

from test_scaling import train_py
from test_train import PIXEL_METRICS, make_dataset, tiny_overrides
from zerosr.engine.checkpoint import load_training_state, save_training_state

MSSSIM = ("train.losses=[{_target_:zerosr.losses.CharbonnierLoss,weight:1.0},"
          "{_target_:zerosr.losses.MSSSIMLoss,weight:0.5,window_size:5,max_scales:2}]")
GAN = ("train.losses=[{_target_:zerosr.losses.CharbonnierLoss,weight:1.0},"
       "{_target_:zerosr.losses.GANLoss,weight:0.05,discriminator:{_target_:zerosr.losses.UNetDiscriminatorSN,num_feat:8}}]")


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    data = make_dataset(root / "data")
    run = root / "run"
    out = train_py(*tiny_overrides(data), f"hydra.run.dir={run}", cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    return data, run, root


def one_error_line(out) -> str:
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize("change, named", [(MSSSIM, "train.losses: the saved run trained charbonnier, this one "
                                                    "charbonnier, msssim"),
                                           (GAN, "train.losses: the saved run trained charbonnier, this one "
                                                 "charbonnier, gan")])
def test_other_losses_or_a_gan_are_one_line(saved_run, tmp_path, change, named):
    data, run, _ = saved_run
    state = run / "training_state" / "state_00000006.pt"
    out = train_py(*tiny_overrides(data), change, *PIXEL_METRICS, f"train.resume={state}",
                   f"hydra.run.dir={tmp_path / 'new'}", cwd=tmp_path)
    line = one_error_line(out)
    assert named in line and "train.pretrain=" in line and "net_g_ema_00000006.safetensors" in line
    assert not (tmp_path / "new" / "training_state").exists()  # nothing trained


def test_a_gradscaler_state_into_a_run_without_one_is_one_line(saved_run, tmp_path):
    # An fp16 run's state (a GradScaler's scale and growth tracker) resumed where no scaler runs.
    data, run, _ = saved_run
    state = load_training_state(run / "training_state" / "state_00000006.pt")
    state["scaler"] = {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                       "_growth_tracker": 10}
    fp16_run = tmp_path / "fp16" / "training_state"
    path = save_training_state(fp16_run, 6, state)
    out = train_py(*tiny_overrides(data), f"train.resume={path}", f"hydra.run.dir={tmp_path / 'new'}", cwd=tmp_path)
    assert "the precision: the saved run used fp16 with a GradScaler, this one fp32" in one_error_line(out)


def test_a_state_from_another_version_is_one_line(saved_run, tmp_path):
    data, run, _ = saved_run
    state = load_training_state(run / "training_state" / "state_00000006.pt")
    del state["automations"]["lr"]["cut"]  # a key this version's LR controller keeps
    path = save_training_state(tmp_path / "old" / "training_state", 6, state)
    out = train_py(*tiny_overrides(data), f"train.resume={path}", f"hydra.run.dir={tmp_path / 'new'}", cwd=tmp_path)
    line = one_error_line(out)
    assert "saved by another zerosr version" in line and "lr.cut" in line and "train.pretrain=" in line


def test_the_same_settings_still_resume(saved_run, tmp_path):
    data, run, _ = saved_run
    state = run / "training_state" / "state_00000003.pt"
    out = train_py(*tiny_overrides(data), f"train.resume={state}", f"hydra.run.dir={tmp_path / 'new'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"resumed      from {state} at iteration 3" in out.stdout


def test_a_discriminator_of_another_size_is_one_line(saved_run, tmp_path):
    data, _, _ = saved_run
    gan_run = tmp_path / "gan"
    out = train_py(*tiny_overrides(data), GAN, *PIXEL_METRICS, f"hydra.run.dir={gan_run}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    wider = GAN.replace("num_feat:8", "num_feat:16")
    out = train_py(*tiny_overrides(data), wider, *PIXEL_METRICS,
                   f"train.resume={gan_run / 'training_state' / 'state_00000006.pt'}",
                   f"hydra.run.dir={tmp_path / 'new'}", cwd=tmp_path)
    assert "its networks do not fit this run's" in one_error_line(out)
