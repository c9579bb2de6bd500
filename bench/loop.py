"""The training loop as users run it, against the bare model step. Prints JSON.

    python bench/loop.py [--cases nano:1:24:1.5 nano:8:48:3 s:8:48:8] [--repeats 2]

Each case is ARCH:BATCH:LQ:MINUTES. `loop_ms` is one iteration of a real `train.py` process on
the demo data, started as a user starts it: the variant's own run length, so every frequency
(log, validation, save) is the one a real run derives; automations on; only the batch search off
(the batch is given). The process runs for MINUTES (`train.max_minutes`); `loop_ms` is the time
between its logged windows over the iterations in them, the first window (warm-up) left out, so
validations and checkpoints count at the rate a whole run has them. `bare_ms` is the median of
forward + L1 + backward + AdamW on one fixed batch of demo patches, measured in this process before and after each
train.py run, so that drift in machine load hits both. Target: loop/bare <= 1.10 (<= 1.25 for the
small-step case, batch 1 at 24 px, whose bare step takes about what a nano step does on a GPU).
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

import torch

from zerosr import archs

ROOT = Path(__file__).resolve().parents[1]


def demo_batch(batch: int, lq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of real demo patches, as the loop reads them (the network's speed depends on the
    content: random noise runs several times slower than images)."""
    from zerosr.config.compose import compose_config
    from zerosr.engine.data import BatchStream, build_data

    cfg = compose_config([f"train.batch_size={batch}", f"train.lq_size={lq}", "hardware_tier.num_workers=0"])
    stream = BatchStream(build_data(cfg).train, batch, seed=0)
    sample = stream.next_batch()
    stream.close()
    return sample["lq"], sample["gt"]


class BareStep:
    """Forward + L1 + backward + AdamW of the model alone on one fixed batch of demo patches."""

    def __init__(self, name: str, batch: int, lq: int):
        self.x, self.y = demo_batch(batch, lq)
        torch.manual_seed(0)
        self.model = archs.build(name, 2)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)

    def __call__(self) -> None:
        loss = (self.model(self.x) - self.y).abs().mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def timed(fn) -> float:
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def bare_ms(name: str, batch: int, lq: int, steps: int) -> float:
    step = BareStep(name, batch, lq)
    times = [timed(step) for _ in range(steps + 5)][5:]
    return 1000 * statistics.median(times)


def loop_ms(name: str, batch: int, lq: int, minutes: float, run_dir: Path) -> dict:
    command = [sys.executable, "train.py", f"arch={name}", f"train.batch_size={batch}", f"train.lq_size={lq}",
               "data.run_iter=null", f"train.max_minutes={minutes}", f"hydra.run.dir={run_dir}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"train.py failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in records if "it_per_s" in r]
    sizes = [r["iter"] - p for r, p in zip(windows, [0] + [r["iter"] for r in windows])]
    timed_windows = [(n, n / r["it_per_s"]) for n, r in zip(sizes, windows)][1:]
    if not timed_windows:
        raise RuntimeError(f"{name}: fewer than two logged windows in {minutes} min; give it more minutes")
    iterations = sum(n for n, _ in timed_windows)
    return {"loop_ms": 1000 * sum(s for _, s in timed_windows) / iterations, "iterations_timed": iterations,
            "validations": sum("val/psnr" in r for r in records)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["nano:1:24:1.5", "nano:8:48:3", "s:8:48:8"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--bare-steps", type=int, default=40)
    args = parser.parse_args()
    os.environ.setdefault("ZEROSR_CACHE_DIR", os.path.join(tempfile.gettempdir(), "zerosr-bench-cache"))
    started = time.perf_counter()
    results = {}
    for case in args.cases:
        variant, batch, lq, minutes = case.split(":")
        name, batch, lq, minutes = f"paragonsr2_{variant}", int(batch), int(lq), float(minutes)
        rows = []
        for _ in range(args.repeats):
            before = bare_ms(name, batch, lq, args.bare_steps)
            with tempfile.TemporaryDirectory() as folder:
                try:
                    run = loop_ms(name, batch, lq, minutes, Path(folder) / "run")
                except RuntimeError as error:  # the other cases still report
                    rows.append({"error": str(error)})
                    continue
            after = bare_ms(name, batch, lq, args.bare_steps)
            bare = (before + after) / 2
            rows.append({**run, "bare_ms": bare, "ratio": run["loop_ms"] / bare})
        timed = [row for row in rows if "error" not in row]
        if not timed:
            results[case] = rows[0]
            continue
        results[case] = {key: round(statistics.median(row[key] for row in timed), 3) for key in timed[0]}
        results[case]["ratios_each_repeat"] = [round(row["ratio"], 3) for row in timed]
    print(json.dumps({"threads": torch.get_num_threads(), "targets": {"ratio": 1.10, "small_step_ratio": 1.25},
                      "seconds": round(time.perf_counter() - started), "results": results}, indent=2))


if __name__ == "__main__":
    main()
