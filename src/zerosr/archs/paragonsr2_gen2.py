"""ParagonSR2, current generation: realtime, stream, photo and pro.

    output = MagicKernelSharp2021(x) + detail_gain * conv_out(PixelShuffle(up(conv_mid(body(conv_in(x))))))

An own implementation of the network in Phhofm/ParagonSR2 (`traiNNer/archs/paragonsr2_arch.py`,
MIT, commit 921e57d). Module names and parameter shapes are the reference's, so state dicts
move both ways; modules are created in the same order, so a seeded build draws the same initial
weights. Every forward computes the same function, quirks included:

- the window attention pads the map with zeros to whole windows, and its shifted windows roll
  cyclically without a mask, so the last window row/column mixes the far edge with the near one;
- a PhotoBlock uses one layer scale for its convolution and its attention branch;
- the body's residual groups have no residual connection of their own.

What differs is how the work is done (equal to float32 rounding): activations stay
channels-last, so the attention's NHWC views cost no copies; the attention's output projection
runs after the window grid is undone, on real pixels only; the token dictionary's value and
output projections are folded into one 64 x 64 table per step, since the dictionary is the same
for every image and softmax rows sum to one; layer scales are fused into their residual adds.

`attention_mode` picks the attention kernel: "sdpa" (default), "flex" (FlexAttention; falls back
to SDPA where the installed torch has none, same function) or None (no attention modules, as
`export_safe=True`, which the reference offers for TensorRT/ONNX deployment). With attention,
ONNX export still works: while exporting, the window grid is computed in tensor arithmetic so
the graph keeps a dynamic height and width.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .spec import Family, Recognised, Tiling

BLOCK_TYPES = ("realtime", "stream", "photo", "pro")
SCALES = (2, 3, 4, 8)
ATTENTION_MODES = ("sdpa", "flex", None)


def scaled_add(residual: torch.Tensor, x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """residual + x * gamma in one pass; plain ops in ONNX export (its addcmul adds an fp32 constant)."""
    if torch.onnx.is_in_onnx_export():
        return residual + x * gamma
    return torch.addcmul(residual, x, gamma)


# --------------------------------------------------------------------------------------------
# Fixed Magic Kernel Sharp 2021 base path
# --------------------------------------------------------------------------------------------

MAGIC_KERNEL = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)
MAGIC_SHARP_2021 = (-1 / 32, 0.0, 9 / 32, 16 / 32, 9 / 32, 0.0, -1 / 32)


class SeparableConv(nn.Module):
    """A frozen 1-D kernel applied per channel along width, then height.

    Like the reference it keeps the taps as a buffer and the two convolutions as frozen
    parameters: all three are in the state dict and the convolutions in the parameter count.
    """

    def __init__(self, channels: int, taps: tuple[float, ...]) -> None:
        super().__init__()
        size = len(taps)
        kernel = torch.tensor(taps)
        self.register_buffer("kernel", kernel)
        self.h = nn.Conv2d(channels, channels, (1, size), padding=(0, size // 2), groups=channels, bias=False)
        self.v = nn.Conv2d(channels, channels, (size, 1), padding=(size // 2, 0), groups=channels, bias=False)
        with torch.no_grad():
            self.h.weight.copy_(kernel.view(1, 1, 1, size).expand(channels, 1, 1, size))
            self.v.weight.copy_(kernel.view(1, 1, size, 1).expand(channels, 1, size, 1))
        for weight in self.parameters():
            weight.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.v(self.h(x))


class MagicKernelSharp2021Upsample(nn.Module):
    """Classical upsampler: optional sharpening, nearest-neighbour enlargement, B-spline blur."""

    def __init__(self, channels: int, scale: int, alpha: float) -> None:
        super().__init__()
        self.scale = scale
        self.alpha = float(alpha)
        self.sharp = SeparableConv(channels, MAGIC_SHARP_2021)
        self.blur = SeparableConv(channels, MAGIC_KERNEL)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.alpha > 0:
            x = torch.lerp(x, self.sharp(x), self.alpha)
        return self.blur(F.interpolate(x, scale_factor=self.scale, mode="nearest"))


# --------------------------------------------------------------------------------------------
# Normalisation and residual scaling
# --------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """Normalise each pixel's channel vector by its root mean square (computed in float32)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(channels, 1, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inverse = torch.rsqrt(x.float().square().mean(dim=1, keepdim=True) + self.eps).to(x.dtype)
        return torch.addcmul(self.bias, x * inverse, self.scale)


class LayerScale(nn.Module):
    """A learned per-channel factor on a residual branch, starting small (1e-5)."""

    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma

    def residual_add(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return scaled_add(residual, x, self.gamma)


# --------------------------------------------------------------------------------------------
# Window attention
# --------------------------------------------------------------------------------------------


@functools.cache
def flex_attention_or_none():
    """torch's FlexAttention, or None where this build has none (SDPA computes the same)."""
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError:
        return None
    return flex_attention


def _pad_to_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """Zero-pad (B, H, W, C) at the bottom and right to whole windows."""
    height, width = x.shape[1], x.shape[2]
    if torch.onnx.is_in_onnx_export():
        # Sizes are traced tensors here: pad by gathering rows/columns (clamped) and zeroing the
        # extra ones, so the graph pads correctly for every input size.
        for dim, length in ((1, height), (2, width)):
            length = length if isinstance(length, torch.Tensor) else torch.tensor(length)
            padded = torch.div(length + window - 1, window, rounding_mode="floor") * window
            position = torch.arange(padded)
            x = torch.index_select(x, dim, torch.clamp(position, max=length - 1))
            keep = (position < length).to(x.dtype)
            x = x * (keep.view(1, -1, 1, 1) if dim == 1 else keep.view(1, 1, -1, 1))
        return x
    return F.pad(x, (0, 0, 0, -width % window, 0, -height % window))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping windows, optionally cyclically shifted.

    Takes and returns (B, H, W, C). The map is zero-padded to whole windows; the padded tokens
    take part as keys and values (their projections are the biases), as in the reference.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 16, shift_size: int = 0, attention_mode: str = "sdpa") -> None:
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.attention_mode = attention_mode
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        window, shift, heads = self.window_size, self.shift_size, self.num_heads
        x = _pad_to_windows(x, window)
        if shift > 0:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        rows, cols = x.shape[1] // window, x.shape[2] // window
        # (B, Hp, Wp, C) -> (B * windows, tokens, C): the window grid as a batch of sequences.
        x = x.reshape(batch, rows, window, cols, window, channels).transpose(2, 3).reshape(-1, window * window, channels)
        q, k, v = self.qkv(x).reshape(x.shape[0], window * window, 3, heads, channels // heads).permute(2, 0, 3, 1, 4)
        x = self._attend(q, k, v)
        # (B * windows, heads, tokens, head_dim) -> (B, Hp, Wp, C)
        x = x.transpose(1, 2).reshape(batch, rows, cols, window, window, channels).transpose(2, 3)
        x = x.reshape(batch, rows * window, cols * window, channels)
        if shift > 0:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        # The projection is per token, so it runs after cropping: on real pixels only.
        return self.proj(x[:, :height, :width])

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.attention_mode == "flex" and not torch.onnx.is_in_onnx_export():
            flex_attention = flex_attention_or_none()
            if flex_attention is not None:
                return flex_attention(q, k, v)
        if torch.onnx.is_in_onnx_export():
            # Written out, so every opset and runtime gets plain MatMul/Softmax nodes.
            scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))
            return torch.matmul(scores.softmax(dim=-1), v)
        return F.scaled_dot_product_attention(q, k, v)


def _attention_branch(norm: RMSNorm, attention: WindowAttention, x: torch.Tensor) -> torch.Tensor:
    """norm -> window attention on the NHWC view of a (B, C, H, W) map -> back to (B, C, H, W)."""
    return attention(norm(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


class NanoBlock(nn.Module):
    """realtime: 1x1 expansion, depthwise 3x3 + GELU, 1x1 projection, layer-scaled residual."""

    def __init__(self, dim: int, expansion: float = 2.0, **_unused) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.conv1 = nn.Conv2d(dim, hidden, 1)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.conv2 = nn.Conv2d(hidden, dim, 1)
        self.scale = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale.residual_add(x, self.conv2(F.gelu(self.dw(self.conv1(x)))))


class StreamBlock(nn.Module):
    """stream: depthwise 3x3 and dilated 3x3 context, fused; gated feed-forward; layer-scaled residual."""

    def __init__(self, dim: int, expansion: float = 2.0, **_unused) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.dw1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.dw3 = nn.Conv2d(dim, dim, 3, padding=3, dilation=3, groups=dim)
        self.fuse = nn.Conv2d(dim * 2, dim, 1)
        self.proj = nn.Conv2d(dim, hidden * 2, 1)
        self.gate = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2)
        self.out = nn.Conv2d(hidden, dim, 1)
        self.scale = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fuse(torch.cat([self.dw1(x), self.dw3(x)], dim=1))
        a, b = self.gate(self.proj(y)).chunk(2, dim=1)
        # The product in float32, clamped to the float16 range (the reference's fp16 guard).
        gated = (a.float() * b.float()).clamp(-65504, 65504).to(a.dtype)
        return self.scale.residual_add(x, self.out(gated))


class PhotoBlock(nn.Module):
    """photo: RMSNorm'd convolutional mixing, then (unless export-safe) window attention.

    Both branches share one layer scale, as in the reference.
    """

    def __init__(
        self,
        dim: int,
        expansion: float = 2.0,
        attention_mode: str | None = "sdpa",
        export_safe: bool = False,
        window_size: int = 16,
        shift_size: int = 0,
        **_unused,
    ) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.norm = RMSNorm(dim)
        self.conv1 = nn.Conv2d(dim, hidden, 1)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.conv2 = nn.Conv2d(hidden, dim, 1)
        self.scale = LayerScale(dim)
        self.has_attention = attention_mode is not None and not export_safe
        if self.has_attention:
            self.attn_norm = RMSNorm(dim)
            self.attn = WindowAttention(dim, 4, window_size, shift_size, attention_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.scale.residual_add(x, self.conv2(F.gelu(self.dw(self.conv1(self.norm(x))))))
        if self.has_attention:
            x = self.scale.residual_add(x, _attention_branch(self.attn_norm, self.attn, x))
        return x


class TokenDictionaryCA(nn.Module):
    """Cross-attention from every pixel to a learned dictionary of 64 tokens."""

    def __init__(self, dim: int, num_tokens: int = 64, reducted_dim: int = 16) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.reducted_dim = reducted_dim
        self.token_dict = nn.Parameter(torch.randn(1, num_tokens, dim) * 0.02)
        self.q_proj = nn.Linear(dim, reducted_dim)
        self.k_proj = nn.Linear(dim, reducted_dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        tokens = self.token_dict[0]
        keys = self.k_proj(tokens)  # (T, r)
        # out_proj(softmax(.) @ v_proj(tokens)) == softmax(.) @ out_proj(v_proj(tokens)): each
        # row of the softmax sums to one, so the output bias passes through unchanged.
        values = self.out_proj(self.v_proj(tokens))  # (T, C)
        scores = torch.matmul(self.q_proj(x) * self.reducted_dim**-0.5, keys.t())
        return torch.matmul(scores.softmax(dim=-1), values)


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: a per-channel sigmoid gate from the global average."""

    def __init__(self, dim: int, reduction: int = 16) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(dim, dim // reduction, bias=False),
            nn.GELU(),
            nn.Linear(dim // reduction, dim, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=(2, 3))).view(x.shape[0], x.shape[1], 1, 1)


class ProBlock(nn.Module):
    """pro: convolutional mixing, channel attention, window attention, token dictionary."""

    def __init__(
        self,
        dim: int,
        expansion: float = 2.0,
        num_tokens: int = 64,
        window_size: int = 8,
        shift_size: int = 0,
        attention_mode: str | None = "sdpa",
        export_safe: bool = False,
        **_unused,
    ) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.norm1 = RMSNorm(dim)
        self.conv1 = nn.Conv2d(dim, hidden, 1)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.conv2 = nn.Conv2d(hidden, dim, 1)
        self.scale1 = LayerScale(dim)
        self.channel_attn = ChannelAttention(dim)
        self.scale2 = LayerScale(dim)
        self.has_attention = attention_mode is not None and not export_safe
        if self.has_attention:
            self.norm3 = RMSNorm(dim)
            self.window_attn = WindowAttention(dim, 4, window_size, shift_size, attention_mode)
            self.scale3 = LayerScale(dim)
        self.norm4 = RMSNorm(dim)
        self.token_ca = TokenDictionaryCA(dim, num_tokens=num_tokens)
        self.scale4 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.scale1.residual_add(x, self.conv2(F.gelu(self.dw(self.conv1(self.norm1(x))))))
        x = self.scale2.residual_add(x, self.channel_attn(x))
        if self.has_attention:
            x = self.scale3.residual_add(x, _attention_branch(self.norm3, self.window_attn, x))
        mixed = self.token_ca(self.norm4(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.scale4.residual_add(x, mixed)


class ResidualGroup(nn.Module):
    """A run of blocks (no residual of its own), each optionally recomputed in the backward pass."""

    def __init__(self, blocks: list[nn.Module], checkpointing: bool = False) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.checkpointing = checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointing and x.requires_grad and torch.is_grad_enabled():
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=False)
            return x
        return self.blocks(x)


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


class ParagonSR2Gen2(nn.Module):
    """LR (B, in_chans, H, W) -> HR (B, in_chans, scale*H, scale*W).

    `variant` is the block type (realtime, stream, photo, pro). `use_checkpointing` recomputes
    each block in the backward pass (less activation memory, same results). `attention_mode`
    and `export_safe` as in the module docstring; `window_size` is the attention window.
    """

    def __init__(
        self,
        scale: int = 4,
        in_chans: int = 3,
        num_feat: int = 64,
        num_groups: int = 4,
        num_blocks: int = 4,
        variant: str = "photo",
        detail_gain: float = 0.1,
        upsampler_alpha: float = 0.5,
        use_checkpointing: bool = False,
        attention_mode: str | None = "sdpa",
        export_safe: bool = False,
        window_size: int = 8,
    ) -> None:
        super().__init__()
        if variant not in BLOCK_TYPES:
            raise ValueError(f"variant must be one of {', '.join(BLOCK_TYPES)}, got {variant!r}")
        if attention_mode not in ATTENTION_MODES:
            raise ValueError(f"attention_mode must be sdpa, flex or null, got {attention_mode!r}")
        if min(scale, in_chans, num_feat, num_groups, num_blocks, window_size) < 1:
            raise ValueError("scale, in_chans, num_feat, num_groups, num_blocks and window_size must be >= 1")
        if variant in ("photo", "pro") and num_feat % 4:
            raise ValueError(f"num_feat must be a multiple of the 4 attention heads, got {num_feat}")
        self.scale = scale
        self.num_feat = num_feat
        self.variant = variant
        self.window_size = window_size
        self.has_attention = variant in ("photo", "pro") and attention_mode is not None and not export_safe

        # Creation order matches the reference so a seeded build draws identical weights.
        self.base = MagicKernelSharp2021Upsample(in_chans, scale, upsampler_alpha)
        self.conv_in = nn.Conv2d(in_chans, num_feat, 3, padding=1)
        block_class = {"realtime": NanoBlock, "stream": StreamBlock, "photo": PhotoBlock, "pro": ProBlock}[variant]
        options = {"attention_mode": attention_mode, "export_safe": export_safe, "window_size": window_size}

        def block(index: int) -> nn.Module:  # odd blocks (counted over the whole body) shift
            return block_class(num_feat, shift_size=window_size // 2 if index % 2 else 0, **options)

        self.body = nn.Sequential(
            *[
                ResidualGroup([block(g * num_blocks + i) for i in range(num_blocks)], checkpointing=use_checkpointing)
                for g in range(num_groups)
            ]
        )
        self.conv_mid = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.up = nn.Sequential(nn.Conv2d(num_feat, num_feat * scale * scale, 3, padding=1), nn.PixelShuffle(scale))
        self.conv_out = nn.Conv2d(num_feat, in_chans, 3, padding=1)
        self.detail_gain = nn.Parameter(torch.tensor(float(detail_gain)))

    @property
    def tile_alignment(self) -> int:
        """Tiles whose origin is a multiple of this attend over the whole image's window grid."""
        return self.window_size if self.has_attention else 1

    def set_checkpointing(self, enabled: bool) -> None:
        for group in self.body:
            group.checkpointing = bool(enabled)

    def forward(
        self,
        x: torch.Tensor,
        feature_tap: bool = False,
        prev_feat: torch.Tensor | None = None,
        alpha: float = 0.2,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """`prev_feat` blends a previous frame's `conv_in` features in (video); `feature_tap`
        also returns this frame's, as the reference does."""
        if not torch.onnx.is_in_onnx_export():
            # Channels-last activations: oneDNN convolutions skip layout conversions, and the
            # attention's NHWC views of the maps are free.
            x = x.contiguous(memory_format=torch.channels_last)
        base = self.base(x)
        feat = self.conv_in(x)
        if prev_feat is not None:
            feat = torch.lerp(feat, prev_feat.to(feat.dtype), alpha)
        tapped = feat
        feat = self.up(self.conv_mid(self.body(feat)))
        out = scaled_add(base, self.conv_out(feat), self.detail_gain)
        return (out, tapped) if feature_tap else out


# --------------------------------------------------------------------------------------------
# Recognising a state dict of this generation
# --------------------------------------------------------------------------------------------

# A key of the first block that only that block type has.
_BLOCK_MARKERS = {
    "pro": "body.0.blocks.0.token_ca.token_dict",
    "photo": "body.0.blocks.0.norm.scale",
    "stream": "body.0.blocks.0.dw3.weight",
    "realtime": "body.0.blocks.0.conv1.weight",
}


def recognise(state: dict[str, torch.Tensor], variants: dict[str, dict]) -> Recognised | None:
    """The option (`paragonsr2_<block type>`), scale and hyper-parameters these weights fit.

    `state` is a bare state dict (traiNNer's `params_ema` / `params` already unwrapped, wrapper
    prefixes stripped). Block type, width, depth, channels, scale and whether attention is
    present are read from the tensors; what weights do not store (sharpening alpha, window size)
    keeps the option's values. `archs.io` accepts the answer only if every key and shape agrees.
    """
    conv_in, up = state.get("conv_in.weight"), state.get("up.0.weight")
    if conv_in is None or up is None or conv_in.dim() != 4 or up.dim() != 4 or "detail_gain" not in state:
        return None
    block = next((kind for kind, key in _BLOCK_MARKERS.items() if key in state), None)
    option = f"paragonsr2_{block}"
    if option not in variants:
        return None
    num_feat, in_chans = int(conv_in.shape[0]), int(conv_in.shape[1])
    ratio, rest = divmod(int(up.shape[0]), num_feat)
    scale = round(ratio**0.5)
    if rest or scale not in SCALES or scale * scale != ratio:
        return None
    found = {
        "num_feat": num_feat,
        "num_groups": 1 + max(int(key.split(".")[1]) for key in state if key.startswith("body.")),
        "num_blocks": 1 + max(int(key.split(".")[3]) for key in state if key.startswith("body.0.blocks.")),
    }
    if in_chans != 3:
        found["in_chans"] = in_chans
    if block in ("photo", "pro"):
        attention = "body.0.blocks.0.attn.qkv.weight" if block == "photo" else "body.0.blocks.0.window_attn.qkv.weight"
        found["export_safe"] = attention not in state
    return Recognised(option, scale, {**variants[option], **found})


def _context(model: ParagonSR2Gen2) -> Tiling:
    """What tiles need. realtime and stream: their receptive field in LR pixels (conv_in, conv_mid,
    up and conv_out 1 each, the base path 4; a NanoBlock 1, a StreamBlock 4), so tiles equal the
    whole image. With window attention the field is the whole map (shifted windows pass
    information on): two windows of context and tiles on the window grid keep the difference
    small."""
    if model.has_attention:
        return Tiling(context=2 * model.window_size, grid=model.window_size)
    depth = len(model.body) * len(model.body[0].blocks)
    return Tiling(context=6 + depth * (4 if model.variant == "stream" else 1))


FAMILY = Family(
    name="ParagonSR2-gen2",
    network=ParagonSR2Gen2,
    scales=SCALES,
    recognise=recognise,
    tiling=_context,
    feature_width=lambda params: params["num_feat"],
    onnx=True,
    onnx_min_opset=12,
    run_options=("use_checkpointing",),
)
