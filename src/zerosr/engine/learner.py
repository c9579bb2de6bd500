"""The networks being trained and everything that steps them.

`Learner` owns the generator and the forward it runs through (DDP and `torch.compile` wrap it),
its EMA, the optimizer, the precision (autocast and GradScaler) and the objective (losses, their
weights, a GAN's discriminator and its optimizer). Those five stateful parts are listed once, in
`parts()`, which serves the checkpoint, the rollback and the start-up probes alike.

One training step is `forward_backward` (every chunk of the step's samples), `clip` (with a GAN,
the discriminator's backward too), then `apply` (the optimizer steps) or `skip` once the caller
has read the step's numbers back and judged them. Everything stays on the device until that one
readback: the per-chunk losses are summed as tensors, and the gradient norm is a tensor too. An
out-of-memory error in any of them leaves the learner as before the step once `recover_from_oom`
ran, so the caller can retry the same samples at a smaller chunk size.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils._pytree import tree_map

from zerosr import archs
from zerosr.engine import distributed
from zerosr.engine.accelerator import CpuAccelerator
from zerosr.engine.ema import ModelEMA
from zerosr.engine.injection import OomInjection
from zerosr.engine.objective import build_objective
from zerosr.engine.precision import make_precision
from zerosr.errors import UserError


@dataclass
class StepTensors:
    """What one step computed, still on the device: the weighted total, the unweighted parts,
    the gradient norm before clipping and (with a GAN) the discriminator's loss."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor]
    samples: int
    norm: torch.Tensor | None = None
    discriminator: torch.Tensor | None = None


def build_optimizer(spec: DictConfig, params) -> torch.optim.Optimizer:
    try:
        return instantiate(spec, params=params)
    except InstantiationException as error:
        cause = str(error.__cause__ or error).splitlines()[0]
        raise UserError(f"train.optimizer could not be built ({cause}); for another optimizer replace the "
                        "whole node, e.g. 'train.optimizer={_target_: torch.optim.SGD, lr: ${train.lr}, "
                        "momentum: 0.9}'") from None


def load_pretrain(model: torch.nn.Module, path: str, arch: DictConfig, scale: int) -> None:
    """train.pretrain: the shared weights reader refuses another family, variant or scale in one line."""
    archs.load_weights(model, archs.read_weights(path, arch.name, int(scale), label=f"train.pretrain={path}",
                                                 target=arch.get("_target_")))


@contextlib.contextmanager
def _cudnn_benchmark(enabled: bool):
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


class Learner:
    def __init__(self, cfg: DictConfig, accelerator: CpuAccelerator):
        train, tier = cfg.train, cfg.hardware_tier
        self.accelerator = accelerator
        self.device = device = accelerator.device
        self.precision = make_precision(tier.precision, accelerator)
        self.channels_last = bool(tier.channels_last) and accelerator.is_gpu
        module = archs.build(cfg.arch.name, cfg.scale, cfg.arch.get("_target_"), **cfg.arch.params).to(device)
        if train.pretrain:
            load_pretrain(module, train.pretrain, cfg.arch, cfg.scale)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module  # the plain generator: what is saved, averaged and probed
        self.ema = ModelEMA(module, train.ema_decay)
        self.optimizer = build_optimizer(train.optimizer, module.parameters())
        self.objective = build_objective(train.losses, device, train.lr * train.lr_scale)
        self._param_counts = {id(opt): sum(len(group["params"]) for group in opt.param_groups)
                              for opt in self._optimizers()}
        # torchrun: DistributedDataParallel. `sync` marks steps whose collectives every rank joins.
        self.model = distributed.wrap(module, device)
        self.sync = distributed.is_distributed()
        self.forward = self.model  # `compile()` replaces it once the start-up probes are done
        self._compile = bool(tier.compile) and accelerator.compiles
        self._compiled = None
        # cuDNN autotuning for the training step alone: its patch shape is fixed, so the search
        # runs once (not for the probes' many shapes, nor validation's; `probing()` turns it off).
        self.autotune = accelerator.is_gpu and not bool(train.deterministic)
        self._for_discriminator: tuple[torch.Tensor, torch.Tensor] | None = None
        self.injection = OomInjection(cfg.debug.inject_oom_at)  # the caller says which iteration runs

    def compile(self) -> None:
        """torch.compile the training forward (hardware_tier.compile, real GPUs only), once, after
        the start-up search: it traces at the first step, for the chosen batch and patch shape,
        instead of once for every probed shape."""
        if self._compile:
            self._compiled = self._compiled or torch.compile(self.model)
            self.forward = self._compiled

    # --- state: one list of parts for checkpoints, rollbacks and probes -------------------------
    def parts(self) -> dict:
        return {"model": self.module, "ema": self.ema, "optimizer": self.optimizer,
                "scaler": self.precision.scaler, "objective": self.objective}

    def state_dict(self) -> dict:
        return {name: part.state_dict() for name, part in self.parts().items()}

    def load_state_dict(self, state: dict) -> None:
        for name, part in self.parts().items():
            part.load_state_dict(state[name])
        self.optimizer.zero_grad(set_to_none=True)

    def snapshot(self) -> dict:
        """A copy of every part in host memory (a rollback target before the first checkpoint, and
        what a probe restores): on the device it would take the memory the probes measure."""
        with self.accelerator.host():
            return tree_map(lambda value: value.detach().to("cpu", copy=True) if isinstance(value, torch.Tensor)
                            else copy.deepcopy(value), self.state_dict())

    @property
    def will_compile(self) -> bool:
        return self._compile

    @contextlib.contextmanager
    def probing(self, compiled: bool = False):
        """Steps inside run on this rank alone and leave no trace: every part and torch's RNG are
        put back afterwards, so the run starts from the same weights whatever was measured. They
        run the plain generator, or with `compiled` (single process only) the compiled forward."""
        saved, rng = self.snapshot(), torch.get_rng_state()
        forward, sync, autotune = self.forward, self.sync, self.autotune
        self.forward = forward if compiled and not self.sync else self.module
        self.sync, self.autotune = False, False
        try:
            yield self
        finally:
            self.forward, self.sync, self.autotune = forward, sync, autotune
            self.load_state_dict(saved)
            self.clear_step()  # a probe that failed part-way leaves marks load_state_dict keeps
            torch.set_rng_state(rng)
            self.free_memory()

    # --- what the automations set --------------------------------------------------------------
    def set_lr(self, lr: float, schedule_ratio: float = 1.0) -> None:
        """The generator's LR; a GAN's discriminator moves with it (its own base x `schedule_ratio`)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        gan = self.objective.gan
        if gan is not None:
            for group in gan.optimizer.param_groups:
                group["lr"] = gan.base_lr * schedule_ratio

    def set_loss_weights(self, weights: dict[str, float]) -> None:
        self.objective.weights.update(weights)

    # --- one step ------------------------------------------------------------------------------
    def forward_backward(self, lq: torch.Tensor, gt: torch.Tensor, chunk_size: int,
                         poison: bool = False) -> StepTensors:
        """Loss and gradients of all the step's samples, `chunk_size` at a time. Raises
        torch.OutOfMemoryError (under torchrun on every rank together) for the caller to retry."""
        with _cudnn_benchmark(self.autotune):
            return self._forward_backward(lq, gt, chunk_size, poison)

    def _forward_backward(self, lq, gt, chunk_size, poison) -> StepTensors:
        samples = lq.shape[0]
        starts = list(range(0, samples, chunk_size))
        total, parts, failed = None, {}, None
        for index, start in enumerate(starts):
            last = index == len(starts) - 1
            share = min(chunk_size, samples - start) / samples
            # Under DDP only the last chunk's backward all-reduces the gradients.
            quiet = self.model.no_sync() if self.sync and not last else contextlib.nullcontext()
            with quiet:
                failed, result = self._chunk(lq[start:start + chunk_size], gt[start:start + chunk_size],
                                             share, last, poison, failed)
            if failed is not None:
                continue  # under DDP: on to the last chunk, where the ranks learn of it together
            chunk_total, chunk_parts = result
            total = chunk_total * share if total is None else total + chunk_total * share
            for name, value in chunk_parts.items():
                parts[name] = value * share if name not in parts else parts[name] + value * share
        return StepTensors(total=total, parts=parts, samples=samples)

    def _chunk(self, lq, gt, share, last, poison, failed):
        """Forward and backward of one chunk. Returns (None, (total, parts)), or under DDP
        (message, None) for an out-of-memory error on a chunk before the last."""
        oom = failed
        if oom is None:
            try:
                lq, gt = lq.to(self.device, non_blocking=True), gt.to(self.device, non_blocking=True)
                if self.channels_last:
                    lq = lq.contiguous(memory_format=torch.channels_last)
                with self.precision.autocast():
                    sr = self.forward(lq)
                    self.injection.fire("forward")  # debug.inject_oom_at: with the activations held
                    total, parts = self.objective.generator_loss(sr.float(), gt)
            except torch.OutOfMemoryError as error:
                oom = str(error)
        if self.sync and not last and oom is not None:
            return oom, None
        # The last backward all-reduces gradients under DDP, so every rank enters it or none: an
        # out-of-memory error on any rank makes every rank retry at a smaller chunk size.
        if self.sync and distributed.any_rank(oom is not None):
            oom = oom or "out of memory on another rank"
        if oom is not None:
            raise torch.OutOfMemoryError(oom)
        if poison:  # debug.inject_nan_at: a loss that really is non-finite, through the real path
            total = total * float("nan")
        if self.injection.armed("backward"):  # raised inside autograd, half-way through the backward
            sr.register_hook(lambda grad: self.injection.fire("backward"))
        try:
            self.precision.scaler.scale(total * share).backward()
        except torch.OutOfMemoryError:
            if not self.sync:
                raise
            # The other ranks wait inside this backward's all-reduce: no retry can line up with them.
            raise UserError(f"out of memory in the backward pass on rank {distributed.rank()}: under "
                            "torchrun this ends the run; resume with train.resume=auto and a smaller "
                            "train.batch_size or train.lq_size") from None
        if self.objective.gan_active and last:
            self._for_discriminator = (sr.detach(), gt)
        return None, (total.detach(), {name: value.detach() for name, value in parts.items()})

    def clip(self, step: StepTensors, threshold: float) -> None:
        """Unscale, then clip the gradient norm to `threshold`; the norm before clipping goes into
        `step.norm` (a tensor: no host sync). With a GAN the discriminator's gradients are computed
        here too, so that its loss is read back with the rest."""
        self.precision.scaler.unscale_(self.optimizer)
        step.norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), threshold)
        if self._for_discriminator is not None:
            discriminator = self.objective.gan.discriminator
            # debug.inject_oom_at=[discriminator:N]: raised after the discriminator's first forward.
            hook = (discriminator.register_forward_hook(lambda *_: self.injection.fire("discriminator"))
                    if self.injection.armed("discriminator") else None)
            try:
                with self._fatal_under_torchrun("the discriminator step"):
                    step.discriminator = self.objective.discriminator_backward(
                        *self._for_discriminator, self.precision.autocast, self.precision.scaler)
            finally:
                if hook is not None:
                    hook.remove()
            self._for_discriminator = None

    def apply(self) -> None:
        """Take the step (both optimizers), update the EMA. After an out-of-memory error no
        optimizer keeps state it began to create in this step (Adam's first step allocates it);
        an error inside the update itself, once the state exists, can leave that update partly
        applied before the retry applies it whole."""
        scaler = self.precision.scaler
        # An inactive GAN (before its delay is over) has no gradients: its optimizer does not step.
        optimizers = [opt for opt in self._optimizers() if opt is self.optimizer or self.objective.gan_active]
        fresh = [(opt, p) for opt in optimizers if len(opt.state) < self._param_counts[id(opt)]
                 for group in opt.param_groups for p in group["params"] if p not in opt.state]
        try:
            with self._fatal_under_torchrun("the optimizer step"):
                self.injection.fire("optimizer")
                for optimizer in optimizers:
                    scaler.step(optimizer)
        except torch.OutOfMemoryError:
            for optimizer, p in fresh:
                optimizer.state.pop(p, None)
            raise
        scaler.update()  # once per iteration, after every optimizer stepped
        self.discard()
        self.ema.update(self.module)

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        gan = self.objective.gan
        return [self.optimizer] + ([gan.optimizer] if gan is not None else [])

    @contextlib.contextmanager
    def _fatal_under_torchrun(self, where: str):
        """Under torchrun the other ranks go on (or wait in a collective): no retry can line up."""
        try:
            yield
        except torch.OutOfMemoryError:
            if not self.sync:
                raise
            raise UserError(f"out of memory in {where} on rank {distributed.rank()}: under torchrun this ends "
                            "the run; resume with train.resume=auto and a smaller train.batch_size or "
                            "train.lq_size") from None

    def recover_from_oom(self) -> None:
        """After an out-of-memory error anywhere in a step (call it outside the `except` block): no
        gradients, the discriminator frozen again, no half-taken GradScaler step, the cache freed."""
        self.clear_step()
        self.free_memory()

    def clear_step(self) -> None:
        """Forget a step begun and not finished: no gradients, the discriminator frozen again, and
        a GradScaler without its per-optimizer "already unscaled" marks (only `update()` clears
        them, and `load_state_dict` keeps them), so the next `unscale_` does not refuse."""
        self.discard()
        gan = self.objective.gan
        if gan is not None:
            gan.discriminator.requires_grad_(False)  # its step turns them on, and may have failed inside
        scaler = self.precision.scaler
        if scaler.is_enabled():
            fresh = torch.amp.GradScaler(self.device.type)
            fresh.load_state_dict(scaler.state_dict())
            self.precision.scaler = fresh

    def discard(self) -> None:
        """Drop the step's gradients (a skipped step, or one that failed part-way)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.objective.gan is not None:
            self.objective.gan.optimizer.zero_grad(set_to_none=True)
        self._for_discriminator = None

    def free_memory(self) -> None:
        self.accelerator.free_cache()  # and a new peak window: a failed size's peak must not judge the next

    def skip(self) -> None:
        """Drop a step judged non-finite after `clip`; a GradScaler still lowers its scale."""
        if self.precision.scaler.is_enabled():
            self.precision.scaler.update()
        self.discard()

    def train_on(self, lq: torch.Tensor, gt: torch.Tensor, lr: float) -> float:
        """One whole plain iteration on given tensors at `lr` (the start-up probes); returns the loss."""
        self.set_lr(lr)
        step = self.forward_backward(lq, gt, lq.shape[0])
        self.clip(step, float("inf"))
        loss = float(step.total)
        self.apply()
        return loss
