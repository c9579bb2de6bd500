"""ESRGAN's generator (RRDBNet), in the "old" layout chaiNNer's loader reads (`model.N...`).

A 3x3 stem, residual-in-residual dense blocks (three 5-convolution dense blocks each, residuals
scaled by 0.2) closed by a 3x3 convolution and a long skip, then nearest x2 enlargements each
followed by a 3x3 convolution with LeakyReLU(0.2), and two 3x3 convolutions at full size.
At scale 2 the input is pixel-unshuffled by 2 first (Real-ESRGAN's x2 form: 12 input channels,
an x4 body, reflect padding to even sizes and a crop), exactly as spandrel's `ESRGAN` (0.4.2)
loads such files; scales 4 and 8 run directly. `pixel_unshuffle=False` gives the original x2 form
(one enlargement step). Files in the newer key layouts (Real-ESRGAN's `conv_first`/`body.N.rdbM`,
BSRGAN's `RRDB_trunk`) are renamed to this layout on reading, as spandrel does.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from .layout import recognise_option, same_layout, seq_len
from .spec import Family, Tiling

# x2 runs an x4 body on a pixel-unshuffled input; x3 has no form spandrel reads back.
SCALES: tuple[int, ...] = (2, 4, 8)
GROWTH = 32
RESIDUAL_SCALE = 0.2
SLOPE = 0.2


def _conv(c_in: int, c_out: int, act: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1)]
    if act:
        layers.append(nn.LeakyReLU(SLOPE, inplace=True))
    return nn.Sequential(*layers)


class DenseBlock(nn.Module):
    """Five 3x3 convolutions, each seeing the block input and every earlier output."""

    def __init__(self, nf: int) -> None:
        super().__init__()
        for index in range(1, 5):
            self.add_module(f"conv{index}", _conv(nf + (index - 1) * GROWTH, GROWTH, act=True))
        self.conv5 = _conv(nf + 4 * GROWTH, nf, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            features.append(conv(torch.cat(features, 1)))
        return self.conv5(torch.cat(features, 1)) * RESIDUAL_SCALE + x


class RRDB(nn.Module):
    def __init__(self, nf: int) -> None:
        super().__init__()
        self.RDB1 = DenseBlock(nf)
        self.RDB2 = DenseBlock(nf)
        self.RDB3 = DenseBlock(nf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.RDB3(self.RDB2(self.RDB1(x))) * RESIDUAL_SCALE + x


class LongSkip(nn.Module):
    def __init__(self, sub: nn.Module) -> None:
        super().__init__()
        self.sub = sub

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.sub(x)


def unshuffle_factor(scale: int) -> int:
    """Real-ESRGAN's convention: x2 (and x1) bodies are x4 bodies on a pixel-unshuffled input."""
    return {1: 4, 2: 2}.get(scale, 1)


class ESRGAN(nn.Module):
    def __init__(
        self,
        scale: int = 4,
        num_filters: int = 64,
        num_blocks: int = 23,
        pixel_unshuffle: bool = True,
        in_channels: int = 3,
        out_channels: int = 3,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.shuffle = unshuffle_factor(scale) if pixel_unshuffle else 1
        body_scale = scale * self.shuffle
        steps = int(math.log2(body_scale))
        if 2**steps != body_scale:
            raise ValueError(f"ESRGAN scales are powers of two, not {scale}")
        nf = num_filters
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels * self.shuffle**2, nf, 3, padding=1),
            LongSkip(nn.Sequential(*(RRDB(nf) for _ in range(num_blocks)), nn.Conv2d(nf, nf, 3, padding=1))),
        ]
        for _ in range(steps):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(nf, nf, 3, padding=1), nn.LeakyReLU(SLOPE, inplace=True)]
        layers += [nn.Conv2d(nf, nf, 3, padding=1), nn.LeakyReLU(SLOPE, inplace=True), nn.Conv2d(nf, out_channels, 3, padding=1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shuffle == 1:
            return self.model(x)
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % self.shuffle, -width % self.shuffle
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        out = self.model(F.pixel_unshuffle(x, self.shuffle))
        return out[:, :, : height * self.scale, : width * self.scale]


# traiNNer-redux's factories of the same names (pixel-unshuffle at x2, as there).
VARIANTS: dict[str, dict] = {
    "esrgan": {"num_filters": 64, "num_blocks": 23, "pixel_unshuffle": True},
    "esrgan_lite": {"num_filters": 32, "num_blocks": 12, "pixel_unshuffle": True},
}


# Newer key layouts -> this one (Real-ESRGAN / BasicSR names first, BSRGAN's second).
_BLOCK = re.compile(r"^(?:body|RRDB_trunk)\.(\d+)\.(?:rdb|RDB)(\d)\.conv(\d)\.(weight|bias)$")
_UP = re.compile(r"^(?:conv_up|upconv)(\d)\.(weight|bias)$")


def to_old_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename Real-ESRGAN / BSRGAN keys to the `model.N` layout; other dicts come back as they are."""
    if "conv_first.weight" not in state:
        return state
    blocks = 1 + max((int(m.group(1)) for m in map(_BLOCK.match, state) if m), default=-1)
    ups = sorted({int(m.group(1)) for m in map(_UP.match, state) if m})
    last_up = 3 * max(ups, default=0)
    renamed = {}
    for key, value in state.items():
        kind = key.rsplit(".", 1)[-1]
        block, up = _BLOCK.match(key), _UP.match(key)
        if block:
            index, rdb, conv, _ = block.groups()
            new = f"model.1.sub.{index}.RDB{rdb}.conv{conv}.0.{kind}"
        elif up:
            new = f"model.{3 * int(up.group(1))}.{kind}"
        else:
            new = {
                "conv_first": "model.0",
                "conv_body": f"model.1.sub.{blocks}",
                "trunk_conv": f"model.1.sub.{blocks}",
                "conv_hr": f"model.{last_up + 2}",
                "HRconv": f"model.{last_up + 2}",
                "conv_last": f"model.{last_up + 4}",
            }.get(key.rsplit(".", 1)[0])
            if new is None:
                return state  # something this layout does not have: leave it unrecognised
            new = f"{new}.{kind}"
        renamed[new] = value
    return renamed


def recognise(state: dict[str, torch.Tensor]) -> tuple[int, dict] | None:
    """(scale, hyper-parameters) of an ESRGAN state dict (any of the three layouts), else None.

    Read as spandrel reads it: 12 or 48 input channels mean a pixel-unshuffled x2 or x1 body.
    ESRGAN+ files (`conv1x1`) are not supported.
    """
    state = to_old_layout(state)
    stem = state.get("model.0.weight")
    if stem is None or stem.dim() != 4 or "model.1.sub.0.RDB1.conv1.0.weight" not in state:
        return None
    steps = (seq_len(state, "model") - 5) // 3
    shuffle = {3: 1, 12: 2, 48: 4}.get(int(stem.shape[1]))
    if shuffle is None or steps < 1:
        return None
    scale = 2**steps // shuffle
    params = {
        "num_filters": int(stem.shape[0]),
        "num_blocks": seq_len(state, "model.1.sub") - 1,
        "pixel_unshuffle": shuffle > 1 or scale > 2,
    }
    if scale not in SCALES or not same_layout(state, lambda: ESRGAN(scale, **params)):
        return None
    return scale, params


FAMILY = Family(
    name="ESRGAN",
    network=ESRGAN,
    scales=SCALES,
    recognise=recognise_option(recognise),
    # ~350 LR pixels of receptive field; 32 keep tiled outputs within 0.01/255 on initialised
    # networks. The x2 form unshuffles 2x2 pixel blocks: tiles start on even pixels.
    tiling=lambda model: Tiling(context=32, grid=model.shuffle),
    feature_width=lambda params: params["num_filters"],
    onnx=True,
    onnx_min_opset=11,
    spandrel=True,
    rename=to_old_layout,
)
