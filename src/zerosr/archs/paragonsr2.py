"""ParagonSR2 (hybrid generation): a learned detail path on top of a fixed MagicKernelSharp base.

    output = MagicKernelSharp(x) + gain(x) * conv_out(PixelShuffle(body(conv_in(x))))

A clean re-implementation of `traiNNer/archs/paragonsr2_arch.py` from traiNNer-redux (MIT, commit
069b6d59). Module names and parameter shapes are kept so state dicts move both ways, modules are
created in the same order so a seeded build draws the same initial weights, and every forward
computes the same function, including the reference's quirks (a window grid that can leave up to
8 border rows out of the attention, scores scaled by the token count rather than the head size).

What differs is only how the work is done (same results to float32 rounding, 1e-14 in float64):
- attention: query/key/value once per feature map instead of once per window; fade weights and
  their normalisation built once per input size and cached; scores scaled through the queries;
- the channel gate is folded into the following 1x1 projection, and RMSNorm has a hand-written
  backward, which saves several full-size passes per block;
- activations run channels-last on CPU as well, layer scales are fused into their residual adds;
- an export form of the window attention computes the window grid with tensor arithmetic, so
  ONNX graphs keep dynamic height and width.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

SCALES: tuple[int, ...] = (2, 3, 4, 8)


def multiply_add(base: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """base + x * factor: one fused pass, except in ONNX export, where the exporter's addcmul
    adds a float32 constant that would turn fp16 graphs partly into fp32."""
    if torch.onnx.is_in_onnx_export():
        return base + x * factor
    return torch.addcmul(base, x, factor)


# --------------------------------------------------------------------------------------------
# Fixed MagicKernelSharp2021 base path
# --------------------------------------------------------------------------------------------

MAGIC_KERNEL = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)
MAGIC_SHARP_2021 = (-1 / 32, 0.0, 9 / 32, 16 / 32, 9 / 32, 0.0, -1 / 32)


class SeparableConv(nn.Module):
    """A frozen depthwise 1-D kernel applied along width, then height.

    The kernels are stored as (non-trainable) parameters because the reference does, so they are
    part of the state dict and of the parameter count.
    """

    def __init__(self, channels: int, taps: tuple[float, ...]) -> None:
        super().__init__()
        size = len(taps)
        self.conv_h = nn.Conv2d(channels, channels, (1, size), padding=(0, size // 2), groups=channels, bias=False)
        self.conv_v = nn.Conv2d(channels, channels, (size, 1), padding=(size // 2, 0), groups=channels, bias=False)
        kernel = torch.tensor(taps)
        with torch.no_grad():
            self.conv_h.weight.copy_(kernel.view(1, 1, 1, size).expand(channels, 1, 1, size))
            self.conv_v.weight.copy_(kernel.view(1, 1, size, 1).expand(channels, 1, size, 1))
        for weight in self.parameters():
            weight.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_v(self.conv_h(x))


class MagicKernelSharp2021Upsample(nn.Module):
    """Classical upsampler: optional sharpening, nearest-neighbour enlargement, B-spline blur."""

    def __init__(self, in_channels: int, scale: int, alpha: float) -> None:
        super().__init__()
        self.scale = scale
        self.alpha = float(min(max(alpha, 0.0), 1.0))
        self.sharpen = SeparableConv(in_channels, MAGIC_SHARP_2021)
        self.resample_conv = SeparableConv(in_channels, MAGIC_KERNEL)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.alpha > 0.0:
            x = x + self.alpha * (self.sharpen(x) - x)
        return self.resample_conv(F.interpolate(x, scale_factor=self.scale, mode="nearest"))


# --------------------------------------------------------------------------------------------
# Learned upsampling
# --------------------------------------------------------------------------------------------


def icnr_init_(weight: torch.Tensor, scale: int) -> None:
    """ICNR-style initialisation exactly as the reference performs it.

    The reference draws a kaiming-normal kernel for out/scale^2 filters, tiles it spatially and
    reshapes it back to the weight's shape; that is reproduced step for step so seeded builds match.
    """
    out_ch, in_ch, kh, kw = weight.shape
    if out_ch < scale**2:
        raise ValueError(f"ICNR needs at least scale^2={scale**2} output channels, got {out_ch}")
    kernel = torch.zeros([out_ch // scale**2, in_ch, kh, kw]).transpose(0, 1)
    nn.init.kaiming_normal_(kernel)
    kernel = kernel.transpose(0, 1).repeat(1, 1, scale, scale)
    with torch.no_grad():
        weight.copy_(kernel.reshape(out_ch, in_ch, kh, kw))


class PixelShufflePack(nn.Module):
    """Sub-pixel convolution: conv to scale^2 x channels in LR space, then PixelShuffle."""

    def __init__(self, in_channels: int, out_channels: int, scale: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.up_conv = nn.Conv2d(in_channels, out_channels * scale**2, kernel_size, padding=kernel_size // 2)
        self.pixel_shuffle = nn.PixelShuffle(scale)
        icnr_init_(self.up_conv.weight, scale)
        with torch.no_grad():
            self.up_conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pixel_shuffle(self.up_conv(x))


# --------------------------------------------------------------------------------------------
# Body blocks
# --------------------------------------------------------------------------------------------


class InceptionDWConv2d(nn.Module):
    """Depthwise square and band convolutions on three small channel slices; the rest pass through."""

    def __init__(self, channels: int, band_kernel_size: int, square_kernel_size: int = 3, branch_ratio: float = 0.125) -> None:
        super().__init__()
        gc = max(1, int(channels * branch_ratio))
        self.dwconv_hw = nn.Conv2d(gc, gc, square_kernel_size, padding=square_kernel_size // 2, groups=gc)
        self.dwconv_w = nn.Conv2d(gc, gc, (1, band_kernel_size), padding=(0, band_kernel_size // 2), groups=gc)
        self.dwconv_h = nn.Conv2d(gc, gc, (band_kernel_size, 1), padding=(band_kernel_size // 2, 0), groups=gc)
        self.split_sizes = [channels - 3 * gc, gc, gc, gc]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_id, x_hw, x_w, x_h = torch.split(x, self.split_sizes, dim=1)
        return torch.cat((x_id, self.dwconv_hw(x_hw), self.dwconv_w(x_w), self.dwconv_h(x_h)), dim=1)


class LayerScale(nn.Module):
    """Per-channel residual scale; `residual_add` fuses the scaling into the skip connection."""

    def __init__(self, dim: int, init_value: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((1, dim, 1, 1), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma

    def residual_add(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return multiply_add(residual, x, self.gamma)


class CheapChannelModulation(nn.Module):
    """Squeeze-and-excitation style channel gate: x * sigmoid(MLP(mean over pixels))."""

    def __init__(self, dim: int, reduction: int = 4) -> None:
        super().__init__()
        inner = max(1, dim // reduction)
        self.net = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(dim, inner, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(inner, dim, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.net(x)


def _pixel_matrix(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """x (B, C, H, W) as a matrix view: (B, HW, C) for NHWC memory, else (B, C, HW)."""
    batch, channels, height, width = x.shape
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return x.permute(0, 2, 3, 1).reshape(batch, height * width, channels), True
    return x.reshape(batch, channels, height * width), False


def _from_pixel_matrix(m: torch.Tensor, pixel_major: bool, shape: tuple[int, int, int, int]) -> torch.Tensor:
    batch, channels, height, width = shape
    if pixel_major:
        return m.reshape(batch, height, width, channels).permute(0, 3, 1, 2)
    return m.reshape(batch, channels, height, width)


def _apply_folded(pixels: torch.Tensor, pixel_major: bool, folded: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-image 1x1 convolution with weights folded (B, O, C) on a pixel matrix."""
    if pixel_major:
        return torch.baddbmm(bias.reshape(1, 1, -1), pixels, folded.transpose(1, 2))
    return torch.baddbmm(bias.reshape(1, -1, 1), folded, pixels)


def gated_projection(x: torch.Tensor, modulation: CheapChannelModulation, project: nn.Conv2d) -> torch.Tensor:
    """project(modulation(x)) for a 1x1 convolution `project`, computed without x * gate.

    The channel gate is folded into per-image projection weights, W diag(gate_b) of (B, out, in),
    applied as one batched matrix product on a view of x. Autograd then saves that view (x's own
    storage, already kept by the layer before) and the small folded weights, never a full-size
    x * gate. Plain operators only, so torch.compile traces it without a graph break.
    """
    pixels, pixel_major = _pixel_matrix(x)
    gate = modulation.net(x)  # (B, C, 1, 1): pooled, MLP, sigmoid
    folded = project.weight.reshape(1, project.out_channels, -1) * gate.reshape(x.shape[0], 1, -1)
    out = _apply_folded(pixels, pixel_major, folded, project.bias)
    return _from_pixel_matrix(out, pixel_major, (x.shape[0], project.out_channels, x.shape[2], x.shape[3]))


class _RMSNormFunction(torch.autograd.Function):
    """offset + scale * x / (||x||_channels / sqrt(C) + eps) with a hand-derived backward.

    Autograd's chain (norm, reciprocal, two products, affine) reads and writes full-size tensors
    about twice as often backward. With xhat = x / (rms + eps) and gs = grad * scale:
        dx = gs / (rms + eps) - xhat * sum_c(gs * xhat) / (sqrt(C) * ||x||)   (0 where x = 0)
    """

    @staticmethod
    def forward(ctx, x, scale, offset, eps):
        norm = torch.linalg.vector_norm(x, 2, dim=1, keepdim=True)
        inv = 1.0 / (norm * (x.shape[1] ** -0.5) + eps)
        xhat = x * inv
        ctx.save_for_backward(xhat, inv, norm, scale)
        return torch.addcmul(offset, xhat, scale)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        xhat, inv, norm, scale = ctx.saved_tensors
        grad_xhat = grad * xhat
        grad_scale = grad_xhat.sum((0, 2, 3)).reshape(scale.shape)
        grad_offset = grad.sum((0, 2, 3)).reshape(scale.shape)
        projection = (grad_xhat * scale).sum(1, keepdim=True)
        coef = torch.where(norm > 0, projection / (norm * xhat.shape[1] ** 0.5), 0.0)
        grad_x = (grad * scale).mul_(inv).sub_(xhat * coef)
        return grad_x, grad_scale, grad_offset, None


class RMSNorm(nn.Module):
    """Normalises each pixel's channel vector by its root mean square, then an affine map."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim, 1, 1))
        self.offset = nn.Parameter(torch.zeros(dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and not torch.onnx.is_in_onnx_export():
            return _RMSNormFunction.apply(x, self.scale, self.offset, self.eps)
        rms = torch.linalg.vector_norm(x, 2, dim=1, keepdim=True) * (x.shape[1] ** -0.5)
        return multiply_add(self.offset, x * (1.0 / (rms + self.eps)), self.scale)


# --------------------------------------------------------------------------------------------
# Local window attention
# --------------------------------------------------------------------------------------------

WINDOW = 32
OVERLAP = 8


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention over all pixels of q/k/v (B, C, h, w), scores scaled by 1/sqrt(h*w)."""
    h, w = v.shape[-2:]
    tokens = h * w
    queries = q.flatten(2).transpose(1, 2) * tokens**-0.5  # scale the small operand, not the scores
    attn = torch.bmm(queries, k.flatten(2)).softmax(dim=-1)
    # (attn @ v^T) rather than (v @ attn^T): the softmax gradient then arrives contiguous.
    out = torch.bmm(attn, v.flatten(2).transpose(1, 2))
    return out.transpose(1, 2).unflatten(2, (h, w))


def _axis_windows(length: int, window_mode: bool) -> list[tuple[int, int, torch.Tensor]]:
    """(start, end, fade weights) of the windows along one axis, as the reference lays them out."""
    if not window_mode:
        return [(0, length, torch.ones(length))]
    size = min(WINDOW, length)
    overlap = min(OVERLAP, size // 4, length // 4)
    stride = size - overlap
    windows = []
    for i in range((length + overlap - 1) // stride):  # may leave the last rows uncovered
        start = i * stride
        end = min(length, start + size)
        weight = torch.ones(end - start)
        fade = min(overlap, (end - start) // 4)
        if overlap > 0 and start > 0 and fade > 0:
            weight[:fade] *= torch.linspace(0, 1, fade)
        if overlap > 0 and end < length and fade > 0:
            weight[-fade:] *= torch.linspace(1, 0, fade)
        windows.append((start, end, weight))
    return windows


@functools.lru_cache(maxsize=32)
def _window_plan(
    height: int, width: int, device: torch.device, dtype: torch.dtype
) -> list[tuple[int, int, int, int, torch.Tensor]]:
    """Windows as (row start, row end, col start, col end, normalised blend weight (h, w)).

    The reference accumulates weight * attention and divides by the accumulated weight + 1e-8;
    that division is folded into per-window weights here, which only depend on the input size.
    They are computed in float64 from the float32 fades the reference uses, then cast once.
    """
    window_mode = height > WINDOW or width > WINDOW
    rows = [(a, b, w.double()) for a, b, w in _axis_windows(height, window_mode)]
    cols = [(a, b, w.double()) for a, b, w in _axis_windows(width, window_mode)]
    row_total = torch.zeros(height, dtype=torch.float64)
    for start, end, weight in rows:
        row_total[start:end] += weight
    col_total = torch.zeros(width, dtype=torch.float64)
    for start, end, weight in cols:
        col_total[start:end] += weight
    plan = []
    for r0, r1, row_w in rows:
        for c0, c1, col_w in cols:
            blend = torch.outer(row_w, col_w) / (torch.outer(row_total[r0:r1], col_total[c0:c1]) + 1e-8)
            plan.append((r0, r1, c0, c1, blend.to(device=device, dtype=dtype)))
    return plan


def _size_tensor(size) -> torch.Tensor:
    # While tracing for ONNX, sizes already are 0-d tensors that keep the graph dynamic.
    return size if isinstance(size, torch.Tensor) else torch.tensor(size)


def _export_axis(length: torch.Tensor, window_mode: torch.Tensor):
    """Window layout along one axis in tensor arithmetic (no Python branching on the size).

    Every window is padded to WINDOW positions; windows start at multiples of WINDOW - OVERLAP,
    which also holds for the single window of a short axis. Returns the gather index (n*WINDOW,),
    validity (n, WINDOW), fade weights (n, WINDOW), tokens per window (n,), and the index/mask
    pairs that fold window positions back onto the axis (each position is in at most 2 windows).
    """
    stride = WINDOW - OVERLAP
    count = torch.clamp(torch.div(length + (OVERLAP - 1), stride, rounding_mode="floor"), min=1)
    index = torch.arange(count)
    offset = torch.arange(WINDOW)
    start = index * stride
    position = start[:, None] + offset[None, :]
    size = torch.clamp(length - start, max=WINDOW)
    valid = offset[None, :] < size[:, None]

    ramp = offset.float()
    fade = torch.clamp(torch.div(size, 4, rounding_mode="floor"), max=OVERLAP)
    top = (index[:, None] > 0) & (offset[None, :] < fade[:, None]) & window_mode
    top_ramp = ramp[None, :] / torch.clamp(fade - 1, min=1)[:, None].float()
    bottom = ((start + WINDOW) < length)[:, None] & (offset[None, :] >= WINDOW - OVERLAP) & window_mode
    bottom_ramp = (WINDOW - 1 - ramp) / (OVERLAP - 1)
    weight = valid.float() * torch.where(top, top_ramp, 1.0) * torch.where(bottom, bottom_ramp, 1.0)

    gather = torch.minimum(position, length - 1).flatten()
    axis = torch.arange(length)
    current = torch.div(axis, stride, rounding_mode="floor")
    within = axis - current * stride
    fold_current = current * WINDOW + within
    fold_previous = fold_current - OVERLAP  # same pixel, seen from the previous window's tail
    previous_ok = (current > 0) & (within < OVERLAP)
    last = count * WINDOW - 1
    fold = (
        torch.minimum(fold_current, last),
        current < count,
        torch.clamp(torch.minimum(fold_previous, last), min=0),
        previous_ok,
    )
    return gather, valid, weight, size, fold


def _fold(y: torch.Tensor, dim: int, fold) -> torch.Tensor:
    """Overlap-add window positions along `dim` back to the axis they came from."""
    cur_index, cur_ok, prev_index, prev_ok = fold
    shape = [1] * y.dim()
    shape[dim] = -1
    cur = torch.index_select(y, dim, cur_index) * cur_ok.to(y.dtype).reshape(shape)
    prev = torch.index_select(y, dim, prev_index) * prev_ok.to(y.dtype).reshape(shape)
    return cur + prev


class LocalWindowAttention(nn.Module):
    """Self-attention inside 32x32 windows overlapping by 8 pixels, blended with linear fades.

    Feature maps of at most 32x32 get one attention over all pixels. The output is
    x + gamma * attention, with gamma starting at 0.
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        reduced = max(1, channels // reduction)
        self.query = nn.Conv2d(channels, reduced, 1)
        self.key = nn.Conv2d(channels, reduced, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 1x1 convolutions commute with cropping, so computing them once covers every window.
        q, k, v = self.query(x), self.key(x), self.value(x)
        if torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting():
            return multiply_add(x, self._export_attention(q, k, v), self.gamma)
        height, width = x.shape[-2:]
        if height <= WINDOW and width <= WINDOW:
            return torch.addcmul(x, _attend(q, k, v), self.gamma)
        if torch.compiler.is_compiling():
            plan = _window_plan.__wrapped__(height, width, x.device, v.dtype)
        else:
            plan = _window_plan(height, width, x.device, v.dtype)
        mixed = torch.zeros_like(v)
        for r0, r1, c0, c1, blend in plan:
            window = (Ellipsis, slice(r0, r1), slice(c0, c1))
            mixed[window].add_(_attend(q[window], k[window], v[window]) * blend)
        return torch.addcmul(x, mixed, self.gamma)

    def _export_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """All windows at once, padded to 32x32 with masked keys; valid for any input size.

        Same function as the windowed loop, written without Python decisions on the size so a
        traced graph keeps dynamic height and width. Costs more memory than the loop.
        """
        height, width = _size_tensor(v.shape[2]), _size_tensor(v.shape[3])
        window_mode = (height > WINDOW) | (width > WINDOW)
        # With a side under 4 pixels the reference's window grid is empty: no attention at all.
        alive = (~window_mode) | ((height >= 4) & (width >= 4))
        rows = _export_axis(height, window_mode)
        cols = _export_axis(width, window_mode)
        row_gather, row_valid, row_weight, row_size, row_fold = rows
        col_gather, col_valid, col_weight, col_size, col_fold = cols

        def windows(t: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, nh, nw, 1024, C)
            t = torch.index_select(t, 2, row_gather)
            t = torch.index_select(t, 3, col_gather)
            b, c = t.shape[0], t.shape[1]
            t = t.reshape(b, c, -1, WINDOW, t.shape[3])
            t = t.reshape(b, c, t.shape[2], WINDOW, -1, WINDOW)
            t = t.permute(0, 2, 4, 3, 5, 1)
            return t.reshape(b, t.shape[1], t.shape[2], WINDOW * WINDOW, c)

        qw, kw, vw = windows(q), windows(k), windows(v)
        tokens = (row_size[:, None] * col_size[None, :]).float()  # (nh, nw)
        scale = torch.rsqrt(tokens)[:, :, None, None].to(qw.dtype)
        key_ok = (row_valid[:, None, :, None] & col_valid[None, :, None, :]).flatten(2)  # (nh, nw, 1024)
        scores = torch.matmul(qw * scale, kw.transpose(-1, -2))
        scores = scores.masked_fill(~key_ok[:, :, None, :], float("-inf"))
        out = torch.matmul(scores.softmax(dim=-1), vw)  # (B, nh, nw, 1024, C)

        # Blend weight per window position, normalised by the total weight at that pixel.
        row_total = _fold(row_weight.flatten(), 0, row_fold)
        col_total = _fold(col_weight.flatten(), 0, col_fold)
        row_cover = torch.index_select(row_total, 0, row_gather).reshape(-1, WINDOW)
        col_cover = torch.index_select(col_total, 0, col_gather).reshape(-1, WINDOW)
        blend = (row_weight[:, None, :, None] * col_weight[None, :, None, :]) / (
            row_cover[:, None, :, None] * col_cover[None, :, None, :] + 1e-8
        )
        blend = blend * alive.float()
        out = out * blend.flatten(2)[..., None].to(out.dtype)

        b, nh, nw, _, c = out.shape
        out = out.reshape(b, nh, nw, WINDOW, WINDOW, c).permute(0, 5, 1, 3, 2, 4)
        out = out.reshape(b, c, nh * WINDOW, nw * WINDOW)
        return _fold(_fold(out, 2, row_fold), 3, col_fold)


class StaticDepthwiseTransformer(nn.Module):
    """Pointwise expansion, depthwise 3x3 mixing, optional window attention and channel gate."""

    def __init__(self, dim: int, expansion_ratio: float, use_channel_mod: bool, use_attention: bool) -> None:
        super().__init__()
        hidden = int(dim * expansion_ratio)
        self.project_in = nn.Conv2d(dim, hidden, 1)
        self.dw_mixer = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(hidden, hidden, 1),
        )
        self.channel_mod = CheapChannelModulation(hidden) if use_channel_mod else nn.Identity()
        self.attention = LocalWindowAttention(hidden) if use_attention else nn.Identity()
        self.project_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(self.dw_mixer(self.project_in(x)))
        if isinstance(self.channel_mod, CheapChannelModulation):
            return gated_projection(x, self.channel_mod, self.project_out)
        return self.project_out(x)


class ParagonBlockStatic(nn.Module):
    def __init__(
        self,
        dim: int,
        ffn_expansion: float,
        use_norm: bool,
        use_channel_mod: bool,
        use_attention: bool,
        band_kernel_size: int,
    ) -> None:
        super().__init__()
        self.context = InceptionDWConv2d(dim, band_kernel_size)
        self.ls1 = LayerScale(dim)
        self.transformer = StaticDepthwiseTransformer(dim, ffn_expansion, use_channel_mod, use_attention)
        self.ls2 = LayerScale(dim)
        self.norm = RMSNorm(dim) if use_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ls1.residual_add(x, self.context(x))
        x = self.ls2.residual_add(x, self.transformer(x))
        return x if self.norm is None else self.norm(x)


class ResidualGroupStatic(nn.Module):
    def __init__(self, dim: int, num_blocks: int, **block_args) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[ParagonBlockStatic(dim, **block_args) for _ in range(num_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x) + x


class ContentAwareDetailProcessor(nn.Module):
    """Predicts a per-image gain for the detail path from the LR input: busy images get less."""

    def __init__(self, num_feat: int, min_gain: float = 0.05, max_gain: float = 0.2) -> None:
        super().__init__()
        self.min_gain = min_gain
        self.max_gain = max_gain
        quarter, half = num_feat // 4, num_feat // 2
        self.content_analyzer = nn.Sequential(
            nn.Conv2d(3, quarter, 3, 1, 1),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(quarter, half, 5, 1, 2),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(half, half, 7, 1, 3),
            nn.LeakyReLU(0.1, inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(half, 1, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        complexity = self.content_analyzer(x)  # (B, 1, 1, 1) in [0, 1]
        return self.min_gain + (self.max_gain - self.min_gain) * (1 - complexity)


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


class ParagonSR2(nn.Module):
    """LR (B, in_chans, H, W) -> HR (B, in_chans, scale*H, scale*W).

    `fast_body_mode` halves groups and blocks when the network is built (reference behaviour).
    `use_channels_last` runs the network on NHWC activations (memory layout only). `checkpointing` recomputes each
    residual group in the backward pass to save activation memory; it does not change results.
    """

    def __init__(
        self,
        scale: int = 4,
        in_chans: int = 3,
        num_feat: int = 64,
        num_groups: int = 6,
        num_blocks: int = 6,
        ffn_expansion: float = 2.0,
        band_kernel_size: int = 11,
        upsampler_alpha: float = 0.5,
        detail_gain: float = 0.1,
        use_channels_last: bool = True,
        fast_body_mode: bool = False,
        use_norm: bool = False,
        use_channel_mod: bool = True,
        use_content_aware: bool = True,
        use_attention: bool = False,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale}")
        if num_feat < 1 or num_groups < 1 or num_blocks < 1:
            raise ValueError(f"num_feat, num_groups and num_blocks must be >= 1, got {num_feat}, {num_groups}, {num_blocks}")
        if not 0.0 <= upsampler_alpha <= 1.0:
            raise ValueError(f"upsampler_alpha must be in [0, 1], got {upsampler_alpha}")

        self.scale = scale
        self.num_feat = num_feat
        self.use_channels_last = use_channels_last
        self.use_content_aware = use_content_aware
        self.checkpointing = checkpointing
        if fast_body_mode:
            num_groups = max(1, num_groups // 2)
            num_blocks = max(1, num_blocks // 2)
        self.num_groups = num_groups
        self.num_blocks = num_blocks

        # Creation order matches the reference so a seeded build draws identical weights.
        self.content_processor = ContentAwareDetailProcessor(num_feat) if use_content_aware else None
        self.conv_in = nn.Conv2d(in_chans, num_feat, 3, 1, 1)
        self.body = nn.Sequential(
            *[
                ResidualGroupStatic(
                    num_feat,
                    num_blocks,
                    ffn_expansion=ffn_expansion,
                    use_norm=use_norm,
                    use_channel_mod=use_channel_mod,
                    use_attention=use_attention,
                    band_kernel_size=band_kernel_size,
                )
                for _ in range(num_groups)
            ]
        )
        self.conv_fuse = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsampler_net = PixelShufflePack(num_feat, num_feat, scale)
        self.conv_out = nn.Conv2d(num_feat, in_chans, 3, 1, 1)
        with torch.no_grad():  # start with the classical base dominant
            self.conv_out.weight.mul_(detail_gain)
            self.conv_out.bias.zero_()
        self.magic_upsampler = MagicKernelSharp2021Upsample(in_chans, scale, upsampler_alpha)

    @property
    def tile_alignment(self) -> int:
        """Tiles whose origin is a multiple of this see the whole image's attention windows.

        The windows start every WINDOW - OVERLAP pixels of the map they run on, so a tile placed
        elsewhere attends over other windows (and the reference leaves a size-dependent strip at
        the far edges out of the attention): its output then differs from the whole-image forward.
        """
        has_attention = any(isinstance(m, LocalWindowAttention) for m in self.modules())
        return WINDOW - OVERLAP if has_attention else 1

    def content_gain(self, x: torch.Tensor, rows: int | None = None) -> torch.Tensor | None:
        """The detail gain of the whole of `x` (B, 1, 1, 1), computed in strips of `rows` rows.

        The gain comes from an average over all pixels, so a tile would otherwise get a gain of its
        own. The analyser's convolutions reach 6 pixels, so strips with 6 rows of context give
        exactly the whole-image sums in a fraction of the memory. None without content awareness.
        """
        if self.content_processor is None:
            return None
        processor = self.content_processor
        analyzer = processor.content_analyzer
        features, head = analyzer[:6], analyzer[7:]  # [6] is the average pool, done here by sums
        height, halo = x.shape[2], 6
        rows = height if rows is None else max(1, int(rows))
        total = None
        for start in range(0, height, rows):
            top, bottom = max(0, start - halo), min(height, start + rows + halo)
            strip = features(x[:, :, top:bottom])[:, :, start - top : start - top + min(rows, height - start)]
            part = strip.float().sum((2, 3), keepdim=True)
            total = part if total is None else total + part
        pooled = (total / (height * x.shape[3])).to(x.dtype)
        complexity = head(pooled)
        return processor.min_gain + (processor.max_gain - processor.min_gain) * (1 - complexity)

    def forward(self, x: torch.Tensor, gain: torch.Tensor | None = None) -> torch.Tensor:
        """`gain` replaces the content-aware gain of `x` (a tile passes its whole image's)."""
        if self.use_channels_last and not torch.onnx.is_in_onnx_export():
            # Unlike the reference (CUDA only), on CPU too: oneDNN convolutions skip their
            # layout conversions on NHWC input, about 10% of a training step.
            x = x.contiguous(memory_format=torch.channels_last)
        base = self.magic_upsampler(x)
        feat = self.conv_in(x)
        recompute = self.checkpointing and self.training and torch.is_grad_enabled()
        for group in self.body:
            feat = checkpoint(group, feat, use_reentrant=False) if recompute else group(feat)
        if feat.device.type == "cpu" and not (self.training and torch.is_grad_enabled()):
            # The 3x3 convolutions from here on sum 9 * num_feat products per output; oneDNN's
            # NHWC kernels round those about 3x worse than NCHW (1e-5 at x8). CPU inference runs
            # them NCHW to match the reference that closely; training keeps NHWC, 1-5% faster.
            feat = feat.contiguous()
        feat = self.conv_fuse(feat) + feat  # global residual in LR space
        detail = self.conv_out(self.upsampler_net(feat))
        if self.content_processor is None:
            return base + detail
        return multiply_add(base, detail, self.content_processor(x) if gain is None else gain)
