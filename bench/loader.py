"""Measure image decoding and DataLoader stalls; prints one JSON object.

1. Decode time per image for OpenCV and Pillow, on PNG and on JPEG (the same images re-encoded at
   quality 95), and whether each keeps 16-bit RGB.
2. The share of training-loop time spent waiting for the next batch: the run's own BatchStream with
   N DataLoader workers (default: the detected tier's), with and without the RAM cache, while
   ParagonSR2 nano trains on the batches (forward, backward, AdamW) at its default batch and patch.

Data: ../shared/data/bsd100_x2 (100 HR/LR PNG pairs, 480x320 HR) when present, else generated.

    .venv/bin/python bench/loader.py                 # the tier's workers
    .venv/bin/python bench/loader.py --workers 0 1 --batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from zerosr import archs
from zerosr.config.compose import compose_config
from zerosr.data.datasets import PairedPatchDataset
from zerosr.data.demo import generate_image
from zerosr.data.io import quantize, read_image_raw, write_image
from zerosr.data.pairing import pair_images
from zerosr.engine.data import BatchStream

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "bsd100_x2"
SCALE = 2


def read_with_pillow(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def read_with_opencv(path: Path) -> np.ndarray:
    return read_image_raw(path)  # zerosr's reader: OpenCV imdecode + BGR->RGB


def decode_ms_per_image(files: list[Path], repeats: int = 5) -> dict[str, float]:
    """Best-of-`repeats` mean decode time; the libraries alternate so background load hits both alike."""
    readers = {"opencv": read_with_opencv, "pillow": read_with_pillow}
    best = {name: float("inf") for name in readers}
    for _ in range(repeats):
        for name, reader in readers.items():
            start = time.perf_counter()
            for path in files:
                reader(path)
            best[name] = min(best[name], (time.perf_counter() - start) / len(files))
    return {name: round(seconds * 1000, 3) for name, seconds in best.items()}


def keeps_16_bit(reader, folder: Path) -> bool:
    values = (np.arange(8 * 8 * 3, dtype=np.uint16).reshape(8, 8, 3) * 257 + 1)  # never a multiple of 257
    path = folder / "rgb16.png"
    write_image(path, values)
    decoded = reader(path)
    return decoded.dtype == np.uint16 and np.array_equal(decoded, values)


def make_pairs(workdir: Path) -> tuple[str, list[tuple[Path, Path]]]:
    if (SHARED_DATA / "hr").is_dir():
        return "../shared/data/bsd100_x2", pair_images(SHARED_DATA / "hr", SHARED_DATA / "lr", SCALE)
    from zerosr.data.degrade import bicubic_downscale

    for i in range(40):
        hr = generate_image(i, size=384)
        write_image(workdir / "hr" / f"{i:03d}.png", quantize(hr))
        write_image(workdir / "lr" / f"{i:03d}.png", quantize(bicubic_downscale(hr, SCALE)))
    return "generated (40 images, 384x384 HR)", pair_images(workdir / "hr", workdir / "lr", SCALE)


def train_on_stream(stream: BatchStream, steps: int, batch: int) -> dict:
    """Train ParagonSR2 nano (forward, L1, backward, AdamW) on `steps` batches of `stream`, timing
    how long each step waits for its batch; closes the stream."""
    model = archs.build("paragonsr2_nano", SCALE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    waited = total = 0.0
    for step in range(steps + 3):
        t0 = time.perf_counter()
        data = stream.next_batch()
        t1 = time.perf_counter()
        loss = (model(data["lq"]) - data["gt"]).abs().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        if step >= 3:  # the first batches include worker start-up
            waited += t1 - t0
            total += t2 - t0
    stream.close()
    return {
        "step_ms": round(total / steps * 1000, 2),
        # The wait share alone flatters slow set-ups: workers that decode steal the model's cores.
        "samples_per_s": round(steps * batch / total, 1),
        "wait_ms_per_step": round(waited / steps * 1000, 2),
        "wait_fraction": round(waited / total, 4),
    }


def measure_loader(pairs, workers: int, cache: bool, steps: int, batch: int, lq_size: int) -> dict:
    torch.manual_seed(0)
    start = time.perf_counter()
    dataset = PairedPatchDataset(pairs, SCALE, lq_size, cache=cache)
    build_s = time.perf_counter() - start
    timing = train_on_stream(BatchStream(dataset, batch, seed=0, num_workers=workers), steps, batch)
    return {"workers": workers, "cache": cache, "dataset_build_s": round(build_s, 3), **timing}


def nano_defaults() -> tuple[int, int, int]:
    """(workers, batch, lq_size) that `arch=paragonsr2_nano` gets on this machine's tier."""
    cfg = compose_config(["arch=paragonsr2_nano"])
    return int(cfg.hardware_tier.num_workers), int(cfg.train.batch_size), int(cfg.train.lq_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    workers, batch, lq_size = nano_defaults()
    parser.add_argument("--workers", type=int, nargs="+", default=[workers])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--lq-size", type=int, default=lq_size)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        source, pairs = make_pairs(workdir)
        png_files = [gt for gt, _ in pairs[:40]]
        jpeg_files = []
        for path in png_files:
            jpeg = workdir / "jpeg" / (path.stem + ".jpg")
            jpeg.parent.mkdir(exist_ok=True)
            Image.open(path).save(jpeg, quality=95)
            jpeg_files.append(jpeg)
        first = read_image_raw(png_files[0])

        report = {
            "data": source,
            "pairs": len(pairs),
            "hr_shape_first": list(first.shape),
            "cpu_count": os.cpu_count(),
            # Other processes on the machine skew every number below; compare with cpu_count.
            "load_average_1min_at_start": (round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None),
            "torch_threads": torch.get_num_threads(),
            "versions": {"opencv": cv2.__version__, "pillow": Image.__version__, "torch": torch.__version__},
            "decode_ms_per_image": {"png": decode_ms_per_image(png_files),
                                    "jpeg_q95": decode_ms_per_image(jpeg_files)},
            "keeps_16bit_rgb_png": {"opencv": keeps_16_bit(read_with_opencv, workdir),
                                    "pillow": keeps_16_bit(read_with_pillow, workdir)},
            "loop": {"model": "paragonsr2_nano", "batch": args.batch, "lq_size": args.lq_size, "scale": SCALE,
                     "steps": args.steps, "tier_workers": workers},
            "loader": [measure_loader(pairs, n, cache, args.steps, args.batch, args.lq_size)
                       for n in args.workers for cache in (True, False)],
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
