"""The training run: build everything from the resolved config, then step, validate, save, log.

`Trainer` owns the pieces (model, EMA, optimizer, objective, data stream, validator, logger) so
the automations can act on them between steps; `train(cfg, run_dir)` is the whole run top to
bottom and returns the best validation PSNR (what a sweeper maximises).
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import get_original_cwd, instantiate
from omegaconf import DictConfig

from zerosr import archs
from zerosr.engine.checkpoint import (capture_rng_state, find_resume_state, load_training_state,
                                      restore_rng_state, save_training_state)
from zerosr.engine.data import BatchStream, build_data
from zerosr.engine.ema import ModelEMA, unwrap_model
from zerosr.engine.objective import build_objective
from zerosr.engine.precision import make_precision, select_device
from zerosr.engine.schedule import scheduled_lr, set_lr
from zerosr.engine.validation import Validator
from zerosr.errors import UserError
from zerosr.report.logs import RunLogger
from zerosr.report.plots import write_plots
from zerosr.report.progress import Progress

log = logging.getLogger("zerosr")


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # Bit-exact on CPU given the same thread count; on CUDA, deterministic kernels where they exist.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        train, tier = cfg.train, cfg.hardware_tier
        seed_everything(train.seed, train.deterministic)
        self.device = select_device()
        self.precision = make_precision(tier.precision, self.device)
        self.channels_last = bool(tier.channels_last) and self.device.type == "cuda"

        self.model = archs.build(cfg.arch.name, cfg.scale, **cfg.arch.params).to(self.device)
        if train.pretrain:
            self._load_pretrain(train.pretrain)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = ModelEMA(self.model, train.ema_decay)
        self.optimizer = instantiate(train.optimizer, params=self.model.parameters())
        self.objective = build_objective(train.losses, self.device, train.lr)
        self.forward = self.model
        if tier.compile and self.device.type == "cuda":
            self.forward = torch.compile(self.model)

        self.data = build_data(cfg)
        self.stream = BatchStream(self.data.train, train.batch_size, train.seed,
                                  num_workers=tier.num_workers, pin_memory=tier.pin_memory and self.device.type == "cuda",
                                  prefetch_factor=tier.prefetch_factor)
        self.validator = Validator(self.data.val, cfg.scale, train.val_tile, self.device,
                                   self.run_dir / "visualization")
        self.logger = RunLogger(self.run_dir)
        self.base_lr = float(train.lr)
        self.lr = 0.0
        self.iteration = 0
        self.best = {"psnr": -math.inf, "ssim": 0.0, "iter": 0}
        self.last_val: dict[str, float] = {}

    # --- state ---------------------------------------------------------------------------------
    def _load_pretrain(self, path: str) -> None:
        state, _ = archs.load_state_dict_file(path)
        found = archs.identify(state)
        wanted = (self.cfg.arch.name, self.cfg.scale)
        if found is not None and tuple(found) != wanted:
            raise UserError(f"train.pretrain={path} holds {found[0]} x{found[1]}, but this run is "
                            f"{wanted[0]} x{wanted[1]}: pick matching weights or set arch/scale to match")
        try:
            self.model.load_state_dict(state)
        except RuntimeError as error:
            raise UserError(f"train.pretrain={path} does not fit {wanted[0]} x{wanted[1]}: "
                            f"{str(error).splitlines()[0]}") from None

    def state_dict(self) -> dict:
        return {
            "iteration": self.iteration,
            "model": unwrap_model(self.model).state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.precision.scaler.state_dict(),
            "objective": self.objective.state_dict(),
            "data": self.stream.state_dict(),
            "schedule": {"base_lr": self.base_lr, "lr": self.lr},
            "best": dict(self.best),
            "rng": capture_rng_state(),
            "arch": {"name": self.cfg.arch.name, "scale": int(self.cfg.scale)},
        }

    def load_state_dict(self, state: dict) -> None:
        arch = state["arch"]
        if (arch["name"], arch["scale"]) != (self.cfg.arch.name, self.cfg.scale):
            raise UserError(f"the state to resume is {arch['name']} x{arch['scale']}, this run is "
                            f"{self.cfg.arch.name} x{self.cfg.scale}: resume with the same arch and scale")
        self.iteration = int(state["iteration"])
        unwrap_model(self.model).load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.precision.scaler.load_state_dict(state["scaler"])
        self.objective.load_state_dict(state["objective"])
        self.stream.load_state_dict(state["data"])
        self.base_lr, self.lr = float(state["schedule"]["base_lr"]), float(state["schedule"]["lr"])
        self.best = dict(state["best"])
        restore_rng_state(state["rng"])

    def save(self) -> Path:
        """Training state plus EMA and raw weights; both kinds keep the newest few."""
        keep = self.cfg.train.keep_checkpoints
        models = self.run_dir / "models"
        for kind, module in (("net_g_ema", self.ema.module), ("net_g", self.model)):
            archs.save(module, models / f"{kind}_{self.iteration:08d}.safetensors")
            for old in sorted(models.glob(f"{kind}_[0-9]*.safetensors"))[:-keep]:
                old.unlink()
        return save_training_state(self.run_dir / "training_state", self.iteration, self.state_dict(), keep=keep)

    def resume_if_asked(self) -> Path | None:
        outputs = Path(get_original_cwd()) / "outputs"
        path = find_resume_state(self.cfg.train.resume, self.run_dir, outputs, self.cfg.name)
        if path is not None:
            self.load_state_dict(load_training_state(path))
        return path

    # --- one iteration -------------------------------------------------------------------------
    def step(self) -> dict[str, float]:
        train = self.cfg.train
        self.lr = scheduled_lr(self.base_lr, self.iteration + 1, train.warmup_iter, train.total_iter)
        set_lr(self.optimizer, self.lr)
        if self.objective.gan is not None:
            set_lr(self.objective.gan.optimizer, self.lr)
        parts_sum: dict[str, float] = {}
        total_sum, samples = 0.0, 0
        for _ in range(train.grad_accum):
            batch = self.stream.next_batch()
            lq = batch["lq"].to(self.device, non_blocking=True)
            gt = batch["gt"].to(self.device, non_blocking=True)
            if self.channels_last:
                lq = lq.contiguous(memory_format=torch.channels_last)
            with self.precision.autocast():
                sr = self.forward(lq)
                total, parts = self.objective.generator_loss(sr.float(), gt)
            self.precision.scaler.scale(total / train.grad_accum).backward()
            total_sum += float(total.detach())
            for name, value in parts.items():
                parts_sum[name] = parts_sum.get(name, 0.0) + float(value.detach())
            samples += lq.shape[0]
            if self.objective.gan is not None:
                self.objective.discriminator_step(sr, gt, self.precision.autocast, self.precision.scaler)
        self.precision.scaler.unscale_(self.optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), float("inf")))
        self.precision.scaler.step(self.optimizer)
        self.precision.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        self.iteration += 1
        n = train.grad_accum
        stats = {"loss": total_sum / n, "lr": self.lr, "batch_size": samples / n, "grad_norm": grad_norm}
        stats.update({f"loss/{k}": v / n for k, v in parts_sum.items()})
        return stats

    def validate(self) -> dict[str, float]:
        metrics = self.validator(self.ema.module, self.iteration, self.channels_last)
        self.logger.log_validation(self.iteration, metrics)
        self.last_val = metrics
        if metrics["val/psnr"] > self.best["psnr"]:
            self.best = {"psnr": metrics["val/psnr"], "ssim": metrics["val/ssim"], "iter": self.iteration}
            archs.save(self.ema.module, self.run_dir / "models" / "best.safetensors",
                       metadata={"iteration": str(self.iteration), "val_psnr": f"{metrics['val/psnr']:.4f}"})
        return metrics

    def close(self) -> None:
        self.stream.close()
        self.logger.close()


def train(cfg: DictConfig, run_dir: Path) -> float:
    started = time.perf_counter()
    trainer = Trainer(cfg, run_dir)
    print(f"data         {trainer.data.description}", flush=True)
    resumed = trainer.resume_if_asked()
    if resumed is not None:
        print(f"resumed      from {resumed} at iteration {trainer.iteration}", flush=True)
    total, train_cfg = cfg.train.total_iter, cfg.train
    progress = Progress(total, start=trainer.iteration)
    interrupted = False
    window_start, window_iters = time.perf_counter(), 0
    try:
        while trainer.iteration < total:
            stats = trainer.step()
            it = trainer.iteration
            window_iters += 1
            progress.update(it, stats["loss"], stats["lr"], int(stats["batch_size"]))
            if it % train_cfg.log_freq == 0 or it == total:
                now = time.perf_counter()
                stats["it_per_s"] = window_iters / max(now - window_start, 1e-9)
                window_start, window_iters = now, 0
                trainer.logger.log_step(it, stats)
            if it % train_cfg.val_freq == 0 or it == total:
                metrics = trainer.validate()
                progress.write(f"iter {it}: val PSNR {metrics['val/psnr']:.2f} dB, SSIM {metrics['val/ssim']:.4f} "
                               f"(bicubic {metrics['val/bicubic_psnr']:.2f} dB)")
            if it % train_cfg.save_freq == 0 or it == total:
                trainer.save()
    except KeyboardInterrupt:
        interrupted = True
        progress.write(f"interrupted at iteration {trainer.iteration}: saving the training state")
        trainer.save()
    finally:
        progress.close()
        trainer.close()
    if not trainer.last_val and not interrupted:
        trainer.validate()  # resumed a finished run: still report its quality
    write_plots(run_dir)
    print(summary(trainer, time.perf_counter() - started, interrupted), flush=True)
    return float(trainer.best["psnr"])


def summary(trainer: Trainer, seconds: float, interrupted: bool) -> str:
    val, best = trainer.last_val, trainer.best
    minutes, secs = divmod(int(round(seconds)), 60)
    lines = ["", "=== zerosr run summary ==="]
    if interrupted:
        lines.append(f"interrupted at iteration {trainer.iteration}; resume with train.resume=auto "
                     f"hydra.run.dir={trainer.run_dir}")
    if val:
        gain = val["val/psnr"] - val["val/bicubic_psnr"]
        lines += [
            f"validation   model   PSNR {val['val/psnr']:.2f} dB  SSIM {val['val/ssim']:.4f}",
            f"             bicubic PSNR {val['val/bicubic_psnr']:.2f} dB  SSIM {val['val/bicubic_ssim']:.4f}"
            f"  ({gain:+.2f} dB for the model)",
        ]
    if best["iter"]:
        lines.append(f"best         {best['psnr']:.2f} dB at iteration {best['iter']}: "
                     f"{trainer.run_dir / 'models' / 'best.safetensors'}")
    lines += [f"time         {minutes} min {secs} s for {trainer.iteration} iterations",
              f"run          {trainer.run_dir}"]
    return "\n".join(lines)
