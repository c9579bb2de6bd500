"""The end-of-run summary: quality against bicubic, where the best weights are, what each
automation did, the faults survived and the time taken."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class RunOutcome:
    """What a finished (or interrupted) run reports; the engine fills it in."""

    run_dir: Path
    iteration: int
    seconds: float
    last_val: dict[str, float]  # the last validation's metrics, {} if none ran
    best: dict  # {"psnr", "ssim", "iter"} of the best validation
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


def summary(outcome: RunOutcome) -> str:
    val, best = outcome.last_val, outcome.best
    minutes, secs = divmod(int(round(outcome.seconds)), 60)
    lines = ["", "=== zerosr run summary ==="]
    if outcome.interrupted:
        lines.append(f"interrupted at iteration {outcome.iteration}; resume with train.resume=auto "
                     f"hydra.run.dir={outcome.run_dir}")
    if outcome.stopped_early:
        lines.append(f"stopped early at iteration {outcome.iteration}: no PSNR gain for "
                     f"{outcome.early_stop_patience} iterations")
    if outcome.time_up:
        lines.append(f"stopped      at iteration {outcome.iteration}: train.max_minutes={outcome.max_minutes} spent")
    if val:
        gain = val["val/psnr"] - val["val/bicubic_psnr"]
        lines += [
            f"validation   model   PSNR {val['val/psnr']:.2f} dB  SSIM {val['val/ssim']:.4f}",
            f"             bicubic PSNR {val['val/bicubic_psnr']:.2f} dB  SSIM {val['val/bicubic_ssim']:.4f}"
            f"  ({gain:+.2f} dB for the model)",
        ]
    if best["iter"]:
        lines.append(f"best         {best['psnr']:.2f} dB at iteration {best['iter']}: "
                     f"{outcome.run_dir / 'models' / 'best.safetensors'}")
    lines += automation_lines(outcome)
    if outcome.ranks:
        lines.append(f"ranks        {outcome.ranks}, the same weights on every rank at every save; "
                     "per-rank batch as above")
    lines += outcome.notes
    lines += [f"time         {minutes} min {secs} s for {outcome.iteration} iterations",
              f"run          {outcome.run_dir}"]
    return "\n".join(lines)
