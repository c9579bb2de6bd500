"""The end-of-run summary: quality against bicubic, where the best weights are, what each
automation did, the faults survived and the time taken."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from zerosr.metrics.catalog import METRICS


@dataclass
class RunOutcome:
    """What a finished (or interrupted) run reports; the engine fills it in."""

    run_dir: Path
    iteration: int
    seconds: float
    last_val: dict[str, float]  # the last validation's metrics, {} if none ran
    best: dict  # {"metric", "value", "iter", "metrics"} of the best validation by the selection metric
    automation_finals: dict[str, str]  # automation name -> where its value ended; {} when all are off
    decision_counts: dict[str, int]
    faults: dict[str, int]
    interrupted: bool = False
    stopped_early: bool = False
    early_stop_patience: int = 0
    time_up: bool = False
    max_minutes: float | None = None
    ranks: str | None = None  # under torchrun: world size and backend
    notes: list[str] = field(default_factory=list)


def automation_lines(outcome: RunOutcome) -> list[str]:
    """One line per automation: how many decisions, and where its value ended."""
    if not outcome.automation_finals:
        return ["automations  off (fixed schedule and batch)"]
    lines = ["automations  (decisions in automation.jsonl)"]
    for name, final in outcome.automation_finals.items():
        lines.append(f"  {name:<13} {outcome.decision_counts.get(name, 0):>3} decisions; {final}")
    faults = outcome.faults
    if any(faults.values()):
        lines.append(f"  faults        {faults['nonfinite_skipped']} non-finite steps skipped, "
                     f"{faults['rollbacks']} rollbacks, {faults['oom_retried']} out-of-memory retries")
    return lines


def _values(metrics: dict[str, float], prefix: str) -> str:
    return "  ".join(f"{m.label} {m.show(metrics[prefix + m.name])}" for m in METRICS.values()
                     if prefix + m.name in metrics)


def validation_line(metrics: dict[str, float]) -> str:
    """`val PSNR 30.12 dB  SSIM 0.9001  DISTS 0.1234 (bicubic PSNR 29.00 dB ...)`."""
    return f"val {_values(metrics, 'val/')} (bicubic {_values(metrics, 'val/bicubic_')})"


def summary(outcome: RunOutcome) -> str:
    val, best = outcome.last_val, outcome.best
    minutes, secs = divmod(int(round(outcome.seconds)), 60)
    lines = ["", "=== zerosr run summary ==="]
    if outcome.interrupted:
        lines.append(f"interrupted at iteration {outcome.iteration}; resume with train.resume=auto "
                     f"hydra.run.dir={outcome.run_dir}")
    if outcome.stopped_early:
        label = METRICS[best["metric"]].label
        lines.append(f"stopped early at iteration {outcome.iteration}: no {label} gain for "
                     f"{outcome.early_stop_patience} iterations")
    if outcome.time_up:
        lines.append(f"stopped      at iteration {outcome.iteration}: train.max_minutes={outcome.max_minutes} spent")
    if val:
        gain = val["val/psnr"] - val["val/bicubic_psnr"]
        lines += [
            f"validation   model   {_values(val, 'val/')}",
            f"             bicubic {_values(val, 'val/bicubic_')}  ({gain:+.2f} dB PSNR for the model)",
        ]
    if best["iter"]:
        metric = METRICS[best["metric"]]
        others = _values({k: v for k, v in best["metrics"].items() if k != metric.key}, "val/")
        lines.append(f"best         {metric.label} {metric.show(best['value'])} at iteration {best['iter']} "
                     f"(selection metric; {others}): {outcome.run_dir / 'models' / 'best.safetensors'}")
    lines += automation_lines(outcome)
    if outcome.ranks:
        lines.append(f"ranks        {outcome.ranks}, the same weights on every rank at every save; "
                     "per-rank batch as above")
    lines += outcome.notes
    lines += [f"time         {minutes} min {secs} s for {outcome.iteration} iterations",
              f"run          {outcome.run_dir}"]
    return "\n".join(lines)
