"""Autocast and gradient scaling from the tier's precision and the accelerator's card."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from zerosr.engine.accelerator import CpuAccelerator

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Precision:
    device: torch.device
    name: str  # what actually runs: fp32 without a GPU whatever the tier says
    scaler: torch.amp.GradScaler

    def autocast(self):
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.name])


def make_precision(tier_precision: str, accelerator: CpuAccelerator) -> Precision:
    """bf16/fp16 autocast on a GPU (fp16 with a GradScaler; bf16 falls back to fp16 on a card
    without it); fp32 without a GPU, where autocast buys nothing. A simulated card runs the same
    autocast and GradScaler on the CPU."""
    device = accelerator.device
    name = tier_precision if accelerator.is_gpu else "fp32"
    if name in _DTYPES:  # the card decides between bf16 and fp16 (fp16 stays fp16)
        name = "bf16" if name == "bf16" and accelerator.low_precision_dtype() == torch.bfloat16 else "fp16"
    if accelerator.is_gpu and accelerator.capability() >= (8, 0):  # the simulated card emulates TF32
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    scaler = torch.amp.GradScaler(device.type, enabled=(name == "fp16"))
    return Precision(device=device, name=name, scaler=scaler)
