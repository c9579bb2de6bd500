"""Compose-time cost of zerosr's detection and resolvers. Prints JSON.

    python bench/compose_speed.py [--runs 7]

`train_cfg_job_s`: median wall time of `python train.py --cfg job`; `bare_cfg_job_s`: the same for
bench/bare_app.py (same conf/, no probe, no resolvers); target ratio <= 1.2. `probe_ms`: the
hardware probe alone in a fresh process (target < 100 ms).
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wall(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    py = sys.executable
    train, bare = [], []
    for _ in range(runs):  # interleaved, so drift in machine load hits both alike
        train.append(wall([py, "train.py", "--cfg", "job"]))
        bare.append(wall([py, "bench/bare_app.py", "--cfg", "job"]))
    probe_code = ("import time; t=time.perf_counter(); import zerosr.detect as d; d.probe(); "
                  "print((time.perf_counter()-t)*1000)")
    probes = [float(subprocess.run([py, "-c", probe_code], cwd=ROOT, capture_output=True, text=True,
                                   check=True).stdout) for _ in range(runs)]
    result = {
        "runs": runs,
        "train_cfg_job_s": round(statistics.median(train), 3),
        "bare_cfg_job_s": round(statistics.median(bare), 3),
        "ratio": round(statistics.median(train) / statistics.median(bare), 3),
        "probe_ms": round(statistics.median(probes), 1),
        "targets": {"ratio": 1.2, "probe_ms": 100},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
