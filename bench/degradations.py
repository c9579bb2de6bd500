"""The realistic degradations: speed, data wait, and whether calibration pays off. Prints one JSON object.

    .venv/bin/python bench/degradations.py [--iters 400] [--noise 10] [--quality 50] [--runs NAME ...]
                                           [--skip-runs] [--out F]

1. `pipeline`: samples/s of `degrade_batch` on this CPU at nano's default patch and batch.
2. `data_wait`: the share of the training step spent waiting for the next batch, with the run's
   own BatchStream over data=realistic while ParagonSR2 nano trains (forward, backward, AdamW), at
   the tier's loader workers and, for reference, at one worker more.
3. `calibration`: HR images of ../shared/data/bsd100_x2/hr split into 70 training, 15 target and
   15 held-out images. Target and held-out LR are made the same way: bicubic x2, Gaussian noise of
   sigma `--noise`, then JPEG at `--quality` (libjpeg, saved as .jpg). Nano runs of `--iters`
   iterations each, started as a user starts them (`python train.py`), equal in length, batch and
   seed (automation=off so nothing stops one early), chosen with `--runs`:
   `bicubic` data=paired on the HR (bicubic LR), `calibrated` data=realistic with
   data.target_path=target folder, `defaults` data=realistic with the Real-ESRGAN defaults, and
   (not by default) `oracle`: data=paired on LR made exactly as the target's, the ceiling that
   no calibration can pass.
   Each run's final EMA weights are scored by PSNR-Y (border cropped by the scale) on the held-out
   degraded images; `input_bicubic` upscales those inputs by bicubic interpolation.
   Target (issue): calibrated beats bicubic-trained by at least 1 dB.
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

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
HR_DIR = REPO.parent / "shared" / "data" / "bsd100_x2" / "hr"
SCALE = 2


def nano_defaults() -> tuple[int, int, int]:
    from zerosr.config.compose import compose_config

    cfg = compose_config(["arch=paragonsr2_nano"])
    return int(cfg.hardware_tier.num_workers), int(cfg.train.batch_size), int(cfg.train.lq_size)


def pipeline_speed(hr_paths: list[Path], batch: int, lq_size: int, batches: int = 30) -> dict:
    from zerosr.data.realistic import DegradationSettings
    from zerosr.data.realistic_data import RealisticPatchDataset

    dataset = RealisticPatchDataset(hr_paths, SCALE, lq_size, DegradationSettings())
    items = [dataset.sample(i, torch.Generator().manual_seed(i)) for i in range(batch * batches)]
    dataset.collate(items[:batch])  # warm-up: kernel tables, resize matrices
    start = time.perf_counter()
    for b in range(batches):
        dataset.collate(items[b * batch:(b + 1) * batch])
    seconds = time.perf_counter() - start
    return {"batch": batch, "lq_size": lq_size, "hr_size": lq_size * SCALE, "torch_threads": torch.get_num_threads(),
            "samples_per_s": round(batch * batches / seconds, 1),
            "ms_per_sample": round(seconds / (batch * batches) * 1000, 2)}


def data_wait(hr_paths: list[Path], workers: int, batch: int, lq_size: int, steps: int = 40) -> dict:
    from loader import train_on_stream  # bench/loader.py, beside this script
    from zerosr.data.realistic import DegradationSettings
    from zerosr.data.realistic_data import RealisticPatchDataset
    from zerosr.engine.data import BatchStream

    torch.manual_seed(0)
    dataset = RealisticPatchDataset(hr_paths, SCALE, lq_size, DegradationSettings(), length=10_000)
    return {"workers": workers, **train_on_stream(BatchStream(dataset, batch, seed=0, num_workers=workers), steps, batch)}


def degrade_real(hr: np.ndarray, noise: float, quality: int, seed: int) -> np.ndarray:
    """The 'real' degradation of the target and held-out images: bicubic, noise, libjpeg."""
    from zerosr.data.degrade import bicubic_downscale
    from zerosr.data.io import quantize

    lr = bicubic_downscale(hr.astype(np.float32) / 255.0, SCALE) * 255.0
    lr = lr + np.random.default_rng(seed).normal(0.0, noise, lr.shape)
    pixels = quantize(np.clip(lr / 255.0, 0, 1))
    _, encoded = cv2.imencode(".jpg", pixels[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return encoded


def prepare(workdir: Path, noise: float, quality: int) -> dict[str, Path]:
    from zerosr.data.io import read_image_raw

    paths = sorted(HR_DIR.glob("*.png"))
    folders = {name: workdir / name for name in ("train_hr", "train_lr", "target", "test_hr", "test_lr")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    for i, path in enumerate(paths):
        hr = read_image_raw(path)
        hr = hr[: hr.shape[0] // SCALE * SCALE, : hr.shape[1] // SCALE * SCALE]
        if i % 20 < 14:
            shutil.copyfile(path, folders["train_hr"] / path.name)  # a symlink needs privileges on Windows
            (folders["train_lr"] / f"{path.stem}.jpg").write_bytes(degrade_real(hr, noise, quality, i).tobytes())
        elif i % 20 < 17:
            (folders["target"] / f"{path.stem}.jpg").write_bytes(degrade_real(hr, noise, quality, i).tobytes())
        else:
            cv2.imwrite(str(folders["test_hr"] / path.name), hr[:, :, ::-1])
            (folders["test_lr"] / f"{path.stem}.jpg").write_bytes(degrade_real(hr, noise, quality, i).tobytes())
    return folders


def train_run(name: str, overrides: list[str], run_dir: Path, iters: int) -> dict:
    command = [sys.executable, str(REPO / "train.py"), "arch=paragonsr2_nano", f"scale={SCALE}", "automation=off",
               f"train.total_iter={iters}", "train.batch_size=8", "train.seed=0", f"hydra.run.dir={run_dir}",
               *overrides]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"run {name} failed:\n{done.stderr[-2000:]}")
    log = run_dir / "automation.jsonl"  # absent when a run took no decision (automation=off, no target)
    decisions = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    calibration = [{"change": d["change"], "reason": d["reason"]} for d in decisions if d["automation"] == "degradation"]
    return {"seconds": round(seconds, 1), "calibration": calibration[0] if calibration else None}


def score(weights: Path | None, folders: dict[str, Path]) -> float:
    from zerosr import archs
    from zerosr.data.io import read_image
    from zerosr.engine.tiling import tiled_forward
    from zerosr.engine.validation import bicubic_upscale
    from zerosr.metrics import calculate_psnr, tensor_to_uint8

    model = archs.load(weights).eval() if weights is not None else None
    psnrs = []
    for hr_path in sorted(folders["test_hr"].glob("*.png")):
        lq = torch.from_numpy(read_image(folders["test_lr"] / f"{hr_path.stem}.jpg").transpose(2, 0, 1))[None]
        with torch.no_grad():
            sr = bicubic_upscale(lq, SCALE) if model is None else tiled_forward(model, lq, SCALE, 256, 8)
        hr = read_image(hr_path)
        psnrs.append(calculate_psnr(tensor_to_uint8(sr.clamp(0, 1)), tensor_to_uint8(torch.from_numpy(
            hr.transpose(2, 0, 1))), crop_border=SCALE, test_y_channel=True))
    return round(float(np.mean(psnrs)), 3)


RUNS = ("bicubic", "calibrated", "defaults", "oracle")


def calibration_benchmark(iters: int, noise: float, quality: int, names: list[str],
                          partial=lambda result: None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        folders = prepare(workdir, noise, quality)
        estimate = subprocess.run([sys.executable, "-m", "zerosr.degradations", "estimate", str(folders["target"]),
                                   "--json"], cwd=REPO, capture_output=True, text=True, check=True)
        runs = {
            "bicubic": ["data=paired", f"data.gt_path={folders['train_hr']}"],
            "calibrated": ["data=realistic", f"data.gt_path={folders['train_hr']}",
                           f"data.target_path={folders['target']}"],
            "defaults": ["data=realistic", f"data.gt_path={folders['train_hr']}"],
            "oracle": ["data=paired", f"data.gt_path={folders['train_hr']}", f"data.lq_path={folders['train_lr']}"],
        }
        results = {}
        for name in names:
            overrides = runs[name]
            run_dir = workdir / "runs" / name
            info = train_run(name, overrides, run_dir, iters)
            weights = sorted((run_dir / "models").glob("net_g_ema_*.safetensors"))[-1]
            results[name] = {"psnr_y": score(weights, folders), **info}
            partial({"iters": iters, "runs_so_far": results})
        results["input_bicubic"] = {"psnr_y": score(None, folders)}
        report = {"iters": iters, "batch": 8, "noise_sigma": noise, "jpeg_quality": quality,
                  "images": {k: len(list(v.iterdir())) for k, v in folders.items() if k not in ("test_lr", "train_lr")},
                  "target_estimate": json.loads(estimate.stdout), "runs": results}
        if "calibrated" in results and "bicubic" in results:
            gain = results["calibrated"]["psnr_y"] - results["bicubic"]["psnr_y"]
            report.update(calibrated_minus_bicubic_db=round(gain, 3), target_met=gain >= 1.0)
        return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=400)
    parser.add_argument("--noise", type=float, default=10.0)
    parser.add_argument("--quality", type=int, default=50)
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS[:3]), help="training runs, in order")
    parser.add_argument("--skip-runs", action="store_true", help="speed only, no training runs")
    parser.add_argument("--out", type=Path, help="also write the report here, the runs so far after every run")
    args = parser.parse_args()
    started = time.perf_counter()
    workers, batch, lq_size = nano_defaults()
    hr_paths = sorted(HR_DIR.glob("*.png"))
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None  # POSIX only
    report = {"cpu_count": os.cpu_count(), "load_average_1min_at_start": load,
              "tier_workers": workers, "pipeline": pipeline_speed(hr_paths, batch, lq_size),
              "data_wait": [data_wait(hr_paths, n, batch, lq_size) for n in (workers, workers + 1)]}
    def write(calibration: dict) -> None:
        if args.out is not None:
            args.out.write_text(json.dumps({**report, "calibration": calibration}, indent=2))

    if not args.skip_runs:
        report["calibration"] = calibration_benchmark(args.iters, args.noise, args.quality, args.runs, write)
    report["seconds"] = round(time.perf_counter() - started, 1)
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
