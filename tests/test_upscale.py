"""Using a trained model: tiled = whole image, evaluate = validation, and the two commands end to end."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from zerosr import archs
from zerosr.archs.spec import tiling as spec_tiling
from zerosr.data import write_image
from zerosr.data.datasets import PairedImageDataset
from zerosr.data.io import encode_image, read_image_unchanged
from zerosr.engine import tiling as tiling_module
from zerosr.engine.accelerator import CpuAccelerator
from zerosr.engine.tiling import tiled_forward
from zerosr.engine.validation import Validator
from zerosr.errors import UserError
from zerosr.evaluate import evaluate
from zerosr.inference import Upscaler

ROOT = Path(__file__).resolve().parents[1]


def trained_like(name: str, scale: int = 2, image: torch.Tensor | None = None) -> torch.nn.Module:
    """Random weights with the residual scales, attention and detail path switched on.

    A freshly built ParagonSR2 has its layer scales at 1e-5, attention off (gamma 0) and a detail
    gain that hardly depends on the image, so any tiling would match the whole image; a trained
    network relies on all of them."""
    torch.manual_seed(0)
    model = archs.build(name, scale).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(getattr(module, "gamma", None), torch.nn.Parameter):
                module.gamma.fill_(0.5)
        model.conv_out.weight.mul_(10)
        if image is not None:  # a gain that follows the content: steep, centred on `image`
            head = model.content_processor.content_analyzer[7]
            head.weight.mul_(200)
            head.bias.copy_(-(head.weight.flatten() @ model.content_processor.content_analyzer[:7](image).flatten()))
    return model


def photo_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([np.sin(xx * rng.uniform(4, 12) + yy * rng.uniform(2, 9) + c) * 0.4 + 0.5 for c in range(3)], -1)
    return np.clip(base + rng.normal(0, 0.08, base.shape), 0, 1).astype(np.float32)


def as_batch(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.transpose(2, 0, 1).copy())[None]


def sky_and_texture(height: int = 90, width: int = 131) -> torch.Tensor:
    """Flat on the left, busy on the right: tiles of it differ in content, as photos do."""
    image = photo_like(height, width)
    image[:, : width // 2] = image[:, : width // 2].mean((0, 1))
    return as_batch(image)


@pytest.mark.parametrize("name", ["paragonsr2_nano", "paragonsr2_s"])
def test_tiles_agree_with_the_whole_image_within_one_level(name):
    lq = sky_and_texture()
    model = trained_like(name, image=lq)
    with torch.no_grad():
        whole = model(lq).clamp(0, 1)
        for tile, batch in ((48, 1), (64, 3), (100, 2)):
            tiled = tiled_forward(model, lq, 2, tile, 8, batch_size=batch).clamp(0, 1)
            assert (tiled - whole).abs().max() * 255 < 1.0, (tile, batch)


def test_tile_alignment_and_whole_image_gain_are_what_make_tiles_agree():
    """Without the window alignment or the whole image's gain the same tiling is visibly off."""
    lq = sky_and_texture()
    model = trained_like("paragonsr2_s", image=lq)
    with torch.no_grad():
        whole = model(lq).clamp(0, 1)
        exact = (tiled_forward(model, lq, 2, 64, 8).clamp(0, 1) - whole).abs().max() * 255
        needs = spec_tiling(model)  # what the family spec says tiling needs, one part left out at a time
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(tiling_module, "tiling", lambda net: dataclasses.replace(needs, grid=1))
            unaligned = (tiled_forward(model, lq, 2, 64, 8).clamp(0, 1) - whole).abs().max() * 255
        with pytest.MonkeyPatch.context() as patch:  # every tile computes its own gain
            patch.setattr(tiling_module, "tiling", lambda net: dataclasses.replace(needs, whole_image=None))
            own_gain = (tiled_forward(model, lq, 2, 64, 8).clamp(0, 1) - whole).abs().max() * 255
    assert exact < 0.25 and unaligned > 1 and own_gain > 1, (exact, unaligned, own_gain)


def test_validator_and_evaluate_give_the_same_scores(tmp_path):
    model = trained_like("paragonsr2_nano")
    pairs = []
    for i, size in enumerate(((96, 130), (60, 72))):
        hr = photo_like(*size, seed=i)
        write_image(tmp_path / "hr" / f"{i}.png", hr)
        pairs.append((tmp_path / "hr" / f"{i}.png", None))
    dataset = PairedImageDataset(pairs, 2)
    logged = Validator(dataset, 2, 40, torch.device("cpu"), tmp_path / "vis")(model, 1)
    rows = evaluate(pairs, 2, Upscaler(model, CpuAccelerator(), tile=40, low_precision=False), None,
                    tmp_path / "hr")
    assert abs(np.mean([r["psnr"] for r in rows]) - logged["val/psnr"]) < 1e-9
    assert abs(np.mean([r["ssim"] for r in rows]) - logged["val/ssim"]) < 1e-9
    assert abs(np.mean([r["bicubic_psnr"] for r in rows]) - logged["val/bicubic_psnr"]) < 1e-9


def test_shared_reader_loads_into_a_built_model_and_refuses_another_scale(tmp_path):
    path = archs.save(trained_like("paragonsr2_nano", 2), tmp_path / "nano.safetensors")
    target = archs.build("paragonsr2_nano", 2)
    archs.load_weights(target, archs.read_weights(path, "paragonsr2_nano", 2))
    assert torch.equal(target.conv_out.weight, trained_like("paragonsr2_nano", 2).conv_out.weight)
    with pytest.raises(UserError, match=r"^train.pretrain=x holds paragonsr2_nano x2, but the run uses paragonsr2_nano x4"):
        archs.read_weights(path, "paragonsr2_nano", 4, label="train.pretrain=x")


def test_sixteen_bit_goes_to_eight_bit_formats_scaled_not_clipped():
    image = np.full((8, 8, 3), 32896, np.uint16)  # 128 * 257
    decoded = cv2.imdecode(np.frombuffer(encode_image(image, ".jpg"), np.uint8), cv2.IMREAD_UNCHANGED)
    assert abs(int(decoded.mean()) - 128) <= 1


# ----------------------------------------------------------------------------------- commands


def command(module: str, *args, prefix: list[str] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", f"zerosr.{module}", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return archs.save(trained_like("paragonsr2_nano", 2), tmp_path_factory.mktemp("model") / "nano.safetensors")


def test_upscale_keeps_depth_alpha_and_gray_and_reports_bad_files(model_file, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    rgb = photo_like(30, 41)
    rgba = np.concatenate([photo_like(20, 24, 1), photo_like(20, 24, 2)[:, :, :1]], 2)
    write_image(src / "rgb.png", rgb)
    (src / "deep").mkdir()
    cv2.imwrite(str(src / "deep" / "b16.png"), cv2.cvtColor((photo_like(18, 22, 3) * 65535).astype(np.uint16),
                                                           cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(src / "deep" / "rgba.png"), cv2.cvtColor((rgba * 255).round().astype(np.uint8), cv2.COLOR_RGBA2BGRA))
    cv2.imwrite(str(src / "gray.png"), (photo_like(16, 16, 4)[:, :, 0] * 255).astype(np.uint8))
    (src / "text.png").write_text("this is not an image")
    good = encode_image(rgb, ".png")
    (src / "deep" / "cut.png").write_bytes(good[: len(good) // 2])

    result = command("upscale", model_file, src, out)
    assert result.returncode == 2
    errors = error_lines(result)
    assert len(errors) == 2 and any("text.png" in e for e in errors) and any("cut.png" in e for e in errors)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "deep/b16.png", "deep/rgba.png", "gray.png", "rgb.png"]
    b16, four, gray = (read_image_unchanged(out / n) for n in ("deep/b16.png", "deep/rgba.png", "gray.png"))
    assert b16.dtype == np.uint16 and b16.shape == (36, 44, 3)
    assert four.dtype == np.uint8 and four.shape == (40, 48, 4)
    assert gray.shape == (32, 32)

    # The pixels are the model's (colour and alpha on its own), not some other resize.
    model = archs.load(model_file)
    with torch.no_grad():
        expected = model(as_batch(rgb))[0].clamp(0, 1).numpy().transpose(1, 2, 0)
        alpha = model(as_batch(np.repeat(rgba[:, :, 3:], 3, 2)))[0].clamp(0, 1).mean(0).numpy()
    got = read_image_unchanged(out / "rgb.png").astype(np.float32) / 255
    assert np.abs(got - expected).max() <= 1 / 255 + 1e-6
    alpha_in = four[:, :, 3].astype(np.float32) / 255
    assert np.abs(alpha_in - alpha).max() <= 1 / 255 + 1e-6

    # A second run skips what exists (same bytes, untouched); --overwrite redoes it.
    stamp = (out / "rgb.png").stat().st_mtime_ns
    again = command("upscale", model_file, src / "rgb.png", out)
    assert again.returncode == 0 and "skipped 1" in again.stdout
    assert (out / "rgb.png").stat().st_mtime_ns == stamp
    redo = command("upscale", model_file, src / "rgb.png", out, "--overwrite", "--tile", "0")
    assert redo.returncode == 0 and (out / "rgb.png").stat().st_mtime_ns != stamp


def test_upscale_formats_and_refusals(model_file, tmp_path):
    src = tmp_path / "in"
    write_image(src / "a.png", photo_like(20, 20))
    rgba = np.concatenate([photo_like(20, 20), np.ones((20, 20, 1), np.float32)], 2)
    cv2.imwrite(str(src / "b.png"), cv2.cvtColor((rgba * 255).astype(np.uint8), cv2.COLOR_RGBA2BGRA))

    webp = command("upscale", model_file, src, tmp_path / "webp", "--format", "webp", "--quality", "90")
    assert webp.returncode == 0, webp.stderr
    assert read_image_unchanged(tmp_path / "webp" / "b.webp").shape == (40, 40, 4)

    jpg = command("upscale", model_file, src, tmp_path / "jpg", "--format", "jpg")
    assert jpg.returncode == 2 and len(error_lines(jpg)) == 1 and "alpha" in error_lines(jpg)[0]
    assert read_image_unchanged(tmp_path / "jpg" / "a.jpg").shape == (40, 40, 3)

    inside = command("upscale", model_file, src, src / "out")
    assert inside.returncode == 2 and len(error_lines(inside)) == 1 and "inside INPUT" in inside.stderr
    assert not (src / "out").exists()

    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # a folder cannot be made under a regular file, whoever runs this
    blocked = command("upscale", model_file, src, blocker / "out")
    assert blocked.returncode == 2 and len(error_lines(blocked)) == 1 and "cannot write to OUTPUT" in blocked.stderr

    bad_model = command("upscale", src / "a.png", src, tmp_path / "x")
    assert bad_model.returncode == 2 and len(error_lines(bad_model)) == 1


def test_upscale_without_write_permission_is_one_line(model_file, tmp_path):
    """A real permission denial on a read-only folder. Root ignores permission bits, so as root the
    command runs without the capability that lets it (setpriv drops CAP_DAC_OVERRIDE)."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv to drop CAP_DAC_OVERRIDE")
        prefix = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", "--"]
    write_image(tmp_path / "in" / "a.png", photo_like(16, 16))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = command("upscale", model_file, tmp_path / "in", locked / "out", prefix=prefix)
    finally:
        locked.chmod(0o755)
    assert result.returncode == 2 and len(error_lines(result)) == 1
    assert "cannot write to OUTPUT" in result.stderr and "Permission denied" in result.stderr
    assert not (locked / "out").exists()


def test_evaluate_gives_the_runs_own_validation_psnr(tmp_path):
    from test_train import make_dataset, tiny_overrides
    from zerosr.config.compose import compose_config
    from zerosr.engine.run import train

    data = make_dataset(tmp_path / "train", count=4)
    val_hr, val_lr = make_dataset(tmp_path / "val", count=2, size=64, seed=5)
    run_dir = tmp_path / "run"
    # From weights with a strong detail path, a high LR and a short EMA: the two validations
    # then score models far enough apart for the check below to tell them apart.
    start = archs.save(trained_like("paragonsr2_nano"), tmp_path / "start.safetensors")
    settings = {"data.val_gt_path": val_hr, "data.val_lq_path": val_lr, "train.pretrain": start,
                "train.lr": 2e-3, "train.ema_decay": 0.5}
    train(compose_config(tiny_overrides(data, **settings)), run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r["val/psnr"] for r in records if "val/psnr" in r]
    best = max(logged)
    assert abs(logged[0] - logged[1]) > 0.02  # the check below could tell the two models apart

    # The run was trained in-process (no resolved_config.yaml naming its val metrics): PSNR/SSIM asked for.
    result = command("evaluate", run_dir, "--hr", val_hr, "--lr", val_lr, "--json", "--metrics", "psnr,ssim")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["images"]) == 2
    assert abs(report["mean"]["psnr"] - best) < 0.01

    table = command("evaluate", run_dir, "--hr", val_hr, "--save", tmp_path / "saved", "--metrics", "psnr,ssim")
    assert table.returncode == 0 and "mean" in table.stdout and "bicubic PSNR" in table.stdout
    assert {p.name for p in (tmp_path / "saved").iterdir()} >= {"img0_sr.png", "img0_compare.png"}

    x4 = archs.save(archs.build("paragonsr2_nano", 4), tmp_path / "x4.safetensors")
    wrong = command("evaluate", x4, "--hr", val_hr, "--lr", val_lr)
    assert wrong.returncode == 2 and len(error_lines(wrong)) == 1 and "the model is x4" in wrong.stderr


@pytest.mark.parametrize("capability, expected", [((7, 5), torch.float16), ((8, 6), torch.bfloat16)])
def test_upscale_on_a_simulated_card_runs_the_cards_own_low_precision(capability, expected, model_file, tmp_path,
                                                                     fake_hardware, monkeypatch):
    # A 7.5 card (T4, RTX 20xx) has no native bf16: torch.cuda.is_bf16_supported() alone says
    # True there (emulated, slow). The precision comes from the accelerator, as in training.
    from zerosr import inference, upscale
    from zerosr.engine import accelerator

    fake_hardware(gpus=[{"name": "Test card", "vram_gb": 1.0, "compute_capability": list(capability)}])
    monkeypatch.setenv("ZEROSR_SIMULATE_GPU", "1")
    accelerator.current.cache_clear()
    seen, load = [], inference.load_model

    def load_and_watch(path, device):
        model = load(path, device)
        model.register_forward_hook(lambda *_: seen.append(
            torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None))
        return model

    monkeypatch.setattr(inference, "load_model", load_and_watch)
    src = tmp_path / "in.png"
    write_image(src, np.random.default_rng(0).random((24, 20, 3)).astype(np.float32))
    try:
        assert upscale.main([str(model_file), str(src), str(tmp_path / "out.png")]) == 0
    finally:
        accelerator.current.cache_clear()
    assert seen and set(seen) == {expected}
    assert (tmp_path / "out.png").is_file()


def test_tiles_follow_the_bytes_per_value_and_the_cache_is_freed_outside_the_except_block(fake_hardware,
                                                                                          monkeypatch):
    from zerosr.engine import accelerator

    fake_hardware(gpus=[{"name": "Test card", "vram_gb": 0.25, "compute_capability": [7, 5]}])
    monkeypatch.setenv("ZEROSR_SIMULATE_GPU", "1")
    accelerator.current.cache_clear()
    try:
        sim = accelerator.current()
        model = trained_like("paragonsr2_nano", 2).eval()
        upscaler = Upscaler(model, sim)
        # fp32 (a 16-bit image) takes twice the bytes of fp16 per value: a tile about 1/sqrt(2) the side.
        assert upscaler.tiles[None] < upscaler.tiles[torch.float16] == upscaler.tile
        released, forward = [], model.forward
        failures = [1]

        def failing_forward(*args, **kwargs):
            if failures:
                failures.pop()
                raise torch.OutOfMemoryError("out of memory (test)")
            return forward(*args, **kwargs)

        monkeypatch.setattr(model, "forward", failing_forward)
        monkeypatch.setattr(sim, "free_cache", lambda: released.append(sys.exc_info()[0]))
        upscaler.batch = 1
        before = upscaler.tiles[None]
        out = upscaler.upscale_tensor(torch.rand(1, 3, 40, 40), high_depth=True)
    finally:
        accelerator.current.cache_clear()
    assert out.shape == (1, 3, 80, 80)
    assert released == [None]  # no exception in flight: its traceback would keep the failed tile alive
    assert upscaler.tiles[None] == before // 2
