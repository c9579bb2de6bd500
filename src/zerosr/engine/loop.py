"""The training run: build everything from the resolved config, then step, validate, save, log.

`Trainer` owns the pieces (model, EMA, optimizer, objective, data stream, validator, logger) so
the automations can act on them between steps; `train(cfg, run_dir)` is the whole run top to
bottom and returns the best validation PSNR (what a sweeper maximises).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from zerosr import archs
from zerosr.automations import build_automations
from zerosr.automations.base import Decision
from zerosr.engine import distributed
from zerosr.engine.checkpoint import (capture_rng_state, find_resume_state, load_training_state,
                                      restore_rng_state, save_training_state, state_file_name)
from zerosr.engine.data import BatchStream, build_data
from zerosr.engine.ema import ModelEMA, unwrap_model
from zerosr.engine.killpoints import kill_point
from zerosr.engine.objective import build_objective
from zerosr.engine.precision import make_precision, select_device
from zerosr.automations.schedule import set_lr
from zerosr.engine.startup import analyse_dataset, find_lr, search_batch_size
from zerosr.engine.validation import Validator
from zerosr.config.user_set import user_set_keys
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


def build_optimizer(spec: DictConfig, params) -> torch.optim.Optimizer:
    try:
        return instantiate(spec, params=params)
    except InstantiationException as error:
        cause = str(error.__cause__ or error).splitlines()[0]
        raise UserError(f"train.optimizer could not be built ({cause}); for another optimizer replace the "
                        "whole node, e.g. 'train.optimizer={_target_: torch.optim.SGD, lr: ${train.lr}, "
                        "momentum: 0.9}'") from None


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
        self.optimizer = build_optimizer(train.optimizer, self.model.parameters())
        self.objective = build_objective(train.losses, self.device, train.lr * train.lr_scale)
        # torchrun: DistributedDataParallel; `self.sync` marks the steps whose decisions every rank
        # must take alike (see zerosr.engine.distributed).
        self.model = distributed.wrap(self.model, self.device)
        self.sync = distributed.is_distributed()
        self.forward = self.model
        if tier.compile and self.device.type == "cuda":
            self.forward = torch.compile(self.model)

        self.data = build_data(cfg)
        self.stream = BatchStream(self.data.train, train.batch_size, train.seed,
                                  rank=distributed.rank(), world_size=distributed.world_size(),
                                  num_workers=tier.num_workers, pin_memory=tier.pin_memory and self.device.type == "cuda",
                                  prefetch_factor=tier.prefetch_factor)
        self.validator = Validator(self.data.val, cfg.scale, train.val_tile, self.device,
                                   self.run_dir / "visualization")
        self.logger = RunLogger(self.run_dir, enabled=distributed.is_main())  # rank 0 writes the logs
        gan = self.objective.gan
        self.suite = build_automations(
            cfg.automation, base_lr=float(train.lr) * float(train.lr_scale), total_iter=train.total_iter,
            warmup_iter=train.warmup_iter, batch_size=train.batch_size,
            base_weights=self.objective.base_weights, user_set=user_set_keys("automation.loss_schedule"),
            gan_name=gan.name if gan is not None else None,
            total_memory=(torch.cuda.get_device_properties(self.device).total_memory
                          if self.device.type == "cuda" else None))
        self.lr = 0.0
        self.iteration = 0
        self.best = {"psnr": -math.inf, "ssim": 0.0, "iter": 0}
        self.last_val: dict[str, float] = {}
        self.decisions: list[Decision] = []
        self.faults = {"nonfinite_skipped": 0, "rollbacks": 0, "oom_retried": 0}
        self.last_good: Path | dict = self._snapshot()
        self.stopped_early = False
        self.stop_requested = False  # set by Ctrl+C; acted on between iterations
        self.time_up = False  # train.max_minutes spent
        self._for_discriminator = None
        self.progress: Progress | None = None

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
            "automations": self.suite.state_dict(),
            "lr": self.lr,
            "best": dict(self.best),
            "faults": dict(self.faults),
            "rng": capture_rng_state(),
            "arch": {"name": self.cfg.arch.name, "scale": int(self.cfg.scale)},
            "lq_size": int(self.data.train.lq_size),
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
        self.suite.load_state_dict(state["automations"])
        self.lr = float(state["lr"])
        self.best = dict(state["best"])
        self.faults = dict(state["faults"])
        self.stopped_early = bool(self.suite.early_stop.should_stop)
        restore_rng_state(state["rng"])
        self.apply_batch_and_patch(self.stream.batch_size, int(state.get("lq_size", self.data.train.lq_size)))

    def save(self) -> Path:
        """Training state plus EMA and raw weights; both kinds keep the newest few. Under torchrun
        rank 0 writes, after checking that every rank holds the same weights."""
        keep = self.cfg.train.keep_checkpoints
        if self.sync:
            gan = [self.objective.gan.discriminator] if self.objective.gan is not None else []
            if not distributed.replicas_identical(unwrap_model(self.model), self.ema.module, *gan):
                raise RuntimeError(f"the ranks' weights differ at iteration {self.iteration}: the replicas "
                                   "drifted apart (a bug); the last checkpoint is intact")
            self.logger.log_validation(self.iteration, {"dist/replicas_identical": 1.0,
                                                        "dist/world_size": distributed.world_size()})
        path = self.run_dir / "training_state" / state_file_name(self.iteration)
        if distributed.is_main():
            models = self.run_dir / "models"
            for kind, module in (("net_g_ema", self.ema.module), ("net_g", unwrap_model(self.model))):
                archs.save(module, models / f"{kind}_{self.iteration:08d}.safetensors")
                for old in sorted(models.glob(f"{kind}_[0-9]*.safetensors"))[:-keep]:
                    old.unlink()
            path = save_training_state(self.run_dir / "training_state", self.iteration, self.state_dict(), keep=keep)
        self.last_good = path  # every rank: a rollback reads it on rank 0 and shares it
        return path

    def resume_if_asked(self) -> Path | None:
        outputs = Path("outputs").resolve()  # Hydra's runs live under ./outputs (job.chdir is off)
        # Rank 0 finds and reads the state, every rank loads the same one (no shared disk needed).
        path = distributed.on_main(lambda: find_resume_state(self.cfg.train.resume, self.run_dir, outputs,
                                                             self.cfg.name))
        if path is not None:
            self.load_state_dict(distributed.on_main(lambda: load_training_state(path)))
            self.last_good = path
            if distributed.is_main():
                self._adopt_best_weights(path.parent.parent)
        return path

    def _adopt_best_weights(self, source_run: Path) -> None:
        """Resuming into a new directory: the best weights so far come along, so `best` stays true."""
        source, target = source_run / "models" / "best.safetensors", self.run_dir / "models" / "best.safetensors"
        if source.exists() and source.resolve() != target.resolve():
            from zerosr.atomic import atomic_write_bytes

            atomic_write_bytes(target, source.read_bytes())

    # --- pieces the automations act on -----------------------------------------------------------
    def apply_batch_and_patch(self, batch_size: int, lq_size: int) -> None:
        self.stream.set_batch_size(batch_size)
        if lq_size != self.data.train.lq_size:
            self.data.train.lq_size = int(lq_size)
            self.stream.close()

    def record(self, decisions: list[Decision]) -> None:
        """Log every automation decision (automation.jsonl, TensorBoard) and show it."""
        for decision in decisions:
            self.decisions.append(decision)
            self.logger.log_automation(decision.iteration, decision.automation, decision.change, decision.reason)
            changes = ", ".join(f"{k} {_short(a)} -> {_short(b)}" for k, (a, b) in decision.change.items())
            line = f"[{decision.automation}] iter {decision.iteration}: {changes or 'no change'} ({decision.reason})"
            if self.progress is not None:
                self.progress.write(line)
            else:
                print(line, flush=True)

    def _snapshot(self) -> dict:
        """In-memory copy of what a rollback restores, for before the first checkpoint exists."""
        import copy

        return copy.deepcopy({"model": unwrap_model(self.model).state_dict(), "ema": self.ema.state_dict(),
                              "optimizer": self.optimizer.state_dict(),
                              "scaler": self.precision.scaler.state_dict(), "objective": self.objective.state_dict()})

    def _rollback(self) -> None:
        """Back to the last good weights and optimizer state; iteration, data and automations go on."""
        state = (self.last_good if isinstance(self.last_good, dict)
                 else distributed.on_main(lambda: load_training_state(self.last_good)))
        unwrap_model(self.model).load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.precision.scaler.load_state_dict(state["scaler"])
        self.objective.load_state_dict(state["objective"])
        self.faults["rollbacks"] += 1

    # --- one iteration ---------------------------------------------------------------------------
    def _forward_backward(self, lq: torch.Tensor, gt: torch.Tensor, share: float,
                          poison: bool = False) -> tuple[float, dict[str, float]]:
        """Loss of one chunk, backpropagated with weight `share` (its part of the step's samples).
        Keeps the chunk's output for the discriminator step, which runs once per iteration."""
        lq, gt = lq.to(self.device, non_blocking=True), gt.to(self.device, non_blocking=True)
        if self.channels_last:
            lq = lq.contiguous(memory_format=torch.channels_last)
        oom = None
        try:
            with self.precision.autocast():
                sr = self.forward(lq)
                total, parts = self.objective.generator_loss(sr.float(), gt)
        except torch.OutOfMemoryError as error:
            oom = str(error)  # the message only: the traceback would keep the activations alive
        # Under DDP the backward pass all-reduces gradients, so every rank must enter it or none:
        # an out-of-memory error on any rank makes every rank retry the step at a smaller batch.
        if distributed.any_rank(oom is not None) if self.sync else oom is not None:
            raise torch.OutOfMemoryError(oom or "out of memory on another rank")
        if poison:  # debug.inject_nan_at: a loss that really is non-finite, through the real path
            total = total * float("nan")
        try:
            self.precision.scaler.scale(total * share).backward()
        except torch.OutOfMemoryError:
            if not self.sync:
                raise
            # The other ranks wait inside this backward's all-reduce: no retry can line up with them.
            raise UserError(f"out of memory in the backward pass on rank {distributed.rank()}: under "
                               "torchrun this ends the run; resume with train.resume=auto and a smaller "
                               "train.batch_size or train.lq_size") from None
        if self.objective.gan is not None:
            self._for_discriminator = (sr.detach(), gt)
        return float(total.detach()), {k: float(v.detach()) for k, v in parts.items()}

    def _optimizer_step(self) -> tuple[float, bool]:
        """Unscale, clip to the AutoClip threshold, step. Returns (gradient norm before clipping, stepped)."""
        self.precision.scaler.unscale_(self.optimizer)
        threshold = self.suite.clip.threshold
        norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), threshold))
        stepped = math.isfinite(norm) or self.precision.scaler.is_enabled()  # fp16: the scaler skips inf steps
        if stepped:
            self.precision.scaler.step(self.optimizer)
            self.precision.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return norm, stepped

    def train_on(self, lq: torch.Tensor, gt: torch.Tensor, accumulate: int = 1, step: bool = True) -> float:
        """One plain step on given tensors (the start-up probes use it)."""
        total, _ = self._forward_backward(lq, gt, 1.0 / accumulate)
        if step:
            self._optimizer_step()
        return total

    def _chunks(self, batches: list[dict], size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The step's samples regrouped into chunks of `size` (after an OOM: same samples, smaller chunks)."""
        lq = torch.cat([b["lq"] for b in batches])
        gt = torch.cat([b["gt"] for b in batches])
        return [(lq[i:i + size], gt[i:i + size]) for i in range(0, lq.shape[0], size)]

    def _free_after_oom(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self._for_discriminator = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)  # the failed size's peak must not judge the next

    def step(self) -> dict[str, float]:
        train, debug = self.cfg.train, self.cfg.debug
        it = self.iteration + 1
        self.objective.weights.update(self.suite.loss_schedule.weights)
        batches = [self.stream.next_batch() for _ in range(train.grad_accum)]
        chunks = [(b["lq"], b["gt"]) for b in batches]
        inject_oom = it in debug.inject_oom_at
        while True:
            self.lr = self.suite.lr.lr_at(it)
            set_lr(self.optimizer, self.lr)
            if self.objective.gan is not None:  # the D optimizer's own LR, moved like the generator's
                set_lr(self.objective.gan.optimizer, self.objective.gan.base_lr * self.lr / self.suite.lr.base_lr)
            try:
                samples = sum(lq.shape[0] for lq, _ in chunks)
                total, parts = 0.0, {}
                for index, (lq, gt) in enumerate(chunks):
                    share = lq.shape[0] / samples
                    loss, chunk_parts = self._forward_backward(lq, gt, share, poison=it in debug.inject_nan_at)
                    if inject_oom and index == 0:
                        inject_oom = False  # once: the retry must go through
                        raise torch.OutOfMemoryError(f"debug.inject_oom_at: injected out-of-memory at iteration {it}")
                    total += loss * share
                    for name, value in chunk_parts.items():
                        parts[name] = parts.get(name, 0.0) + value * share
                break
            except torch.OutOfMemoryError:
                self._free_after_oom()
                self.faults["oom_retried"] += 1
                self.record(self.suite.on_oom(it))
                self.stream.set_batch_size(self.suite.batch.batch_size)
                chunks = self._chunks(batches, self.suite.batch.batch_size)
        self.iteration = it
        if self.sync:  # the automations decide from the mean over ranks, so every rank decides alike
            total, *means = distributed.all_reduce_mean([total, *parts.values()])
            parts = dict(zip(parts, means))
        stats = {"loss": total, "lr": self.lr, "batch_size": samples / train.grad_accum}
        stats.update({f"loss/{k}": v for k, v in parts.items()})
        if not math.isfinite(total):
            return self._skip_nonfinite(it, stats)
        norm, stepped = self._optimizer_step()
        if not stepped:
            return self._skip_nonfinite(it, stats)
        if self.objective.gan is not None:  # one discriminator update per iteration, on the last chunk
            stats["loss/discriminator"] = self.objective.discriminator_step(
                *self._for_discriminator, self.precision.autocast, self.precision.scaler)
            self.precision.scaler.update()
        self._for_discriminator = None
        self.ema.update(self.model)
        stats.update({"grad_norm": norm, "clip_threshold": self.suite.clip.threshold,
                      "clipped": float(norm > self.suite.clip.threshold)})
        if self.device.type == "cuda":
            stats["peak_mem_bytes"] = distributed.all_reduce_max(float(torch.cuda.max_memory_reserved(self.device)))
        old_batch = self.suite.batch.batch_size
        self.record(self.suite.on_step_end(it, stats))
        if len(self.suite.loss_schedule.scheduled) > 1:  # each loss's trend, beside its weight, in the logs
            for name, trend in self.suite.loss_schedule.trends.items():
                stats.update({f"loss_trend/{name}/{key}": value for key, value in trend.items()})
                stats[f"loss_weight/{name}"] = self.objective.weights[name]
        if self.suite.batch.batch_size != old_batch:
            self.stream.set_batch_size(self.suite.batch.batch_size)
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
        return stats

    def _skip_nonfinite(self, it: int, stats: dict) -> dict:
        """A NaN/Inf loss or gradient: no update; repeated ones roll back and lower the LR."""
        self.optimizer.zero_grad(set_to_none=True)
        self.faults["nonfinite_skipped"] += 1
        self.record([Decision(it, "guard", {}, f"non-finite loss or gradient (loss {stats['loss']}): step skipped")])
        self.record(self.suite.on_nonfinite(it))
        if self.suite.lr.take_rollback():
            self._rollback()
            where = self.last_good if isinstance(self.last_good, Path) else "the start of the run"
            self.record([Decision(it, "guard", {}, f"repeated non-finite steps: rolled back to {where}")])
        if self.suite.lr.give_up:
            raise UserError(f"training keeps producing NaN/Inf at iteration {it} even at the lowest LR: "
                            "check the data (preflight: python -m zerosr.doctor) or lower train.lr")
        return {**stats, "skipped": 1.0}

    def validate(self) -> dict[str, float]:
        # Rank 0 validates and shares the metrics: early stop and the LR see the same numbers everywhere.
        metrics = distributed.on_main(lambda: self.validator(self.ema.module, self.iteration, self.channels_last))
        self.logger.log_validation(self.iteration, metrics)
        self.last_val = metrics
        self.record(self.suite.on_validation(self.iteration, metrics))
        self.stopped_early = bool(self.suite.early_stop.should_stop)
        if metrics["val/psnr"] > self.best["psnr"]:
            self.best = {"psnr": metrics["val/psnr"], "ssim": metrics["val/ssim"], "iter": self.iteration}
            if distributed.is_main():
                archs.save(self.ema.module, self.run_dir / "models" / "best.safetensors",
                           metadata={"iteration": str(self.iteration), "val_psnr": f"{metrics['val/psnr']:.4f}"})
        return metrics

    @contextlib.contextmanager
    def local(self):
        """Steps on this rank alone (start-up probes on rank 0): the plain module, no collectives."""
        forward, sync = self.forward, self.sync
        self.forward, self.sync = unwrap_model(self.model), False
        try:
            yield
        finally:
            self.forward, self.sync = forward, sync

    def close(self) -> None:
        self.stream.close()
        self.logger.close()


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _catch_ctrl_c(trainer: Trainer):
    """First Ctrl+C: finish the current iteration, save, stop (so the saved data position and
    weights agree). Second Ctrl+C: stop now. Returns the previous handler (None off the main thread)."""

    def handler(signum, frame):
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = True
        if trainer.progress is not None:
            trainer.progress.write("Ctrl+C: finishing this iteration, then saving (Ctrl+C again to stop now)")

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, handler)


def start_up(trainer: Trainer) -> None:
    """Fresh runs only: measure the batch size, analyse the data, optionally find the LR."""
    suite, cfg = trainer.suite, trainer.cfg
    if suite.batch.enabled and "batch_size" not in user_set_keys("train"):
        trainer.record(search_batch_size(trainer))
    scores = analyse_dataset(trainer, suite.analyse_batches) if suite.analyse_batches else None
    if scores is not None:
        trainer.logger.log_validation(0, {f"data/{k}": v for k, v in scores.items()})
        print("analysis     " + ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in scores.items()), flush=True)
    trainer.record(suite.loss_schedule.calibrate(scores))
    if suite.lr.enabled and cfg.automation.lr.find:
        trainer.record(find_lr(trainer))


def start_up_everywhere(trainer: Trainer) -> None:
    """`start_up`, once: under torchrun rank 0 measures on its own and every rank adopts the result."""
    if not trainer.sync:
        start_up(trainer)
        return
    if distributed.is_main():
        with trainer.local():
            start_up(trainer)
    shared = distributed.on_main(lambda: {"automations": trainer.suite.state_dict(),
                                          "batch_size": trainer.stream.batch_size,
                                          "lq_size": int(trainer.data.train.lq_size)})
    if not distributed.is_main():
        trainer.suite.load_state_dict(shared["automations"])
        trainer.apply_batch_and_patch(shared["batch_size"], shared["lq_size"])


def train(cfg: DictConfig, run_dir: Path) -> float:
    started = time.perf_counter()
    trainer = Trainer(cfg, run_dir)
    print(f"data         {trainer.data.description}", flush=True)
    resumed = trainer.resume_if_asked()
    if resumed is not None:
        print(f"resumed      from {resumed} at iteration {trainer.iteration}", flush=True)
    else:
        start_up_everywhere(trainer)
    total, train_cfg = cfg.train.total_iter, cfg.train
    progress = trainer.progress = Progress(total, start=trainer.iteration)
    interrupted = False
    # train.max_minutes: a wall-clock budget for this process (start-up included); the run then
    # ends as if it had reached total_iter: validated, saved, summarised.
    deadline = None if train_cfg.max_minutes is None else started + 60 * train_cfg.max_minutes
    window_start, window_iters = time.perf_counter(), 0
    previous_handler = _catch_ctrl_c(trainer)
    try:
        while trainer.iteration < total and not trainer.stopped_early and not trainer.time_up:
            stats = trainer.step()
            it = trainer.iteration
            kill_point("step", it)  # debug.kill_at (a no-op unless armed)
            trainer.time_up = distributed.any_rank(deadline is not None and time.perf_counter() >= deadline)
            last = it == total or trainer.time_up
            window_iters += 1
            progress.update(it, stats["loss"], stats["lr"], int(stats["batch_size"]))
            if it % train_cfg.log_freq == 0 or last:
                now = time.perf_counter()
                stats["it_per_s"] = window_iters / max(now - window_start, 1e-9)
                window_start, window_iters = now, 0
                trainer.logger.log_step(it, stats)
            if it % train_cfg.val_freq == 0 or last:
                metrics = trainer.validate()
                progress.write(f"iter {it}: val PSNR {metrics['val/psnr']:.2f} dB, SSIM {metrics['val/ssim']:.4f} "
                               f"(bicubic {metrics['val/bicubic_psnr']:.2f} dB)")
            trainer.stop_requested = distributed.any_rank(trainer.stop_requested)  # Ctrl+C on any rank
            if trainer.stop_requested:
                interrupted = True
                progress.write(f"interrupted at iteration {it}: saving the training state")
                trainer.save()
                break
            if it % train_cfg.save_freq == 0 or last or trainer.stopped_early:
                trainer.save()
    except KeyboardInterrupt:  # a second Ctrl+C: stop at once, the last checkpoint stays as it is
        interrupted = True
        progress.write(f"stopped at iteration {trainer.iteration} without saving; the last checkpoint is intact")
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
        progress.close()
        trainer.progress = None
        trainer.close()
    if not trainer.last_val and not interrupted:
        trainer.validate()  # resumed a finished run: still report its quality
    if distributed.is_main():
        write_plots(run_dir)
    print(summary(trainer, time.perf_counter() - started, interrupted), flush=True)
    return float(trainer.best["psnr"])


def automation_report(trainer: Trainer) -> list[str]:
    """One line per automation: how many decisions, and where its value ended."""
    counts: dict[str, int] = {}
    for decision in trainer.decisions:
        counts[decision.automation] = counts.get(decision.automation, 0) + 1
    suite = trainer.suite
    if not any(a.enabled for a in suite.members.values()):
        return ["automations  off (fixed schedule and batch)"]
    finals = {
        "lr": f"LR factor {suite.lr.factor:.3g} (base {suite.lr.base_lr:.3g})",
        "batch": f"batch {suite.batch.batch_size}",
        "clip": f"clip threshold {suite.clip.threshold:.3g}, clip rate {suite.clip.clip_rate:.1%}",
        "early_stop": ("stopped the run early" if trainer.stopped_early else "no early stop")
        + f", best at iteration {trainer.best['iter']}",
        "loss_schedule": "weights " + ", ".join(f"{k} {v:.3g}" for k, v in trainer.objective.weights.items()),
    }
    lines = []
    for name, final in finals.items():
        lines.append(f"  {name:<13} {counts.get(name, 0):>3} decisions; {final}")
    faults = trainer.faults
    if any(faults.values()):
        lines.append(f"  faults        {faults['nonfinite_skipped']} non-finite steps skipped, "
                     f"{faults['rollbacks']} rollbacks, {faults['oom_retried']} out-of-memory retries")
    return ["automations  (decisions in automation.jsonl)"] + lines


def summary(trainer: Trainer, seconds: float, interrupted: bool) -> str:
    val, best = trainer.last_val, trainer.best
    minutes, secs = divmod(int(round(seconds)), 60)
    lines = ["", "=== zerosr run summary ==="]
    if interrupted:
        lines.append(f"interrupted at iteration {trainer.iteration}; resume with train.resume=auto "
                     f"hydra.run.dir={trainer.run_dir}")
    if trainer.stopped_early:
        lines.append(f"stopped early at iteration {trainer.iteration}: no PSNR gain for "
                     f"{trainer.cfg.automation.early_stop.patience} iterations")
    if trainer.time_up:
        lines.append(f"stopped      at iteration {trainer.iteration}: train.max_minutes="
                     f"{trainer.cfg.train.max_minutes} spent")
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
    lines += automation_report(trainer)
    if trainer.sync:
        lines.append(f"ranks        {distributed.world_size()} ({distributed.backend()}), the same weights on "
                     "every rank at every save; per-rank batch as above")
    lines += [f"time         {minutes} min {secs} s for {trainer.iteration} iterations",
              f"run          {trainer.run_dir}"]
    return "\n".join(lines)
