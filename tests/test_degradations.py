"""data=realistic: the degradation pipeline, its determinism, calibration, config and CLI."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from test_estimate import save, scene
from zerosr.config.compose import compose_config
from zerosr.data.calibrate import (
    _crops,
    blur_strength,
    calibrate,
    noise_probe,
    output_blur,
    output_noise,
    probe_sigma,
    profile_folder,
)
from zerosr.data.estimate import noise_sigma
from zerosr.data.jpeg import jpeg_roundtrip
from zerosr.data.kernels import KERNEL_TYPES, gaussian_kernel, random_blur_kernel, sinc_kernel
from zerosr.data.realistic import DegradationSettings, degrade_batch, filter_batch
from zerosr.data.realistic_data import RealisticImageDataset, RealisticPatchDataset
from zerosr.engine.data import BatchStream, build_data
from zerosr.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hr_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hr")
    for i in range(6):
        save(folder / f"{i}.png", scene(10 + i, 96))
    return folder


def hr_batch(n: int = 4, size: int = 64) -> torch.Tensor:
    return torch.stack([torch.from_numpy(scene(i, size).transpose(2, 0, 1) / 255.0).float() for i in range(n)])


def only(**changes) -> DegradationSettings:
    """Settings where nothing happens (no blur, resize, noise, sinc, lossless-ish JPEG) except `changes`."""
    quiet = dict(blur_sigma=[0.1, 0.1], sinc_prob=0.0, resize_prob=[0, 0, 1], noise_range=[0, 0],
                 poisson_scale_range=[0, 0], gaussian_noise_prob=1.0, jpeg_range=[100, 100], second_order_prob=0.0,
                 final_sinc_prob=0.0, jpeg_range2=[100, 100], kernel_list=["iso"], kernel_prob=[1.0])
    return dataclasses.replace(DegradationSettings(), **{**quiet, **changes})


def test_every_kernel_sums_to_one_and_is_point_symmetric():
    rng = np.random.default_rng(0)
    for kind in KERNEL_TYPES:
        for _ in range(5):
            k = random_blur_kernel(rng, [kind], [1.0], (0.2, 3.0), (0.5, 4.0), (1.0, 2.0), 0.0, 21)
            assert k.shape[0] % 2 == 1 and 7 <= k.shape[0] <= 21
            assert abs(k.sum() - 1) < 1e-5 and np.allclose(k, k[::-1, ::-1], atol=1e-7)
    sinc = sinc_kernel(21, np.pi / 4)
    assert abs(sinc.sum() - 1) < 1e-5 and sinc.min() < 0  # ringing lobes


def test_fft_filter_equals_a_direct_convolution_with_reflected_borders():
    images = hr_batch(2, 40)
    kernels = [gaussian_kernel(21, 2.0, 0.7, 0.5), sinc_kernel(13, 1.2)]
    ours = filter_batch(images, kernels)
    for i, kernel in enumerate(kernels):
        reference = cv2.filter2D(images[i].permute(1, 2, 0).numpy(), -1, kernel, borderType=cv2.BORDER_REFLECT_101)
        assert np.abs(ours[i].permute(1, 2, 0).numpy() - reference).max() < 1e-4


def test_torch_jpeg_matches_libjpeg():
    pixels = np.round(scene(5, 128)).astype(np.uint8)
    for quality in (30, 60, 90):
        _, encoded = cv2.imencode(".jpg", pixels[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        libjpeg = cv2.imdecode(encoded, cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float32)
        ours = jpeg_roundtrip(torch.from_numpy(pixels.transpose(2, 0, 1))[None].float() / 255, torch.tensor([quality]))
        ours = ours[0].permute(1, 2, 0).numpy() * 255
        error_to_source = np.mean((libjpeg - pixels) ** 2)
        assert np.mean((ours - libjpeg) ** 2) < 0.1 * error_to_source  # far closer to libjpeg than to the source


def test_output_is_the_lr_size_in_8_bit_levels_and_follows_the_seed():
    hr, settings = hr_batch(4, 64), DegradationSettings()
    lr = degrade_batch(hr, [1, 2, 3, 4], settings, 2)
    assert lr.shape == (4, 3, 32, 32) and lr.min() >= 0 and lr.max() <= 1
    assert torch.equal(torch.round(lr * 255) / 255, lr)
    assert torch.equal(lr, degrade_batch(hr, [1, 2, 3, 4], settings, 2))  # same seeds, same LR
    assert not torch.equal(lr, degrade_batch(hr, [5, 6, 7, 8], settings, 2))
    alone = degrade_batch(hr[2:3], [3], settings, 2)
    assert torch.equal(alone, lr[2:3])  # a sample does not depend on its batch


def test_noise_and_compression_are_applied_at_the_configured_strength():
    hr = hr_batch(4, 128)
    clean = degrade_batch(hr, [0, 1, 2, 3], only(), 1)
    # Grey noise: JPEG's chroma subsampling (even at quality 100) would halve colour noise's chroma.
    noisy = degrade_batch(hr, [0, 1, 2, 3], only(noise_range=[15, 15], gray_noise_prob=1.0), 1)
    sigmas = [noise_sigma(img.permute(1, 2, 0).numpy() * 255) for img in noisy]
    assert np.abs(np.array(sigmas) - 15).max() < 2.5, sigmas
    compressed = degrade_batch(hr, [0, 1, 2, 3], only(jpeg_range2=[20, 20]), 1)
    reference = jpeg_roundtrip(jpeg_roundtrip(hr, torch.full((4,), 100.0)), torch.full((4,), 20.0))
    assert (compressed - clean).abs().mean() > 0.005 and (compressed - reference).abs().mean() < 0.5 / 255


def test_final_compression_comes_after_the_resize_as_often_as_asked():
    hr = hr_batch(4, 128)
    change = {}
    for prob in (0.0, 1.0):
        lr = degrade_batch(hr, [0, 1, 2, 3], only(jpeg_range2=[20, 20], compress_last_prob=prob), 2)
        change[prob] = ((jpeg_roundtrip(lr, torch.full((4,), 20.0)) - lr) * 255).pow(2).flatten(1).mean(1)
    # Compressed last, the LR is a JPEG of its own size: compressing it again at its quality leaves
    # it nearly as it is. Compressed before the resize, the LR is not on that grid at all.
    assert change[1.0].max() < 1.0 and change[0.0].min() > 20.0, change


def test_webp_is_used_when_asked():
    hr = hr_batch(2, 64)
    webp = degrade_batch(hr, [0, 1], only(webp_prob=1.0, jpeg_range2=[20, 20]), 1)
    jpeg = degrade_batch(hr, [0, 1], only(jpeg_range2=[20, 20]), 1)
    assert not torch.equal(webp, jpeg) and (webp - hr).abs().mean() < 0.05


def test_bad_degradation_values_are_user_errors():
    with pytest.raises(UserError, match="data.degradation.noise_range"):
        dataclasses.replace(DegradationSettings(), noise_range=[5.0, 1.0]).check()
    with pytest.raises(UserError, match="kernel_list"):
        dataclasses.replace(DegradationSettings(), kernel_list=["box"], kernel_prob=[1.0]).check()
    with pytest.raises(UserError, match="gray_noise_prob"):
        dataclasses.replace(DegradationSettings(), gray_noise_prob=1.5).check()


def test_stream_is_the_same_for_any_worker_count_and_after_resume(hr_folder):
    dataset = RealisticPatchDataset(sorted(hr_folder.glob("*.png")), 2, 16, DegradationSettings(), length=24)
    one = BatchStream(dataset, 4, seed=3, num_workers=0)
    batches = [one.next_batch() for _ in range(3)]
    assert batches[0]["lq"].shape == (4, 3, 16, 16) and batches[0]["gt"].shape == (4, 3, 32, 32)
    workers = BatchStream(dataset, 4, seed=3, num_workers=2)
    for expected in batches:
        got = workers.next_batch()
        assert torch.equal(got["lq"], expected["lq"]) and torch.equal(got["gt"], expected["gt"])
    workers.close()
    resumed = BatchStream(dataset, 4, seed=3)
    first = BatchStream(dataset, 4, seed=3)
    first.next_batch()
    resumed.load_state_dict(first.state_dict())
    assert torch.equal(resumed.next_batch()["lq"], batches[1]["lq"])


def test_validation_images_are_degraded_once_with_a_fixed_seed(hr_folder):
    paths = sorted(hr_folder.glob("*.png"))[:2]
    a = RealisticImageDataset(paths, 2, DegradationSettings())
    b = RealisticImageDataset(paths, 2, DegradationSettings())
    assert torch.equal(a[0]["lq"], a[0]["lq"]) and torch.equal(a[1]["lq"], b[1]["lq"])
    assert a[0]["lq"].shape == (3, 48, 48) and a[0]["gt"].shape == (3, 96, 96)


def make_target(folder: Path, sigma: float, quality: int, count: int = 4) -> Path:
    for i in range(count):
        image = scene(30 + i, 128)
        noisy = image + np.random.default_rng(i).normal(0, sigma, image.shape)
        save(folder / f"{i}.jpg", noisy, quality)
    return folder


def test_calibration_centres_the_ranges_on_the_target(hr_folder, tmp_path):
    target = profile_folder(sorted(make_target(tmp_path / "target", 10.0, 80).glob("*.jpg")), "target")
    # Training images of the target's kind and size: the probe reads noise against their texture.
    images = [np.round(scene(10 + i, 192)).astype(np.uint8) for i in range(6)]
    settings, decision = calibrate(DegradationSettings(), target, images, 2)
    assert 75 <= settings.jpeg_range2[0] <= 80 <= settings.jpeg_range2[1] <= 85
    assert settings.jpeg_range[0] >= settings.jpeg_range2[0]  # round 1 never harsher than the target
    assert settings.compress_last_prob == 1.0  # the target's JPEG sits on its own grid: compress last
    assert decision.automation == "degradation" and "jpeg_range2" in decision.change
    # The noise the calibrated pipeline leaves before its final compression, on fresh seeds, is the
    # target's 10, which the estimate, made after JPEG, reads as far less.
    assert target.summary()["noise_sigma"] < 5.0
    measured = output_noise(settings, _crops(images, 2, 192, 128), 2, 1000)
    assert abs(measured - 10.0) <= 2.5, measured
    # The target is as sharp as a plain downscale: the recipe's blur, resizes and sinc filters,
    # which would teach the model to sharpen it, are off.
    assert settings.resize_range == [1.0, 1.0] and settings.resize_range2 == [1.0, 1.0]
    assert settings.blur_sigma[1] <= 0.2 and settings.final_sinc_prob == 0.0


def test_calibration_blurs_as_much_as_a_blurry_target_shows(tmp_path):
    for i in range(4):
        image = cv2.GaussianBlur(scene(30 + i, 128), (0, 0), 1.5)
        save(tmp_path / "target" / f"{i}.png", image + np.random.default_rng(i).normal(0, 2.0, image.shape))
    target = profile_folder(sorted((tmp_path / "target").glob("*.png")), "target")
    images = [np.round(scene(10 + i, 192)).astype(np.uint8) for i in range(6)]  # LR with edges enough
    settings, _ = calibrate(DegradationSettings(), target, images, 2)
    wanted = target.summary()["blur_sigma"]
    hr = _crops(images, 2, 192, 128)
    measured = output_blur(settings, hr, 2, 1000)
    assert abs(measured - wanted) <= 0.3 * wanted, (measured, wanted)
    assert output_blur(blur_strength(settings, 0.0), hr, 2, 1000) < 0.6 * wanted  # the blur was needed


@pytest.mark.parametrize("sigma", [10.0, 20.0])
def test_noise_before_compression_is_read_through_the_probe(sigma):
    """A folder of other images of the same kind, noisy and then compressed, read back through the
    probe made from the training images: the sigma there was before compression."""
    from zerosr.data.degrade import bicubic_downscale
    from zerosr.data.estimate import flat_noise

    hr = _crops([np.round(scene(10 + i, 192)).astype(np.uint8) for i in range(6)], 2, 192, 12)
    _, curve = noise_probe(hr, 2, 50.0)
    levels = []
    for i in range(6):
        lr = bicubic_downscale(scene(40 + i, 192) / 255.0, 2) * 255.0
        noisy = np.clip(np.round(lr + np.random.default_rng(i).normal(0, sigma, lr.shape)), 0, 255).astype(np.uint8)
        _, encoded = cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, 50])
        levels.append(flat_noise(cv2.imdecode(encoded, cv2.IMREAD_COLOR).astype(np.float32)))
    assert abs(probe_sigma(curve, float(np.median(levels))) - sigma) <= 0.25 * sigma


def test_keys_the_user_set_win_over_calibration(tmp_path):
    target = profile_folder(sorted(make_target(tmp_path / "target", 8.0, 40, count=2).glob("*.jpg")), "target")
    images = [np.round(scene(10 + i, 96)).astype(np.uint8) for i in range(2)]
    mine = dataclasses.replace(DegradationSettings(), jpeg_range2=[80.0, 90.0], noise_range=[3.0, 4.0])
    settings, decision = calibrate(mine, target, images, 2, user_set={"jpeg_range2", "noise_range"})
    assert settings.jpeg_range2 == [80.0, 90.0] and settings.noise_range == [3.0, 4.0]
    assert "jpeg_range2" not in decision.change and "noise_range2" in decision.change
    assert "user keys kept: ['jpeg_range2', 'noise_range']" in decision.reason


def test_build_data_calibrates_and_exposes_the_decision(hr_folder, tmp_path, capsys):
    target = make_target(tmp_path / "target", 8.0, 40, count=2)
    cfg = compose_config(["data=realistic", f"data.gt_path={hr_folder}", f"data.target_path={target}",
                          "data.n_val=1", "train.lq_size=16"])
    run_data = build_data(cfg)
    assert [d.automation for d in run_data.decisions] == ["degradation"]
    assert run_data.train.settings.jpeg_range2 != DegradationSettings().jpeg_range2
    assert run_data.val.settings is run_data.train.settings  # validation degraded like training
    assert "jpeg_range2" in run_data.decisions[0].change
    assert "degradation" not in capsys.readouterr().out  # the run shows it, with its other decisions
    plain = build_data(compose_config(["data=realistic", f"data.gt_path={hr_folder}", "data.n_val=1",
                                       "train.lq_size=16"]))
    assert plain.decisions == [] and plain.train.settings == DegradationSettings()


def run_train(overrides: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], cwd=cwd, capture_output=True,
                          text=True)


def test_realistic_run_trains_end_to_end(hr_folder, tmp_path):
    target = make_target(tmp_path / "target", 8.0, 40, count=2)
    done = run_train(["data=realistic", f"data.gt_path={hr_folder}", f"data.target_path={target}", "data.n_val=1",
                      "train.total_iter=4", "train.batch_size=2", "train.lq_size=16", "train.val_freq=2",
                      "hardware_tier.num_workers=0", "automation=off", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    shown = [line for line in done.stdout.splitlines() if line.lstrip("[").startswith("degradation")]
    assert len(shown) == 1 and shown[0].startswith("[degradation] iter 0:"), done.stdout  # shown once
    assert list((tmp_path / "run" / "models").glob("net_g_ema_*.safetensors"))
    decisions = [json.loads(line) for line in (tmp_path / "run" / "automation.jsonl").read_text().splitlines()]
    assert [d["iter"] for d in decisions if d["automation"] == "degradation"] == [0]  # one line, at start-up


@pytest.mark.parametrize("overrides, message", [
    (["data=realistic", "data.degradation.noise_range=[5,1]"], "data.degradation.noise_range"),
    (["data=realistic", "data.lq_path=LR"], "data.lq_path is set, but data=realistic"),
    (["data=paired", "data.target_path=T"], "data.target_path calibrates"),
])
def test_bad_realistic_config_is_one_line_exit_2(hr_folder, tmp_path, overrides, message):
    done = run_train([f"data.gt_path={hr_folder}", *overrides, "dry_run=true"], tmp_path)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in done.stderr


def test_preview_writes_pairs_as_the_run_makes_them(hr_folder, tmp_path):
    done = subprocess.run([sys.executable, "-m", "zerosr.degradations", "preview", str(hr_folder),
                           str(tmp_path / "out"), "--n", "3", "scale=4", "train.lq_size=16"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == [f"{k:03d}_{kind}.png" for k in range(3) for kind in ("hr", "lr")]
    hr, lr = cv2.imread(str(tmp_path / "out" / "000_hr.png")), cv2.imread(str(tmp_path / "out" / "000_lr.png"))
    assert hr.shape == (64, 64, 3) and lr.shape == (16, 16, 3)
    bad = subprocess.run([sys.executable, "-m", "zerosr.degradations", "preview", str(tmp_path / "nope"),
                          str(tmp_path / "out2")], cwd=ROOT, capture_output=True, text=True)
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert bad.returncode == 2 and len(errors) == 1 and "is not a folder" in errors[0]
    assert "Traceback" not in bad.stderr


def test_doctor_reports_a_missing_target_folder(hr_folder, tmp_path):
    done = subprocess.run([sys.executable, "-m", "zerosr.doctor", "data=realistic", f"data.gt_path={hr_folder}",
                           f"data.target_path={tmp_path / 'nope'}", "train.lq_size=16"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert any(line.startswith("error: data.target_path:") for line in done.stderr.splitlines()), done.stderr
