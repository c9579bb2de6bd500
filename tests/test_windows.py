"""What Windows users meet, shown where it can be here: DataLoader workers started with `spawn`
(Windows' only start method), folder and file names with spaces and non-ASCII characters, and
torch.compile off on Windows (no Triton there) with the reason on the start-up screen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_train import make_dataset
from zerosr.config.compose import compose_config
from zerosr.data import read_image
from zerosr.detect import COMPILE_OFF_ON_WINDOWS, FAKE_ENV, probe
from zerosr.report.choices import describe_choices

ROOT = Path(__file__).resolve().parents[1]
RTX_3090 = {"gpus": [{"name": "NVIDIA GeForce RTX 3090", "vram_gb": 24.0, "compute_capability": [8, 6]}],
            "cpu_cores": 16, "ram_gb": 64.0}

# train.py as Windows runs it: every process started by `spawn`; a `fork` would fail the run.
SPAWN_WRAPPER = """
import atexit, multiprocessing, multiprocessing.context as context, runpy, sys

started = []
spawn_popen = context.SpawnProcess._Popen  # what every Process.start() of the spawn context goes through
def popen(process):
    started.append(process)
    return spawn_popen(process)
def no_fork(process):
    raise RuntimeError("a process was forked")
context.SpawnProcess._Popen, context.ForkProcess._Popen = staticmethod(popen), staticmethod(no_fork)
atexit.register(lambda: print(f"spawned processes: {len(started)}", file=sys.stderr))

if __name__ == "__main__":
    multiprocessing.set_start_method("spawn")
    sys.argv = ["train.py", *sys.argv[1:]]
    runpy.run_path("train.py", run_name="__main__")
"""


@pytest.fixture(scope="module")
def odd_folders(tmp_path_factory) -> dict[str, Path]:
    """HR/LR pairs in folders whose names hold spaces and non-ASCII characters, and such file names."""
    root = tmp_path_factory.mktemp("windows") / "Bilder mit Leerzeichen – äöü 画像"
    hr, lr = make_dataset(root, count=8, size=64)
    for folder in (hr, lr):
        for i, path in enumerate(sorted(folder.iterdir())):
            path.rename(folder / f"Foto Nr {i} ß é.png")
    wrapper = root.parent / "spawn train.py"
    wrapper.write_text(SPAWN_WRAPPER, encoding="utf-8")
    return {"hr": hr, "lr": lr, "wrapper": wrapper, "outputs": root.parent / "Ausgabe ø", "root": root}


@pytest.fixture(scope="module")
def spawned_runs(odd_folders) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """data=paired and data=realistic, one loader worker each, started by spawn, side by side."""
    common = ["data.n_val=2", "train.total_iter=4", "train.batch_size=2", "train.lq_size=16", "train.val_freq=4",
              "automation=off", "hardware_tier.num_workers=1"]
    runs = {"paired": [f"data.gt_path={odd_folders['hr']}", f"data.lq_path={odd_folders['lr']}"],
            "realistic": ["data=realistic", f"data.gt_path={odd_folders['hr']}"]}
    env = {key: value for key, value in os.environ.items() if key != FAKE_ENV}
    processes = {}
    for name, data in runs.items():
        run_dir = odd_folders["outputs"] / f"Lauf {name} ü"
        processes[name] = (subprocess.Popen([sys.executable, str(odd_folders["wrapper"]), *data, *common,
                                             f"hydra.run.dir={run_dir}"], cwd=ROOT, env=env, text=True,
                                            encoding="utf-8", stdout=subprocess.PIPE, stderr=subprocess.PIPE), run_dir)
    finished = {name: (p, run_dir, *p.communicate(timeout=600)) for name, (p, run_dir) in processes.items()}
    return {name: (subprocess.CompletedProcess(p.args, p.returncode, out, err), run_dir)
            for name, (p, run_dir, out, err) in finished.items()}


@pytest.mark.parametrize("data", ["paired", "realistic"])
def test_spawned_loader_workers_train_from_and_into_non_ascii_folders(spawned_runs, data):
    done, run_dir = spawned_runs[data]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    spawned = int(done.stderr.rsplit("spawned processes: ", 1)[1].split()[0])
    assert spawned >= 1  # the loader's worker really ran, started by spawn (a fork would have failed the run)
    assert "0 loader workers" not in done.stdout and "1 loader workers" in done.stdout
    assert (run_dir / "models" / "best.safetensors").is_file()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert max(m["iter"] for m in metrics) == 4 and any("val/psnr" in m for m in metrics)
    assert "Traceback" not in done.stderr


def test_upscale_reads_and_writes_non_ascii_paths(spawned_runs, odd_folders):
    _, run_dir = spawned_runs["paired"]
    source, target = odd_folders["root"] / "Eingabe ä", odd_folders["outputs"] / "Ergebnis 放大"
    source.mkdir()
    for path in sorted(odd_folders["lr"].iterdir())[:2]:
        (source / path.name).write_bytes(path.read_bytes())
    done = subprocess.run([sys.executable, "-m", "zerosr.upscale", str(run_dir), str(source), str(target)], cwd=ROOT,
                          capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    written = sorted(p.name for p in target.iterdir())
    assert written == sorted(p.name for p in source.iterdir())
    for name in written:
        assert read_image(target / name).shape[:2] == tuple(2 * np.array(read_image(source / name).shape[:2]))


@pytest.fixture
def rtx_3090(tmp_path, monkeypatch):
    path = tmp_path / "3090.json"
    path.write_text(json.dumps(RTX_3090), encoding="utf-8")
    monkeypatch.setenv(FAKE_ENV, str(path))
    probe.cache_clear()


def test_torch_compile_is_off_on_windows_and_the_screen_says_why(rtx_3090, monkeypatch):
    linux = compose_config([])
    assert linux.hardware_tier.name == "high_end" and linux.hardware_tier.compile is True
    assert COMPILE_OFF_ON_WINDOWS not in describe_choices(linux, probe())

    monkeypatch.setattr(sys, "platform", "win32")
    windows = compose_config([])
    assert windows.hardware_tier.compile is False
    assert f"compile      {COMPILE_OFF_ON_WINDOWS}" in describe_choices(windows, probe()).splitlines()

    asked = compose_config(["hardware_tier.compile=true"])  # what you set wins, and needs no excuse
    assert asked.hardware_tier.compile is True
    assert COMPILE_OFF_ON_WINDOWS not in describe_choices(asked, probe(), user_set=["hardware_tier.compile"])
