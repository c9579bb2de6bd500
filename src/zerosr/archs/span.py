"""SPAN (Swift Parameter-free Attention Network), in the layout chaiNNer's model loader reads.

Six attention blocks whose "attention" is parameter-free: each block's output is gated by
sigmoid(features) - 0.5. Every 3x3 convolution is trained as a re-parameterisable branch pair
(a 1x1 skip plus a 1x1 -> 3x3 -> 1x1 chain) and runs at inference as the single 3x3 convolution
the pair collapses to, kept in `eval_conv`.

State-dict keys, shapes and the forward pass are those of spandrel's `SPAN` (0.4.2), so weights
move both ways; the implementation is our own:
- the collapsed kernel is computed with two tensor contractions instead of convolutions of kernels;
- training runs the collapsed kernel too, differentiably: since every branch is linear, the
  function and the gradients of the branch parameters are the same, and a step costs a fraction;
- `eval_conv` takes no gradient (it is overwritten from the branches before every inference).
`norm=True` shifts the input by an RGB mean and multiplies by 255 (outputs are not rescaled back,
as in spandrel); `norm=False` registers the `no_norm` buffer that tells spandrel so.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layout import recognise_option, same_layout, shuffle_scale
from .spec import Family, Tiling

RGB_MEAN = (0.4488, 0.4371, 0.4040)
SCALES: tuple[int, ...] = (2, 3, 4, 8)
NUM_BLOCKS = 6


class RepConv3x3(nn.Module):
    """A 3x3 convolution trained as skip (1x1) + expand (1x1) -> 3x3 -> project (1x1) branches."""

    def __init__(self, c_in: int, c_out: int, gain: int = 2) -> None:
        super().__init__()
        self.sk = nn.Conv2d(c_in, c_out, 1)
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, c_in * gain, 1),
            nn.Conv2d(c_in * gain, c_out * gain, 3),  # valid: the input is padded before the first 1x1
            nn.Conv2d(c_out * gain, c_out, 1),
        )
        self.eval_conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.eval_conv.requires_grad_(False)
        self.register_state_dict_post_hook(_save_collapsed)

    def collapsed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of the one 3x3 convolution equal to both branches."""
        expand, middle, project = self.conv
        w1, w2, w3 = expand.weight[:, :, 0, 0], middle.weight, project.weight[:, :, 0, 0]
        weight = torch.einsum("on,nmhw,mi->oihw", w3, w2, w1)
        bias = w3 @ (torch.einsum("nmhw,m->n", w2, expand.bias) + middle.bias) + project.bias
        weight = weight + F.pad(self.sk.weight, (1, 1, 1, 1))
        return weight, bias + self.sk.bias

    def refresh(self) -> None:
        """Write the collapsed kernel into `eval_conv`, as spandrel does before inference."""
        with torch.no_grad():
            weight, bias = self.collapsed()
            self.eval_conv.weight.copy_(weight)
            self.eval_conv.bias.copy_(bias)

    def train(self, mode: bool = True) -> RepConv3x3:
        super().train(mode)
        if not mode:
            self.refresh()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            # Training also runs the collapsed kernel: the branches are linear, so this is the same
            # function of the same parameters (same gradients) at a quarter of the work.
            weight, bias = self.collapsed()
            return F.conv2d(x, weight, bias, padding=1)
        if not torch.onnx.is_in_onnx_export():  # weights may have changed since eval(); export reads them as they are
            self.refresh()
        return self.eval_conv(x)


def _save_collapsed(module: RepConv3x3, state: dict, prefix: str, local_metadata: dict) -> None:
    """Saved weights always carry the current collapsed kernel in `eval_conv`, so a file is the
    same whether or not the network last ran in eval mode (tools that read `eval_conv` directly
    get the trained kernel)."""
    if module.sk.weight.device.type == "meta":
        return
    with torch.no_grad():
        weight, bias = module.collapsed()
    for name, value in (("weight", weight), ("bias", bias)):
        key = f"{prefix}eval_conv.{name}"
        if key in state:
            state[key] = value.detach().to(state[key].dtype)


class AttentionBlock(nn.Module):
    """Three re-parameterised convolutions with SiLU, gated by sigmoid(out) - 0.5."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.c1_r = RepConv3x3(channels, channels)
        self.c2_r = RepConv3x3(channels, channels)
        self.c3_r = RepConv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first = F.silu(self.c1_r(x))
        out = self.c3_r(F.silu(self.c2_r(first)))
        gate = torch.sigmoid(out) - 0.5
        return (out + x) * gate, first


class SPAN(nn.Module):
    def __init__(
        self, scale: int = 4, feature_channels: int = 48, norm: bool = True, in_channels: int = 3, out_channels: int = 3
    ) -> None:
        super().__init__()
        self.scale = scale
        self.norm = norm
        if not norm:
            self.register_buffer("no_norm", torch.zeros(1))  # spandrel's marker for norm=False
        self.register_buffer("rgb_mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        self.conv_1 = RepConv3x3(in_channels, feature_channels)
        for index in range(1, NUM_BLOCKS + 1):
            self.add_module(f"block_{index}", AttentionBlock(feature_channels))
        self.conv_cat = nn.Conv2d(feature_channels * 4, feature_channels, 1)
        self.conv_2 = RepConv3x3(feature_channels, feature_channels)
        self.upsampler = nn.Sequential(
            nn.Conv2d(feature_channels, out_channels * scale * scale, 3, padding=1),
            nn.PixelShuffle(scale),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm:
            x = (x - self.rgb_mean.to(x.dtype)) * 255.0
        stem = self.conv_1(x)
        out = stem
        first_of_last = None
        outputs = []
        for index in range(1, NUM_BLOCKS + 1):
            out, first_of_last = getattr(self, f"block_{index}")(out)
            outputs.append(out)
        tail = self.conv_2(out)
        merged = self.conv_cat(torch.cat([stem, tail, outputs[0], first_of_last], 1))
        return self.upsampler(merged)


# traiNNer-redux's factories (`span`, `span_s`): no input normalisation.
VARIANTS: dict[str, dict] = {
    "span": {"feature_channels": 52, "norm": False},
    "span_s": {"feature_channels": 48, "norm": False},
}


def recognise(state: dict[str, torch.Tensor]) -> tuple[int, dict] | None:
    """(scale, hyper-parameters) of a SPAN state dict, read as spandrel reads it; else None."""
    stem, up = state.get("conv_1.sk.weight"), state.get("upsampler.0.weight")
    if stem is None or up is None or stem.dim() != 4 or stem.shape[1] != 3 or "block_1.c1_r.eval_conv.weight" not in state:
        return None
    scale = shuffle_scale(up.shape[0])
    params = {"feature_channels": int(stem.shape[0]), "norm": "no_norm" not in state}
    if scale is None or not same_layout(state, lambda: SPAN(scale, **params)):
        return None
    return scale, params


FAMILY = Family(
    name="SPAN",
    network=SPAN,
    scales=SCALES,
    recognise=recognise_option(recognise),
    # Receptive field: 20 chained 3x3 convolutions and the upsampler's 3x3: exact at 21 LR pixels.
    tiling=lambda model: Tiling(context=21),
    feature_width=lambda params: params["feature_channels"],
    onnx=True,
    onnx_min_opset=11,
    spandrel=True,
)
