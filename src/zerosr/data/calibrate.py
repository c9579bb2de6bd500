"""Centre the degradation ranges on what the user's target images show (`data.target_path`).

The target folder is measured (noise, JPEG quality, blur; `zerosr.data.estimate`); then:
- compression: the final JPEG range spans the measured qualities (10th to 90th percentile, 5 either
  side) and the first round never compresses harder than that; no JPEG seen: light JPEG only;
- noise and blur: the pipeline's output is measured with the same estimators, on LR made from the
  training HR images, and the ranges are scaled until its median matches the target's (a few
  rounds). Measuring the output, not guessing, accounts for what the recipe does to its own noise
  (JPEG smooths it, resizes spread it) and for the estimators' bias on image texture.
Every value stays within SAFETY bounds; keys the user set are never touched.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from zerosr.automations.base import Decision
from zerosr.data.estimate import Estimate, blur_sigma, estimate_image, noise_sigma
from zerosr.data.realistic import DegradationSettings, degrade_batch

SAFETY = {"noise": (0.0, 50.0), "poisson": (0.0, 4.5), "quality": (10.0, 100.0), "blur": (0.1, 4.0)}
# Poisson scale giving the same sigma as Gaussian noise of 1 (0-255) at mid-grey with 256 levels.
POISSON_PER_SIGMA = 1.0 / (255.0 * (0.5 / 256) ** 0.5)
NOISE_KEYS = ("noise_range", "noise_range2", "poisson_scale_range", "poisson_scale_range2")
BLUR_KEYS = ("blur_sigma", "blur_sigma2")
JPEG_KEYS = ("jpeg_range", "jpeg_range2")
MAX_TARGET_IMAGES = 64
CALIBRATION_SAMPLES = 64
CALIBRATION_ROUNDS = 6


@dataclass
class TargetProfile:
    """Per-image estimates of a target folder."""

    folder: str
    estimates: list[Estimate]

    def summary(self) -> dict:
        """The estimate alone: medians; JPEG quality None unless most images show JPEG."""
        qualities = [e.jpeg_quality for e in self.estimates if e.jpeg_quality is not None]
        jpeg = float(np.median(qualities)) if len(qualities) * 2 > len(self.estimates) else None
        blur = _median([e.blur_sigma for e in self.estimates])
        return {"noise_sigma": round(float(np.median([e.noise_sigma for e in self.estimates])), 2),
                "jpeg_quality": None if jpeg is None else round(jpeg, 1),
                "blur_sigma": None if blur is None else round(blur, 2)}


def _median(values: Sequence[float]) -> float | None:
    """Median of the finite values; None when there are none (no image had edges to measure)."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.median(finite)) if finite else None


def profile_folder(paths: Sequence[Path], folder: str = "") -> TargetProfile:
    """Estimates for up to MAX_TARGET_IMAGES files, spread evenly over the sorted list."""
    paths = sorted(paths)
    if len(paths) > MAX_TARGET_IMAGES:
        paths = [paths[int(i * len(paths) / MAX_TARGET_IMAGES)] for i in range(MAX_TARGET_IMAGES)]
    return TargetProfile(folder, [estimate_image(p) for p in paths])


def _clamp(low: float, high: float, bounds: tuple[float, float]) -> list[float]:
    low = min(max(float(low), bounds[0]), bounds[1])
    return [round(low, 3), round(min(max(float(high), low), bounds[1]), 3)]


def _text(value: float | None) -> str:
    return "unknown (too few edges)" if value is None else f"{value:.2f}"


def _crops(images: Iterable[np.ndarray], scale: int, side: int, count: int) -> torch.Tensor:
    """`count` HR crops (N, 3, s, s), s <= side a multiple of `scale`, cycling through the images."""
    images = list(images)
    side = min([side] + [min(img.shape[:2]) for img in images]) // scale * scale
    crops = []
    for i in range(count):
        image = images[i % len(images)]
        top = (image.shape[0] - side) * ((i * 7) % 11) // 10
        left = (image.shape[1] - side) * ((i * 3) % 11) // 10
        crop = image[top:top + side, left:left + side].astype(np.float32)
        crops.append(torch.from_numpy(crop.transpose(2, 0, 1) / (255.0 if image.dtype == np.uint8 else 65535.0)))
    return torch.stack(crops)


def _measure(settings: DegradationSettings, hr: torch.Tensor, scale: int, round_: int) -> tuple[float, float]:
    """Mean noise and median blur of the pipeline's output. The mean, because the recipe's output
    noise is a mixture (a sinc filter or a resize can wipe one sample's noise out) whose median
    jumps between seed sets; fresh seeds each round, so the ranges do not fit one set's luck."""
    seeds = [round_ * hr.shape[0] + i for i in range(hr.shape[0])]
    lr = degrade_batch(hr, seeds, settings, scale)
    pixels = [img.permute(1, 2, 0).numpy() * 255.0 for img in lr]
    return float(np.mean([noise_sigma(p) for p in pixels])), _median([blur_sigma(p) for p in pixels])


def calibrate(settings: DegradationSettings, target: TargetProfile, hr_images: Iterable[np.ndarray], scale: int,
              user_set: Iterable[str] = ()) -> tuple[DegradationSettings, Decision]:
    """New settings centred on `target`, and the decision that records why."""
    user_set = set(user_set)
    new = dataclasses.replace(settings)
    fixed = lambda key: key in user_set  # noqa: E731
    noise = np.array([e.noise_sigma for e in target.estimates])
    target_blur = _median([e.blur_sigma for e in target.estimates])  # None: no edges to measure
    qualities = [e.jpeg_quality for e in target.estimates if e.jpeg_quality is not None]
    summary = target.summary()

    if summary["jpeg_quality"] is not None:
        low, high = np.percentile(qualities, 10) - 5, np.percentile(qualities, 90) + 5
        jpeg_note = f"JPEG quality {summary['jpeg_quality']:g} ({len(qualities)}/{len(target.estimates)} images)"
    else:
        low, high = 90.0, 100.0
        jpeg_note = "no JPEG seen: light JPEG only"
    if not fixed("jpeg_range2"):
        new.jpeg_range2 = _clamp(low, high, SAFETY["quality"])
    if not fixed("jpeg_range"):
        new.jpeg_range = _clamp(new.jpeg_range2[0], 100.0, SAFETY["quality"])

    # Noise: the target's spread, widened by a quarter, scaled until the output's median matches.
    noise_low, noise_high = 0.75 * np.percentile(noise, 10), 1.25 * np.percentile(noise, 90)
    hr = _crops(hr_images, scale, side=96 * scale, count=CALIBRATION_SAMPLES)
    noise_gain, blur_gain = 1.0, 1.0
    out_noise, out_blur = 0.0, None
    target_noise = float(np.mean(noise))
    for round_ in range(CALIBRATION_ROUNDS):
        for key in ("noise_range", "noise_range2"):
            if not fixed(key):
                setattr(new, key, _clamp(noise_gain * noise_low, noise_gain * noise_high, SAFETY["noise"]))
        for key, gaussian in (("poisson_scale_range", "noise_range"), ("poisson_scale_range2", "noise_range2")):
            if not fixed(key):
                sigma = getattr(new, gaussian)
                setattr(new, key, _clamp(sigma[0] * POISSON_PER_SIGMA, sigma[1] * POISSON_PER_SIGMA, SAFETY["poisson"]))
        for key, default_high in (("blur_sigma", settings.blur_sigma[1]), ("blur_sigma2", settings.blur_sigma2[1])):
            if not fixed(key) and target_blur is not None:
                setattr(new, key, _clamp(min(0.2, blur_gain * default_high), blur_gain * default_high, SAFETY["blur"]))
        out_noise, out_blur = _measure(new, hr, scale, round_)
        # Multiplicative steps, at most x3 a round; a floor keeps a sharp or clean target finite.
        noise_gain *= float(np.clip(max(target_noise, 0.5) / max(out_noise, 0.5), 1 / 3, 3.0))
        if target_blur is not None and out_blur is not None:
            blur_gain *= float(np.clip(max(target_blur, 0.2) / max(out_blur, 0.2), 1 / 3, 3.0))
        noise_gain, blur_gain = float(np.clip(noise_gain, 0.02, 20.0)), float(np.clip(blur_gain, 0.05, 1.5))

    change = {}
    for key in NOISE_KEYS + BLUR_KEYS + JPEG_KEYS:
        old, value = list(getattr(settings, key)), list(getattr(new, key))
        if old != value:
            change[key] = (old, value)
    kept = sorted(user_set & set(NOISE_KEYS + BLUR_KEYS + JPEG_KEYS))
    reason = (f"target {target.folder or 'folder'} ({len(target.estimates)} images): noise sigma "
              f"{summary['noise_sigma']:g}, {jpeg_note}, blur sigma {_text(summary['blur_sigma'])} px; "
              f"pipeline output now noise {out_noise:.2f}, blur {_text(out_blur)}"
              + (f"; user keys kept: {kept}" if kept else ""))
    return new, Decision(0, "degradation", change, reason)
