"""The pieces of a run and one iteration of it.

`Trainer` holds the pieces (the learner, the data stream, the validator, the logger, the
automations), is where the automations' decisions reach them, and checkpoints and resumes them
all; `zerosr.engine.run.train` drives it from start to end.
"""

from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from omegaconf import DictConfig, OmegaConf

from zerosr import archs, pretrained
from zerosr.automations import build_automations
from zerosr.automations.base import Decision
from zerosr.config.user_set import user_set_keys
from zerosr.engine import distributed
from zerosr.engine.accelerator import current as current_accelerator
from zerosr.engine.checkpoint import (
    capture_rng_state,
    find_resume_state,
    load_training_state,
    restore_rng_state,
    save_training_state,
    state_file_name,
)
from zerosr.engine.data import BatchStream, build_data
from zerosr.engine.learner import Learner
from zerosr.engine.preset_lr import MeasuredLR
from zerosr.engine.validation import Validator
from zerosr.errors import UserError
from zerosr.metrics import catalog
from zerosr.report.logs import RunLogger
from zerosr.report.progress import Progress
from zerosr.report.summary import RunOutcome
from zerosr.report.wandb_log import logger_names


def seed_everything(seed: int, deterministic: bool, gpu: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        if gpu:  # cuBLAS is deterministic only with a fixed workspace, set before its first handle
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # Bit-exact on CPU given the same thread count; on CUDA, deterministic kernels where they
        # exist, and a warning (once per operator) where one is not.
        torch.use_deterministic_algorithms(True, warn_only=True)
    # Off by default: cuDNN would autotune (and grow its workspace) at every new shape, every probe
    # batch, validation image and edge tile. The training step turns it on for itself (Learner).
    torch.backends.cudnn.benchmark = False


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        train, tier = cfg.train, cfg.hardware_tier
        self.accelerator = accelerator = current_accelerator()
        seed_everything(train.seed, train.deterministic, accelerator.is_gpu)
        pretrained.set_weights_dir(train.weights_dir)  # before a loss or metric reads a pretrained file
        self.device = accelerator.device
        self.learner = Learner(cfg, accelerator)
        self.sync = self.learner.sync
        with accelerator.host():  # decoding, caching and calibrating the data use host memory on a GPU too
            self.data = build_data(cfg)
        self.stream = BatchStream(self.data.train, train.batch_size, train.seed,
                                  rank=distributed.rank(), world_size=distributed.world_size(),
                                  num_workers=tier.num_workers, pin_memory=tier.pin_memory and accelerator.kind == "cuda",
                                  prefetch_factor=tier.prefetch_factor, host=accelerator.host,
                                  degrade_device=self.device if accelerator.is_gpu else None)
        self.select = catalog.metric(train.select_metric)  # the best model, early stop, LR plateaus, sweeps
        self.validator = Validator(self.data.val, cfg.scale, train.val_tile, self.device,
                                   self.run_dir / "visualization", free_memory=accelerator.free_cache,
                                   inject_oom=lambda: self.learner.injection.fire("validation"),
                                   host=accelerator.host,
                                   metrics=catalog.computed(train.val_metrics, self.select.name))
        self.logger = RunLogger(self.run_dir, enabled=distributed.is_main(),  # rank 0 writes the logs
                                wandb="wandb" in logger_names(cfg.logger))
        gan = self.learner.objective.gan
        self.suite = build_automations(
            cfg.automation, base_lr=float(train.lr) * float(train.lr_scale), total_iter=train.total_iter,
            warmup_iter=train.warmup_iter, batch_size=train.batch_size,
            base_weights=self.learner.objective.base_weights, user_set=user_set_keys("automation.loss_schedule"),
            gan_name=gan.name if gan is not None else None,
            total_memory=accelerator.total_memory(), select=self.select)
        # Read once: the step runs thousands of times and must not touch the config.
        self.grad_accum = int(train.grad_accum)
        self.inject_nan_at = set(cfg.debug.inject_nan_at)  # debug.inject_oom_at: see learner.injection
        self.deadline: float | None = None  # train.max_minutes, as a perf_counter() time
        self.cooldown_due_at: float | None = None  # ... and when the LR cool-down must begin
        self.loop_began_at = 0  # the iteration this process's loop started from
        self.lr = 0.0
        self.iteration = 0
        # The best validation by the selection metric: its value, iteration and all its metrics.
        self.best = {"metric": self.select.name, "value": self.select.worst, "iter": 0, "metrics": {}}
        self.last_val: dict[str, float] = {}
        self.decisions: list[Decision] = []
        self.faults = {"nonfinite_skipped": 0, "rollbacks": 0, "oom_retried": 0}
        self.last_good: Path | dict = self.learner.snapshot()
        self.preset_measured: MeasuredLR | None = None  # arch=custom: its preset LR (engine.preset_lr)
        self.stopped_early = False
        self.stop_requested = False  # set by Ctrl+C on this rank
        self.stop_agreed = False  # ... and agreed by every rank at the last step
        self.time_up = False  # train.max_minutes spent
        # The peak of the last optimizer step and EMA update: they run after the step's readback,
        # so their memory joins the next step's (a host-side counter: reading it costs no sync).
        self.update_peak = 0
        self.progress: Progress | None = None
        self.process_started = psutil.Process().create_time()  # validations record the wall time since

    # --- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            **self.learner.state_dict(),
            "iteration": self.iteration,
            "data": self.stream.state_dict(),
            "automations": self.suite.state_dict(),
            "lr": self.lr,
            "best": dict(self.best),
            "faults": dict(self.faults),
            "rng": capture_rng_state(),
            "arch": {"name": self.cfg.arch.name, "scale": int(self.cfg.scale)},
            "lq_size": int(self.data.train.lq_size),
        }

    def load_state_dict(self, state: dict, source: Path | None = None) -> None:
        arch = state["arch"]
        if (arch["name"], arch["scale"]) != (self.cfg.arch.name, self.cfg.scale):
            raise UserError(f"the state to resume is {arch['name']} x{arch['scale']}, this run is "
                            f"{self.cfg.arch.name} x{self.cfg.scale}: resume with the same arch and scale")
        mismatch = self._resume_mismatch(state)
        if mismatch is None:
            try:
                self.learner.load_state_dict(state)
            except RuntimeError as error:  # e.g. a discriminator of another size
                mismatch = f"its networks do not fit this run's ({str(error).splitlines()[0]})"
        if mismatch is not None:
            where = source if source is not None else "the saved state"
            weights = (source.parent.parent / "models" / f"net_g_ema_{int(state['iteration']):08d}.safetensors"
                       if source is not None else "its EMA weights")
            raise UserError(f"cannot resume {where}: {mismatch}; resume with the saved run's setting, or start "
                            f"fresh from its weights with train.pretrain={weights} (and no train.resume)")
        self.iteration = int(state["iteration"])
        self.stream.load_state_dict(state["data"])
        self.suite.load_state_dict(state["automations"])
        self.lr = float(state["lr"])
        self.best = self._saved_best(state["best"])
        self.faults = dict(state["faults"])
        self.stopped_early = bool(self.suite.early_stop.should_stop)
        restore_rng_state(state["rng"])
        self.apply_batch(self.stream.batch_size, int(state.get("lq_size", self.data.train.lq_size)))

    def _saved_best(self, best: dict) -> dict:
        """The saved best, if it was chosen by this run's selection metric; else the next validation
        starts the comparison afresh (the weights in best.safetensors stay until one beats nothing)."""
        if best.get("metric") == self.select.name:
            return dict(best)
        return {"metric": self.select.name, "value": self.select.worst, "iter": 0, "metrics": {}}

    def _resume_mismatch(self, state: dict) -> str | None:
        """What a saved state cannot be loaded into: other losses (a GAN added or removed among
        them), automation state of another version, or another precision's scaler."""
        saved_losses, losses = sorted(state["objective"]["weights"]), sorted(self.learner.objective.weights)
        saved_fp16, fp16 = bool(state["scaler"]), self.learner.precision.scaler.is_enabled()
        if saved_losses != losses:
            return f"train.losses: the saved run trained {', '.join(saved_losses)}, this one {', '.join(losses)}"
        missing = self.suite.missing_state(state["automations"])
        if missing:
            return f"it was saved by another zerosr version (its automation state lacks {', '.join(missing)})"
        if saved_fp16 != fp16:
            return (f"the precision: the saved run used {'fp16 with a GradScaler' if saved_fp16 else 'no GradScaler'}, "
                    f"this one {self.learner.precision.name}")
        return None

    def save(self) -> Path:
        """Training state plus EMA and raw weights; both kinds keep the newest few. Under torchrun
        rank 0 writes, after checking that every rank holds the same weights."""
        keep, learner = self.cfg.train.keep_checkpoints, self.learner
        if self.sync:
            gan = [learner.objective.gan.discriminator] if learner.objective.gan is not None else []
            if not distributed.replicas_identical(learner.module, learner.ema.module, *gan):
                raise RuntimeError(f"the ranks' weights differ at iteration {self.iteration}: the replicas "
                                   "drifted apart (a bug); the last checkpoint is intact")
            self.logger.log_validation(self.iteration, {"dist/replicas_identical": 1.0,
                                                        "dist/world_size": distributed.world_size()})
        path = self.run_dir / "training_state" / state_file_name(self.iteration)
        if distributed.is_main():
            models = self.run_dir / "models"
            for kind, module in (("net_g_ema", learner.ema.module), ("net_g", learner.module)):
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
            self.load_state_dict(distributed.on_main(lambda: load_training_state(path)), source=path)
            self.last_good = path
            if distributed.is_main():
                self._adopt_best_weights(path.parent.parent)
        return path

    def start_logs(self, resumed: Path | None) -> None:
        """Loggers that need the run's name, its config and, resumed, the run directory it continues
        (W&B continues that run): opened before any log line, their line on the start-up screen."""
        line = self.logger.start(self.cfg.name, OmegaConf.to_container(self.cfg, resolve=True),
                                 resumed.parent.parent if resumed is not None else None)
        if line:
            print(line, flush=True)

    def _adopt_best_weights(self, source_run: Path) -> None:
        """Resuming into a new directory: the best weights so far come along, so `best` stays true."""
        source, target = source_run / "models" / "best.safetensors", self.run_dir / "models" / "best.safetensors"
        if source.exists() and source.resolve() != target.resolve():
            from zerosr.atomic import atomic_write_bytes

            atomic_write_bytes(target, source.read_bytes())

    def set_deadline(self, deadline: float, loop_started: float) -> None:
        """train.max_minutes: the run ends at `deadline`; the LR cool-down begins when only its
        share (`automation.lr.cooldown_fraction`) of the loop's time is left."""
        lr = self.suite.lr
        self.deadline, self.loop_began_at = deadline, self.iteration
        if lr.cools_down:
            self.cooldown_due_at = deadline - lr.cooldown_fraction * (deadline - loop_started)

    def _iterations_left(self, iteration: int) -> int:
        """The iterations the rest of the time budget holds, at this process's pace so far."""
        share = self.suite.lr.cooldown_fraction
        return int(round((iteration - self.loop_began_at) * share / (1.0 - share)))

    # --- where decisions reach the pieces --------------------------------------------------------
    def apply_batch(self, batch_size: int, lq_size: int | None = None) -> None:
        """The one place a batch or patch size reaches the data stream."""
        self.stream.set_batch_size(batch_size)
        if lq_size is not None and lq_size != self.data.train.lq_size:
            self.data.train.lq_size = int(lq_size)
            self.stream.close()

    def _apply_lr(self, iteration: int) -> None:
        self.lr = self.suite.lr.lr_at(iteration)
        self.learner.set_lr(self.lr, self.lr / self.suite.lr.base_lr)

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

    # --- one iteration ---------------------------------------------------------------------------
    def step(self) -> dict[str, float]:
        learner, suite = self.learner, self.suite
        it = self.iteration + 1
        learner.set_loss_weights(suite.loss_schedule.weights_at(it))
        self._apply_lr(it)
        # The peak this step reads back is this step's alone: validation, saving and earlier steps
        # stay out of the memory watch's window.
        self.accelerator.reset_peak()
        batches = [self.stream.next_batch() for _ in range(self.grad_accum)]  # loaded as host work
        if len(batches) == 1:
            lq, gt = batches[0]["lq"], batches[0]["gt"]
        else:
            lq, gt = torch.cat([b["lq"] for b in batches]), torch.cat([b["gt"] for b in batches])

        learner.injection.at(it)
        while True:
            try:
                return self._attempt(it, lq, gt)
            except torch.OutOfMemoryError:
                pass  # leave the except block first: its traceback keeps the failed step's tensors alive
            # Out of memory anywhere in the step: the batch halves, the LR follows, the same samples go again.
            learner.recover_from_oom()
            self.faults["oom_retried"] += 1
            try:
                decisions = suite.on_oom(it)
            except UserError as error:  # it cannot shrink: say which card
                raise UserError(f"{self.accelerator.name}: {error}" if self.accelerator.is_gpu else str(error)) from None
            self.record(decisions)
            self.apply_batch(suite.batch.batch_size)
            self._apply_lr(it)

    def _attempt(self, it: int, lq: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
        """The step on these samples at the current batch size: forward and backward, clip, one
        readback, then the update or a skip. Raises torch.OutOfMemoryError for `step` to retry."""
        learner, suite = self.learner, self.suite
        out = learner.forward_backward(lq, gt, suite.batch.batch_size, poison=it in self.inject_nan_at)
        threshold = suite.clip.threshold
        learner.clip(out, threshold)
        self.iteration = it

        # The step's one readback (one collective under torchrun): losses, norm, memory, flags.
        names = list(out.parts)
        extra = [out.discriminator] if out.discriminator is not None else []
        means = torch.stack([out.total, *out.parts.values(), out.norm, *extra]).float()
        peak = self.accelerator.peak_bytes()
        maxes = [float(max(peak, self.update_peak))] if peak is not None else []
        now = time.perf_counter() if self.deadline is not None else None
        time_up = now is not None and now >= self.deadline
        cooldown_due = (self.cooldown_due_at is not None and now >= self.cooldown_due_at
                        and not suite.lr.cooling_down(it))
        values, maxes, (self.time_up, self.stop_agreed, cooldown_due) = distributed.combine_step(
            means, maxes, [time_up, self.stop_requested, cooldown_due])
        total, norm = values[0], values[1 + len(names)]
        stats = {"loss": total, "lr": self.lr, "batch_size": out.samples / self.grad_accum}
        stats.update({f"loss/{name}": value for name, value in zip(names, values[1:])})
        if extra:
            stats["loss/discriminator"] = values[-1]
        if maxes:
            stats["peak_mem_bytes"] = maxes[0]
        if not all(map(math.isfinite, values)):
            scaler = learner.precision.scaler
            # A GradScaler's overflow at a scale of 1 or more is it finding its scale (its first
            # steps do this); below 1 the gradients themselves are broken, and the guard counts them.
            finding_scale = scaler.is_enabled() and math.isfinite(total) and scaler.get_scale() >= 1.0
            scale = scaler.get_scale() if scaler.is_enabled() else None
            learner.skip()
            if finding_scale:
                self.record([Decision(it, "guard", {"grad_scale": (scale, scaler.get_scale())},
                                      "fp16 gradient overflow: the GradScaler lowered its scale")])
                return {**stats, "skipped": 1.0}
            return self._skip_nonfinite(it, stats)
        learner.apply()
        self.update_peak = self.accelerator.peak_bytes() or 0
        stats.update({"grad_norm": norm, "clip_threshold": threshold, "clipped": float(norm > threshold)})
        old_batch = suite.batch.batch_size
        self.record(suite.on_step_end(it, stats))
        if suite.lr.take_rollback():
            self._rollback(it, "loss blew up past the start")
        if cooldown_due:  # agreed by every rank, so every rank moves the end alike
            self.record(suite.lr.finish_in(it, self._iterations_left(it), "time budget"))
        if suite.batch.batch_size != old_batch:
            self.apply_batch(suite.batch.batch_size)
        return stats

    def _skip_nonfinite(self, it: int, stats: dict) -> dict:
        """A NaN/Inf loss or gradient: no update; repeated ones roll back and lower the LR."""
        self.faults["nonfinite_skipped"] += 1
        self.record([Decision(it, "guard", {}, f"non-finite loss or gradient (loss {stats['loss']}): step skipped")])
        self.record(self.suite.on_nonfinite(it))
        if self.suite.lr.take_rollback():
            self._rollback(it, "repeated non-finite steps")
        if self.suite.lr.give_up:
            raise UserError(f"training keeps producing NaN/Inf at iteration {it} even at the lowest LR: "
                            "check the data (preflight: python -m zerosr.doctor) or lower train.lr")
        return {**stats, "skipped": 1.0}

    def _rollback(self, it: int, why: str) -> None:
        """Back to the last good learner state; iteration, data and automations go on."""
        state = (self.last_good if isinstance(self.last_good, dict)
                 else distributed.on_main(lambda: load_training_state(self.last_good)))
        self.learner.load_state_dict(state)
        self.faults["rollbacks"] += 1
        where = self.last_good if isinstance(self.last_good, Path) else "the start of the run"
        self.record([Decision(it, "guard", {}, f"{why}: rolled back to {where}")])

    def log_step(self, iteration: int, stats: dict[str, float]) -> None:
        """One metrics line; with several scheduled losses, each one's trend and weight beside it."""
        if len(self.suite.loss_schedule.scheduled) > 1:
            for name, trend in self.suite.loss_schedule.trends.items():
                stats.update({f"loss_trend/{name}/{key}": value for key, value in trend.items()})
                stats[f"loss_weight/{name}"] = self.learner.objective.weights[name]
        self.logger.log_step(iteration, stats)

    def validate(self) -> dict[str, float]:
        # Rank 0 validates and shares the metrics: early stop and the LR see the same numbers everywhere.
        learner = self.learner
        metrics = distributed.on_main(lambda: self.validator(learner.ema.module, self.iteration, learner.channels_last))
        metrics["time/elapsed_s"] = time.time() - self.process_started
        self.logger.log_validation(self.iteration, metrics)
        self.logger.log_images(self.iteration, sorted((self.validator.out_dir / f"{self.iteration:08d}").glob("*_compare.png")))
        self.last_val = metrics
        self.record(self.suite.on_validation(self.iteration, metrics))
        self.stopped_early = bool(self.suite.early_stop.should_stop)
        value = metrics[self.select.key]
        if math.isfinite(value) and self.select.better(value, self.best["value"]):
            self.best = {"metric": self.select.name, "value": value, "iter": self.iteration,
                         "metrics": {k: v for k, v in metrics.items() if k.startswith("val/")}}
            if distributed.is_main():
                archs.save(learner.ema.module, self.run_dir / "models" / "best.safetensors",
                           metadata={"iteration": str(self.iteration), "select_metric": self.select.name,
                                     **{k.replace("/", "_"): f"{v:.6g}" for k, v in metrics.items()
                                        if k.startswith("val/") and "bicubic" not in k}})
        return metrics

    def outcome(self, seconds: float, interrupted: bool, notes: list[str]) -> RunOutcome:
        suite = self.suite
        finals = {}
        if any(a.enabled for a in suite.members.values()):
            finals = {
                "lr": f"LR factor {suite.lr.factor:.3g} (base {suite.lr.base_lr:.3g})",
                "batch": f"batch {suite.batch.batch_size}",
                "clip": f"clip threshold {suite.clip.threshold:.3g}, clip rate {suite.clip.clip_rate:.1%}",
                "early_stop": ("stopped the run early" if self.stopped_early else "no early stop")
                + f", best at iteration {self.best['iter']}",
                "loss_schedule": "weights " + ", ".join(f"{k} {v:.3g}"
                                                        for k, v in self.learner.objective.weights.items()),
            }
        counts: dict[str, int] = {}
        for decision in self.decisions:
            counts[decision.automation] = counts.get(decision.automation, 0) + 1
        return RunOutcome(
            run_dir=self.run_dir, iteration=self.iteration, seconds=seconds, last_val=self.last_val,
            best=self.best, automation_finals=finals, decision_counts=counts, faults=self.faults,
            interrupted=interrupted, stopped_early=self.stopped_early,
            early_stop_patience=int(self.cfg.automation.early_stop.patience), time_up=self.time_up,
            max_minutes=self.cfg.train.max_minutes,
            ranks=f"{distributed.world_size()} ({distributed.backend()})" if self.sync else None, notes=notes)

    def close(self) -> None:
        self.stream.close()
        self.logger.close()


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
