"""Zero-config against hand-set training on held-out images. Prints one JSON object.

    python bench/quality.py [--budget-s 150] [--runs auto off_lr1e-4 ...]        # equal wall-clock budget
    python bench/quality.py --iters 600 --seeds 0 1 2 [--arch OPTION] [--scale 4] [--runs ...] [--extra LABEL=KEY=V,KEY=V ...]
                            [--common KEY=V ...] [--out FILE]

Every run is `python train.py` on ../shared/data/bsd100_x2 (x2 pairs; `--n-val` held-out pairs
validate, the rest train), ParagonSR2 nano unless `--arch` names another option (length mode only),
the same seed within a comparison. `--scale 3|4` (length mode) trains on LR images made from the HR
by bicubic downscaling instead of the set's x2 LR.

Budget mode (the default): every run gets the same `train.max_minutes` (start-up and validation
included) and the same run length: the iterations the bare nano step fits into 65 % of the budget
at the default batch, so the fixed schedules of `automation=off` can reach their end. Runs: `auto`,
`off_lr1e-4`, `off_lr2e-4`, `off_lr5e-4` and `mistake` (zero-config plus known-bad loss-schedule
values: momentum 0.95, max_weight 100). Targets: auto >= best hand-set - 0.05 dB; auto > mistake.

Length mode (`--iters N`): every run is N iterations (`data.run_iter`), no time budget, once per
seed. Runs: `auto`, and `automation=off` (fixed warm-up + cosine, fixed batch) at three LRs around
zero-config's starting LR: `off_x0.5`, `off_x1`, `off_x2` (half, equal, double the option's preset
times the run-length factor, `automation.lr.run_length_factor`; each run reports its `lr`);
`--extra` adds alternatives;
`--common` overrides go to every run (e.g. a fixed batch, to compare LR policies alone).
Equal iterations: each run's best validation PSNR, averaged over the seeds. Equal wall-clock: each
hand-set run's best PSNR among the validations it had reached when `auto` ended (the
`time/elapsed_s` of each validation line in metrics.jsonl).

Per run: best validation PSNR (Y channel, border cropped: the value train.py returns), iterations
done, wall time; `bicubic` is MATLAB-style bicubic upscaling on the same images.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loop import BareStep, timed  # bench/loop.py, beside this script
from zerosr.config.derive import run_length_factor

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "bsd100_x2"
BUDGET_RUNS = {
    "auto": [],
    "off_lr1e-4": ["automation=off", "train.lr=1e-4"],
    "off_lr2e-4": ["automation=off", "train.lr=2e-4"],
    "off_lr5e-4": ["automation=off", "train.lr=5e-4"],
    "mistake": ["automation.loss_schedule.momentum=0.95", "automation.loss_schedule.max_weight=100"],
}
# Around zero-config's own starting LR: half, equal, double. `train.lr_scale` multiplies the preset;
# zero-config starts at the preset times the run-length factor.
HAND_SET = {"off_x0.5": 0.5, "off_x1": 1.0, "off_x2": 2.0}
LENGTH_RUNS = ["auto", *HAND_SET]


def length_run(label: str, total_iter: int) -> list[str]:
    """The overrides of a length-mode run of `total_iter` iterations."""
    if label == "auto":
        return []
    return ["automation=off", f"train.lr_scale={HAND_SET[label] * run_length_factor(total_iter):g}"]


# Share of the budget left for training steps: start-up (decoding the images, the bicubic baseline),
# validation and logging took a third of a 150 s run (measured: hand-set runs reached 600-800 of 1001).
STEP_SHARE = 0.65


def iterations_in(budget_s: float, batch: int = 8, lq: int = 48) -> int:
    """Every run's length: the bare nano steps (forward, backward, AdamW; bench/loop.py's) that fit
    in the budget's training share, so that a fixed schedule can reach its end within the budget."""
    step = BareStep("paragonsr2_nano", batch, lq)
    times = [timed(step) for _ in range(23)][3:]
    return int(STEP_SHARE * budget_s / statistics.median(times))


def run(label: str, extra: list[str], total_iter: int, n_val: int, workdir: Path, seed: int = 0,
        budget_s: float | None = None, arch: str = "paragonsr2_nano", scale: int = 2) -> dict:
    run_dir = workdir / f"{label}_seed{seed}"
    budget = [] if budget_s is None else [f"train.max_minutes={budget_s / 60}"]
    # x2: the set's own LR images; another scale: LR made from the HR by bicubic downscaling.
    pairs = [f"data.lq_path={DATA / 'lr'}"] if scale == 2 else [f"scale={scale}"]
    command = [sys.executable, str(REPO / "train.py"), f"arch={arch}", "data=paired",
               f"data.gt_path={DATA / 'hr'}", *pairs, f"data.n_val={n_val}",
               f"data.run_iter={total_iter}", f"train.seed={seed}", f"hydra.run.dir={run_dir}", *budget, *extra]
    begin = time.perf_counter()
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    seconds = time.perf_counter() - begin
    if done.returncode != 0:
        raise SystemExit(f"run {label} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in records if "val/psnr" in r]
    steps = [r for r in records if "loss" in r]
    best = max(vals, key=lambda r: r["val/psnr"])
    decision_log = run_dir / "automation.jsonl"  # absent when no automation decided anything
    decisions = [json.loads(line) for line in decision_log.read_text().splitlines()] if decision_log.exists() else []
    return {
        "overrides": extra,
        "lr": lr_of(run_dir, decisions),
        "best_psnr": round(best["val/psnr"], 3),
        "best_ssim": round(best["val/ssim"], 4),
        "best_iter": best["iter"],
        "iterations": vals[-1]["iter"],
        "final_batch": steps[-1]["batch_size"] if steps else None,
        "wall_s": round(seconds, 1),
        "bicubic_psnr": round(vals[-1]["val/bicubic_psnr"], 3),
        "lr_decisions": [f"{d['iter']}: {d['reason']}" for d in decisions if d["automation"] == "lr"],
        "validations": [(r["iter"], round(r.get("time/elapsed_s", float("nan")), 1), round(r["val/psnr"], 3))
                        for r in vals],
    }


def lr_of(run_dir: Path, decisions: list[dict]) -> float:
    """The LR the run's steps after the warm-up began at: its start-up line's (the preset times
    every factor), else its resolved train.lr x train.lr_scale."""
    start = next((d for d in decisions if "start_lr" in d["change"]), None)
    if start is not None:
        return start["change"]["start_lr"][1]
    from omegaconf import OmegaConf

    train = OmegaConf.load(run_dir / "resolved_config.yaml").train
    return float(train.lr) * float(train.lr_scale)


def best_by(result: dict, seconds: float) -> float | None:
    """The best PSNR among the validations a run had reached `seconds` after its start."""
    reached = [psnr for _, elapsed, psnr in result["validations"] if elapsed <= seconds]
    return max(reached) if reached else None


def budget_mode(args) -> dict:
    total_iter = iterations_in(args.budget_s)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label in args.runs:
            results[label] = run(label, BUDGET_RUNS[label], total_iter, args.n_val, Path(tmp), budget_s=args.budget_s)
            print(f"{label}: {results[label]['best_psnr']} dB", file=sys.stderr, flush=True)
    report = {"mode": "budget", "budget_s": args.budget_s, "run_iter": total_iter, "runs": results}
    psnr = {label: r["best_psnr"] for label, r in results.items()}
    if "auto" in psnr:
        checks = {"auto_beats_bicubic": psnr["auto"] > results["auto"]["bicubic_psnr"]}
        hand = [psnr[label] for label in BUDGET_RUNS if label.startswith("off_") and label in psnr]
        if hand:
            checks["auto_minus_best_hand_set_db"] = round(psnr["auto"] - max(hand), 3)
            checks["auto_within_0.05_of_best_hand_set"] = psnr["auto"] >= max(hand) - 0.05
        if "mistake" in psnr:
            checks["auto_minus_mistake_db"] = round(psnr["auto"] - psnr["mistake"], 3)
        report["bicubic_psnr"] = results["auto"]["bicubic_psnr"]
        report["checks"] = checks
    return report


def length_mode(args) -> dict:
    runs = {label: length_run(label, args.iters) for label in args.runs}
    for spec in args.extra:
        label, _, overrides = spec.partition("=")
        runs[label] = [o for o in overrides.split(",") if o]
    runs = {label: [*extra, *args.common] for label, extra in runs.items()}
    results: dict[str, dict[int, dict]] = {label: {} for label in runs}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for label, extra in runs.items():
                result = results[label][seed] = run(label, extra, args.iters, args.n_val, Path(tmp), seed=seed,
                                                     arch=args.arch, scale=args.scale)
                print(f"seed {seed} {label}: {result['best_psnr']} dB in {result['wall_s']} s",
                      file=sys.stderr, flush=True)
                if args.out:  # a long benchmark keeps what it measured if it is stopped
                    args.out.write_text(json.dumps({"partial": True, "iters": args.iters, "runs": results}, indent=2))
    summary = {}
    for label, by_seed in results.items():
        summary[label] = {"mean_best_psnr": round(statistics.mean(r["best_psnr"] for r in by_seed.values()), 3),
                          "mean_wall_s": round(statistics.mean(r["wall_s"] for r in by_seed.values()), 1)}
        if len(by_seed) > 1:
            summary[label]["stdev_best_psnr"] = round(statistics.stdev(r["best_psnr"] for r in by_seed.values()), 3)
        if "auto" in results and label != "auto":
            at_auto_end = [best_by(r, results["auto"][seed]["wall_s"]) for seed, r in by_seed.items()]
            known = [p for p in at_auto_end if p is not None]
            summary[label]["mean_best_psnr_at_auto_wall_s"] = round(statistics.mean(known), 3) if known else None
    report = {"mode": "length", "iters": args.iters, "seeds": args.seeds, "summary": summary, "runs": results}
    if "auto" in summary:
        hand = {label: s for label, s in summary.items() if label.startswith("off_")}
        if hand:
            best_label = max(hand, key=lambda label: hand[label]["mean_best_psnr"])
            report["checks"] = {
                "best_hand_set": best_label,
                "auto_minus_best_hand_set_db": round(summary["auto"]["mean_best_psnr"]
                                                     - hand[best_label]["mean_best_psnr"], 3),
                "auto_beats_bicubic": all(r["best_psnr"] > r["bicubic_psnr"] for r in results["auto"].values()),
            }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=150.0)
    parser.add_argument("--iters", type=int, default=None, help="length mode: every run this many iterations")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--n-val", type=int, default=10)
    parser.add_argument("--arch", default="paragonsr2_nano", help="length mode: the arch option of every run")
    parser.add_argument("--scale", type=int, default=2,
                        help="length mode: 2 trains on the set's x2 pairs; 3 or 4 on LR made from its HR by bicubic")
    parser.add_argument("--runs", nargs="*", default=None)
    parser.add_argument("--extra", nargs="*", default=[], help="length mode: LABEL=KEY=VALUE,KEY=VALUE alternatives")
    parser.add_argument("--common", nargs="*", default=[], help="length mode: overrides for every run")
    parser.add_argument("--out", type=Path, help="length mode: also write the runs so far here after every run")
    args = parser.parse_args()
    if not (DATA / "hr").is_dir():
        raise SystemExit(f"error: {DATA} not found: this benchmark needs ../shared/data/bsd100_x2")
    if args.iters is None and (args.arch != "paragonsr2_nano" or args.scale != 2):
        raise SystemExit("error: --arch and --scale need --iters: the budget mode's run length is calibrated on "
                         "nano's x2 step")
    table = BUDGET_RUNS if args.iters is None else LENGTH_RUNS
    args.runs = list(table) if args.runs is None else args.runs
    unknown = [label for label in args.runs if label not in table]
    if unknown:
        raise SystemExit(f"error: unknown runs {unknown}: choose from {list(table)}")
    began = time.perf_counter()
    report = budget_mode(args) if args.iters is None else length_mode(args)
    report.update({"data": "../shared/data/bsd100_x2", "arch": args.arch, "scale": args.scale, "n_val": args.n_val,
                   "cpu_count": os.cpu_count(), "bench_s": round(time.perf_counter() - began, 1),
                   "load_average_1min_at_end": (round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None)})
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
