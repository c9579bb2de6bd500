"""Fault injection against real `train.py` / `python -m zerosr.doctor` processes. Prints JSON.

    python bench/faults.py [--quick]

On tiny generated data (paragonsr2_nano, 48 px HR, x2, CPU, train.deterministic=true):
- kill points: `debug.kill_at=[POINT:ITER]` SIGKILLs the run (between checkpoints, before the
  first one, inside a checkpoint write, before a checksum is written), then the same command with
  `train.resume=auto` finishes it; survived = exit 0 and final weights (EMA and raw) bit-equal to
  an uninterrupted run. A truncated latest state is tried the same way.
- injected faults: NaN losses (`debug.inject_nan_at`) and out-of-memory errors
  (`debug.inject_oom_at`); survived = the run finishes with finite weights and counts each fault.
- bad inputs: overrides and data a user gets wrong; each should end with exit code 2 and an
  `error:` line, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"ZEROSR_FAKE_HARDWARE": ""}


def make_dataset(folder: Path, count: int = 6, size: int = 48, scale: int = 2) -> tuple[Path, Path]:
    from zerosr.data import bicubic_downscale, write_image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(count):
        base = np.stack([np.sin(xx * rng.uniform(2, 8) + rng.uniform(0, 6)) * 0.4 + 0.5 for _ in range(3)], -1)
        edge = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1) > rng.uniform(-0.3, 0.3))[..., None]
        hr = np.clip(base * 0.7 + edge * rng.uniform(0.1, 0.3, 3), 0, 1).astype(np.float32)
        write_image(folder / "hr" / f"img{i}.png", hr)
        write_image(folder / "lr" / f"img{i}.png", bicubic_downscale(hr, scale))
    return folder / "hr", folder / "lr"


def base_overrides(hr: Path, lr: Path, **extra) -> list[str]:
    values = {"name": "faults", "data": "paired", "data.gt_path": hr, "data.lq_path": lr, "data.n_val": 2,
              "train.total_iter": 6, "train.batch_size": 2, "train.lq_size": 16, "train.val_freq": 3,
              "train.save_freq": 3, "train.log_freq": 1, "train.warmup_iter": 1, "train.deterministic": True,
              "hardware_tier.num_workers": 0, "automation": "off", **extra}
    return [f"{k}={v}" for k, v in values.items()]


def train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True,
                          env=ENV, timeout=600)


def doctor(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zerosr.doctor", *args], cwd=cwd, capture_output=True, text=True,
                          env=ENV, timeout=600)


def same_final_weights(a: Path, b: Path, iteration: int = 6) -> bool:
    for kind in ("net_g", "net_g_ema"):
        name = f"{kind}_{iteration:08d}.safetensors"
        if not (a / "models" / name).exists() or not (b / "models" / name).exists():
            return False
        x, y = load_file(a / "models" / name), load_file(b / "models" / name)
        if x.keys() != y.keys() or not all(torch.equal(x[k], y[k]) for k in x):
            return False
    return True


def kill_points(work: Path, data, points: list[str]) -> dict:
    reference = work / "reference"
    out = train([*base_overrides(*data), f"hydra.run.dir={reference}"], work)
    assert out.returncode == 0, out.stderr[-2000:]
    results = {}
    for point in points:
        run_dir = work / f"kill_{point.replace(':', '_')}"
        killed = train([*base_overrides(*data), f"hydra.run.dir={run_dir}", f"debug.kill_at=[{point}]"], work)
        resumed = train([*base_overrides(*data), f"hydra.run.dir={run_dir}", "train.resume=auto"], work)
        results[point] = (killed.returncode == -9 and resumed.returncode == 0
                          and same_final_weights(reference, run_dir))
    # A damaged newest state: truncated after the run, then the run is asked to finish again.
    run_dir = work / "truncated"
    first = train([*base_overrides(*data), f"hydra.run.dir={run_dir}"], work)
    latest = run_dir / "training_state" / "state_00000006.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    for model in (run_dir / "models").glob("net_g*_00000006.safetensors"):
        model.unlink()
    again = train([*base_overrides(*data), f"hydra.run.dir={run_dir}", "train.resume=auto"], work)
    # The warning goes through the "zerosr" logger, which Hydra's job logging prints to stdout.
    warned = sum("corrupt or truncated" in line for line in (again.stdout + again.stderr).splitlines())
    results["truncated_latest_state"] = (first.returncode == 0 and again.returncode == 0 and warned == 1
                                         and same_final_weights(reference, run_dir))
    return results


def injected_faults(work: Path, data) -> dict:
    """(tried, survived) per kind: each injected fault counts once."""
    auto = {"automation": "auto", "automation.batch.enabled": False, "automation.dataset_analysis.batches": 1}
    cases = [
        ("nan", 3, {**auto, "debug.inject_nan_at": "[2,3,4]"}, r"(\d+) non-finite steps skipped"),
        ("nan", 1, {**auto, "debug.inject_nan_at": "[5]"}, r"(\d+) non-finite steps skipped"),
        ("oom", 2, {**auto, "automation.batch.enabled": True, "train.batch_size": 4,
                    "automation.batch.max_batch_size": 4, "debug.inject_oom_at": "[2,4]"}, r"(\d+) out-of-memory"),
    ]
    totals: dict[str, list[int]] = {}
    for index, (kind, count, extra, pattern) in enumerate(cases):
        run_dir = work / f"inject_{index}"
        out = train([*base_overrides(*data, **extra), f"hydra.run.dir={run_dir}"], work)
        match = re.search(pattern, out.stdout)
        handled = int(match.group(1)) if match else 0
        finite = out.returncode == 0 and all(
            torch.isfinite(t).all() for t in load_file(run_dir / "models" / "net_g_00000006.safetensors").values())
        tried, survived = totals.setdefault(kind, [0, 0])
        totals[kind] = [tried + count, survived + (min(handled, count) if finite else 0)]
    return {kind: {"tried": t, "survived": s} for kind, (t, s) in totals.items()}


def bad_inputs(work: Path, data) -> dict:
    hr, lr = data
    bad = work / "bad"

    def folder(name: str, files: dict[str, object]) -> Path:
        from zerosr.data import write_image

        path = bad / name
        path.mkdir(parents=True, exist_ok=True)
        for file_name, content in files.items():
            if isinstance(content, bytes):
                (path / file_name).write_bytes(content)
            else:
                write_image(path / file_name, content)
        return path

    rng = np.random.default_rng(1)
    img = lambda n: rng.random((n, n, 3)).astype(np.float32)  # noqa: E731
    hr6 = {f"img{i}.png": img(48) for i in range(6)}
    lr6 = {f"img{i}.png": img(24) for i in range(6)}
    truncated = (lr / "img0.png").read_bytes()[:200]
    (bad / "empty").mkdir(parents=True, exist_ok=True)
    from zerosr import archs

    micro = archs.save(archs.build("paragonsr2_micro", 2), bad / "micro.safetensors")

    class RunsCode:
        def __reduce__(self):
            return (exec, (f"open({str(bad / 'PWNED')!r}, 'w').write('ran')",))

    torch.save({"params": {"x": torch.zeros(1)}, "payload": RunsCode()}, bad / "evil.pth")
    torch.save({"iteration": 3, "payload": RunsCode()}, bad / "state_00000003.pt")
    from zerosr.engine.checkpoint import _sha256_of_file

    (bad / "state_00000003.pt.sha256").write_text(f"{_sha256_of_file(bad / 'state_00000003.pt')}  state_00000003.pt\n")
    cmyk = bad / "cmyk_src.jpg"
    Image.fromarray((img(48) * 255).astype(np.uint8)).convert("CMYK").save(cmyk)

    def paired(gt, lq, **extra):
        return base_overrides(gt, lq, **extra)

    cfg_yaml, cfg_key = folder("cfg_yaml", {}), folder("cfg_key", {})  # --config-dir files
    (cfg_yaml / "exp.yaml").write_text("defaults: [train, _self_]\ntrain:\n  total_iter: [1,\n")
    (cfg_key / "typo.yaml").write_text("defaults: [train, _self_]\ntrain:\n  total_itr: 5\n")
    cases = {
        # config and overrides (train.py: compose-time or the bounds check)
        "unknown arch": ("train", ["arch=foo"]),
        "unknown tier": ("train", ["hardware_tier=huge"]),
        "unknown automation": ("train", ["automation=some"]),
        "ill-typed value": ("train", ["train.batch_size=big"]),
        "unknown key": ("train", ["train.no_such_key=1"]),
        "bad override syntax": ("train", ["train.lr=["]),
        "missing value": ("train", ["data.gt_path=???"]),
        "negative lr": ("train", ["train.lr=-1"]),
        "zero batch": ("train", ["train.batch_size=0"]),
        "unsupported scale": ("train", ["scale=5"]),
        "data=paired without gt_path": ("train", ["data=paired"]),
        "data=demo with a data.gt_path": ("train", ["data=demo", f"data.gt_path={hr}"]),
        "unknown key added with +": ("train", ["+train.foo=1"]),
        "misspelt hparams_search option": ("train", ["-m", "hparams_search=optuan", f"hydra.sweep.dir={work / 'sw'}"]),
        "YAML syntax error in a config file": ("train", ["--config-dir", cfg_yaml, "--config-name", "exp"]),
        "key typo in a config file": ("train", ["--config-dir", cfg_key, "--config-name", "typo"]),
        "loss entry as a bare string": ("train", paired(hr, lr, **{"train.losses": "[charbonnier]"})),
        "loss _target_ that does not import": ("doctor", paired(hr, lr, **{"train.losses.0._target_": "x.Nope"})),
        "optimizer _target_ that is not an optimizer": ("doctor", paired(hr, lr, **{
            "train.optimizer._target_": "zerosr.losses.L1Loss"})),
        "prefetch_factor=0 with loader workers": ("train", paired(hr, lr, **{
            "hardware_tier.num_workers": 2, "hardware_tier.prefetch_factor": 0})),
        "dry run with a missing folder": ("train", ["data.gt_path=/nope", "dry_run=true"]),
        "bad kill_at entry": ("train", paired(hr, lr, **{"debug.kill_at": "[later:3]"})),
        # weights
        "pretrain of another variant": ("train", paired(hr, lr, **{"train.pretrain": micro})),
        "pretrain missing": ("train", paired(hr, lr, **{"train.pretrain": bad / "nope.safetensors"})),
        "pretrain malicious pickle": ("train", paired(hr, lr, **{"train.pretrain": bad / "evil.pth"})),
        "resume malicious pickle": ("train", paired(hr, lr, **{"train.resume": bad / "state_00000003.pt"})),
        "resume missing": ("train", paired(hr, lr, **{"train.resume": bad / "nowhere"})),
        # data (the preflight: doctor and train.py)
        "patch larger than images": ("train", paired(hr, lr, **{"train.lq_size": 64})),
        "missing folder": ("doctor", paired(bad / "missing", lr)),
        "empty folder": ("doctor", paired(hr, bad / "empty")),
        "not an image": ("doctor", paired(folder("txt_hr", {**hr6, "img0.png": b"hello"}), folder("txt_lr", lr6))),
        "truncated image": ("doctor", paired(hr, folder("cut_lr", {**lr6, "img0.png": truncated}))),
        "unpaired names": ("doctor", paired(folder("un_hr", hr6), folder("un_lr", {**lr6, "other.png": img(24)}))),
        "wrong LR size": ("doctor", paired(hr, folder("size_lr", {**lr6, "img1.png": img(20)}))),
        "duplicate stems": ("doctor", paired(folder("dup_hr", {**hr6, "img2.jpg": img(48)}), lr)),
        "too few images for n_val": ("doctor", paired(hr, lr, **{"data.n_val": 6})),
    }
    results = {}
    for name, (tool, args) in cases.items():
        run_dir = work / "bad_runs" / re.sub(r"\W+", "_", name)
        out = (train([*args, f"hydra.run.dir={run_dir}"], work) if tool == "train" else doctor(args, work))
        errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
        results[name] = {"exit": out.returncode, "traceback": "Traceback" in out.stderr,
                         "error": errors[0][:160] if errors else None}
    # Fixable input: converted by the loader, a warning with counts, the check passes (exit 0).
    conv_hr = folder("conv_hr", {**hr6})
    Image.open(conv_hr / "img0.png").convert("L").save(conv_hr / "img0.png")
    Image.open(conv_hr / "img1.png").convert("RGBA").save(conv_hr / "img1.png")
    (conv_hr / "img2.png").unlink()
    Image.open(hr / "img2.png").convert("CMYK").save(conv_hr / "img2.jpg")
    out = doctor(paired(conv_hr, folder("conv_lr", lr6)), work)
    results["grayscale/RGBA/CMYK (fixable)"] = {
        "exit": out.returncode, "traceback": "Traceback" in out.stderr,
        "warnings": [line[:120] for line in out.stderr.splitlines() if line.startswith("warning: ") and
                     "NVIDIA" not in line]}
    results["malicious payload ran"] = (bad / "PWNED").exists()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="two kill points instead of six")
    quick = parser.parse_args().quick
    points = ["step:4", "save:3"] if quick else ["step:1", "step:4", "save:3", "checksum:3", "save:6", "checksum:6"]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zerosr_faults_") as tmp:
        work = Path(tmp)
        data = make_dataset(work / "data")
        t0 = time.perf_counter()
        kills = kill_points(work, data, points)
        t1 = time.perf_counter()
        injected = injected_faults(work, data)
        t2 = time.perf_counter()
        bad = bad_inputs(work, data)
        t3 = time.perf_counter()
    bad_cases = {k: v for k, v in bad.items() if isinstance(v, dict)}
    fatal = {k: v for k, v in bad_cases.items() if "warnings" not in v}
    print(json.dumps({
        "kill_points": {"tried": len(kills), "survived": sum(kills.values()), "each": kills},
        "injected_faults": injected,
        "bad_inputs": {
            "tried": len(bad_cases),
            "tracebacks": sum(v["traceback"] for v in bad_cases.values()),
            "fatal_exit_2_with_error_line": sum(v["exit"] == 2 and bool(v.get("error")) for v in fatal.values()),
            "fatal_tried": len(fatal),
            "malicious_payload_ran": bad["malicious payload ran"],
            "each": bad_cases,
        },
        "seconds": {"kill_points": round(t1 - t0, 1), "injected_faults": round(t2 - t1, 1),
                    "bad_inputs": round(t3 - t2, 1), "total": round(time.perf_counter() - started, 1)},
    }, indent=2))


if __name__ == "__main__":
    main()
