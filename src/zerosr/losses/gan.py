"""Adversarial training parts: a U-Net discriminator with spectral norm and the GAN objectives.

The discriminator follows the design of Real-ESRGAN's UNetDiscriminatorSN: a strided encoder, a
decoder that upsamples back to the input size with skip connections, and a one-channel map of
per-pixel realness logits, so it judges local texture rather than the whole patch. Spectral norm
on every inner convolution keeps it Lipschitz-bounded, which is what keeps GAN training for SR
stable without a gradient penalty. The optimizer for it is built by the engine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

from zerosr.errors import UserError


def _sn_conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Module:
    # padding 1 keeps 3x3/stride 1 at size and makes 4x4/stride 2 halve it exactly.
    return spectral_norm(nn.Conv2d(in_ch, out_ch, kernel, stride, padding=1, bias=False))


def _act(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


class UNetDiscriminatorSN(nn.Module):
    """U-Net discriminator: N x num_in_ch x H x W image -> N x 1 x H x W realness logits."""

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, skip_connection: bool = True):
        super().__init__()
        self.skip_connection = skip_connection
        f = num_feat
        self.conv0 = nn.Conv2d(num_in_ch, f, 3, 1, 1)
        # encoder: halve the size three times
        self.down1 = _sn_conv(f, f * 2, 4, 2)
        self.down2 = _sn_conv(f * 2, f * 4, 4, 2)
        self.down3 = _sn_conv(f * 4, f * 8, 4, 2)
        # decoder: back to full size
        self.up1 = _sn_conv(f * 8, f * 4, 3)
        self.up2 = _sn_conv(f * 4, f * 2, 3)
        self.up3 = _sn_conv(f * 2, f, 3)
        self.refine1 = _sn_conv(f, f, 3)
        self.refine2 = _sn_conv(f, f, 3)
        self.head = nn.Conv2d(f, 1, 3, 1, 1)

    def _up(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        # Upsampling to the skip tensor's size (not a fixed x2) also serves sizes not divisible by 8.
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = _act(self.conv0(x))
        x1 = _act(self.down1(x0))
        x2 = _act(self.down2(x1))
        x3 = _act(self.down3(x2))

        y = _act(self.up1(self._up(x3, x2)))
        if self.skip_connection:
            y = y + x2
        y = _act(self.up2(self._up(y, x1)))
        if self.skip_connection:
            y = y + x1
        y = _act(self.up3(self._up(y, x0)))
        if self.skip_connection:
            y = y + x0
        y = _act(self.refine1(y))
        y = _act(self.refine2(y))
        return self.head(y)


def is_adversarial(target: str) -> bool:
    """Whether a loss entry's `_target_` is a GAN loss (it has a discriminator-side objective)."""
    from hydra.utils import get_class

    try:
        return hasattr(get_class(str(target)), "discriminator_loss")
    except Exception:  # noqa: BLE001 - a target that does not import is reported by the config checks
        return False


class GANLoss(nn.Module):
    """GAN objectives on discriminator logits.

    vanilla: binary cross-entropy (non-saturating for the generator);
    hinge: D minimises relu(1 - real) + relu(1 + fake), G minimises -fake.
    Computed in float32, so half-precision logits are averaged at full precision.
    """

    TYPES = ("vanilla", "hinge")

    def __init__(self, gan_type: str = "vanilla"):
        super().__init__()
        if gan_type not in self.TYPES:
            raise UserError(f"gan_type '{gan_type}' is unknown: use one of {', '.join(self.TYPES)}")
        self.gan_type = gan_type

    def generator_loss(self, fake_pred: torch.Tensor) -> torch.Tensor:
        """Loss for the generator, given D's logits on its output (do not detach the output)."""
        fake = fake_pred.float()
        if self.gan_type == "hinge":
            return -fake.mean()
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))

    def discriminator_loss(self, real_pred: torch.Tensor, fake_pred: torch.Tensor) -> torch.Tensor:
        """Loss for the discriminator, given its logits on HR and on the (detached) SR images."""
        real, fake = real_pred.float(), fake_pred.float()
        if self.gan_type == "hinge":
            return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
        return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
