"""The documented training commands, run as users run them: real processes, default automations,
no batch or LR given, on images the test makes. Only the run length is shortened (and, for networks
larger than nano, the patch).

Every `python train.py ...` line of README.md and docs/*.md that trains (found as the docs test
finds them) is run to its end and must write models/best.safetensors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_docs import PLACEHOLDERS, train_commands
from test_estimate import save, scene

ROOT = Path(__file__).resolve().parents[1]
SMOKE_ITERS = 8
FOLDERS = PLACEHOLDERS
# Not training runs: they compose, explain or sweep (the docs test covers composing them).
NOT_TRAINING = ("--cfg", "--info", "--help", "dry_run=true", " -m ", "--multirun", "--config-dir", "hydra/launcher")
# Commands of another topic, each run by its own tests: faults injected on purpose, a resume of an
# earlier run, an online logger, a placeholder network of the user's (tests/test_custom_arch.py).
OWN_TESTS = ("debug.", "train.resume=", "logger=", "arch=custom")
# The pages a new user trains from; elsewhere only the simulated card's run (the docs test
# composes every command of every page).
USER_PAGES = ("README.md", "index.md", "training.md", "realistic.md", "architectures.md")
SIMULATED_CARD = {"gpus": [{"name": "NVIDIA GeForce RTX 3090", "vram_gb": 24.0, "compute_capability": [8, 6]}],
                  "cpu_cores": 16, "ram_gb": 64.0}
# The search on a simulated card runs its probes on the CPU: a small card keeps them few and small.
SMALL_CARD = {"gpus": [{"name": "Small card", "vram_gb": 0.25, "compute_capability": [8, 6]}], "cpu_cores": 2,
              "ram_gb": 8.0}


def training_commands() -> list[tuple[dict[str, str], list[str]]]:
    """(environment, arguments after train.py) of each documented `python train.py` training
    command, and the demo `make demo` starts."""
    commands = [({}, [])]
    for where, env, args in train_commands():
        line = f" {' '.join(args)} "
        if any(marker in line for marker in NOT_TRAINING + OWN_TESTS):
            continue
        if (where.split(":")[0] in USER_PAGES or "ZEROSR_SIMULATE_GPU" in env) and (env, args) not in commands:
            commands.append((env, args))
    return commands


def command_id(command: tuple[dict[str, str], list[str]]) -> str:
    env, args = command
    return " ".join([*(f"{k}={v}" for k, v in env.items()), "python train.py", *args])


def _image_set(folder: Path, count: int, size: int, seed: int, scale: int | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = scene(seed + i, size)
        if scale is not None:  # an LR folder for the HR images of the same seeds
            image = np.asarray(Image.fromarray(image.astype(np.uint8)).resize((size // scale,) * 2, Image.BICUBIC))
        save(folder / f"{i:03d}.png", image)
    return folder


@pytest.fixture(scope="module")
def user_folders(tmp_path_factory) -> dict[str, Path]:
    """HR (192 px: x4 LR still holds the preset patch; 8 images, 4 held out by default), LR for x2
    and x4, a validation pair and a few JPEG photos to calibrate on."""
    root = tmp_path_factory.mktemp("user data")
    folders = {"HR": _image_set(root / "HR", 8, 192, 0), "LR": _image_set(root / "LR", 8, 192, 0, scale=2),
               "VAL_HR": _image_set(root / "VAL_HR", 2, 96, 50), "VAL_LR": _image_set(root / "VAL_LR", 2, 96, 50, 2),
               "PHOTOS": root / "PHOTOS"}
    folders["PHOTOS"].mkdir()
    for i in range(2):
        save(folders["PHOTOS"] / f"{i}.jpg", scene(80 + i, 96), quality=50)
    (root / "3090.json").write_text(json.dumps(SIMULATED_CARD))
    folders["3090.json"] = root / "3090.json"
    (root / "small_card.json").write_text(json.dumps(SMALL_CARD))
    folders["LR_x4"] = _image_set(root / "LR_x4", 8, 192, 0, scale=4)
    return folders


def as_process(command: tuple[dict[str, str], list[str]], folders: dict[str, Path]
               ) -> tuple[dict[str, str], list[str]]:
    """(environment additions, train.py arguments) for a documented command, placeholders replaced
    by the test's folders and the run shortened."""
    env = {key: str(folders.get(value, value)) for key, value in command[0].items()}
    args = command[1]
    scale = next((a.split("=")[1] for a in args if a.startswith("scale=")), "2")
    out = []
    for arg in args:
        key, _, value = arg.partition("=")
        if value == "LR" and scale == "4":
            value = "LR_x4"
        if key == "train.total_iter":
            continue
        out.append(f"{key}={folders[value]}" if value in folders else arg)
    if any(a.startswith("arch=") and a != "arch=paragonsr2_nano" for a in out):
        out.append("train.lq_size=16")  # a larger network's step on 2 CPU cores: keep the smoke in minutes
    return env, [*out, f"train.total_iter={SMOKE_ITERS}"]


def run_train(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "ZEROSR_CACHE_DIR": str(cwd / "cache"), **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=600)


def run_dir_of(cwd: Path) -> Path:
    runs = [p.parent.parent for p in (cwd / "outputs").rglob("models/best.safetensors")]
    assert len(runs) == 1, f"expected one run with models/best.safetensors under {cwd / 'outputs'}, found {runs}"
    return runs[0]


def assert_trained(done: subprocess.CompletedProcess, cwd: Path) -> Path:
    assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-3000:]
    run_dir = run_dir_of(cwd)
    iterations = [json.loads(line)["iter"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                  if '"iter"' in line]
    assert max(iterations) == SMOKE_ITERS
    return run_dir


def batch_decision(run_dir: Path) -> str:
    decisions = [json.loads(line) for line in (run_dir / "automation.jsonl").read_text().splitlines()]
    return next(d["reason"] for d in decisions if d["automation"] == "batch" and d["iter"] == 0)


def test_the_docs_name_the_commands_users_start_with():
    commands = [command_id(c) for c in training_commands()]
    assert any("data=realistic" in c and "data.target_path" in c for c in commands)
    assert any("data=realistic" in c and "data.target_path" not in c for c in commands)
    assert any("scale=4" in c for c in commands)
    assert any(c.startswith("ZEROSR_SIMULATE_GPU=1") for c in commands)


@pytest.mark.parametrize("command", training_commands(), ids=command_id)
def test_documented_training_command_trains(command, user_folders, tmp_path):
    env, args = as_process(command, user_folders)
    unknown = [a for a in args if a.partition("=")[2] in FOLDERS]
    assert not unknown, f"placeholder without a test folder: {unknown}"
    assert_trained(run_train(args, tmp_path, env), tmp_path)


# The documented realistic commands with the start-up search made to run: at this length it is
# over its cost bound and skipped, so the bound is raised to twice the run (the CPU search's
# least is 14 steps).
@pytest.mark.parametrize("target", [False, True], ids=["published ranges", "calibrated on photos"])
@pytest.mark.parametrize("card", [False, True], ids=["cpu", "simulated card"])
def test_realistic_training_runs_the_batch_search(target, card, user_folders, tmp_path):
    args = ["data=realistic", f"data.gt_path={user_folders['HR']}", f"train.total_iter={SMOKE_ITERS}",
            "automation.batch.search_share=2"]
    if target:
        args.append(f"data.target_path={user_folders['PHOTOS']}")
    card_file = user_folders["HR"].parent / "small_card.json"
    env = {"ZEROSR_SIMULATE_GPU": "1", "ZEROSR_FAKE_HARDWARE": str(card_file)} if card else {}
    run_dir = assert_trained(run_train(args, tmp_path, env), tmp_path)
    reason = batch_decision(run_dir)
    assert reason.startswith("start-up search in"), reason
    assert ("probes of" in reason) == card, reason
