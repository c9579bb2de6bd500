"""What the start-up batch-size search costs against a default-length run. Prints one JSON object.

    python bench/batch_search.py [--arch paragonsr2_nano paragonsr2_s] [--steps 20]

For each arch: the config `python train.py arch=ARCH` composes on this machine (its tier, its
preset's run length `train.total_iter`, the demo data), the search as the run does it
(`zerosr.engine.startup.search_batch_size`, real steps), then `--steps` real training steps at the
batch it chose. `share` = search time / (search time + total_iter x the median step time), the
fraction of a default-length run the search takes (the run itself is extrapolated from measured
steps, not run for hours). Target (issue): under 5 %.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

from zerosr.config.compose import compose_config
from zerosr.engine.loop import Trainer
from zerosr.engine.startup import search_batch_size


def measure(arch: str, steps: int, run_dir: str) -> dict:
    cfg = compose_config([f"arch={arch}", "data.run_iter=null"])  # the preset's run length, not the demo's
    trainer = Trainer(cfg, run_dir)
    begin = time.perf_counter()
    batch, lq, decision = search_batch_size(trainer.learner, cfg, cfg.train.batch_size, cfg.train.lq_size,
                                            keep_lq_size=False)
    search_s = time.perf_counter() - begin
    trainer.suite.adopt_batch(0, batch)
    trainer.apply_batch(batch, lq)
    times = []
    for i in range(steps + 2):
        begin = time.perf_counter()
        trainer.step()
        if i >= 2:
            times.append(time.perf_counter() - begin)
    trainer.close()
    step_s = statistics.median(times)
    run_s = cfg.train.total_iter * step_s
    return {
        "tier": cfg.hardware_tier.name,
        "total_iter": cfg.train.total_iter,
        "batch_before": cfg.train.batch_size,
        "batch_chosen": batch,
        "search_s": round(search_s, 2),
        "step_s": round(step_s, 4),
        "run_s_extrapolated": round(run_s),
        "share": round(search_s / (search_s + run_s), 5),
        "reason": decision.reason,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["paragonsr2_nano", "paragonsr2_s"])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    results = {}
    for arch in args.arch:
        with tempfile.TemporaryDirectory() as run_dir:
            results[arch] = measure(arch, args.steps, run_dir)
    print(json.dumps({"cpu_count": os.cpu_count(), "cuda": torch.cuda.is_available(), "target_share": 0.05,
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
