"""DISTS as a loss: the mean DISTS distance between SR and HR (lower is closer).

The same network as the DISTS validation metric (`zerosr.metrics.perceptual.DISTS`): torchvision's
ImageNet VGG16 and the published alpha/beta, fetched once through `zerosr.pretrained` unless
`backbone_path` / `weights_path` name local files. Frozen; the gradient flows to the SR image only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from zerosr.metrics.perceptual import DISTS


class DISTSLoss(nn.Module):
    def __init__(self, backbone_path: str | Path | None = None, weights_path: str | Path | None = None):
        super().__init__()
        self.dists = DISTS(backbone_path, weights_path)

    def train(self, mode: bool = True) -> DISTSLoss:
        super().train(mode)
        self.dists.eval()
        return self

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return self.dists(sr.float(), gt.detach().float()).mean()
