"""Weights & Biases beside TensorBoard (`logger=wandb`): the same metrics, the decisions, the images.

Optional: without the package (`pip install -e ".[wandb]"`), without a login, or when the service
cannot be reached, the run says so in one warning line and goes on with TensorBoard. The run's W&B
id is kept in RUN/wandb_run_id, so `train.resume` continues the same W&B run (also from an earlier
run directory). `WANDB_MODE=offline` writes it all under RUN/wandb for a later `wandb sync`;
`WANDB_PROJECT` and `WANDB_ENTITY` choose where it goes (project `zerosr` by default).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ID_FILE = "wandb_run_id"
LOGGERS = ("tensorboard", "wandb")


def logger_names(setting: Any) -> list[str]:
    """`logger=wandb` or `logger=[tensorboard,wandb]` as a list of names."""
    if setting is None:
        return []
    return [str(setting)] if isinstance(setting, str) else [str(name) for name in setting]


class WandbRun:
    """One W&B run: history rows keyed by the iteration (`iter`), not W&B's own step counter, so
    a resumed run may log an iteration again after a kill without W&B dropping it."""

    def __init__(self, run, offline: bool):
        self.run, self.offline = run, offline
        run.define_metric("iter")
        run.define_metric("*", step_metric="iter")

    @classmethod
    def open(cls, run_dir: Path, name: str, config: dict, continue_from: Path | None = None) -> WandbRun | str:
        """The W&B run, or the one line saying why there is none."""
        try:
            import wandb
        except ImportError:
            return 'wandb is not installed (pip install -e ".[wandb]"): logging to TensorBoard only'
        offline = os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun")
        if not offline and not _logged_in(wandb):
            return ("wandb is not logged in (run `wandb login`, set WANDB_API_KEY, or WANDB_MODE=offline): "
                    "logging to TensorBoard only")
        run_id = _saved_id(run_dir) or (_saved_id(continue_from) if continue_from is not None else None)
        try:
            run = wandb.init(project=os.environ.get("WANDB_PROJECT", "zerosr"), name=name, config=config,
                             dir=str(run_dir), id=run_id, resume="allow" if run_id else None,
                             settings=wandb.Settings(silent=True, console="off", disable_git=True))
        except Exception as error:  # the service unreachable, a rejected key: the run goes on without it
            return f"wandb could not start ({_first_line(error)}): logging to TensorBoard only"
        (Path(run_dir) / ID_FILE).write_text(run.id, encoding="utf-8")
        return cls(run, offline)

    @property
    def where(self) -> str:
        return f"offline in {Path(self.run.dir).parent} (wandb sync to upload)" if self.offline else self.run.url

    @property
    def id(self) -> str:
        return self.run.id

    def log(self, iteration: int, values: dict[str, Any]) -> None:
        self.run.log({**values, "iter": int(iteration)})

    def images(self, iteration: int, paths: list[Path]) -> None:
        import wandb

        self.log(iteration, {"val/comparison": [wandb.Image(str(path), caption=Path(path).stem) for path in paths]})

    def decisions_table(self, records: list[dict]) -> None:
        import wandb

        rows = [[r.get("iter"), r.get("automation"), str(r.get("change")), r.get("reason")] for r in records]
        self.run.log({"automation/decisions": wandb.Table(columns=["iter", "automation", "change", "reason"], data=rows)})

    def finish(self) -> None:
        self.run.finish()


def _saved_id(run_dir: Path | None) -> str | None:
    path = Path(run_dir) / ID_FILE if run_dir is not None else None
    return path.read_text(encoding="utf-8").strip() or None if path is not None and path.is_file() else None


def _logged_in(wandb) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return bool(wandb.Api(timeout=5).api_key)
    except Exception:
        return False


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
