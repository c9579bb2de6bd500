"""Losses, each an nn.Module built from the config's loss list with Hydra `_target_`.

Pixel, MS-SSIM, perceptual (VGG19) and DISTS losses are called as `loss(sr, gt) -> scalar`; the GAN loss has
separate generator-side and discriminator-side calls (see `zerosr.losses.gan`).
"""

from zerosr.losses.dists import DISTSLoss
from zerosr.losses.gan import GANLoss, UNetDiscriminatorSN, is_adversarial
from zerosr.losses.msssim import MSSSIMLoss
from zerosr.losses.perceptual import PerceptualLoss, VGG19Features
from zerosr.losses.pixel import CharbonnierLoss, L1Loss

__all__ = [
    "CharbonnierLoss",
    "DISTSLoss",
    "GANLoss",
    "L1Loss",
    "MSSSIMLoss",
    "PerceptualLoss",
    "UNetDiscriminatorSN",
    "VGG19Features",
    "is_adversarial",
]
