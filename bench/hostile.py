"""Hostile settings: a user's bad guesses against real `train.py` processes. Prints one JSON object.

    python bench/hostile.py [--cases lr_10x gan_heavy ...] [--iters 300] [--modes auto off] [--data DIR]

Every run is `python train.py` on ../shared/data/bsd100_x2 (x2 pairs, 10 held out to validate),
ParagonSR2 nano, `data.run_iter=--iters`, `train.seed=0`, once with `automation=auto` and once with
`automation=off`, plus the case's overrides (the values a user got wrong, against what zerosr
derives for nano: `python train.py arch=paragonsr2_nano --cfg job` shows it; the LR cases are
multiples of the preset LR).

Per run: the exit code, whether the last logged loss is finite, the best validation PSNR against
bicubic on the same images (metrics.jsonl), the start-up warning lines, and what the automations
did (automation.jsonl: decisions per automation, with the first of each). Every case runs under
the first mode before any runs under the next. Progress goes to stderr, one JSON line per run.
Target (issue): under automation=auto at least 9 of 10 cases end finite and above bicubic; each
one that does not has a start-up warning.
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

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "bsd100_x2"
CHARBONNIER = "{_target_:zerosr.losses.CharbonnierLoss,weight:1.0}"
CASES = {
    # LRs as multiples of the preset (`train.lr_scale` multiplies it), whatever the preset is.
    "lr_10x": ["train.lr_scale=10"],
    "lr_50x": ["train.lr_scale=50"],
    "lr_1000x_low": ["train.lr_scale=0.001"],
    "no_warmup_hot_lr": ["train.warmup_iter=0", "train.lr_scale=10"],
    # Two losses, so the loss schedule has something to balance, with the known-bad values.
    "loss_schedule_mistake": [f"train.losses=[{CHARBONNIER},{{_target_:zerosr.losses.MSSSIMLoss,weight:0.2}}]",
                              "automation.loss_schedule.momentum=0.95", "automation.loss_schedule.max_weight=100",
                              "automation.loss_schedule.adaptation_rate=0.005",
                              "automation.loss_schedule.baseline_iterations=200"],
    "gan_heavy": [f"train.losses=[{CHARBONNIER},{{_target_:zerosr.losses.GANLoss,weight:0.5}}]"],
    "batch_1": ["train.batch_size=1"],
    "patch_8": ["train.lq_size=8"],
    "ema_too_slow": ["train.ema_decay=0.99999"],
    "betas_absurd": ["train.optimizer.betas=[0.5,0.5]"],
    "weight_decay_1": ["train.optimizer.weight_decay=1.0"],
}


def run(case: str, mode: str, iters: int, data: Path, workdir: Path) -> dict:
    run_dir = workdir / f"{case}_{mode}"
    command = [sys.executable, str(REPO / "train.py"), "arch=paragonsr2_nano", "data=paired",
               f"data.gt_path={data / 'hr'}", f"data.lq_path={data / 'lr'}", "data.n_val=10",
               f"data.run_iter={iters}", "train.seed=0", f"automation={mode}", f"hydra.run.dir={run_dir}",
               *CASES[case]]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    begin = time.perf_counter()
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - begin
    result = {"exit": done.returncode, "wall_s": round(seconds, 1),
              "warnings": [line.split(None, 1)[1] for line in done.stdout.splitlines()
                           if line.startswith("warning ")]}
    if done.returncode != 0:
        result["stderr_tail"] = done.stderr[-600:]
    metrics = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    steps = [r for r in records if "loss" in r]
    vals = [r for r in records if "val/psnr" in r]
    result["final_loss"] = steps[-1]["loss"] if steps else None
    result["loss_finite"] = bool(steps) and math.isfinite(steps[-1]["loss"])
    result["final_lr"] = steps[-1]["lr"] if steps else None
    if vals:
        best = max(vals, key=lambda r: r["val/psnr"] if math.isfinite(r["val/psnr"]) else -math.inf)
        bicubic = vals[-1]["val/bicubic_psnr"]
        result.update(best_psnr=round(best["val/psnr"], 3), best_iter=best["iter"],
                      final_psnr=round(vals[-1]["val/psnr"], 3), bicubic_psnr=round(bicubic, 3),
                      best_minus_bicubic_db=round(best["val/psnr"] - bicubic, 3))
    result["above_bicubic"] = result.get("best_minus_bicubic_db", -1.0) > 0
    result["survived"] = result["exit"] == 0 and result["loss_finite"] and result["above_bicubic"]
    result["automations"] = decisions(run_dir / "automation.jsonl")
    return result


def decisions(path: Path) -> dict:
    """Decisions per automation: how many, and the first one (iteration, change, reason)."""
    summary: dict[str, dict] = {}
    lines = path.read_text().splitlines() if path.exists() else []
    for line in lines:
        record = json.loads(line)
        entry = summary.setdefault(record["automation"], {"count": 0})
        entry["count"] += 1
        if "first" not in entry:
            change = ", ".join(f"{k} {_short(a)} -> {_short(b)}" for k, (a, b) in record["change"].items())
            entry["first"] = f"iter {record['iter']}: {change} ({record['reason'][:120]})"
    return summary


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summarise(results: dict, args, started: float) -> dict:
    """The report so far: every run done, and per mode how many cases survived."""
    report = {"data": str(args.data), "arch": "paragonsr2_nano", "iters": args.iters, "n_val": 10,
              "cpu_count": os.cpu_count(), "cases": results}
    for mode in args.modes:
        done = [case for case in args.cases if mode in results[case]]
        survived = [case for case in done if results[case][mode]["survived"]]
        failed = [case for case in done if case not in survived]
        report[f"{mode}_survived"] = {"count": len(survived), "of": len(done), "failed": failed,
                                      "failed_with_warning": [c for c in failed if results[c][mode]["warnings"]]}
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["load_average_1min"] = (round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--modes", nargs="+", default=["auto", "off"], choices=["auto", "off"])
    parser.add_argument("--data", type=Path, default=DATA, help="a folder with hr/ and lr/ x2 pairs")
    parser.add_argument("--out", type=Path, help="also write the report so far here after every run")
    args = parser.parse_args()
    if not (args.data / "hr").is_dir():
        raise SystemExit(f"error: {args.data} not found: this benchmark needs ../shared/data/bsd100_x2 (or --data)")
    started = time.perf_counter()
    results: dict[str, dict] = {case: {"overrides": CASES[case]} for case in args.cases}
    with tempfile.TemporaryDirectory(prefix="zerosr_hostile_") as tmp:
        for mode in args.modes:
            for case in args.cases:
                out = results[case][mode] = run(case, mode, args.iters, args.data, Path(tmp))
                print(json.dumps({"case": case, "mode": mode, **out}), file=sys.stderr, flush=True)
                if args.out is not None:
                    partial = args.out.with_name(args.out.name + ".part")
                    partial.write_text(json.dumps(summarise(results, args, started), indent=2))
                    partial.replace(args.out)
    print(json.dumps(summarise(results, args, started), indent=2))


if __name__ == "__main__":
    main()
