"""Exponential moving average of model weights, the model that is validated and saved.

The shadow is an fp32 copy (so averaging is not limited by bf16/fp16 resolution when the trained
model is cast down), in eval mode, without gradients. Each update moves every shadow parameter
towards the live one: `shadow = decay * shadow + (1 - decay) * live`, done with one fused
`torch._foreach_lerp_` over all parameters. Buffers (BatchNorm statistics, counters) are copied,
not averaged.

Warm-up: with `warmup=True` the decay used at update n (0-based) is `min(decay, (1+n)/(10+n))`:
0.1 at the first update, 0.5 at the 8th, 0.9 at the 80th, capped at `decay`. Otherwise the
shadow would be dominated by the random initial weights for ~1/(1-decay) iterations (10,000 at
decay=0.9999), and early validations would score an untrained model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP/DataParallel (`.module`) and torch.compile (`._orig_mod`)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


class ModelEMA:
    """fp32 exponential moving average of a model's parameters; `.module` is the averaged model."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.module = copy.deepcopy(unwrap_model(model)).float().eval()
        self.module.requires_grad_(False)
        self._listed: tuple[nn.Module, tuple] | None = None

    def current_decay(self) -> float:
        """The decay the next update() will use."""
        if not self.warmup:
            return self.decay
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        live = unwrap_model(model)
        decay = self.current_decay()
        self.updates += 1
        shadow_params, live_params, shadow_buffers, live_buffers = self._tensors(live)
        # lerp needs matching dtype/device; cast only the tensors that differ (e.g. bf16 models).
        live_params = [
            src if (src.dtype == dst.dtype and src.device == dst.device) else src.to(dst.device, dst.dtype)
            for dst, src in zip(shadow_params, live_params)
        ]
        if shadow_params:
            torch._foreach_lerp_(shadow_params, live_params, 1.0 - decay)
        for dst, src in zip(shadow_buffers, live_buffers):
            dst.copy_(src)

    def _tensors(self, live: nn.Module) -> tuple[list, list, list, list]:
        """The shadow's and the live model's parameters and buffers, listed once per live model
        (walking the module tree on every step costs more than the averaging of a small network)."""
        if self._listed is None or self._listed[0] is not live:
            shadow_params, live_params = list(self.module.parameters()), list(live.parameters())
            if len(shadow_params) != len(live_params):
                raise ValueError(
                    f"EMA shadow has {len(shadow_params)} parameters but the model has {len(live_params)}"
                )
            self._listed = (live, (shadow_params, live_params, list(self.module.buffers()), list(live.buffers())))
        return self._listed[1]

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
