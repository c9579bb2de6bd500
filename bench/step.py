"""One full training iteration against the bare model step. Prints JSON.

    python bench/step.py [--arch paragonsr2_nano paragonsr2_s] [--steps 30] [--batch 8] [--lq 48]

`bare_s`: forward + backward + AdamW step of the model alone on fixed tensors. `full_s`: one
`Trainer.step()` of a real run (data stream and workers, loss, AutoClip, EMA, automations) plus
its per-iteration logging. Target: full/bare <= 1.10 on CPU. Medians over `--steps` after warm-up.
"""

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

from zerosr import archs
from zerosr.config.compose import compose_config
from zerosr.engine.loop import Trainer


def bare_step_times(name: str, batch: int, lq: int, steps: int) -> list[float]:
    torch.manual_seed(0)
    model = archs.build(name, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.rand(batch, 3, lq, lq), torch.rand(batch, 3, 2 * lq, 2 * lq)
    times = []
    for i in range(steps + 3):
        begin = time.perf_counter()
        loss = (model(x) - y).abs().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= 3:
            times.append(time.perf_counter() - begin)
    return times


def full_step_times(name: str, batch: int, lq: int, steps: int, run_dir: str) -> list[float]:
    cfg = compose_config([f"arch={name}", f"train.batch_size={batch}", f"train.lq_size={lq}",
                          "automation.batch.enabled=false", f"data.run_iter={steps + 3}", "train.log_freq=1"])
    trainer = Trainer(cfg, run_dir)
    times = []
    for i in range(steps + 3):
        begin = time.perf_counter()
        stats = trainer.step()
        trainer.logger.log_step(trainer.iteration, stats)
        if i >= 3:
            times.append(time.perf_counter() - begin)
    trainer.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", nargs="+", default=["paragonsr2_nano", "paragonsr2_s"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lq", type=int, default=48)
    args = parser.parse_args()
    os.environ.setdefault("ZEROSR_CACHE_DIR", os.path.join(tempfile.gettempdir(), "zerosr-bench-cache"))
    results = {}
    for name in args.arch:
        with tempfile.TemporaryDirectory() as run_dir:
            full = statistics.median(full_step_times(name, args.batch, args.lq, args.steps, run_dir))
        bare = statistics.median(bare_step_times(name, args.batch, args.lq, args.steps))
        results[name] = {"bare_s": round(bare, 4), "full_s": round(full, 4), "ratio": round(full / bare, 3)}
    print(json.dumps({"batch": args.batch, "lq_size": args.lq, "threads": torch.get_num_threads(),
                      "target_ratio": 1.10, "results": results}, indent=2))


if __name__ == "__main__":
    main()
