"""LPIPS (v0.1, AlexNet or VGG16) and DISTS: learned distances between images, lower is closer.

Both take RGB batches in [0, 1], N x 3 x H x W, and return one value per image (N,).

- LPIPS (Zhang et al. 2018, v0.1): the input mapped to [-1, 1], then shifted and scaled per channel
  (shift -0.030, -0.088, -0.188; scale 0.458, 0.448, 0.450); the feature maps after the ReLUs
  that end each of five stages (AlexNet: relu1..relu5; VGG16: relu1_2, relu2_2, relu3_3, relu4_3,
  relu5_3) are unit-normalised along channels (eps 1e-10), their squared difference is weighted
  per channel by the published linear head (a 1x1 convolution without bias), averaged over space
  and summed over the stages.
- DISTS (Ding et al. 2020): ImageNet mean/std normalisation; VGG16 whose max-pools are replaced
  by an L2 pooling (the squared map filtered by a normalised 3x3 Hann window, stride 2, padding 1,
  then the square root of it + 1e-12); at the image and the five stage outputs, per channel, a
  structure term from the means and a texture term from the (co)variances over the whole map
  (c1 = c2 = 1e-6), weighted by the published alpha and beta (normalised by their joint sum):
  DISTS = 1 - sum(alpha * S1 + beta * S2).

The backbones take torchvision's state-dict layout (`features.<index>.weight`), the heads the
authors' published files. Without paths they come through `zerosr.pretrained` (downloaded once).
Modules are frozen; gradients flow to the inputs (DISTS doubles as a loss).
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zerosr import pretrained
from zerosr.errors import UserError

Path = str | os.PathLike

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)

# torchvision `features` layouts: ("conv", in, out, kernel, stride, padding), ("relu",), ("pool", kernel, stride).
_ALEXNET = [("conv", 3, 64, 11, 4, 2), ("relu",), ("pool", 3, 2), ("conv", 64, 192, 5, 1, 2), ("relu",), ("pool", 3, 2),
            ("conv", 192, 384, 3, 1, 1), ("relu",), ("conv", 384, 256, 3, 1, 1), ("relu",),
            ("conv", 256, 256, 3, 1, 1), ("relu",), ("pool", 3, 2)]
_VGG16_WIDTHS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def _vgg_layout(widths: list) -> list[tuple]:
    layout, channels = [], 3
    for width in widths:
        if width == "M":
            layout.append(("pool", 2, 2))
        else:
            layout += [("conv", channels, width, 3, 1, 1), ("relu",)]
            channels = width
    return layout


def _build(layout: list[tuple], end: int) -> nn.Sequential:
    """torchvision's `features[:end]`, with non-inplace ReLUs (stage outputs are kept)."""
    layers: list[nn.Module] = []
    for spec in layout[:end]:
        if spec[0] == "conv":
            _, cin, cout, kernel, stride, padding = spec
            layers.append(nn.Conv2d(cin, cout, kernel, stride, padding))
        elif spec[0] == "relu":
            layers.append(nn.ReLU())
        else:
            layers.append(nn.MaxPool2d(spec[1], spec[2]))
    return nn.Sequential(*layers)


def load_backbone(features: nn.Sequential, path: Path, what: str) -> None:
    """Copy torchvision `features.<i>.*` tensors from `path` into `features`; other keys are ignored."""
    state = pretrained.read_state_dict(path, f"{what} weights")
    wanted = {}
    for key, tensor in features.state_dict().items():
        source = f"features.{key}"
        if source not in state:
            raise UserError(f"{what} weights '{path}' lack '{source}': use a torchvision {what} state dict")
        if state[source].shape != tensor.shape:
            raise UserError(f"{what} weights '{path}' have {source} of shape {tuple(state[source].shape)}, "
                            f"expected {tuple(tensor.shape)}: use a torchvision {what} state dict")
        wanted[key] = state[source]
    features.load_state_dict(wanted)


class _Frozen(nn.Module):
    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)  # always eval: the metric is fixed


class LPIPS(_Frozen):
    """LPIPS v0.1: `net` is "alex" or "vgg"."""

    STAGE_ENDS = {"alex": (2, 5, 8, 10, 12), "vgg": (4, 9, 16, 23, 30)}
    CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}

    def __init__(self, net: str = "alex", backbone_path: Path | None = None, head_path: Path | None = None):
        super().__init__()
        if net not in self.STAGE_ENDS:
            raise UserError(f"LPIPS net '{net}' is unknown: use alex or vgg")
        self.net = net
        ends = self.STAGE_ENDS[net]
        layout = _ALEXNET if net == "alex" else _vgg_layout(_VGG16_WIDTHS)
        self.features = _build(layout, ends[-1])
        self.stage_ends = ends
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self.CHANNELS[net])
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        backbone = "alexnet" if net == "alex" else "vgg16"
        load_backbone(self.features, backbone_path or pretrained.path_of(backbone), backbone)
        self._load_heads(head_path or pretrained.path_of(f"lpips_{net}"))
        self._freeze()

    def _load_heads(self, path: Path) -> None:
        """The published file's keys are `lin<k>.model.1.weight` (index 0 is a dropout)."""
        state = pretrained.read_state_dict(path, f"LPIPS {self.net} head")
        for k, head in enumerate(self.heads):
            key = f"lin{k}.model.1.weight"
            if key not in state or state[key].shape != head.weight.shape:
                raise UserError(f"LPIPS {self.net} head '{path}' lacks {key} of shape {tuple(head.weight.shape)}: "
                                f"use the published v0.1 {self.net}.pth")
            head.weight.data.copy_(state[key])

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, start = [], 0
        for end in self.stage_ends:
            x = self.features[start:end](x)
            out.append(x)
            start = end
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = ((2 * x - 1) - self.shift) / self.scale
        y = ((2 * y - 1) - self.shift) / self.scale
        total = 0
        for head, fx, fy in zip(self.heads, self.stages(x), self.stages(y)):
            diff = (_unit(fx) - _unit(fy)) ** 2
            total = total + head(diff).mean(dim=(2, 3))
        return total.flatten()


def _unit(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return features / (torch.sqrt(torch.sum(features**2, dim=1, keepdim=True)) + eps)


class L2Pool(nn.Module):
    """DISTS's replacement for max-pooling: sqrt(hann3x3 * x^2 + 1e-12), stride 2."""

    def __init__(self, channels: int):
        super().__init__()
        taps = np.hanning(5)[1:-1]
        window = torch.tensor(taps[:, None] * taps[None, :], dtype=torch.float32)
        window = window / window.sum()
        self.register_buffer("window", window[None, None].repeat(channels, 1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x**2, self.window, stride=2, padding=1, groups=x.shape[1])
        return (out + 1e-12).sqrt()


class DISTS(_Frozen):
    # Where each stage of VGG16's features ends (after relu1_2 ... relu5_3); the max-pool that
    # begins stages 2..5 is an L2 pool here.
    STAGE_ENDS = (4, 9, 16, 23, 30)
    CHANNELS = (3, 64, 128, 256, 512, 512)

    def __init__(self, backbone_path: Path | None = None, weights_path: Path | None = None):
        super().__init__()
        layout = _vgg_layout(_VGG16_WIDTHS)
        self.features = _build(layout, 30)
        for index, channels in ((4, 64), (9, 128), (16, 256), (23, 512)):
            self.features[index] = L2Pool(channels)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        load_backbone(self.features, backbone_path or pretrained.path_of("vgg16"), "vgg16")
        state = pretrained.read_state_dict(weights_path or pretrained.path_of("dists"), "DISTS alpha/beta")
        size = (1, sum(self.CHANNELS), 1, 1)
        if any(k not in state or tuple(state[k].shape) != size for k in ("alpha", "beta")):
            raise UserError(f"DISTS weights '{weights_path}' lack alpha and beta of shape {size}: use the published weights.pt")
        total = state["alpha"].sum() + state["beta"].sum()
        self.register_buffer("alpha", (state["alpha"] / total).float(), persistent=False)
        self.register_buffer("beta", (state["beta"] / total).float(), persistent=False)
        self._freeze()

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, start = [x], 0
        h = (x - self.mean) / self.std
        for end in self.STAGE_ENDS:
            h = self.features[start:end](h)
            out.append(h)
            start = end
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c1 = c2 = 1e-6
        structure = texture = 0
        alphas = torch.split(self.alpha, self.CHANNELS, dim=1)
        betas = torch.split(self.beta, self.CHANNELS, dim=1)
        for fx, fy, alpha, beta in zip(self.stages(x), self.stages(y), alphas, betas):
            mx, my = fx.mean((2, 3), keepdim=True), fy.mean((2, 3), keepdim=True)
            s1 = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
            vx, vy = ((fx - mx) ** 2).mean((2, 3), keepdim=True), ((fy - my) ** 2).mean((2, 3), keepdim=True)
            cov = (fx * fy).mean((2, 3), keepdim=True) - mx * my
            s2 = (2 * cov + c2) / (vx + vy + c2)
            structure = structure + (alpha * s1).sum(1, keepdim=True)
            texture = texture + (beta * s2).sum(1, keepdim=True)
        return (1 - (structure + texture)).flatten()
