"""The whole training run, top to bottom: build, resume or measure, loop, summarise.

`train(cfg, run_dir)` returns the best value of the selection metric (`train.select_metric`:
what a sweeper optimises, in the direction `hparams_search=optuna` takes from it).
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from zerosr.automations.base import Decision
from zerosr.config.resolved import resolved_dict
from zerosr.config.user_set import user_set_keys
from zerosr.engine import distributed
from zerosr.engine.accelerator import current as current_accelerator
from zerosr.engine.killpoints import kill_point
from zerosr.engine.loop import Trainer
from zerosr.engine.preset_lr import settle_preset_lr
from zerosr.engine.startup import analyse_dataset, find_lr, search_batch_size, starting_lr
from zerosr.report.plots import write_plots
from zerosr.report.progress import Progress
from zerosr.report.summary import summary, validation_line


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
    """Fresh runs only: measure the batch size, analyse the data, optionally find the LR. Under
    torchrun rank 0 measures on its own and every rank adopts what it found."""
    suite, cfg, learner = trainer.suite, trainer.cfg, trainer.learner
    trainer.record(trainer.data.decisions)  # taken while the data was built (degradation calibration)
    measured = trainer.preset_measured
    if measured is not None:
        trainer.record([measured.decision])  # arch=custom or reshaped: how its preset LR was measured
    if distributed.is_main():
        user_set = user_set_keys("train")
        if suite.batch.enabled and "batch_size" not in user_set:
            batch, lq, decision = search_batch_size(learner, cfg, trainer.stream.batch_size,
                                                    int(trainer.data.train.lq_size), "lq_size" in user_set,
                                                    trainer.data.train.largest_lq_size, trainer.validator)
            trainer.record([decision] + suite.adopt_batch(0, batch))
            trainer.apply_batch(batch, lq)
        scores = None
        if suite.analyse_batches:
            with trainer.accelerator.host():  # the loader's batches, read on the host in any run
                scores = analyse_dataset(trainer.data.train, trainer.stream.batch_size, cfg.train.seed,
                                         suite.analyse_batches)
            trainer.logger.log_validation(0, {f"data/{k}": v for k, v in scores.items()})
            print("analysis     " + ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in scores.items()), flush=True)
        trainer.record(suite.loss_schedule.calibrate(scores))
        measured_s = 0.0 if measured is None else measured.seconds
        if "lr" not in user_set:  # the user's LR is kept as set
            suite.lr.fit_run_length()
        if suite.lr.enabled and cfg.automation.lr.find:
            if "lr" in user_set:  # the user's LR wins over any measurement
                trainer.record([Decision(0, "lr", {}, "LR range test skipped: train.lr is set by you")])
            else:
                began = time.perf_counter()
                trainer.record(find_lr(cfg, trainer.data.train, suite.lr))
                measured_s += time.perf_counter() - began
        trainer.record([starting_lr(cfg, suite.lr, user_set, measured, measured_s)])
    if trainer.sync:
        shared = distributed.on_main(lambda: {"automations": suite.state_dict(), "batch_size": trainer.stream.batch_size,
                                              "lq_size": int(trainer.data.train.lq_size)})
        if not distributed.is_main():
            suite.load_state_dict(shared["automations"])
            trainer.apply_batch(shared["batch_size"], shared["lq_size"])


def resolved_once(cfg: DictConfig) -> DictConfig:
    """The config with every `${...}` replaced by its value: reading a derived key then costs a
    dictionary lookup, not a resolver call."""
    return OmegaConf.create(resolved_dict(cfg))


def train(cfg: DictConfig, run_dir: Path) -> float:
    # A simulated card counts the memory of every tensor made inside this context.
    with current_accelerator().active():
        return _train(cfg, run_dir)


def _train(cfg: DictConfig, run_dir: Path) -> float:
    started = time.perf_counter()
    cfg = resolved_once(cfg)
    # arch=custom or a reshaped built-in network: the preset LR by the range-test rule (cached),
    # before anything uses the LR; a resumed run reads the cache (or measures again without it).
    measured = settle_preset_lr(cfg)
    if measured is not None:
        print(f"preset lr    {cfg.arch.preset.lr:g}: {measured.decision.reason}", flush=True)
    trainer = Trainer(cfg, run_dir)
    trainer.preset_measured = measured
    print(f"data         {trainer.data.description}", flush=True)
    resumed = trainer.resume_if_asked()
    if resumed is not None:
        print(f"resumed      from {resumed} at iteration {trainer.iteration}", flush=True)
    trainer.start_logs(resumed)
    if resumed is None:
        start_up(trainer)
    trainer.learner.compile()  # after the search: one trace, for the shape it chose
    train_cfg = cfg.train
    total, log_freq = int(train_cfg.total_iter), int(train_cfg.log_freq)
    val_freq, save_freq = int(train_cfg.val_freq), int(train_cfg.save_freq)
    progress = trainer.progress = Progress(total, start=trainer.iteration)
    interrupted = False
    # train.max_minutes: a wall-clock budget for this process (start-up included); the run then
    # ends as if it had reached total_iter: validated, saved, summarised.
    loop_started, first_iteration = time.perf_counter(), trainer.iteration
    if train_cfg.max_minutes is not None:
        trainer.set_deadline(started + 60 * train_cfg.max_minutes, loop_started)
    window_start, window_iters = loop_started, 0
    notes: list[str] = []
    previous_handler = _catch_ctrl_c(trainer)
    try:
        try:
            # The LR controller knows where the run ends: total_iter, or after the cool-down that an
            # early stop or the time budget began.
            while trainer.iteration < trainer.suite.lr.end_iter and not trainer.time_up:
                stats = trainer.step()
                it = trainer.iteration
                kill_point("step", it)  # debug.kill_at (a no-op unless armed)
                last = it >= trainer.suite.lr.end_iter or trainer.time_up
                window_iters += 1
                progress.update(it, stats["loss"], stats["lr"], int(stats["batch_size"]))
                if it % log_freq == 0 or last:
                    now = time.perf_counter()
                    stats["it_per_s"] = window_iters / max(now - window_start, 1e-9)
                    window_start, window_iters = now, 0
                    trainer.log_step(it, stats)
                if it % val_freq == 0 or last:
                    metrics = trainer.validate()
                    progress.write(f"iter {it}: {validation_line(metrics)}")
                if trainer.stop_agreed:  # Ctrl+C on any rank, agreed at this step
                    interrupted = True
                    progress.write(f"interrupted at iteration {it}: saving the training state")
                    trainer.save()
                    break
                last = last or it >= trainer.suite.lr.end_iter  # an early stop without a cool-down
                if it % save_freq == 0 or last:
                    trainer.save()
        except KeyboardInterrupt:  # a second Ctrl+C: stop at once, the last checkpoint stays as it is
            interrupted = True
            progress.write(f"stopped at iteration {trainer.iteration} without saving; the last checkpoint is intact")
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
            progress.close()
            trainer.progress = None
        loop_seconds, loop_iterations = time.perf_counter() - loop_started, trainer.iteration - first_iteration
        if loop_iterations:
            trainer.logger.log_validation(trainer.iteration, {"loop/seconds": loop_seconds,
                                                              "loop/iterations": loop_iterations})
            notes.append(f"loop         {loop_iterations} iterations in {loop_seconds:.1f} s "
                         f"({1000 * loop_seconds / loop_iterations:.1f} ms each, validation and saving included)")
        if not trainer.last_val and not interrupted:
            trainer.validate()  # resumed a finished run: still report its quality
    finally:
        trainer.close()
    if distributed.is_main():
        write_plots(run_dir)
    print(summary(trainer.outcome(time.perf_counter() - started, interrupted, notes)), flush=True)
    return float(trainer.best["value"])
