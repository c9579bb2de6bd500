"""End-to-end training on images the test makes: a few iterations, resume, outputs, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from zerosr.config.compose import compose_config
from zerosr.config.validate import validate
from zerosr.data import bicubic_downscale, write_image
from zerosr.engine.run import train
from zerosr.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def make_dataset(folder: Path, count: int = 6, size: int = 48, scale: int = 2, seed: int = 0) -> tuple[Path, Path]:
    """Smooth colour fields with a few hard edges: learnable, and different per image."""
    rng = np.random.default_rng(seed)
    hr_dir, lr_dir = folder / "hr", folder / "lr"
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(count):
        base = np.stack([np.sin(xx * rng.uniform(2, 8) + rng.uniform(0, 6)) * 0.4 + 0.5 for _ in range(3)], -1)
        edge = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1) > rng.uniform(-0.3, 0.3))[..., None]
        hr = np.clip(base * 0.7 + edge * rng.uniform(0.1, 0.3, 3), 0, 1).astype(np.float32)
        write_image(hr_dir / f"img{i}.png", hr)
        write_image(lr_dir / f"img{i}.png", bicubic_downscale(hr, scale))
    return hr_dir, lr_dir


# The tests have no pretrained networks: a run with a GAN or perceptual loss would validate with
# LPIPS/DISTS and select by DISTS (downloading their weights); these keep it on PSNR/SSIM.
# test_perceptual_run.py serves test-made weights and runs that path whole.
PIXEL_METRICS = ("train.val_metrics=[psnr,ssim]", "train.select_metric=psnr")


def tiny_overrides(data: tuple[Path, Path], **extra) -> list[str]:
    hr, lr = data
    if any(term in str(extra.get("train.losses", "")) for term in ("GANLoss", "PerceptualLoss", "DISTSLoss")):
        extra = {**dict(o.split("=", 1) for o in PIXEL_METRICS), **extra}
    values = {"data": "paired", "data.gt_path": hr, "data.lq_path": lr, "data.n_val": 2,
              "train.total_iter": 6, "train.batch_size": 2, "train.lq_size": 16, "train.val_freq": 3,
              "train.save_freq": 3, "train.log_freq": 1, "train.warmup_iter": 1,
              "train.deterministic": True, "hardware_tier.num_workers": 0, "automation": "off", **extra}
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


def run(overrides, run_dir: Path) -> float:
    return train(compose_config(overrides), run_dir)


def test_tiny_run_writes_everything(data, tmp_path):
    run_dir = tmp_path / "run"
    best = run(tiny_overrides(data), run_dir)
    assert np.isfinite(best)
    models = sorted(p.name for p in (run_dir / "models").iterdir())
    assert models == ["best.safetensors", "net_g_00000003.safetensors", "net_g_00000006.safetensors",
                      "net_g_ema_00000003.safetensors", "net_g_ema_00000006.safetensors"]
    states = sorted(p.name for p in (run_dir / "training_state").glob("*.pt"))
    assert states == ["state_00000003.pt", "state_00000006.pt"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    vals = [r for r in records if "val/psnr" in r]
    assert [r["iter"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "lr", "batch_size", "grad_norm", "it_per_s", "loss/charbonnier"} <= set(steps[0])
    assert [r["iter"] for r in vals] == [3, 6] and abs(best - max(r["val/psnr"] for r in vals)) < 1e-9
    assert {p.name for p in (run_dir / "plots").iterdir()} >= {"loss.png", "psnr.png", "lr.png", "batch_size.png"}
    assert list((run_dir / "tb").iterdir())
    assert list((run_dir / "visualization" / "00000006").glob("*_compare.png"))


def test_resume_equals_uninterrupted_run(data, tmp_path):
    straight, first, resumed = tmp_path / "straight", tmp_path / "first", tmp_path / "resumed"
    run(tiny_overrides(data), straight)
    run(tiny_overrides(data), first)
    # Continue the second run from its iteration-3 state in a fresh directory.
    state = first / "training_state" / "state_00000003.pt"
    run(tiny_overrides(data, **{"train.resume": state}), resumed)
    a = load_file(straight / "models" / "net_g_00000006.safetensors")
    b = load_file(resumed / "models" / "net_g_00000006.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ema_a = load_file(straight / "models" / "net_g_ema_00000006.safetensors")
    ema_b = load_file(resumed / "models" / "net_g_ema_00000006.safetensors")
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)


def test_resume_auto_uses_the_run_directory(data, tmp_path):
    run_dir = tmp_path / "run"
    run(tiny_overrides(data), run_dir)
    # Asking for more iterations in the same directory continues from iteration 6.
    run(tiny_overrides(data, **{"train.resume": "auto", "train.total_iter": 9}), run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["iter"] for r in records if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8, 9]


def test_pretrain_of_another_variant_is_refused(data, tmp_path):
    run(tiny_overrides(data), tmp_path / "nano")
    weights = tmp_path / "nano" / "models" / "best.safetensors"
    from zerosr.errors import UserError

    with pytest.raises(UserError, match="paragonsr2_nano"):
        run(tiny_overrides(data, arch="paragonsr2_micro", **{"train.pretrain": weights}), tmp_path / "micro")


def test_cli_trains_and_prints_summary(data, tmp_path):
    args = [f"{o}" for o in tiny_overrides(data)] + [f"hydra.run.dir={tmp_path / 'cli'}"]
    out = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "ZEROSR_FAKE_HARDWARE": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "=== zerosr run summary ===" in out.stdout
    assert "bicubic PSNR" in out.stdout and "best.safetensors" in out.stdout
    assert (tmp_path / "cli" / "resolved_config.yaml").exists()


def test_ctrl_c_saves_state_and_resume_auto_finishes(data, tmp_path):
    import signal
    import time

    run_dir = tmp_path / "run"
    args = tiny_overrides(data, **{"train.total_iter": 400, "train.save_freq": 2, "train.val_freq": 200,
                                   "hardware_tier.num_workers": 1})
    env = {**os.environ, "ZEROSR_FAKE_HARDWARE": ""}
    process = subprocess.Popen([sys.executable, "train.py", *args, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    first_state = run_dir / "training_state" / "state_00000002.pt.sha256"
    deadline = time.monotonic() + 240
    while not first_state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # polling for the first checkpoint, not a fixed wait
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-2000:]
    assert "interrupted at iteration" in out and "Traceback" not in err
    saved = sorted((run_dir / "training_state").glob("state_*.pt"))
    interrupted_at = int(saved[-1].stem.split("_")[1])
    assert 2 <= interrupted_at < 400
    finish = subprocess.run([sys.executable, "train.py", *args, "train.total_iter=" + str(interrupted_at + 2),
                             "train.resume=auto", f"hydra.run.dir={run_dir}"], cwd=ROOT, capture_output=True,
                            text=True, env=env, timeout=300)
    assert finish.returncode == 0, finish.stderr[-2000:]
    assert "resumed      from" in finish.stdout and f"at iteration {interrupted_at}" in finish.stdout
    assert (run_dir / "training_state" / f"state_{interrupted_at + 2:08d}.pt").exists()


def test_perceptual_loss_without_weights_is_a_clear_error(tmp_path, monkeypatch):
    from zerosr.engine.objective import build_objective
    from zerosr.errors import UserError

    monkeypatch.setenv("ZEROSR_CACHE", str(tmp_path))
    (tmp_path / "index.json").write_text('{"vgg19": {"url": "http://127.0.0.1:9/vgg19.pth"}}')
    monkeypatch.setenv("ZEROSR_WEIGHTS_INDEX", str(tmp_path / "index.json"))
    with pytest.raises(UserError, match="vgg19-dcbb9e9d.pth"):
        build_objective([{"_target_": "zerosr.losses.PerceptualLoss", "weight": 0.1}], torch.device("cpu"), 1e-3)


def test_run_with_msssim_and_gan_trains_the_discriminator(data, tmp_path):
    losses = ("[{_target_: zerosr.losses.CharbonnierLoss, weight: 1.0}, {_target_: zerosr.losses.MSSSIMLoss, "
              "weight: 0.2}, {_target_: zerosr.losses.GANLoss, weight: 0.01, gan_type: hinge, "
              "discriminator: {_target_: zerosr.losses.UNetDiscriminatorSN, num_feat: 8}}]")
    run(tiny_overrides(data, **{"train.losses": losses, "train.total_iter": 2, "train.val_freq": 2,
                                "train.save_freq": 2, "train.lq_size": 24, "train.grad_accum": 2}), tmp_path / "run")
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss/charbonnier", "loss/msssim", "loss/gan", "loss/discriminator"} <= set(steps[0])
    from zerosr.engine.checkpoint import load_training_state

    state = load_training_state(tmp_path / "run" / "training_state" / "state_00000002.pt")
    assert state["objective"]["d_optimizer"]["state"]  # the discriminator's optimizer has stepped


def test_time_limit_ends_the_run_validated_and_saved(data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    best = run(tiny_overrides(data, **{"train.total_iter": 50, "train.max_minutes": 1e-6}), run_dir)
    assert np.isfinite(best)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "val/psnr" in r] == [1]  # stopped after the first step, validated
    assert (run_dir / "training_state" / "state_00000001.pt").is_file()
    assert "train.max_minutes=1e-06 spent" in capsys.readouterr().out


def test_time_limit_must_be_positive(data, tmp_path):
    with pytest.raises(UserError, match="train.max_minutes"):
        validate(compose_config(tiny_overrides(data, **{"train.max_minutes": 0})))
