"""Centre the degradation ranges on what the user's target images show (`data.target_path`).

The target folder is measured (noise, JPEG quality, blur; `zerosr.data.estimate`); then:
- compression: the final JPEG range spans the measured qualities (10th to 90th percentile, 5 either
  side) and the first round never compresses harder than that; JPEG seen on the target's own 8x8
  grid was the last thing done at the target's size, so the final compression always comes after
  the resize to LR size (the recipe's random order puts it before in half the samples, where the
  resize smooths its blocks away); no JPEG seen: light JPEG only, in the recipe's order;
- noise: JPEG removes most noise before any estimate can see it (sigma 10 then quality 50 reads
  as about 3), so the target's flat-area level is read back through a probe: plain downscales of
  the training HR images, noisy at known sigmas, compressed at the target's quality. That gives
  the sigma there was before compression. The pipeline's ranges are then scaled until the noise
  its own LR carries before the final compression (LR with noise less LR of the same seeds
  without) is that sigma;
- blur: the recipe's blur kernels, resizes and sinc filters are one family at a strength from 0
  (a plain downscale) to a little over the recipe's own, set by bisection until the pipeline's
  output blur matches the target's. A target as sharp as a plain downscale gets none: training on
  blurred LR teaches a model to sharpen, which over-sharpens noise and blocks.
Every value stays within SAFETY bounds; keys the user set are never touched.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
import torch

from zerosr.automations.base import Decision
from zerosr.data.estimate import Estimate, blur_sigma, estimate_image, flat_noise
from zerosr.data.realistic import DegradationSettings, degrade_batch

SAFETY = {"noise": (0.0, 50.0), "poisson": (0.0, 4.5), "quality": (10.0, 100.0), "blur": (0.1, 4.0),
          "resize": (0.1, 2.0)}
# Poisson scale giving the same sigma as Gaussian noise of 1 (0-255) at mid-grey with 256 levels.
POISSON_PER_SIGMA = 1.0 / (255.0 * (0.5 / 256) ** 0.5)
NOISE_KEYS = ("noise_range", "noise_range2", "poisson_scale_range", "poisson_scale_range2")
BLUR_KEYS = ("blur_sigma", "blur_sigma2", "resize_range", "resize_range2", "sinc_prob", "sinc_prob2",
             "second_blur_prob", "final_sinc_prob")
JPEG_KEYS = ("jpeg_range", "jpeg_range2", "compress_last_prob")
MAX_TARGET_IMAGES = 64
CALIBRATION_SAMPLES = 64
NOISE_ROUNDS = 3
BLUR_STEPS = 5
MAX_STRENGTH = 1.35  # blur strength at which the first round's sigma reaches SAFETY["blur"] (defaults)
SHARPEST_SIGMA = 0.2  # a Gaussian this narrow leaves an image as it is
PROBE_SIGMAS = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 12.0, 15.0, 18.0, 22.0, 27.0, 33.0, 40.0, 50.0)


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


def _lr_pixels(lr: torch.Tensor) -> list[np.ndarray]:
    return [img.permute(1, 2, 0).numpy() * 255.0 for img in lr]


def _seeds(hr: torch.Tensor, round_: int) -> list[int]:
    """Fresh seeds each round, so the ranges do not fit one seed set's luck."""
    return [round_ * hr.shape[0] + i for i in range(hr.shape[0])]


def output_noise(settings: DegradationSettings, hr: torch.Tensor, scale: int, round_: int) -> float:
    """Median over samples of the noise the pipeline leaves in its LR before the final compression
    (sigma, 0-255): the LR with noise less the LR of the same seeds without. A sample draws the
    same blur, resizes and qualities either way (a zero range still takes its draw), so the
    difference is the noise alone, after what the resizes, filters and first compression did to it."""
    lossless = dataclasses.replace(settings, jpeg_range2=[100.0, 100.0])
    quiet = dataclasses.replace(lossless, **{key: [0.0, 0.0] for key in NOISE_KEYS})
    seeds = _seeds(hr, round_)
    difference = degrade_batch(hr, seeds, lossless, scale) - degrade_batch(hr, seeds, quiet, scale)
    return float(np.median((difference * 255.0).flatten(1).std(dim=1).numpy()))


def output_blur(settings: DegradationSettings, hr: torch.Tensor, scale: int, round_: int) -> float | None:
    """Median blur (pixels) of the pipeline's LR."""
    return _median([blur_sigma(p) for p in _lr_pixels(degrade_batch(hr, _seeds(hr, round_), settings, scale))])


def noise_probe(hr: torch.Tensor, scale: int, quality: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Flat-area noise of plain downscales of `hr` with Gaussian noise of each PROBE_SIGMAS added
    and then, if the target is JPEG, compressed at its quality: (levels (sigmas, images), curve).
    The curve (median over the images, made monotone) turns a flat level into the noise sigma
    there was before compression. Photos of the same kind go through it as through the pipeline,
    so their texture's share of the level is accounted for; the spread over the images at one
    sigma is what texture alone adds to a folder's spread."""
    from zerosr.data.degrade import bicubic_downscale

    clean = [bicubic_downscale(img.permute(1, 2, 0).numpy(), scale) * 255.0 for img in hr]
    rng = np.random.default_rng(0)
    levels = np.zeros((len(PROBE_SIGMAS), len(clean)))
    for row, sigma in enumerate(PROBE_SIGMAS):
        for column, image in enumerate(clean):
            pixels = np.clip(np.round(image + rng.normal(0.0, sigma, image.shape)), 0, 255).astype(np.uint8)
            if quality is not None:
                _, encoded = cv2.imencode(".jpg", np.ascontiguousarray(pixels[:, :, ::-1]),
                                          [cv2.IMWRITE_JPEG_QUALITY, int(round(quality))])
                pixels = cv2.imdecode(encoded, cv2.IMREAD_COLOR)[:, :, ::-1]
            levels[row, column] = flat_noise(pixels.astype(np.float32))
    return levels, np.maximum.accumulate(np.median(levels, axis=1))


def _spread(values: np.ndarray) -> float:
    return float(np.percentile(values, 90) - np.percentile(values, 10))


def probe_sigma(curve: np.ndarray, level: float | np.ndarray) -> float | np.ndarray:
    """The noise sigma (before compression) whose probe level is `level`; 0 at or below the clean one."""
    return np.interp(level, curve, PROBE_SIGMAS)


def blur_strength(settings: DegradationSettings, t: float, fixed=lambda key: False) -> DegradationSettings:
    """The blur family (kernel sigmas, resize ranges, sinc and second-blur probabilities) at
    strength `t`: 0 neither blurs, resizes nor rings, so the LR is a plain downscale of the HR;
    1 is `settings`' own; above 1 the sigmas and resize ranges grow on within SAFETY."""
    new = dataclasses.replace(settings)
    for key in ("blur_sigma", "blur_sigma2"):
        if not fixed(key):
            low, high = getattr(settings, key)
            low = min(low, SHARPEST_SIGMA)
            setattr(new, key, _clamp(low, low + t * (high - low), SAFETY["blur"]))
    for key in ("resize_range", "resize_range2"):
        if not fixed(key):
            low, high = getattr(settings, key)
            setattr(new, key, _clamp(1.0 - t * max(1.0 - low, 0.0), 1.0 + t * max(high - 1.0, 0.0), SAFETY["resize"]))
    for key in ("sinc_prob", "sinc_prob2", "second_blur_prob", "final_sinc_prob"):
        if not fixed(key):
            setattr(new, key, round(float(min(1.0, t * getattr(settings, key))), 3))
    return new


def _set_noise(new: DegradationSettings, low: float, high: float, fixed) -> None:
    for key in ("noise_range", "noise_range2"):
        if not fixed(key):
            setattr(new, key, _clamp(low, high, SAFETY["noise"]))
    for key, gaussian in (("poisson_scale_range", "noise_range"), ("poisson_scale_range2", "noise_range2")):
        if not fixed(key):
            sigma = getattr(new, gaussian)
            setattr(new, key, _clamp(sigma[0] * POISSON_PER_SIGMA, sigma[1] * POISSON_PER_SIGMA, SAFETY["poisson"]))


def calibrate(settings: DegradationSettings, target: TargetProfile, hr_images: Iterable[np.ndarray], scale: int,
              user_set: Iterable[str] = ()) -> tuple[DegradationSettings, Decision]:
    """New settings centred on `target`, and the decision that records why."""
    user_set = set(user_set)
    new = dataclasses.replace(settings)
    fixed = lambda key: key in user_set  # noqa: E731
    target_blur = _median([e.blur_sigma for e in target.estimates])  # None: no edges to measure
    target_flat = np.array([e.flat_noise for e in target.estimates])
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
    if summary["jpeg_quality"] is not None and not fixed("compress_last_prob"):
        new.compress_last_prob = 1.0

    # Noise: the target's flat level read back through the probe as the sigma there was before
    # compression (JPEG hides most of it from any level measured after it).
    hr = _crops(hr_images, scale, side=96 * scale, count=CALIBRATION_SAMPLES)
    levels, curve = noise_probe(hr, scale, summary["jpeg_quality"])
    sigma_target = float(probe_sigma(curve, float(np.median(target_flat))))
    # The target's 10th-90th percentile spread less what texture alone spreads at that sigma
    # (in quadrature); at least a quarter of the sigma either side.
    nearest = int(np.argmin(np.abs(np.asarray(PROBE_SIGMAS) - sigma_target)))
    texture = _spread(probe_sigma(curve, levels[nearest]))
    half = max(0.5 * float(np.sqrt(max(_spread(probe_sigma(curve, target_flat)) ** 2 - texture**2, 0.0))),
               0.25 * sigma_target)
    sigma_low, sigma_high = max(sigma_target - half, 0.0), sigma_target + half
    # Blur: the recipe's blur, resizes and sinc filters only where the target is blurrier than a
    # plain downscale of the training images shows; otherwise they teach the model to sharpen
    # what needs no sharpening.
    strength, gain, round_ = 0.0, 1.0, 0
    noise_out, blur_out = 0.0, None

    def match_noise(new: DegradationSettings) -> DegradationSettings:
        nonlocal gain, round_, noise_out
        for _ in range(NOISE_ROUNDS):
            _set_noise(new, gain * sigma_low, gain * sigma_high, fixed)
            noise_out = output_noise(new, hr, scale, round_)
            round_ += 1
            gain *= float(np.clip(max(sigma_target, 0.5) / max(noise_out, 0.5), 1 / 3, 3.0))
            gain = float(np.clip(gain, 0.02, 20.0))
        _set_noise(new, gain * sigma_low, gain * sigma_high, fixed)
        return new

    def blur_at(t: float) -> float | None:
        nonlocal round_
        round_ += 1
        return output_blur(_with_strength(settings, new, t, fixed), hr, scale, round_)

    new = match_noise(_with_strength(settings, new, 0.0, fixed))
    blur_out = blur_at(0.0)
    if target_blur is not None and blur_out is not None and blur_out < target_blur - 0.05:
        low_t, high_t = 0.0, MAX_STRENGTH
        for _ in range(BLUR_STEPS):
            strength = (low_t + high_t) / 2
            measured = blur_at(strength)
            if measured is not None and measured > target_blur:
                high_t = strength
            else:
                low_t = strength
        strength = round((low_t + high_t) / 2, 3)
        new = match_noise(_with_strength(settings, new, strength, fixed))
        blur_out = blur_at(strength)

    change = {}
    for key in NOISE_KEYS + BLUR_KEYS + JPEG_KEYS:
        old, value = getattr(settings, key), getattr(new, key)
        old, value = (list(old), list(value)) if isinstance(old, list) else (old, value)
        if old != value:
            change[key] = (old, value)
    kept = sorted(user_set & set(NOISE_KEYS + BLUR_KEYS + JPEG_KEYS))
    reason = (f"target {target.folder or 'folder'} ({len(target.estimates)} images): noise sigma "
              f"{summary['noise_sigma']:g} ({sigma_target:.1f} before compression), {jpeg_note}, blur sigma "
              f"{_text(summary['blur_sigma'])} px; blur strength {strength:g} of the recipe's; pipeline output "
              f"now noise {noise_out:.1f} before compression, blur {_text(blur_out)}"
              + (f"; user keys kept: {kept}" if kept else ""))
    return new, Decision(0, "degradation", change, reason)


def _with_strength(settings: DegradationSettings, current: DegradationSettings, t: float, fixed) -> DegradationSettings:
    """`current` with the blur family of `settings` at strength t (noise and JPEG kept)."""
    blurred = blur_strength(settings, t, fixed)
    return dataclasses.replace(current, **{key: getattr(blurred, key) for key in BLUR_KEYS})
