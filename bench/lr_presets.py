"""Per-variant LR range test on paired data: what zerosr's own LR finder picks for each arch option,
beside the preset LR. Prints one JSON object (and rewrites `--out` after each variant).

    python bench/lr_presets.py --data DIR [--variants paragonsr2_nano paragonsr2_s ...] [--batch 4]
                               [--lq-size 24] [--steps 100] [--skip-first 0] [--seed 0]
                               [--check-process paragonsr2_nano] [--out FILE]

DIR holds `hr/` and `lr/` (x2 pairs). Each option's job is composed as
`python train.py arch=OPTION data=paired data.gt_path=DIR/hr data.lq_path=DIR/lr
train.batch_size=B train.lq_size=P` would compose it on this machine; its `Trainer` is built
(the same data, weights and optimizer as that run) and the range test runs as the run's
`automation.lr.find=true` runs it (`zerosr.automations.lr.lr_range_test`, real steps on a side
stream of real batches, everything restored after). The run itself only keeps the bounded pick,
so the curve is read here, in-process.

Per variant: parameters, batch, patch, seconds, the steepest-descent LR of the smoothed curve
(the finder's raw answer), the pick the run would adopt (within the finder's bounds around the
preset), the LR of the lowest smoothed loss, the LR at which the test stopped for divergence, the
preset LR, the curve (LR, smoothed loss) itself, and `from_anchor_lr` (see `scale_from_anchor`):
the steepest-descent and lowest-loss LRs move 10x with the order of the batches (`--seed`) at
small batches, the divergence LR falls steadily with size, so it is what carries over.

On a shared CPU set OMP_NUM_THREADS=1: two threads on a loaded 2-core machine ran m's step 9x slower.

`--check-process V` also runs the real `python train.py ... automation.lr.find=true` process for
V and reads the LR it adopted from its `automation.jsonl`, so the in-process picks are known to be
those of the real run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from zerosr.archs.spec import anchor, variants
from zerosr.automations.lr import FINDER_BOUNDS, exponential_lrs, lr_range_test
from zerosr.bounds import clamp
from zerosr.config.compose import compose_config
from zerosr.config.presets import rule_exponent, training_preset
from zerosr.engine.data import BatchStream
from zerosr.engine.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
# The finder's own sweep (lr_range_test's defaults), so the picks are the run's.
SWEEP = {"min_lr": 1e-7, "max_lr": 1.0}


def sweep(skip_first: int, steps: int) -> dict:
    """The run's LR grid without its first `skip_first` points (where no variant's loss moves):
    the same LRs, fewer steps."""
    grid = exponential_lrs(SWEEP["min_lr"], SWEEP["max_lr"], steps)
    return {"min_lr": grid[skip_first], "max_lr": SWEEP["max_lr"], "steps": steps - skip_first}


def overrides(variant: str, data: Path, batch: int, lq_size: int, seed: int) -> list[str]:
    return [f"arch={variant}", "data=paired", f"data.gt_path={data / 'hr'}",
            f"data.lq_path={data / 'lr'}", f"train.batch_size={batch}", f"train.lq_size={lq_size}",
            f"train.seed={seed}"]


def _sig(value: float) -> float:
    return float(f"{value:.4g}")


def measure(variant: str, data: Path, batch: int, lq_size: int, grid: dict, seed: int) -> dict:
    cfg = compose_config(overrides(variant, data, batch, lq_size, seed))
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir)
        learner = trainer.learner
        stream = BatchStream(trainer.data.train, trainer.stream.batch_size, int(cfg.train.seed) + 2)
        started = time.perf_counter()
        try:
            with learner.probing():  # as zerosr.engine.startup.find_lr does it
                saved = learner.snapshot()

                def step_at(value: float) -> float:
                    sample = stream.next_batch()
                    return learner.train_on(sample["lq"], sample["gt"], value)

                result = lr_range_test(step_at, lambda: learner.load_state_dict(saved), **grid)
        finally:
            stream.close()
            seconds = time.perf_counter() - started
            params = sum(p.numel() for p in learner.module.parameters())
            trainer.close()
    preset = float(training_preset(variant)["lr"])
    points = exponential_lrs(grid["min_lr"], grid["max_lr"], grid["steps"])
    lowest = min(range(len(result.smoothed)), key=result.smoothed.__getitem__) if result.smoothed else None
    low, high = (preset * bound for bound in FINDER_BOUNDS)
    return {
        "params": params,
        "tier": cfg.hardware_tier.name,
        "batch": int(trainer.stream.batch_size),
        "lq_size": int(trainer.data.train.lq_size),
        "steps_run": len(result.lrs),
        "seconds": round(seconds, 1),
        "steepest_descent_lr": None if result.lr is None else _sig(result.lr),
        "picked_lr": None if result.lr is None else _sig(clamp(result.lr, low, high)),
        "min_loss_lr": None if lowest is None else _sig(result.lrs[lowest]),
        "divergence_lr": _sig(points[len(result.lrs)]) if result.diverged and len(result.lrs) < grid["steps"] else None,
        "preset_lr": preset,
        "curve": [[_sig(lr), _sig(loss)] for lr, loss in zip(result.lrs, result.smoothed)],
    }


def scale_from_anchor(measured: dict) -> None:
    """Add `from_anchor_lr` to each option: its anchor's preset LR (the family's, else nano's:
    `zerosr.archs.spec.anchor`) times the ratio of divergence LRs to the anchor's (measured at one
    batch for all) to the rule's exponent (`rule_exponent`), times sqrt(batch hint / the
    anchor's), because a preset applies at the option's own tier batch (the square-root rule).
    Needs the anchor measured in the same run. One seed, not rounded:
    `zerosr.config.presets.lr_from_range_test` makes the preset from the seeds' values."""
    for option, row in measured.items():
        family = variants()[option].family
        base = anchor(family)
        beside = measured.get(base.option) or {}
        if row.get("divergence_lr") and beside.get("divergence_lr"):
            exponent = rule_exponent(base.preset, base.family == family)
            ratio = (row["divergence_lr"] / beside["divergence_lr"]) ** exponent
            hint = training_preset(option)["batch_size"] / base.preset["batch_size"]
            row["from_anchor_lr"] = _sig(base.preset["lr"] * ratio * math.sqrt(hint))


def process_pick(variant: str, data: Path, batch: int, lq_size: int, seed: int) -> dict:
    """The real run with the finder on: the base LR it adopted, read from its automation.jsonl."""
    with tempfile.TemporaryDirectory() as run_dir:
        command = [sys.executable, "train.py", *overrides(variant, data, batch, lq_size, seed),
                   "automation.lr.find=true", "train.total_iter=1", f"hydra.run.dir={run_dir}"]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            return {"returncode": done.returncode, "stderr_tail": done.stderr[-2000:]}
        decisions = [json.loads(line) for line in (Path(run_dir) / "automation.jsonl").read_text().splitlines()
                     if line.strip()]
    found = [d for d in decisions if d.get("automation") == "lr" and "LR range test" in d.get("reason", "")]
    if not found:
        return {"returncode": 0, "seconds": round(seconds, 1), "decision": None}
    decision = found[-1]
    base = decision.get("change", {}).get("base_lr")
    return {"returncode": 0, "seconds": round(seconds, 1), "reason": decision.get("reason"),
            "adopted_lr": None if base is None else _sig(base[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with hr/ and lr/ (x2 pairs)")
    parser.add_argument("--variants", nargs="+", default=list(variants()), choices=list(variants()),
                        help="arch options; each one's anchor (zerosr.archs.spec.anchor) is needed for its from_anchor_lr")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lq-size", type=int, default=24)
    parser.add_argument("--steps", type=int, default=100, help="points of the LR sweep 1e-7..1 (the run's 100)")
    parser.add_argument("--skip-first", type=int, default=0,
                        help="leave out the sweep's first K points (below ~1e-5 no loss moves): same LRs, fewer steps")
    parser.add_argument("--seed", type=int, default=0, help="train.seed: the weights and the order of the batches")
    parser.add_argument("--check-process", nargs="*", default=[], choices=list(variants()))
    parser.add_argument("--out", type=Path, help="also write the JSON here, after each variant")
    args = parser.parse_args()
    report = {"seed": args.seed, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "cuda": torch.cuda.is_available(), "data": str(args.data),
              "batch": args.batch, "lq_size": args.lq_size, "sweep": sweep(args.skip_first, args.steps),
              "finder_bounds": list(FINDER_BOUNDS), "variants": {}, "process_check": {}}

    def write() -> str:
        text = json.dumps(report, indent=1)
        if args.out is not None:
            args.out.write_text(text + "\n")
        return text

    grid = sweep(args.skip_first, args.steps)
    for option in args.variants:
        report["variants"][option] = measure(option, args.data, args.batch, args.lq_size, grid, args.seed)
        scale_from_anchor(report["variants"])
        write()
    for option in args.check_process:
        check = process_pick(option, args.data, args.batch, args.lq_size, args.seed)
        measured = report["variants"].get(option, {}).get("picked_lr")
        check["in_process_pick"] = measured  # the same pick only on the run's whole sweep (--skip-first 0)
        check["agrees"] = (measured is not None and check.get("adopted_lr") is not None
                           and abs(check["adopted_lr"] - measured) <= 1e-3 * measured)
        report["process_check"][option] = check
        write()
    print(write())


if __name__ == "__main__":
    main()
