"""On-the-fly realistic degradations (the Real-ESRGAN recipe): HR batch in, LR batch out, any device.

Per sample: blur (one of six Gaussian-family kernels or a sinc filter), a random resize (up, down
or keep; area, bilinear or bicubic), Gaussian or Poisson noise (colour or grey), JPEG (or WebP)
compression; with `second_order_prob` a second round of blur, resize and noise; then compression
and the final resize to HR/scale with an optional sinc filter, compression last with probability
`compress_last_prob` (the recipe's random order at 0.5); 8-bit rounding.

Every random choice of a sample follows its seed alone: the parameters come from
`numpy.random.default_rng(seed)`, the noise from a torch generator on the working device seeded
from them. A sample is therefore the same whatever batch it travels in (resume stays exact), and
the same on every run on the same device. `degrade_batch` batches what shares a shape (the first
blur, the final sinc filter and compression, JPEG of equal-sized images) and loops over the rest;
blur runs as an FFT product, which on a CPU costs a fraction of a 21x21 direct convolution.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from zerosr.data.jpeg import jpeg_roundtrip
from zerosr.data.kernels import pad_kernel, random_blur_kernel, sinc_kernel
from zerosr.degradation_settings import DegradationSettings
from zerosr.exact import exact_fp32

__all__ = ["DegradationSettings", "degrade_batch", "draw_params", "filter_batch"]

# --------------------------------------------------------------------------- per-sample parameters

@dataclass
class RoundParams:
    kernel: np.ndarray | None  # None: this round does not blur
    resize: tuple[str, float]  # mode, factor
    noise: tuple[str, float, bool]  # "gaussian" (sigma, 0-255) or "poisson" (scale); grey or colour


@dataclass
class SampleParams:
    first: RoundParams
    second: RoundParams | None
    compress: tuple[tuple[str, float], tuple[str, float]]  # (codec, quality) of round 1 and the final one
    final_sinc: np.ndarray | None
    final_mode: str
    compress_last: bool  # final stage order: resize and sinc, then compress (True), or the reverse
    noise_seed: int


def _resize_factor(rng: np.random.Generator, probs: Sequence[float], bounds: Sequence[float]) -> float:
    direction = int(rng.choice(3, p=np.asarray(probs, dtype=np.float64) / sum(probs)))
    if direction == 0:
        return float(rng.uniform(1.0, max(1.0, bounds[1])))
    if direction == 1:
        return float(rng.uniform(min(bounds[0], 1.0), 1.0))
    return 1.0


def _round(rng: np.random.Generator, s: DegradationSettings, suffix: str, blur_prob: float) -> RoundParams:
    get = lambda name: getattr(s, name + suffix)  # noqa: E731
    kernel = None
    if rng.random() < blur_prob:
        kernel = random_blur_kernel(rng, list(get("kernel_list")), list(get("kernel_prob")), tuple(get("blur_sigma")),
                                    tuple(get("betag_range")), tuple(get("betap_range")), get("sinc_prob"),
                                    s.blur_kernel_size)
    resize = (str(rng.choice(s.resize_modes)), _resize_factor(rng, get("resize_prob"), get("resize_range")))
    gaussian = rng.random() < get("gaussian_noise_prob")
    strength = rng.uniform(*(get("noise_range") if gaussian else get("poisson_scale_range")))
    noise = ("gaussian" if gaussian else "poisson", float(strength), bool(rng.random() < get("gray_noise_prob")))
    return RoundParams(kernel, resize, noise)


def _codec(rng: np.random.Generator, s: DegradationSettings, quality_range: Sequence[float]) -> tuple[str, float]:
    codec = "webp" if rng.random() < s.webp_prob else "jpeg"
    return codec, float(rng.uniform(*quality_range))


def draw_params(seed: int, settings: DegradationSettings) -> SampleParams:
    """Every random choice of one sample, from its seed alone."""
    rng = np.random.default_rng(int(seed))
    first = _round(rng, settings, "", 1.0)
    first_codec = _codec(rng, settings, settings.jpeg_range)
    second = None
    if rng.random() < settings.second_order_prob:
        second = _round(rng, settings, "2", settings.second_blur_prob)
    final_sinc = None
    if rng.random() < settings.final_sinc_prob:
        size = int(rng.choice(range(7, settings.blur_kernel_size + 1, 2)))
        final_sinc = sinc_kernel(size, rng.uniform(math.pi / 3, math.pi))
    final_mode = str(rng.choice(settings.resize_modes))
    final_codec = _codec(rng, settings, settings.jpeg_range2)
    return SampleParams(first, second, (first_codec, final_codec), final_sinc, final_mode,
                        bool(rng.random() < settings.compress_last_prob), int(rng.integers(2**62)))


# --------------------------------------------------------------------------- the operations

FFT_STEP = 32


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`. To a GPU through pinned memory, without waiting: a plain copy
    from pageable memory makes the host wait for the GPU's queue, once per kernel or quality."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def filter_batch(images: torch.Tensor, kernels: Sequence[np.ndarray]) -> torch.Tensor:
    """Each image (N, C, H, W) filtered by its own kernel, reflected borders, as an FFT product."""
    size = max(k.shape[0] for k in kernels)
    radius = size // 2
    n, c, h, w = images.shape
    mode = "reflect" if min(h, w) > radius else "replicate"  # reflection needs the image wider than the pad
    padded = F.pad(images, (radius, radius, radius, radius), mode=mode)
    # The transform's size rounded up to a multiple of FFT_STEP: the zeros past the pad never
    # reach the cropped result, and the few sizes that remain reuse their FFT plans (cuFFT's
    # plan cache) where every second-round size would make a new one.
    ph, pw = (-(-size // FFT_STEP) * FFT_STEP for size in padded.shape[-2:])
    padded = F.pad(padded, (0, pw - padded.shape[-1], 0, ph - padded.shape[-2]))
    stacked = to_device(torch.from_numpy(np.stack([pad_kernel(k, size) for k in kernels])), images.device)
    # The kernel's centre at (0, 0) of a zero plane: the circular product is then centred, and the
    # pad keeps the wrap-around out of the cropped result.
    plane = torch.zeros(n, ph, pw, device=images.device, dtype=images.dtype)
    plane[:, :size, :size] = stacked
    plane = torch.roll(plane, shifts=(-radius, -radius), dims=(1, 2))
    spectrum = torch.fft.rfft2(padded) * torch.fft.rfft2(plane)[:, None]
    return torch.fft.irfft2(spectrum, s=(ph, pw))[..., radius:radius + h, radius:radius + w]


@lru_cache(maxsize=512)
def _resize_matrix(n_in: int, n_out: int, mode: str, device: str) -> torch.Tensor:
    """(n_out, n_in) matrix of one axis of F.interpolate's resize: the three modes are separable,
    so two small matrix products give F.interpolate's result at a fraction of its CPU cost."""
    eye = torch.eye(n_in, dtype=torch.float64)[:, None, :, None]  # n_in one-pixel columns
    if mode == "area":
        rows = F.adaptive_avg_pool2d(eye, (n_out, 1))
    else:
        rows = F.interpolate(eye, size=(n_out, 1), mode=mode, align_corners=False)
    return rows[:, 0, :, 0].T.float().to(device)


def _resize(image: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    size = (max(1, size[0]), max(1, size[1]))
    h, w = image.shape[-2:]
    if (h, w) == size:
        return image
    device = str(image.device)
    return _resize_matrix(h, size[0], mode, device) @ image @ _resize_matrix(w, size[1], mode, device).T


def _add_noise(image: torch.Tensor, noise: tuple[str, float, bool], generator: torch.Generator) -> torch.Tensor:
    kind, strength, gray = noise
    channels = 1 if gray else image.shape[1]
    if kind == "gaussian":
        shape = (image.shape[0], channels, *image.shape[2:])
        sample = torch.randn(shape, generator=generator, device=image.device, dtype=image.dtype)
        return image + sample * (strength / 255.0)
    # Poisson: photon counts at as many levels as the 8-bit image uses (rounded up to a power of 2).
    source = image.mean(1, keepdim=True) if gray else image
    quantised = torch.round(source.clamp(0, 1) * 255.0) / 255.0
    # Counted on the device: reading the count back would stall the GPU once per sample.
    levels = (torch.bincount((quantised * 255.0).long().flatten(), minlength=256) > 0).sum().clamp(min=2)
    peak = torch.exp2(torch.ceil(torch.log2(levels.double()))).to(image.dtype)
    counts = torch.poisson(quantised * peak, generator=generator)
    return image + (counts / peak - quantised) * strength


def _webp_roundtrip(image: torch.Tensor, quality: float) -> torch.Tensor:
    """WebP has no torch codec: this one sample goes through libwebp on the CPU and back."""
    pixels = (image[0].clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()
    ok, encoded = cv2.imencode(".webp", np.ascontiguousarray(pixels[:, :, ::-1]),
                               [cv2.IMWRITE_WEBP_QUALITY, int(round(quality))])
    decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR)[:, :, ::-1]
    return torch.from_numpy(decoded.copy()).permute(2, 0, 1)[None].to(image.device, image.dtype) / 255.0


def _compress(images: list[torch.Tensor], codecs: list[tuple[str, float]]) -> list[torch.Tensor]:
    """All JPEGs in one call, WebP one by one. JPEG works in 16x16 macroblocks, so an image padded
    by edge repetition to the batch's largest size decodes to exactly what it would alone."""
    out = list(images)
    jpeg = []
    for i, (codec, quality) in enumerate(codecs):
        if codec == "webp":
            out[i] = _webp_roundtrip(images[i], quality)
        else:
            jpeg.append(i)
    if not jpeg:
        return out
    height = max(images[i].shape[-2] for i in jpeg)
    width = max(images[i].shape[-1] for i in jpeg)
    height, width = height + (-height) % 16, width + (-width) % 16
    batch = torch.cat([F.pad(images[i], (0, width - images[i].shape[-1], 0, height - images[i].shape[-2]),
                             mode="replicate") for i in jpeg])
    quality = to_device(torch.tensor([round(codecs[i][1]) for i in jpeg], dtype=torch.float32), batch.device)
    for i, result in zip(jpeg, jpeg_roundtrip(batch, quality).split(1)):
        out[i] = result[..., :images[i].shape[-2], :images[i].shape[-1]]
    return out


def _filter_some(images: torch.Tensor, kernels: list[np.ndarray | None]) -> torch.Tensor:
    chosen = [i for i, k in enumerate(kernels) if k is not None]
    if not chosen:
        return images
    images = images.clone()
    images[chosen] = filter_batch(images[chosen], [kernels[i] for i in chosen])
    return images


# --------------------------------------------------------------------------- the pipeline

@contextlib.contextmanager
def _one_cpu_thread(device: torch.device):
    """The pipeline is many small operations: on a CPU, one thread runs them faster than several,
    and on a busy machine many times faster (measured: 8 against 150 ms a sample on 2 loaded cores)."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def degrade_batch(hr: torch.Tensor, seeds: Sequence[int] | torch.Tensor, settings: DegradationSettings,
                  scale: int, device: torch.device | str | None = None) -> torch.Tensor:
    """LR images (N, 3, H//scale, W//scale) in [0, 1], 8-bit levels, from HR (N, 3, H, W) in [0, 1].

    Runs on `device` (default: where `hr` is); sample i follows `seeds[i]` alone."""
    device = torch.device(device) if device is not None else hr.device
    with _one_cpu_thread(device), exact_fp32():  # TF32 would move pixels off the CPU's LR
        return _degrade(hr, seeds, settings, scale, device)


def _degrade(hr: torch.Tensor, seeds: Sequence[int] | torch.Tensor, settings: DegradationSettings,
             scale: int, device: torch.device) -> torch.Tensor:
    seeds = [int(s) for s in (seeds.tolist() if isinstance(seeds, torch.Tensor) else seeds)]
    if len(seeds) != hr.shape[0]:
        raise ValueError(f"{hr.shape[0]} images but {len(seeds)} seeds")
    params = [draw_params(seed, settings) for seed in seeds]
    generators = [torch.Generator(device=device).manual_seed(p.noise_seed) for p in params]
    hr = hr.to(device=device, dtype=torch.float32)
    out_size = (hr.shape[-2] // scale, hr.shape[-1] // scale)

    # Round 1: every HR has the same size, so the blur is one batched call.
    x = _filter_some(hr, [p.first.kernel for p in params])
    images = []
    for i, p in enumerate(params):
        mode, factor = p.first.resize
        image = _resize(x[i:i + 1], (int(hr.shape[-2] * factor), int(hr.shape[-1] * factor)), mode)
        images.append(_add_noise(image, p.first.noise, generators[i]))
    images = _compress(images, [p.compress[0] for p in params])

    # Round 2 (sizes differ from sample to sample: one at a time).
    for i, p in enumerate(params):
        if p.second is None:
            continue
        image = images[i]
        if p.second.kernel is not None:
            image = filter_batch(image, [p.second.kernel])
        mode, factor = p.second.resize
        image = _resize(image, (int(out_size[0] * factor), int(out_size[1] * factor)), mode)
        images[i] = _add_noise(image, p.second.noise, generators[i])

    # Final stage: compression before or after the resize to the LR size and the sinc filter.
    early = [i for i, p in enumerate(params) if not p.compress_last]
    for i, result in zip(early, _compress([images[i] for i in early], [params[i].compress[1] for i in early])):
        images[i] = result
    lr = torch.cat([_resize(image, out_size, p.final_mode) for image, p in zip(images, params)])
    lr = _filter_some(lr, [p.final_sinc for p in params])
    late = [i for i, p in enumerate(params) if p.compress_last]
    compressed = _compress([lr[i:i + 1] for i in late], [params[i].compress[1] for i in late])
    if late:
        lr = lr.clone()
        lr[late] = torch.cat(compressed)
    return torch.round(lr.clamp(0, 1) * 255.0) / 255.0
