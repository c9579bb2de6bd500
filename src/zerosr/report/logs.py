"""Run logs: RUN/metrics.jsonl, RUN/automation.jsonl and TensorBoard scalars in RUN/tb; with
`logger=wandb` the same to Weights & Biases (`zerosr.report.wandb_log`).

Each JSON line is written with a single write and flushed at once, so a `kill -9` loses at most
the line being written; `read_jsonl` skips such a cut-off last line. No fsync per line: that
guards against power loss, not process death, and would cost a disk flush per logged step.
"""

from __future__ import annotations

import json
import logging
import numbers
from pathlib import Path
from typing import IO, Any

from zerosr.errors import UserError

log = logging.getLogger("zerosr")

METRICS_FILE = "metrics.jsonl"
AUTOMATION_FILE = "automation.jsonl"
TENSORBOARD_DIR = "tb"


class RunLogger:
    """Appends metrics and automation decisions to a run directory. Disabled: writes nothing."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True, wandb: bool = False):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.tensorboard = tensorboard
        self.wants_wandb = wandb and enabled
        self._files: dict[str, IO[str]] = {}
        self._writer = None  # SummaryWriter, created on first use: importing it takes ~1 s
        self._wandb = None  # WandbRun, opened by start()

    def start(self, name: str, config: dict, continue_from: Path | None = None) -> str | None:
        """Open the loggers that need the run's name and config; the screen line saying where W&B
        logs (or, as a warning, why it does not). `continue_from`: the run directory a resumed
        state came from, whose W&B run this one continues."""
        if not self.wants_wandb:
            return None
        from zerosr.report.wandb_log import WandbRun

        opened = WandbRun.open(self.run_dir, name, config, continue_from)
        if isinstance(opened, str):
            return f"warning      {opened}"
        self._wandb = opened
        return f"wandb        run {opened.id}: {opened.where}"

    def log_images(self, iteration: int, paths: list[Path]) -> None:
        """A validation's comparison images (bicubic | SR | HR): to W&B (they are on disk already)."""
        if self._wandb is not None and paths:
            self._wandb.images(iteration, paths)

    def log_step(self, iteration: int, values: dict[str, Any]) -> None:
        """One training step: `{"iter": iteration, **values}` to metrics.jsonl, scalars to TB."""
        self._log_metrics(iteration, values)

    def log_validation(self, iteration: int, metrics: dict[str, Any]) -> None:
        """One validation (keys such as "val/psnr"): same file and format as log_step."""
        self._log_metrics(iteration, metrics)

    def log_automation(
        self, iteration: int, automation: str, change: dict[str, tuple[Any, Any]], reason: str
    ) -> None:
        """One automation decision, e.g. change={"batch_size": (16, 12)}, reason="CUDA OOM"."""
        if not self.enabled:
            return
        change_lists = {what: [_plain(old), _plain(new)] for what, (old, new) in change.items()}
        record = {"iter": int(iteration), "automation": automation, "change": change_lists, "reason": reason}
        self._append(AUTOMATION_FILE, record)
        numbers = {f"automation/{automation}/{what}": new for what, (_old, new) in change_lists.items() if _is_number(new)}
        for tag, value in numbers.items():
            self._scalar(tag, value, iteration)
        if self._wandb is not None:
            self._wandb.log(iteration, numbers)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._wandb is not None:  # every decision of this run directory, with its reason, as one table
            decisions = self.run_dir / AUTOMATION_FILE
            self._wandb.decisions_table(read_jsonl(decisions) if decisions.exists() else [])
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _log_metrics(self, iteration: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        plain = {key: _plain(value) for key, value in values.items()}
        self._append(METRICS_FILE, {"iter": int(iteration), **plain})
        for key, value in plain.items():
            if _is_number(value):
                self._scalar(key, value, iteration)
        if self._wandb is not None:
            self._wandb.log(iteration, plain)

    def _append(self, name: str, record: dict) -> None:
        try:
            f = self._files.get(name)
            if f is None:
                f = self._open_for_append(self.run_dir / name)
                self._files[name] = f
            # Non-finite floats are written as NaN/Infinity, which Python's json reads back; values
            # JSON cannot represent (paths, enums) are written as their str() rather than failing.
            f.write(json.dumps(record, default=str) + "\n")
            f.flush()
        except OSError as err:  # typically a full disk: one line, the checkpoints already written stay
            raise UserError(f"could not write {self.run_dir / name}: {err.strerror or err} (free disk space "
                            "or set hydra.run.dir elsewhere); the last checkpoint is intact") from None

    @staticmethod
    def _open_for_append(path: Path) -> IO[str]:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A previous process killed mid-line left no newline: start on a fresh line so the
        # cut-off line stays a single unreadable line instead of corrupting the next record.
        needs_newline = False
        if path.exists() and path.stat().st_size > 0:
            with open(path, "rb") as existing:
                existing.seek(-1, 2)
                needs_newline = existing.read(1) != b"\n"
        f = open(path, "a", encoding="utf-8", buffering=1)
        if needs_newline:
            f.write("\n")
        return f

    def _scalar(self, tag: str, value: float, iteration: int) -> None:
        if not self.tensorboard:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD_DIR))
        self._writer.add_scalar(tag, float(value), int(iteration))


def read_jsonl(path: Path) -> list[dict]:
    """All records of a JSON-lines file; a cut-off last line (killed writer) is skipped.

    An unreadable line elsewhere is skipped with a warning rather than failing the whole read,
    since these files are reports, not state.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    numbered = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    records = []
    for position, (number, line) in enumerate(numbered):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if position != len(numbered) - 1:
                log.warning("%s line %d is not valid JSON; skipped", path, number)
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _plain(value: Any) -> Any:
    """JSON-friendly form of a value: 0-dim tensors/numpy scalars to Python numbers."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real)  # bools included: TensorBoard shows them as 0/1
