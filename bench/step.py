"""One full training iteration against the bare model step. Prints JSON.

    python bench/step.py [--arch paragonsr2_nano paragonsr2_s] [--steps 30] [--batch 8] [--lq 48]

`bare_s`: forward + backward + AdamW step of the model alone on fixed tensors. `full_s`: one
`Trainer.step()` of a real run (data stream and workers, loss, AutoClip, EMA, automations) plus
its per-iteration logging. Target: full/bare <= 1.10 on CPU. The two alternate step by step;
medians over `--steps` after warm-up.
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


class BareStep:
    """Forward + backward + AdamW of the model alone on fixed tensors."""

    def __init__(self, name: str, batch: int, lq: int):
        torch.manual_seed(0)
        self.model = archs.build(name, 2)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.x, self.y = torch.rand(batch, 3, lq, lq), torch.rand(batch, 3, 2 * lq, 2 * lq)

    def __call__(self) -> None:
        loss = (self.model(self.x) - self.y).abs().mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def timed(fn) -> float:
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def measure(name: str, batch: int, lq: int, steps: int, run_dir: str) -> tuple[list[float], list[float]]:
    """Full and bare steps alternate, so that drift in machine load hits both alike."""
    cfg = compose_config([f"arch={name}", f"train.batch_size={batch}", f"train.lq_size={lq}",
                          "automation.batch.enabled=false", f"data.run_iter={steps + 3}", "train.log_freq=1"])
    trainer = Trainer(cfg, run_dir)
    bare = BareStep(name, batch, lq)

    def full() -> None:
        stats = trainer.step()
        trainer.logger.log_step(trainer.iteration, stats)

    full_times, bare_times = [], []
    for i in range(steps + 3):
        f, b = timed(full), timed(bare)
        if i >= 3:
            full_times.append(f)
            bare_times.append(b)
    trainer.close()
    return full_times, bare_times


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
            full_times, bare_times = measure(name, args.batch, args.lq, args.steps, run_dir)
        full, bare = statistics.median(full_times), statistics.median(bare_times)
        results[name] = {"bare_s": round(bare, 4), "full_s": round(full, 4), "ratio": round(full / bare, 3)}
    print(json.dumps({"batch": args.batch, "lq_size": args.lq, "threads": torch.get_num_threads(),
                      "target_ratio": 1.10, "results": results}, indent=2))


if __name__ == "__main__":
    main()
