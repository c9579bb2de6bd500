"""zerosr's Optuna sweeper: hydra-optuna-sweeper's, with a resumable study and failed trials that
do not stop the sweep.

Hydra instantiates sweepers only from the `hydra_plugins` package, hence this small package beside
`zerosr`. What it changes in the stock sweeper (hydra-optuna-sweeper 1.3):

- `n_trials` is the study's total: re-running the same command with the same `hydra.sweep.dir`
  (whose `optuna.db` holds the study) runs only the trials still missing, and job numbers continue
  where the last session stopped, so no trial directory is reused. Trials left RUNNING by a killed
  session do not count and are run again. (The stock sweeper runs `n_trials` more every time.)
- the SQLite file's folder is created before Optuna opens it (the stock sweeper creates the sweep
  directory only when it launches the first job).
- a trial that returns NaN or infinity (a dry run, a diverged run) is recorded as FAILED; the
  stock sweeper crashes on it. With no completed trial at all the sweep ends without a best value.
- fixed overrides come before the searched ones, so one loss's weight can be searched inside a
  list of losses given on the command line.
- one line at the end names the best value and parameters and where they are saved
  (`optimization_results.yaml` in the sweep directory, written by the stock sweeper).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hydra.core.utils import JobStatus
from omegaconf import DictConfig

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

SQLITE = "sqlite:///"
FINISHED = ("COMPLETE", "PRUNED", "FAIL")


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return True  # not a number at all: the stock sweeper reports it as it does


class _NonFiniteFails:
    """Launcher wrapper: a job that returned NaN/inf becomes a failed job with a clear reason."""

    def __init__(self, launcher):
        self.launcher = launcher

    def launch(self, job_overrides, initial_job_idx: int):
        returns = self.launcher.launch(job_overrides, initial_job_idx=initial_job_idx)
        for ret in returns:
            if ret.status == JobStatus.COMPLETED and not _finite(ret._return_value):
                value = ret._return_value
                ret.status = JobStatus.FAILED
                ret.return_value = ValueError(f"the trial returned {value} (no validation: a dry run, "
                                              "or the run diverged)")
        return returns


def _fixed_first(configure_trials):
    """The stock sweeper puts a trial's searched values before its fixed ones; a searched key inside
    a fixed value (`train.losses.1.weight` in a fixed `train.losses=[...]`) then has nothing to land
    on. Fixed values first, searched ones after."""

    def configure(trials, search_space, fixed_params):
        fixed = tuple(f"{name}=" for name in fixed_params)
        return [tuple(sorted(overrides, key=lambda o: not o.startswith(fixed)))
                for overrides in configure_trials(trials, search_space, fixed_params)]

    return configure


class ResumableOptunaSweeper(OptunaSweeper):
    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.sweeper.launcher = _NonFiniteFails(self.sweeper.launcher)
        self.sweeper._configure_trials = _fixed_first(self.sweeper._configure_trials)

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        impl = self.sweeper
        storage = None if impl.storage is None else str(impl.storage)
        if storage is not None and storage.startswith(SQLITE):
            Path(storage[len(SQLITE):]).parent.mkdir(parents=True, exist_ok=True)
        study = None
        if storage is not None:  # a stored study: n_trials counts the trials it already has
            study = optuna.create_study(study_name=impl.study_name, storage=storage,
                                        directions=impl._get_directions(), load_if_exists=True)
            finished = sum(t.state.name in FINISHED for t in study.trials)
            if finished:
                print(f"optuna: study '{study.study_name}' in {storage} has {finished} finished trials; "
                      f"running {max(0, impl.n_trials - finished)} more for hydra.sweeper.n_trials={impl.n_trials}",
                      flush=True)
            impl.n_trials = max(0, impl.n_trials - finished)
            impl.job_idx = len(study.trials)  # job numbers (and directories) continue
        try:
            super().sweep(arguments)
        except ValueError:
            # study.best_trial raises ValueError when no trial completed (every one failed).
            if study is None or any(t.state.name == "COMPLETE" for t in study.trials):
                raise
            print(f"optuna: no trial completed ({len(study.trials)} failed or unfinished); no best value",
                  flush=True)
            return
        self._report(study)

    def _report(self, study) -> None:
        if study is None:
            return
        best = study.best_trial
        counts: dict[str, int] = {}
        for trial in study.trials:
            counts[trial.state.name.lower()] = counts.get(trial.state.name.lower(), 0) + 1
        states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        params = " ".join(f"{k}={v}" for k, v in best.params.items())
        print(f"optuna: best {best.value:.4f} (trial {best.number}) with {params}; {states}; saved to "
              f"{self.sweeper.config.hydra.sweep.dir}/optimization_results.yaml", flush=True)
