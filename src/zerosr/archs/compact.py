"""Compact (SRVGGNetCompact, Real-ESRGAN's small network), in the layout chaiNNer's loader reads.

A plain stack of 3x3 convolutions with per-channel PReLU at low resolution, one pixel shuffle at
the end, and the nearest-neighbour enlarged input added back, so the network learns a residual.
Keys `body.N.weight/bias` (convolutions and PReLUs alternate) match spandrel's `Compact` (0.4.2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layout import recognise_option, same_layout, seq_len, shuffle_scale
from .spec import Family, Tiling

SCALES: tuple[int, ...] = (2, 3, 4, 8)
PRELU_INIT_SLOPE = 0.25  # nn.PReLU's initial slope
LAST_LAYER_SCALE = 0.1


class Compact(nn.Module):
    def __init__(self, scale: int = 4, num_feat: int = 64, num_conv: int = 16, in_channels: int = 3, out_channels: int = 3) -> None:
        super().__init__()
        self.scale = scale
        self.num_conv = num_conv
        layers: list[nn.Module] = [nn.Conv2d(in_channels, num_feat, 3, padding=1), nn.PReLU(num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, padding=1), nn.PReLU(num_feat)]
        layers.append(nn.Conv2d(num_feat, out_channels * scale * scale, 3, padding=1))
        self.body = nn.Sequential(*layers)
        self.upsampler = nn.PixelShuffle(scale)
        self._initialise()

    def _initialise(self) -> None:
        """He init for the PReLU stack (zero biases) and the last convolution at a tenth of that.

        Under PyTorch's default init the signal shrinks layer by layer: compact's first convolution
        gets about 1e-6 of the last one's gradient, and the network sat at the nearest enlargement
        for 450 of 600 iterations (docs/community-architectures.md). The small last layer starts the
        output near the enlarged input."""
        convs = [layer for layer in self.body if isinstance(layer, nn.Conv2d)]
        for conv in convs:
            nn.init.kaiming_normal_(conv.weight, a=PRELU_INIT_SLOPE, nonlinearity="leaky_relu")
            nn.init.zeros_(conv.bias)
        with torch.no_grad():
            convs[-1].weight.mul_(LAST_LAYER_SCALE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsampler(self.body(x)) + F.interpolate(x, scale_factor=self.scale, mode="nearest")


# traiNNer-redux's factories of the same names.
VARIANTS: dict[str, dict] = {
    "compact": {"num_feat": 64, "num_conv": 16},
    "ultracompact": {"num_feat": 64, "num_conv": 8},
    "superultracompact": {"num_feat": 24, "num_conv": 8},
}


def recognise(state: dict[str, torch.Tensor]) -> tuple[int, dict] | None:
    """(scale, hyper-parameters) of a Compact state dict, read as spandrel reads it; else None."""
    first, last = state.get("body.0.weight"), state.get(f"body.{seq_len(state, 'body') - 1}.bias")
    if first is None or last is None or first.dim() != 4 or first.shape[1] != 3 or "body.1.weight" not in state:
        return None
    scale = shuffle_scale(last.shape[0])
    params = {"num_feat": int(first.shape[0]), "num_conv": (seq_len(state, "body") - 3) // 2}
    if scale is None or not same_layout(state, lambda: Compact(scale, **params)):
        return None
    return scale, params


FAMILY = Family(
    name="Compact",
    network=Compact,
    scales=SCALES,
    recognise=recognise_option(recognise),
    # Receptive field: num_conv + 2 chained 3x3 convolutions: exact.
    tiling=lambda model: Tiling(context=model.num_conv + 2),
    feature_width=lambda params: params["num_feat"],
    onnx=True,
    onnx_min_opset=11,
    spandrel=True,
)
