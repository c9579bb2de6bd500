"""Every validation metric of one SR image against its HR image, as validation and evaluate report them.

PSNR and SSIM on Y with `scale` border pixels cropped (`zerosr.metrics`); LPIPS and DISTS on the
whole RGB image. All of them see the images rounded to 8 bits, as saved PNGs are.
"""

from __future__ import annotations

from typing import Iterable

import torch

from zerosr.metrics import calculate_psnr, calculate_ssim, tensor_to_uint8
from zerosr.metrics.catalog import PERCEPTUAL, build_network


class Scorer:
    def __init__(self, names: Iterable[str] = ("psnr", "ssim"), device: torch.device | str = "cpu",
                 networks: dict | None = None):
        """`networks`: perceptual networks already built (by name); the others are built here."""
        self.names = list(names)
        self.device = torch.device(device)
        networks = networks or {}
        # Built now: a missing or wrong weights file stops the run before training, not at validation.
        self.networks = {name: (networks.get(name) or build_network(name)).to(self.device)
                         for name in self.names if name in PERCEPTUAL}

    @torch.no_grad()
    def __call__(self, sr: torch.Tensor, hr: torch.Tensor, scale: int) -> dict[str, float]:
        """CHW (or 1xCxHxW) tensors in [0, 1] -> {name: value}."""
        a, b = tensor_to_uint8(sr), tensor_to_uint8(hr)
        out = {"psnr": calculate_psnr(a, b, crop_border=scale, test_y_channel=True),
               "ssim": calculate_ssim(a, b, crop_border=scale, test_y_channel=True)}
        if self.networks:
            x, y = (torch.from_numpy(i).permute(2, 0, 1)[None].float().div_(255) for i in (a, b))
            for name, network in self.networks.items():
                out[name] = self._run(network, x, y)
        return {name: out[name] for name in self.names}

    def _run(self, network, x: torch.Tensor, y: torch.Tensor) -> float:
        try:
            return float(network(x.to(self.device), y.to(self.device))[0])
        except torch.OutOfMemoryError:
            pass  # out of the except block first: its traceback holds the failed tensors
        # An image too large for the device beside training: this metric goes on on the CPU.
        self.device = torch.device("cpu")
        for name in self.networks:
            self.networks[name] = self.networks[name].cpu()
        print("validation: perceptual metrics out of memory on the device, now on the CPU", flush=True)
        return float(network.cpu()(x, y)[0])
