"""The realistic degradation pipeline's settings: every range and probability, with the published
Real-ESRGAN x4 values as defaults. Plain data on the bottom floor (no torch), so the config schema
types `data.degradation.*` with it and composing a config stays light.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from zerosr.errors import UserError

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")


def _kernels() -> list[str]:
    return list(KERNEL_TYPES)


def _values(*values: float):
    return field(default_factory=lambda: list(values))


@dataclass
class DegradationSettings:
    """Every range and probability of the pipeline; defaults are the published Real-ESRGAN x4 values.

    Noise sigmas are on the 0-255 scale; qualities 1-100; blur sigmas in pixels of the image they
    blur (the HR for the first round). Keys ending in 2 are the second round's."""

    blur_kernel_size: int = 21  # largest kernel; each sample draws an odd size from 7 up to this
    kernel_list: list[str] = field(default_factory=_kernels)
    kernel_prob: list[float] = _values(0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1
    blur_sigma: list[float] = _values(0.2, 3.0)
    betag_range: list[float] = _values(0.5, 4.0)
    betap_range: list[float] = _values(1.0, 2.0)
    resize_prob: list[float] = _values(0.2, 0.7, 0.1)  # up, down, keep
    resize_range: list[float] = _values(0.15, 1.5)
    resize_modes: list[str] = field(default_factory=lambda: list(RESIZE_MODES))
    gaussian_noise_prob: float = 0.5  # else Poisson
    noise_range: list[float] = _values(1.0, 30.0)
    poisson_scale_range: list[float] = _values(0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: list[float] = _values(30.0, 95.0)
    webp_prob: float = 0.0  # share of compressions done as WebP (not in Real-ESRGAN; CPU codec)
    second_order_prob: float = 1.0
    second_blur_prob: float = 0.8
    kernel_list2: list[str] = field(default_factory=_kernels)
    kernel_prob2: list[float] = _values(0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob2: float = 0.1
    blur_sigma2: list[float] = _values(0.2, 1.5)
    betag_range2: list[float] = _values(0.5, 4.0)
    betap_range2: list[float] = _values(1.0, 2.0)
    resize_prob2: list[float] = _values(0.3, 0.4, 0.3)
    resize_range2: list[float] = _values(0.3, 1.2)  # relative to the final LR size
    gaussian_noise_prob2: float = 0.5
    noise_range2: list[float] = _values(1.0, 25.0)
    poisson_scale_range2: list[float] = _values(0.05, 2.5)
    gray_noise_prob2: float = 0.4
    jpeg_range2: list[float] = _values(30.0, 95.0)  # the final compression
    final_sinc_prob: float = 0.8
    compress_last_prob: float = 0.5  # final stage: compress after the resize to LR size (else before)

    def check(self, prefix: str = "data.degradation") -> None:
        """Raise UserError naming the first bad key and its fix."""
        for f in fields(self):
            value, key = getattr(self, f.name), f"{prefix}.{f.name}"
            if isinstance(value, float) and "prob" in f.name and not 0.0 <= value <= 1.0:
                raise UserError(f"{key}={value} must be a probability in [0, 1]")
            if f.name.endswith(("_range", "_range2", "blur_sigma", "blur_sigma2")):
                if len(value) != 2 or not 0.0 <= value[0] <= value[1]:
                    raise UserError(f"{key}={list(value)} must be [low, high] with 0 <= low <= high")
        for suffix in ("", "2"):
            kinds, probs = getattr(self, "kernel_list" + suffix), getattr(self, "kernel_prob" + suffix)
            unknown = sorted(set(kinds) - set(KERNEL_TYPES))
            if unknown or len(kinds) != len(probs) or not kinds or min(probs) < 0 or sum(probs) <= 0:
                raise UserError(f"{prefix}.kernel_list{suffix}={list(kinds)} with kernel_prob{suffix}="
                                f"{list(probs)}: give one non-negative probability per kernel, kernels from "
                                f"{', '.join(KERNEL_TYPES)}")
            resize = getattr(self, "resize_prob" + suffix)
            if len(resize) != 3 or min(resize) < 0 or sum(resize) <= 0:
                raise UserError(f"{prefix}.resize_prob{suffix}={list(resize)} must be three non-negative "
                                "weights: [up, down, keep]")
            quality = getattr(self, "jpeg_range" + suffix)
            if not 1 <= quality[0] <= quality[1] <= 100:
                raise UserError(f"{prefix}.jpeg_range{suffix}={list(quality)} must lie within [1, 100]")
        if sorted(set(self.resize_modes) - set(RESIZE_MODES)) or not self.resize_modes:
            raise UserError(f"{prefix}.resize_modes={list(self.resize_modes)}: use some of {', '.join(RESIZE_MODES)}")
        if self.blur_kernel_size % 2 == 0 or not 7 <= self.blur_kernel_size <= 41:
            raise UserError(f"{prefix}.blur_kernel_size={self.blur_kernel_size} must be odd, from 7 to 41")

    @classmethod
    def from_config(cls, node) -> DegradationSettings:
        """From `data.degradation` (an OmegaConf node or a mapping; the run may hold a plain resolved copy)."""
        if isinstance(node, cls):
            return node
        from omegaconf import OmegaConf

        values = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
        return cls(**values)
