"""The degradation estimators recover known degradations of clean images the tests draw."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

from zerosr.data.estimate import blur_sigma, estimate_image, flat_noise, noise_sigma, quality_from_table

ROOT = Path(__file__).resolve().parents[1]


def scene(seed: int, size: int = 256) -> np.ndarray:
    """A clean photo-like image (HWC float, 0-255): smooth colour gradients, a dozen large shapes with
    anti-aliased edges (drawn at 4x, area-reduced), soft texture; kept off 0 and 255."""
    rng = np.random.default_rng(seed)
    big = size * 4
    y, x = np.mgrid[0:big, 0:big] / big
    base = np.stack([60 + 80 * x + 40 * np.sin(3 * y + c + seed) for c in range(3)], 2)
    canvas = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(14):
        color = tuple(int(v) for v in rng.integers(30, 225, 3))
        x0, y0 = (int(v) for v in rng.integers(0, big * 4 // 5, 2))
        w, h = (int(v) for v in rng.integers(big // 8, big // 2, 2))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)([x0, y0, x0 + w, y0 + h], fill=color)
    image = cv2.resize(np.asarray(canvas, dtype=np.float32), (size, size), interpolation=cv2.INTER_AREA)
    texture = cv2.resize(rng.random((size // 16, size // 16, 3)).astype(np.float32), (size, size),
                         interpolation=cv2.INTER_CUBIC)
    return np.clip(image + 12 * (texture - 0.5), 15, 240)


def save(path: Path, image: np.ndarray, quality: int | None = None) -> Path:
    pixels = np.clip(np.round(image), 0, 255).astype(np.uint8)[:, :, ::-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if quality is not None else []
    assert cv2.imwrite(str(path), pixels, params)
    return path


SEEDS = (0, 1, 2)


@pytest.mark.parametrize("sigma", [5, 15, 30])
def test_noise_sigma_is_recovered(sigma):
    for seed in SEEDS:
        noisy = np.round(scene(seed) + np.random.default_rng(seed).normal(0, sigma, (256, 256, 3)))
        estimate = noise_sigma(np.clip(noisy, 0, 255).astype(np.float32))
        assert abs(estimate - sigma) <= max(0.25 * sigma, 2.0), (seed, sigma, estimate)


def test_noise_of_a_clean_image_is_near_zero():
    assert noise_sigma(np.round(scene(3)).astype(np.float32)) < 1.0


def jpeg50(image: np.ndarray) -> np.ndarray:
    _, encoded = cv2.imencode(".jpg", np.clip(np.round(image), 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 50])
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR).astype(np.float32)


def test_flat_noise_follows_the_noise_not_the_texture_under_heavy_jpeg():
    """After JPEG at 50 the flat-area level orders noise levels, and a clean image with fine texture
    on half of it reads as less noisy than a smooth one that had sigma 10, which the whole-image
    estimate gets the wrong way round."""
    y, x = np.mgrid[0:256, 0:256]
    stripes = (18 * np.sin(2 * np.pi * (x + 0.6 * y) / 5) * (x < 128))[:, :, None]
    for seed in SEEDS:
        levels = [flat_noise(jpeg50(scene(seed) + np.random.default_rng(seed).normal(0, sigma, (256, 256, 3))))
                  for sigma in (0, 5, 10, 20)]
        assert all(b > 1.3 * a for a, b in zip(levels, levels[1:])), (seed, levels)
        textured, noisy = jpeg50(scene(seed) + stripes), jpeg50(scene(seed) + np.random.default_rng(seed).normal(0, 10, (256, 256, 3)))
        assert flat_noise(textured) < flat_noise(noisy), seed
        assert noise_sigma(textured) > noise_sigma(noisy), seed  # what the flat level is for


@pytest.mark.parametrize("quality", [30, 60, 90])
def test_jpeg_quality_is_read_from_the_file_tables(tmp_path, quality):
    for seed in SEEDS:
        estimate = estimate_image(save(tmp_path / f"{seed}.jpg", scene(seed), quality))
        assert estimate.jpeg_source == "tables"
        assert abs(estimate.jpeg_quality - quality) <= 10, (seed, quality, estimate)


def test_jpeg_quality_of_a_png_comes_from_its_block_grid(tmp_path):
    """A JPEG decoded and saved as PNG: no tables, but the 8x8 grid is there."""
    jpeg = save(tmp_path / "a.jpg", scene(4), 30)
    png = tmp_path / "a.png"
    Image.open(jpeg).save(png)
    estimate = estimate_image(png)
    assert estimate.jpeg_source == "blockiness" and abs(estimate.jpeg_quality - 30) <= 10, estimate
    clean = estimate_image(save(tmp_path / "clean.png", scene(4)))
    assert clean.jpeg_quality is None and clean.jpeg_source is None


def test_quality_from_a_zigzag_ordered_table():
    from zerosr.data.estimate import _ZIGZAG, _standard_tables

    natural = _standard_tables()[74]  # quality 75
    assert quality_from_table(natural) == 75
    assert quality_from_table(natural[_ZIGZAG]) == 75


@pytest.mark.parametrize("sigma", [0.8, 1.6, 2.4])
def test_blur_sigma_is_recovered(sigma):
    for seed in SEEDS:
        blurred = np.round(cv2.GaussianBlur(scene(seed), (0, 0), sigma)).astype(np.float32)
        estimate = blur_sigma(blurred)
        assert abs(estimate - sigma) <= 0.4 * sigma, (seed, sigma, estimate)


def test_blur_of_an_image_without_edges_is_unknown():
    flat = np.full((128, 128, 3), 120, np.float32) + np.random.default_rng(0).normal(0, 2, (128, 128, 3))
    assert np.isnan(blur_sigma(flat.astype(np.float32)))


def test_estimate_cli_prints_the_folder_medians_as_json(tmp_path):
    for seed in range(3):
        noisy = scene(seed) + np.random.default_rng(seed).normal(0, 12, (256, 256, 3))
        save(tmp_path / "target" / f"{seed}.jpg", cv2.GaussianBlur(noisy.astype(np.float32), (0, 0), 1.0), 70)
    done = subprocess.run([sys.executable, "-m", "zerosr.degradations", "estimate", str(tmp_path / "target"),
                           "--json"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) >= {"noise_sigma", "jpeg_quality", "blur_sigma"}
    assert result["jpeg_quality"] == 70
    assert 0 < result["noise_sigma"] < 12  # JPEG at 70 removes part of the noise
    assert 0.5 < result["blur_sigma"] < 2.0


def test_estimate_cli_bad_folder_is_one_line_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "zerosr.degradations", "estimate", str(tmp_path / "missing"),
                           "--json"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith("error: ")
    assert "Traceback" not in done.stderr
