"""Scaling out: multirun directories, the Optuna sweep (and its resume), torchrun with 2 CPU ranks."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_train import make_dataset, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "ZEROSR_FAKE_HARDWARE": "", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


def train_py(*args, cwd=ROOT, launcher=(sys.executable,)):
    return subprocess.run([*launcher, str(ROOT / "train.py"), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=ENV)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_multirun_grid_gives_each_job_its_own_directory_and_values(tmp_path):
    out = train_py("-m", "arch=paragonsr2_nano,paragonsr2_tiny", "train.lr=1e-4,2e-4", "dry_run=true", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    sweeps = list((tmp_path / "multirun").iterdir())  # default sweep dir: time with microseconds
    jobs = sorted(sweeps[0].glob("*/resolved_config.yaml"))
    assert len(sweeps) == 1 and len(jobs) == 4
    values = {(c["arch"]["name"], c["train"]["lr"]) for c in (yaml.safe_load(p.read_text()) for p in jobs)}
    assert values == {(a, lr) for a in ("paragonsr2_nano", "paragonsr2_tiny") for lr in (1e-4, 2e-4)}


def test_runs_started_together_get_separate_directories(tmp_path):
    command = [sys.executable, str(ROOT / "train.py"), "dry_run=true"]
    jobs = [subprocess.Popen(command, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for _ in range(2)]
    assert all(job.wait(timeout=300) == 0 for job in jobs)
    runs = list((tmp_path / "outputs" / "paragonsr2_nano_x2").iterdir())
    assert len(runs) == 2 and all((r / "resolved_config.yaml").exists() for r in runs)


def optuna_sweep(data, sweep: Path, n_trials: int, *extra):
    # train.batch_size is fixed by tiny_overrides, so the sweep searches lr_scale and ema_decay only.
    return train_py("-m", "hparams_search=optuna", f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweep.dir={sweep}",
                    *tiny_overrides(data, **{"train.total_iter": 3}), *extra)


def trial_states(sweep: Path) -> list[str]:
    with sqlite3.connect(sweep / "optuna.db") as db:
        return [row[0] for row in db.execute("SELECT state FROM trials ORDER BY number")]


def test_optuna_sweep_maximises_psnr_and_resumes_to_n_trials_in_total(data, tmp_path):
    sweep = tmp_path / "sweep"
    # Two losses, the second one's weight searched as well (the README's command for loss weights).
    losses = ("train.losses=[{_target_:zerosr.losses.CharbonnierLoss,weight:1.0},"
              "{_target_:zerosr.losses.MSSSIMLoss,weight:0.2,window_size:5}]", "train.losses.1.weight=tag(log, interval(0.02, 1.0))")
    out = optuna_sweep(data, sweep, 2, *losses)
    assert out.returncode == 0, out.stderr[-3000:]
    assert trial_states(sweep) == ["COMPLETE", "COMPLETE"]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(result["best_params"]) == {"train.lr_scale", "train.ema_decay", "train.losses.1.weight"}
    assert result["best_value"] > 20
    assert "optuna: best" in out.stdout
    trial = yaml.safe_load(next(sweep.glob("0*/resolved_config.yaml")).read_text())
    assert trial["train"]["lr_scale"] != 1.0  # the trial's own values reached the run
    assert trial["train"]["losses"][1]["weight"] != 0.2

    out = optuna_sweep(data, sweep, 3, *losses)  # the same sweep dir: the study continues up to 3 trials
    assert out.returncode == 0, out.stderr[-3000:]
    assert trial_states(sweep) == ["COMPLETE"] * 3
    assert sorted(p.name.split("_")[0] for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2"]


@pytest.mark.parametrize("trial_fault", ["dry_run=true", "train.lr=choice(-1.0,-2.0)"])
def test_optuna_survives_trials_without_a_value(tmp_path, trial_fault):
    # A dry run returns NaN; a bad value stops its trial with a UserError. Either way the trial is
    # recorded as failed and the sweep goes on to the next one.
    sweep = tmp_path / "sweep"
    out = train_py("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}",
                   "dry_run=true", trial_fault)
    assert out.returncode == 0, out.stderr[-3000:]
    assert trial_states(sweep) == ["FAIL", "FAIL"] and "no trial completed" in out.stdout


def test_lr_scale_must_be_positive(tmp_path):
    out = train_py("train.lr_scale=0", "dry_run=true", f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 2 and "train.lr_scale=0" in out.stderr


TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2")


ABORT_AT_EXIT = "terminate called without an active exception"


def test_torchrun_two_cpu_ranks_share_one_run_and_resume(data, tmp_path):
    # automation on with the batch unset: rank 0's start-up search is adopted by rank 1; an injected
    # out-of-memory error at iteration 2 must halve the batch on both ranks alike.
    overrides = [o for o in tiny_overrides(data, automation="auto", **{"automation.dataset_analysis.batches": 1,
                                                                        "debug.inject_oom_at": "[2]"})
                 if not o.startswith("train.batch_size=")]
    out = train_py(*overrides, cwd=tmp_path, launcher=TORCHRUN)
    if out.returncode != 0 and ABORT_AT_EXIT in out.stderr:  # the known defect below, on the first run
        shutil.rmtree(tmp_path / "outputs")
        out = train_py(*overrides, cwd=tmp_path, launcher=TORCHRUN)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "paragonsr2_nano_x2").iterdir())
    assert len(runs) == 1, runs  # the ranks agreed on rank 0's directory; rank 1's is gone
    run = runs[0]
    assert "ranks        2 (gloo)" in out.stdout
    assert sorted(p.name for p in (run / "training_state").glob("*.pt")) == ["state_00000003.pt", "state_00000006.pt"]
    assert len(list((run / "models").glob("net_g_0*.safetensors"))) == 2
    assert len(list((run / "tb").iterdir())) == 1  # one TensorBoard writer: rank 0's
    metrics = records(run / "metrics.jsonl")
    assert [r["iter"] for r in metrics if "loss" in r] == [1, 2, 3, 4, 5, 6]  # each line once: rank 0 only
    assert [(r["iter"], r["dist/replicas_identical"]) for r in metrics if "dist/replicas_identical" in r] == \
        [(3, 1.0), (6, 1.0)]  # every rank held the same weights at every save
    decisions = records(run / "automation.jsonl")
    ooms = [d for d in decisions if d["iter"] == 2 and "batch_size" in d["change"]]
    assert len(ooms) == 1 and ooms[0]["change"]["batch_size"][1] * 2 == ooms[0]["change"]["batch_size"][0]

    out = train_py(*overrides, "train.resume=auto", "train.total_iter=9", cwd=tmp_path, launcher=TORCHRUN)
    if out.returncode != 0 and ABORT_AT_EXIT in out.stderr:
        # Known open defect: a gloo rank sometimes aborts in C++ at exit, after its work is done
        # (about 1 run in 7 here); the run must then still succeed from the same state.
        for failed in (tmp_path / "outputs" / "paragonsr2_nano_x2").iterdir():
            if failed != run:
                shutil.rmtree(failed)
        out = train_py(*overrides, "train.resume=auto", "train.total_iter=9", cwd=tmp_path, launcher=TORCHRUN)
    assert out.returncode == 0, out.stderr[-3000:]
    second = [r for r in (tmp_path / "outputs" / "paragonsr2_nano_x2").iterdir() if r != run]
    assert len(second) == 1 and "resumed      from" in out.stdout
    steps = [r for r in records(second[0] / "metrics.jsonl") if "loss" in r]
    assert [r["iter"] for r in steps] == [7, 8, 9]
    assert steps[0]["batch_size"] == ooms[0]["change"]["batch_size"][1]  # the halved batch came back


def test_multirun_job_with_a_bad_value_ends_in_one_line(tmp_path):
    out = train_py("-m", "train.lr=1e-4,-1", "dry_run=true", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "error: train.lr=-1.0 must be positive" in out.stderr


def _on_main_fails_on_rank_zero(rank: int, port: int, results) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    from zerosr.engine import distributed
    from zerosr.errors import UserError

    distributed.init()

    def read_state():
        raise UserError("the state file is corrupt")

    try:
        distributed.on_main(read_state)
        results.put((rank, "returned"))
    except UserError as error:
        results.put((rank, str(error)))
    distributed.shutdown()


def test_a_failure_on_rank_zero_reaches_every_rank_instead_of_a_hang():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_on_main_fails_on_rank_zero, args=(r, port, results)) for r in (0, 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert all(worker.exitcode == 0 for worker in workers)
    assert sorted(results.get(timeout=5) for _ in workers) == [(0, "the state file is corrupt"),
                                                              (1, "the state file is corrupt")]
