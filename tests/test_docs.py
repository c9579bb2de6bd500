"""The documentation cannot go stale: every command it shows still works.

Every `python train.py ...` (and `torchrun ... train.py ...`) line in a fenced code block of
README.md and docs/*.md is composed in-process exactly as `train.py` composes it (the overrides
completed, Hydra's composition, then the bounds checks of `validate`), so a renamed key, option or
bound fails here. A multirun sweep composes each of its values. Placeholder folders (`HR`, `LR`,
`PHOTOS`, ...) become folders of images this test makes. A few lines also run as real processes
(`--cfg job`, a dry run), and every `python -m zerosr.<command>` the docs name must answer `--help`.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import shlex
import subprocess
import sys
from itertools import zip_longest
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep
from PIL import Image

from zerosr.config.compose import compose_config
from zerosr.config.validate import validate
from zerosr.detect import FAKE_ENV, probe

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PLACEHOLDERS = ("HR", "LR", "VAL_HR", "VAL_LR", "PHOTOS")  # folder names the docs use for the user's data
SHELL_FENCES = ("", "bash", "sh", "shell", "console")
RTX_3090 = {"gpus": [{"name": "NVIDIA GeForce RTX 3090", "vram_gb": 24.0, "compute_capability": [8, 6]}],
            "cpu_cores": 16, "ram_gb": 64.0}


def shell_lines(path: Path) -> list[tuple[str, str]]:
    """(where, command) for each command line in the file's shell code blocks, continuations joined."""
    lines, fence, pending, start = [], None, "", 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            fence = line.strip()[3:].strip() if fence is None else None
            continue
        if fence is None or fence not in SHELL_FENCES:
            continue
        start = start if pending else number
        pending += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            if pending.strip():
                lines.append((f"{path.name}:{start}", pending.strip()))
            pending = ""
    return lines


def train_commands() -> list[tuple[str, dict[str, str], list[str]]]:
    """(where, environment, arguments after train.py) for every documented train.py command."""
    found = []
    for path in DOC_FILES:
        for where, line in shell_lines(path):
            if "train.py" not in line:
                continue
            words = shlex.split(line, comments=True)
            env = {}
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
                key, value = words.pop(0).split("=", 1)
                env[key] = value
            if "train.py" in words and words[0] in ("python", "torchrun"):
                found.append((where, env, words[words.index("train.py") + 1:]))
    return found


def module_commands() -> set[str]:
    text = "\n".join(path.read_text(encoding="utf-8") for path in DOC_FILES)
    return set(re.findall(r"python -m (zerosr(?:\.\w+)+)", text))


def write_images(folder: Path, size: int, count: int = 12) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")


@pytest.fixture(scope="module")
def data_folders(tmp_path_factory) -> dict[str, str]:
    """Each placeholder folder as a real folder of x2 pairs: HR 128 px, LR 64 px."""
    root = tmp_path_factory.mktemp("doc data")
    folders = {name: root / name.lower() for name in PLACEHOLDERS}
    for name, folder in folders.items():
        write_images(folder, 64 if name in ("LR", "VAL_LR") else 128)
    (root / "3090.json").write_text(json.dumps(RTX_3090))
    return {**{name: str(folder) for name, folder in folders.items()}, "3090.json": str(root / "3090.json")}


def job_overrides(arguments: list[str], folders: dict[str, str]) -> tuple[list[list[str]], dict]:
    """The jobs (override lists) a documented train.py command composes, and its --config-dir/-name.

    Hydra's own flags are dropped; a multirun sweep gives one job per value (values of several sweeps
    taken side by side); an Optuna interval composes at its lower end. A launcher plugin that is not
    installed (hydra-submitit-launcher: the cluster extra) has its overrides left out."""
    config, plain, sweeps = {}, [], []
    words = iter(arguments)
    for word in words:
        if word in ("--cfg", "--info", "-c", "-i", "--package", "-p"):
            next(words, None)
        elif word in ("--config-dir", "--config-name", "-cd", "-cn"):
            config["config_dir" if word in ("--config-dir", "-cd") else "config_name"] = next(words)
        elif word.startswith("-"):
            continue  # -m, --resolve, --multirun: how to run, not what
        else:
            key, _, value = word.partition("=")
            if key.startswith("hydra/launcher") or key.startswith("hydra.launcher"):
                if not _submitit_installed():
                    continue
            word = f"{key}={folders.get(value, value)}"
            override = OverridesParser.create().parse_override(word)
            if not override.is_sweep_override():
                plain.append(word)
            elif isinstance(override.value(), ChoiceSweep):
                sweeps.append([f"{key}={value}" for value in override.sweep_string_iterator()])
            elif isinstance(override.value(), IntervalSweep):
                sweeps.append([f"{key}={override.value().start}"])
            else:
                raise AssertionError(f"the docs test does not know this sweep: {word}")
    jobs = [[*plain, *(values[0] if value is None else value for values, value in zip(sweeps, combo))]
            for combo in zip_longest(*sweeps)] if sweeps else [plain]
    return jobs, config


def _submitit_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None


def test_the_docs_show_the_commands_this_test_checks():
    """The extraction itself: the front page's command, and a sweep, an env prefix and torchrun."""
    commands = train_commands()
    assert len(commands) >= 25
    front = [arguments for where, _, arguments in commands if where.startswith("README.md")]
    assert ["arch=paragonsr2_s", "data.gt_path=HR", "data.lq_path=LR"] in front
    assert any("-m" in arguments for _, _, arguments in commands)
    assert any(env.get(FAKE_ENV) for _, env, _ in commands)
    assert any(where.startswith("scaling.md") and "arch=paragonsr2_m" in arguments for where, _, arguments in commands)
    assert {"zerosr.upscale", "zerosr.evaluate", "zerosr.doctor", "zerosr.degradations"} <= module_commands()


@pytest.mark.parametrize("where, env, arguments", train_commands(), ids=[c[0] for c in train_commands()])
def test_every_documented_train_command_composes(where, env, arguments, data_folders, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, data_folders.get(value, value))
    probe.cache_clear()
    jobs, config = job_overrides(arguments, data_folders)
    if "config_dir" in config:  # the docs' config file is the Python API's: write it as they do
        from zerosr import create_zero_config_training

        folder = tmp_path / config["config_dir"]
        folder.mkdir(parents=True)
        written = create_zero_config_training("paragonsr2_nano", data_folders["HR"], data_folders["LR"],
                                              custom_overrides={"train": {"total_iter": 60000}})
        (folder / f"{config['config_name']}.yaml").write_text(yaml.safe_dump(written))
        config["config_dir"] = folder
    for overrides in jobs:
        cfg = compose_config(overrides, **config)
        validate(cfg)  # the bounds and `_target_` checks train.py runs before any work


def test_a_renamed_key_in_the_docs_fails_composition(data_folders):
    """What the test above catches: a documented key that no longer exists."""
    jobs, _ = job_overrides(["data.gt_path=HR", "train.total_iters=20000"], data_folders)
    with pytest.raises(Exception, match="total_iters"):
        compose_config(jobs[0])


def test_the_front_pages_commands_run_as_real_processes(data_folders, tmp_path):
    """The front page's `--cfg job` and dry-run lines as written (placeholders replaced), side by side."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    env.pop(FAKE_ENV, None)
    front = [arguments for where, _, arguments in train_commands() if where.startswith("README.md")]
    shown = next(arguments for arguments in front if "--cfg" in arguments)
    dry = next(arguments for arguments in front if "dry_run=true" in arguments)
    runs = {name: [sys.executable, "train.py", f"hydra.run.dir={tmp_path / name}",
                   *(word.split("=")[0] + "=" + data_folders.get(word.split("=")[-1], word.split("=")[-1])
                     if "=" in word else word for word in arguments)]
            for name, arguments in (("shown", shown), ("dry", dry))}
    processes = {name: subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, encoding="utf-8") for name, command in runs.items()}
    outputs = {name: process.communicate(timeout=300)[0] for name, process in processes.items()}
    for name, process in processes.items():
        assert process.returncode == 0, f"{name}: {process.args}\n{outputs[name]}"
    assert "gt_path: " + data_folders["HR"] in outputs["shown"]
    assert (tmp_path / "dry" / "resolved_config.yaml").is_file()


@pytest.mark.filterwarnings("ignore:.*found in sys.modules after import of package:RuntimeWarning")  # runpy, harmless
@pytest.mark.parametrize("module", sorted(module_commands()))
def test_every_documented_module_answers_help(module, monkeypatch, capsys):
    """`python -m zerosr.<command> --help`, run in this process (torch is imported once)."""
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    shown = capsys.readouterr()
    assert exited.value.code in (0, None), shown
    assert "usage" in shown.out.lower() or module in shown.out, shown  # argparse's, or the command's docstring
