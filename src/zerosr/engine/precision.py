"""Device, autocast and gradient scaling from the tier's precision."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Precision:
    device: torch.device
    name: str  # what actually runs: fp32 on CPU whatever the tier says
    scaler: torch.amp.GradScaler

    def autocast(self):
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.name])


def select_device() -> torch.device:
    if torch.cuda.is_available():
        import os

        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def make_precision(tier_precision: str, device: torch.device) -> Precision:
    """bf16/fp16 autocast on CUDA (fp16 with a GradScaler); fp32 on CPU, where autocast buys nothing."""
    name = tier_precision if device.type == "cuda" else "fp32"
    if name == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        name = "fp16"
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    scaler = torch.amp.GradScaler(device.type, enabled=(name == "fp16"))
    return Precision(device=device, name=name, scaler=scaler)
