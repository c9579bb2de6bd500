"""Throughput of `python -m zerosr.upscale` and how far tiled output is from whole-image output.

For each variant (default nano and s, x2) the command runs as a user starts it, on the BSD100 LR
images (../shared/data/bsd100_x2/lr, 240x160 or 160x240 PNGs), twice: with the default tile (these
images fit in one) and with --tile 120 (12 tiles of 120x120 with 24 pixels of overlap). Throughput is HR
output megapixels per second of the whole process (model load and start-up included; `start_s` is
the same command on one image, to read them apart). The tiled and whole outputs are compared pixel
by pixel, in 8-bit levels.

Weights are random (a fresh build, as speed does not depend on them). A fresh ParagonSR2 barely
uses its attention, layer scales or content gain, so "trained_like" repeats the agreement check
with those switched on (as in tests/test_upscale.py), where tiling errors would show.

    .venv/bin/python bench/upscale.py                  # nano and s, 10 images (about 5 minutes on 2 cores)
    .venv/bin/python bench/upscale.py --images 100 --variants paragonsr2_nano
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from zerosr import archs
from zerosr.data.io import read_image_unchanged

REPO = Path(__file__).resolve().parents[1]
SHARED_LR = REPO.parent / "shared" / "data" / "bsd100_x2" / "lr"


def trained_like(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = archs.build(name, 2).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(getattr(module, "gamma", None), torch.nn.Parameter):
                module.gamma.fill_(0.5)
        model.conv_out.weight.mul_(10)
        model.content_processor.content_analyzer[7].weight.mul_(50)  # a gain that follows the content
    return model


def upscale(model: Path, source: Path, out: Path, *extra: str) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "zerosr.upscale", str(model), str(source), str(out),
                             "--overwrite", *extra], cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"upscale failed: {result.stderr[-2000:]}")
    return time.perf_counter() - started


def largest_difference(a: Path, b: Path) -> int:
    worst = 0
    for path in sorted(a.rglob("*.png")):
        x = read_image_unchanged(path).astype(np.int32)
        y = read_image_unchanged(b / path.relative_to(a)).astype(np.int32)
        worst = max(worst, int(np.abs(x - y).max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["paragonsr2_nano", "paragonsr2_s"])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--agreement-images", type=int, default=3, help="images for the trained-like check")
    args = parser.parse_args()
    if not SHARED_LR.is_dir():
        raise SystemExit(f"needs the BSD100 LR images at {SHARED_LR}")
    files = sorted(SHARED_LR.glob("*.png"))[: args.images]
    report = {"cpu_threads": torch.get_num_threads(), "images": len(files), "scale": 2, "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = tmp / "lr"
        source.mkdir()
        for path in files:
            shutil.copy(path, source / path.name)
        subset = tmp / "subset"
        subset.mkdir()
        for path in files[: args.agreement_images]:
            shutil.copy(path, subset / path.name)
        hr_megapixels = sum(h * w * 4 for h, w in (read_image_unchanged(p).shape[:2] for p in files)) / 1e6
        for name in args.variants:
            weights = archs.save(archs.build(name, 2), tmp / f"{name}.safetensors")
            start = upscale(weights, files[0], tmp / "one.png")
            whole_s = upscale(weights, source, tmp / "whole")
            tiled_s = upscale(weights, source, tmp / "tiled", "--tile", "120")
            stressed = archs.save(trained_like(name), tmp / f"{name}_trained_like.safetensors")
            upscale(stressed, subset, tmp / "s_whole", "--tile", "0")
            upscale(stressed, subset, tmp / "s_tiled", "--tile", "120")
            report["variants"][name] = {
                "start_s": round(start, 2),
                "whole_image": {"seconds": round(whole_s, 2), "hr_mp_per_s": round(hr_megapixels / whole_s, 3)},
                "tile_120": {"seconds": round(tiled_s, 2), "hr_mp_per_s": round(hr_megapixels / tiled_s, 3)},
                "max_tiled_vs_whole_levels": largest_difference(tmp / "whole", tmp / "tiled"),
                "max_tiled_vs_whole_levels_trained_like": largest_difference(tmp / "s_whole", tmp / "s_tiled"),
            }
    report["command"] = "python bench/upscale.py " + " ".join(sys.argv[1:])
    report["cpu"] = os.cpu_count()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
