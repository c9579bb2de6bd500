"""Validation cost per image of each metric: what `train.val_metrics` adds to a validation.

Times `zerosr.metrics.scorer.Scorer` (the code validation runs) on one SR/HR pair per size, one
metric at a time (PSNR+SSIM together, as validation always runs them), after one warm-up call;
median of `--repeats`. The networks have the real architectures with random weights (the cost
does not depend on the values; no download). Prints one JSON object.

    taskset -c 1 .venv/bin/python bench/perceptual_cost.py --threads 1 --repeats 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_perceptual_metrics import backbone, dists_weights, lpips_heads  # noqa: E402  - the seeded test weights
from zerosr.metrics.perceptual import DISTS, LPIPS  # noqa: E402
from zerosr.metrics.scorer import Scorer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=["480x320", "256x256", "1024x768"], help="HR WxH")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, state in (("alexnet", backbone("alexnet")), ("vgg16", backbone("vgg16")),
                            ("lpips_alex", lpips_heads("alex")), ("lpips_vgg", lpips_heads("vgg")),
                            ("dists", dists_weights())):
            torch.save(state, folder / f"{name}.pth")
        networks = {"lpips": LPIPS("alex", folder / "alexnet.pth", folder / "lpips_alex.pth"),
                    "lpips_vgg": LPIPS("vgg", folder / "vgg16.pth", folder / "lpips_vgg.pth"),
                    "dists": DISTS(folder / "vgg16.pth", folder / "dists.pth")}
    results = {"threads": args.threads, "repeats": args.repeats, "ms_per_image": {}}
    for size in args.sizes:
        width, height = map(int, size.split("x"))
        generator = torch.Generator().manual_seed(0)
        hr = torch.rand(3, height, width, generator=generator)
        sr = (hr + 0.05 * torch.randn(3, height, width, generator=generator)).clamp(0, 1)
        row = {}
        for name in ("psnr+ssim", "lpips", "lpips_vgg", "dists"):
            scorer = Scorer(["psnr", "ssim"] + ([name] if name in networks else []), networks=networks)
            scorer(sr, hr, 2)  # warm-up
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                scorer(sr, hr, 2)
                times.append(time.perf_counter() - start)
            row[name] = round(1000 * statistics.median(times), 1)
        for name in ("lpips", "lpips_vgg", "dists"):  # the metric alone, PSNR+SSIM taken off
            row[f"{name}_alone"] = round(row[name] - row["psnr+ssim"], 1)
        results["ms_per_image"][size] = row
        print(json.dumps({size: row}), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
