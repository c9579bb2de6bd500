"""The validation metrics by name, which way each is better, and the rules that pick them.

One home for the selection decision: `select_metric(losses)` is what `train.select_metric`
derives, `val_metrics(losses)` what `train.val_metrics` derives; the best model, early stopping,
the LR controller's validation signal, the summary and the value a sweeper optimises all read the
chosen `Metric`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from zerosr.errors import UserError


@dataclass(frozen=True)
class Metric:
    name: str  # as in train.val_metrics
    higher_is_better: bool
    unit: str  # shown after values ("dB" or "")
    label: str  # how lines and plots name it
    min_delta: float  # early stopping: the least gain that counts as better
    fmt: str  # how values print

    @property
    def key(self) -> str:
        return f"val/{self.name}"

    @property
    def direction(self) -> str:
        """Optuna's word for it."""
        return "maximize" if self.higher_is_better else "minimize"

    @property
    def worst(self) -> float:
        return -math.inf if self.higher_is_better else math.inf

    def better(self, value: float, best: float, margin: float = 0.0) -> bool:
        """`value` beats `best` by more than `margin` (in the metric's units)."""
        return value > best + margin if self.higher_is_better else value < best - margin

    def show(self, value: float) -> str:
        return f"{value:{self.fmt}}" + (f" {self.unit}" if self.unit else "")

    def error_margin(self, best: float, rel_threshold: float) -> float:
        """The gain that is the same progress as a `rel_threshold` relative fall of the error the
        metric measures: PSNR is -10 log10 of the error, so a fixed dB step; SSIM's error is 1 - SSIM;
        a distance is its own error. Keeps the LR controller's plateau test one rule for all."""
        if rel_threshold >= 1:
            return math.inf
        if self.name == "psnr":
            return -10.0 * math.log10(1.0 - rel_threshold)
        error = (1.0 - best) if self.name == "ssim" else best
        return rel_threshold * abs(error)


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("psnr", True, "dB", "PSNR", 0.01, ".2f"),
    Metric("ssim", True, "", "SSIM", 1e-4, ".4f"),
    Metric("lpips", False, "", "LPIPS", 1e-4, ".4f"),  # AlexNet, the authors' default
    Metric("lpips_vgg", False, "", "LPIPS-VGG", 1e-4, ".4f"),
    Metric("dists", False, "", "DISTS", 1e-4, ".4f"),
)}
PERCEPTUAL = ("lpips", "lpips_vgg", "dists")  # need pretrained networks; cost time


def metric(name: str, key: str = "train.select_metric") -> Metric:
    if name not in METRICS:
        raise UserError(f"{key}={name} is not a metric: use one of {', '.join(METRICS)}")
    return METRICS[name]


def check_names(names: Iterable[str], key: str = "train.val_metrics") -> list[str]:
    """The names, each known (else one line naming it and the choices)."""
    names = [str(n) for n in names]
    for name in names:
        if name not in METRICS:
            raise UserError(f"{key}: '{name}' is not a metric: use names from {', '.join(METRICS)}, "
                            f"e.g. {key}=[psnr,ssim,lpips,dists]")
    return names


def computed(val_metrics: Iterable[str], select: str) -> list[str]:
    """What validation computes: PSNR and SSIM always (they cost nothing), the listed ones, and
    the selection metric, in catalog order."""
    wanted = {"psnr", "ssim", select, *val_metrics}
    return [name for name in METRICS if name in wanted]


# Loss targets that make a run trade pixel fidelity for texture.
_PERCEPTUAL_LOSSES = ("PerceptualLoss", "DISTSLoss", "GANLoss")


def _perceptual_terms(losses) -> list[str]:
    found = []
    for entry in losses or []:
        target = str(entry.get("_target_", "")) if hasattr(entry, "get") else ""
        if target.rsplit(".", 1)[-1] in _PERCEPTUAL_LOSSES and float(entry.get("weight", 1.0)) > 0:
            found.append(target.rsplit(".", 1)[-1])
    return found


def select_metric(losses) -> str:
    """DISTS when a perceptual or GAN term trains the network (PSNR would pick its blurriest
    checkpoint; DISTS tolerates texture resampling that LPIPS counts as error), else PSNR."""
    return "dists" if _perceptual_terms(losses) else "psnr"


def select_reason(losses) -> str:
    terms = _perceptual_terms(losses)
    if terms:
        return f"derived: train.losses has {', '.join(sorted(set(terms)))}, a term that trades PSNR for texture"
    return "derived: pixel/SSIM losses only"


def val_metrics(losses) -> list[str]:
    """PSNR and SSIM always; LPIPS and DISTS too when a perceptual or GAN term is trained."""
    return ["psnr", "ssim", "lpips", "dists"] if _perceptual_terms(losses) else ["psnr", "ssim"]


def early_stop_min_delta(name: str) -> float:
    return metric(str(name)).min_delta if name in METRICS else 0.01


def build_network(name: str):
    """The network behind a perceptual metric, weights through `zerosr.pretrained`."""
    from zerosr.metrics.perceptual import DISTS, LPIPS

    return {"lpips": lambda: LPIPS("alex"), "lpips_vgg": lambda: LPIPS("vgg"), "dists": DISTS}[name]()
