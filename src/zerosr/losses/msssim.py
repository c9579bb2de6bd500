"""Multi-scale SSIM loss (Wang et al. 2003), made to work on training-size patches.

Standard MS-SSIM uses 5 scales with an 11x11 window, so it needs at least 176x176 pixels, far
more than the 64-128 px HR patches SR trains on. Here the number of scales adapts to the patch:
as many as keep the coarsest scale at least as large as the window (96 px -> 4 scales, 64 px -> 3),
and the standard scale weights of the scales kept are renormalised to sum to 1. Padding was the
alternative; it would make the coarse scales compare mostly padding, so scales are dropped instead.

Where a patch's contrast-structure term is <= 0 (SR anti-correlated with HR) it is clamped to a
small positive value, which avoids NaN from the fractional powers but gives that patch no gradient:
pair this loss with L1/Charbonnier, as is usual, so such patches are still pulled towards the HR.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zerosr.errors import UserError

# Per-scale exponents from the MS-SSIM paper, finest scale first.
SCALE_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _gaussian(size: int, sigma: float) -> torch.Tensor:
    offsets = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def scales_for(size: int, window: int = 11, max_scales: int = len(SCALE_WEIGHTS)) -> int:
    """How many dyadic scales keep a `size` px patch at least `window` px wide."""
    scales = 0
    while scales < max_scales and size >= window:
        scales += 1
        size //= 2
    return scales


class MSSSIMLoss(nn.Module):
    """1 - MS-SSIM of (sr, gt), both N x C x H x W in [0, data_range]; per channel, then averaged."""

    def __init__(self, window_size: int = 11, sigma: float = 1.5, max_scales: int = 5, data_range: float = 1.0):
        super().__init__()
        if not 1 <= max_scales <= len(SCALE_WEIGHTS):
            raise ValueError(f"max_scales must be in 1..{len(SCALE_WEIGHTS)}, got {max_scales}")
        self.window_size = window_size
        self.max_scales = max_scales
        self.c1 = (0.01 * data_range) ** 2
        self.c2 = (0.03 * data_range) ** 2
        self.register_buffer("kernel", _gaussian(window_size, sigma), persistent=False)

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian filter, valid region only (no padding enters the statistics)."""
        channels = x.shape[1]
        k = self.kernel.to(x.dtype)
        x = F.conv2d(x, k.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
        return F.conv2d(x, k.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)

    def _ssim_cs(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean SSIM and mean contrast-structure term per image and channel (N x C)."""
        mu_x, mu_y = self._blur(x), self._blur(y)
        var_x = self._blur(x * x) - mu_x**2
        var_y = self._blur(y * y) - mu_y**2
        cov = self._blur(x * y) - mu_x * mu_y
        cs = (2 * cov + self.c2) / (var_x + var_y + self.c2)
        luminance = (2 * mu_x * mu_y + self.c1) / (mu_x**2 + mu_y**2 + self.c1)
        return (luminance * cs).mean(dim=(2, 3)), cs.mean(dim=(2, 3))

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        n_scales = scales_for(min(sr.shape[-2:]), self.window_size, self.max_scales)
        if n_scales == 0:
            raise UserError(
                f"MS-SSIM loss needs HR patches of at least {self.window_size}x{self.window_size} px, "
                f"got {tuple(sr.shape[-2:])}: raise train.lq_size"
            )
        weights = torch.tensor(SCALE_WEIGHTS[:n_scales], device=sr.device)
        weights = weights / weights.sum()
        # Products of powers are unstable in half precision, so this runs in float32.
        with torch.autocast(device_type=sr.device.type, enabled=False):
            x, y = sr.float(), gt.float()
            factors = []
            for scale in range(n_scales):
                ssim, cs = self._ssim_cs(x, y)
                # cs / ssim can be <= 0 on anti-correlated patches; a fractional power of that is NaN.
                factors.append((ssim if scale == n_scales - 1 else cs).clamp(min=1e-6))
                if scale < n_scales - 1:
                    x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
            stacked = torch.stack(factors, dim=0)  # scales x N x C
            ms_ssim = torch.prod(stacked ** weights.view(-1, 1, 1), dim=0)
        return 1.0 - ms_ssim.mean()
