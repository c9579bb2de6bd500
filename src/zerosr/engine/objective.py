"""The training objective: weighted losses from `train.losses`, and the GAN pair when one is listed.

Each entry is `{_target_: ..., weight: W, [name: N]}`; a GAN entry may also carry
`discriminator: {_target_: ...}` and `optimizer: {_target_: ...}` for its own network and
optimizer. Weights live in `Objective.weights` so the loss schedule can change them live. A GAN
whose weight is 0 (before its delay is over) is inactive: no discriminator forward in the
generator's loss, no discriminator backward, no discriminator optimizer step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from zerosr.engine import distributed
from zerosr.errors import UserError

_ENGINE_KEYS = ("weight", "name", "discriminator", "optimizer")


def _default_name(target: str) -> str:
    """`zerosr.losses.CharbonnierLoss` -> `charbonnier`."""
    cls = target.rsplit(".", 1)[-1]
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", re.sub(r"Loss$", "", cls)).lower() or cls.lower()


@dataclass
class GANPair:
    loss: nn.Module  # generator_loss(fake_pred), discriminator_loss(real_pred, fake_pred)
    discriminator: nn.Module
    optimizer: torch.optim.Optimizer
    name: str
    base_lr: float  # the discriminator optimizer's own LR; the run's LR schedule scales it


@dataclass
class Objective:
    terms: dict[str, nn.Module]
    weights: dict[str, float]
    gan: GANPair | None = None
    base_weights: dict[str, float] = field(default_factory=dict)

    @property
    def gan_active(self) -> bool:
        """A GAN is listed and its weight is above 0 now: it and its discriminator take part in the step."""
        return self.gan is not None and self.weights[self.gan.name] > 0

    def generator_loss(self, sr: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted sum and the unweighted parts (for logging and the loss schedule)."""
        parts = {name: term(sr, gt) for name, term in self.terms.items()}
        if self.gan_active:
            parts[self.gan.name] = self.gan.loss.generator_loss(self.gan.discriminator(sr))
        total = sum(self.weights[name] * value for name, value in parts.items())
        return total, parts

    def discriminator_backward(self, sr: torch.Tensor, gt: torch.Tensor, autocast, scaler) -> torch.Tensor:
        """The discriminator's loss on real HR and the generator's detached output, backpropagated
        into its gradients (averaged over ranks under torchrun); the learner steps its optimizer
        with the generator's. Returns the loss, detached, on the device."""
        gan = self.gan
        gan.discriminator.requires_grad_(True)
        with autocast():
            loss = gan.loss.discriminator_loss(gan.discriminator(gt), gan.discriminator(sr.detach()))
        scaler.scale(loss).backward()
        gan.discriminator.requires_grad_(False)  # the generator's backward must not fill its gradients
        distributed.average_gradients(gan.discriminator)  # torchrun: the discriminator is not in DDP
        return loss.detach()

    def state_dict(self) -> dict:
        state = {"weights": dict(self.weights)}
        if self.gan is not None:
            state["discriminator"] = self.gan.discriminator.state_dict()
            state["d_optimizer"] = self.gan.optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.weights.update(state["weights"])
        if self.gan is not None:
            self.gan.discriminator.load_state_dict(state["discriminator"])
            self.gan.optimizer.load_state_dict(state["d_optimizer"])


def build_objective(losses: list | DictConfig, device: torch.device, default_lr: float) -> Objective:
    terms: dict[str, nn.Module] = {}
    weights: dict[str, float] = {}
    gan: GANPair | None = None
    for entry in losses:
        spec = OmegaConf.to_container(entry, resolve=True) if not isinstance(entry, dict) else dict(entry)
        if "_target_" not in spec:
            raise UserError(f"train.losses entry {spec} has no _target_: e.g. _target_: zerosr.losses.L1Loss")
        weight = float(spec.get("weight", 1.0))
        if weight < 0:
            raise UserError(f"train.losses: weight {weight} of {spec['_target_']} must be 0 or more")
        name = str(spec.get("name") or _default_name(spec["_target_"]))
        while name in weights:
            name += "_2"
        module = _instantiate({k: v for k, v in spec.items() if k not in _ENGINE_KEYS}).to(device)
        weights[name] = weight
        if hasattr(module, "discriminator_loss"):
            if gan is not None:
                raise UserError("train.losses lists two GAN losses: keep one")
            gan = _build_gan(module, spec, device, default_lr, name)
        else:
            terms[name] = module
    return Objective(terms=terms, weights=weights, gan=gan, base_weights=dict(weights))


def _instantiate(spec: dict, **kwargs):
    """Hydra's instantiate, with a user's mistake (a UserError, or a bad _target_) kept to one line."""
    try:
        return instantiate(spec, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        raise UserError(f"train.losses: could not build {spec.get('_target_')}: "
                        f"{str(cause or error).splitlines()[0]}") from None


def _build_gan(loss: nn.Module, spec: dict, device: torch.device, default_lr: float, name: str) -> GANPair:
    d_spec = spec.get("discriminator") or {"_target_": "zerosr.losses.UNetDiscriminatorSN"}
    discriminator = _instantiate(d_spec).to(device)
    discriminator.requires_grad_(False)  # only the discriminator step turns its gradients on
    o_spec = spec.get("optimizer") or {"_target_": "torch.optim.AdamW", "lr": default_lr, "betas": [0.9, 0.99]}
    optimizer = _instantiate(o_spec, params=discriminator.parameters())
    return GANPair(loss=loss, discriminator=discriminator, optimizer=optimizer, name=name,
                   base_lr=float(optimizer.param_groups[0]["lr"]))
