"""Pixel losses: mean absolute error and its smooth variant."""

from __future__ import annotations

import torch
from torch import nn


class L1Loss(nn.Module):
    """Mean absolute error."""

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return torch.mean(torch.abs(sr.float() - gt.float()))


class CharbonnierLoss(nn.Module):
    """mean(sqrt((sr - gt)^2 + eps^2)): L1 for large errors, smooth near zero.

    The smooth minimum keeps gradients small when a pixel is almost right, instead of L1's constant
    +-1 that makes outputs jitter late in training.
    """

    def __init__(self, eps: float = 1e-3):
        super().__init__()
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.eps = eps

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        diff = sr.float() - gt.float()
        return torch.mean(torch.sqrt(diff * diff + self.eps**2))
