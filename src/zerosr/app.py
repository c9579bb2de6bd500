"""The job `train.py` runs: validate the composed config, record it, explain it, train."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from zerosr.config.far_out import far_out_warnings
from zerosr.config.presets import leave_lr_to_measurement
from zerosr.config.resolved import resolved_dict, write_replayable
from zerosr.config.tier import settle_tier
from zerosr.config.user_set import RECORD_KEY
from zerosr.config.user_set import forget as forget_user_set
from zerosr.config.user_set import remember as remember_user_set
from zerosr.config.validate import validate
from zerosr.detect import probe
from zerosr.engine import distributed
from zerosr.engine.killpoints import arm as arm_kill_points
from zerosr.report.choices import describe_choices


def run_dir_of(cfg: DictConfig) -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def run(cfg: DictConfig) -> float:
    """Returns the best value of the selection metric (`train.select_metric`), what sweepers optimise."""
    cfg = settle_tier(cfg)  # this machine's tier, also when a launcher composed elsewhere
    validate(cfg)
    arm_kill_points(cfg.debug.kill_at)  # debug.kill_at: SIGKILL at chosen points (fault tests)
    from zerosr.preflight import preflight

    preflight(cfg)  # the data, in seconds, dry run included (as doctor): every problem one line, exit 2
    run_dir = run_dir_of(cfg)
    if distributed.launched():  # torchrun: one process group, one run directory, rank 0 writes
        run_dir = join_ranks(run_dir)
    user_set = remember_user_set(cfg)  # what the user set wins over start-up measurement
    cfg = leave_lr_to_measurement(cfg, user_set)  # arch.params changed: another network, measured
    if distributed.is_main():  # a replay keeps what the user set fixed
        write_replayable({**resolved_dict(cfg), RECORD_KEY: sorted(k for k in user_set if not k.startswith("hydra."))},
                         run_dir / "resolved_config.yaml")
    try:
        print(describe_choices(cfg, probe(), user_set, far_out_warnings(cfg, user_set)), flush=True)
        if cfg.dry_run:
            print(f"dry run: config saved to {run_dir / 'resolved_config.yaml'}; no training")
            return float("nan")
        from zerosr.engine.run import train

        best = train(cfg, run_dir)
        # Every rank past its last collective before the group closes: a rank that tore gloo down
        # while the other still talked to it aborted in C++ at exit now and then (2 CPU ranks).
        distributed.barrier()
        return best
    finally:
        forget_user_set()  # the next job in this process (a multirun) records its own
        distributed.shutdown()


def join_ranks(own_dir: Path) -> Path:
    """Join torchrun's process group; every rank takes rank 0's run directory; only rank 0 prints
    (the others keep stderr, so their errors still show)."""
    import logging
    import os
    import sys

    distributed.init()
    run_dir = distributed.agree_run_dir(own_dir)
    if not distributed.is_main():
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 says the same at INFO
    return run_dir
