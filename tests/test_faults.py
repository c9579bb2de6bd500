"""Faults and bad input: kill -9 and resume, damaged checkpoints, full disk, unsafe files, NaN
gradients, the data preflight (`python -m zerosr.doctor`) and Hydra's config errors."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from test_train import make_dataset, run, tiny_overrides
from zerosr import archs, atomic
from zerosr.config.compose import compose_config
from zerosr.data import read_image, write_image
from zerosr.engine import checkpoint, loop
from zerosr.errors import UserError
from zerosr.preflight import check_run, preflight

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "ZEROSR_FAKE_HARDWARE": "", "PYTHONPATH": str(ROOT / "tests")}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


def train_cli(args, cwd: Path, timeout=300) -> subprocess.CompletedProcess:
    # cwd outside the repository: train.resume=auto then sees no earlier runs under ./outputs.
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=ENV, timeout=timeout)


def doctor_cli(args, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zerosr.doctor", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=ENV, timeout=120)


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(a), load_file(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def assert_one_line_error(out: subprocess.CompletedProcess, *words: str) -> str:
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert errors, out.stderr
    for word in words:
        assert any(word in line for line in errors), (word, errors)
    return errors[-1]


# --------------------------------------------------------------------------- 1. kill -9, resume exactly


def test_kill_anywhere_then_resume_auto_gives_the_same_weights(data, tmp_path):
    overrides = tiny_overrides(data, **{"name": "killtest"})
    reference = tmp_path / "reference"
    out = train_cli([*overrides, f"hydra.run.dir={reference}"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    final = ("net_g_00000006.safetensors", "net_g_ema_00000006.safetensors")
    # Between checkpoints; inside a checkpoint write (temp file complete, not renamed); after the
    # final state is in place but before its checksum exists.
    for point in ("step:4", "save:3", "checksum:6"):
        run_dir = tmp_path / point.replace(":", "_")
        killed = train_cli([*overrides, f"hydra.run.dir={run_dir}", f"debug.kill_at=[{point}]"], tmp_path)
        assert killed.returncode == -9, (point, killed.stderr[-2000:])
        resumed = train_cli([*overrides, f"hydra.run.dir={run_dir}", "train.resume=auto"], tmp_path)
        assert resumed.returncode == 0, (point, resumed.stderr[-2000:])
        for name in final:
            assert same_weights(reference / "models" / name, run_dir / "models" / name), (point, name)
        assert not list((run_dir / "training_state").glob(".*.tmp"))  # the killed write's temp file is gone


def test_kill_at_entries_are_checked():
    from zerosr.engine.killpoints import parse

    assert parse(["step:4", "save:10"]) == {("step", 4), ("save", 10)}
    with pytest.raises(UserError, match="POINT:ITER"):
        parse(["during:3"])


# --------------------------------------------------------------------------- 2. checkpoints


def test_truncated_latest_state_resumes_from_the_previous_one_exactly(data, tmp_path, caplog):
    straight, damaged = tmp_path / "straight", tmp_path / "damaged"
    run(tiny_overrides(data), straight)
    run(tiny_overrides(data), damaged)
    latest = damaged / "training_state" / "state_00000006.pt"
    latest.write_bytes(latest.read_bytes()[:1000])
    for name in ("net_g_00000006.safetensors", "net_g_ema_00000006.safetensors"):
        (damaged / "models" / name).unlink()
    with caplog.at_level(logging.WARNING, logger="zerosr"):
        run(tiny_overrides(data, **{"train.resume": "auto"}), damaged)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "corrupt" in r.getMessage()]
    assert warnings == ["training_state/state_00000006.pt is corrupt or truncated (checksum mismatch); "
                        "using state_00000003.pt"]
    assert same_weights(straight / "models" / "net_g_00000006.safetensors",
                        damaged / "models" / "net_g_00000006.safetensors")


def test_full_disk_while_saving_is_one_line_and_keeps_the_previous_checkpoint(data, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    real_fsync = atomic._fsync_file

    def fsync_on_a_disk_that_fills_after_iteration_3(path):
        if "00000006" in path.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(path)

    monkeypatch.setattr(atomic, "_fsync_file", fsync_on_a_disk_that_fills_after_iteration_3)
    with pytest.raises(UserError) as info:
        run(tiny_overrides(data), run_dir)
    message = str(info.value)
    assert "\n" not in message and "No space left on device" in message and "previous checkpoint is intact" in message
    monkeypatch.undo()
    states = sorted(p.name for p in (run_dir / "training_state").iterdir())
    assert states == ["state_00000003.pt", "state_00000003.pt.sha256"]
    assert checkpoint.load_training_state(run_dir / "training_state" / "state_00000003.pt")["iteration"] == 3
    assert not [p for p in (run_dir / "models").iterdir() if p.name.startswith(".")]  # no temp files left


class RunsCode:
    """Unpickling this writes a marker file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_malicious_pickle_as_pretrain_or_resume_is_refused_without_running(data, tmp_path):
    marker = tmp_path / "marker.txt"
    evil = tmp_path / "evil.pth"
    torch.save({"params": {"conv.weight": torch.zeros(1)}, "payload": RunsCode(marker)}, evil)
    out = train_cli([*tiny_overrides(data), f"train.pretrain={evil}", f"hydra.run.dir={tmp_path / 'a'}"], tmp_path)
    assert_one_line_error(out, "evil.pth")
    state = tmp_path / "state_00000003.pt"
    torch.save({"iteration": 3, "payload": RunsCode(marker)}, state)
    (tmp_path / "state_00000003.pt.sha256").write_text(f"{checkpoint._sha256_of_file(state)}  {state.name}\n")
    out = train_cli([*tiny_overrides(data), f"train.resume={state}", f"hydra.run.dir={tmp_path / 'b'}"], tmp_path)
    assert_one_line_error(out, "weights_only")
    assert not marker.exists()


# --------------------------------------------------------------------------- 3. non-finite gradients


def test_nan_gradient_with_a_finite_loss_is_skipped_then_rolled_back(data, tmp_path, monkeypatch):
    poisoned = {2, 3, 4}
    original_init = loop.Trainer.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        first = next(self.learner.module.parameters())
        first.register_hook(lambda grad: grad * float("nan") if self.iteration + 1 in poisoned else grad)

    monkeypatch.setattr(loop.Trainer, "__init__", init)
    overrides = tiny_overrides(data, **{"automation": "auto", "automation.batch.enabled": False,
                                        "automation.dataset_analysis.batches": 1})
    run(overrides, tmp_path / "run")
    import json

    steps = {r["iter"]: r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
             if "loss" in r}
    assert all(np.isfinite(steps[i]["loss"]) for i in poisoned)  # the loss itself was finite
    log = [json.loads(line) for line in (tmp_path / "run" / "automation.jsonl").read_text().splitlines()]
    assert sum("step skipped" in r["reason"] for r in log if r["automation"] == "guard") == 3
    assert any("rolled back" in r["reason"] for r in log)
    assert max(steps) == 6
    weights = load_file(tmp_path / "run" / "models" / "net_g_00000006.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


# --------------------------------------------------------------------------- 4. preflight


def paired(gt, lq, **extra):
    values = {"data": "paired", "data.gt_path": gt, "data.lq_path": lq, "data.n_val": 1, "train.lq_size": 16,
              **extra}
    return compose_config([f"{k}={v}" for k, v in values.items()])


def image(size=48, channels=3, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    peak = 255 if dtype == np.uint8 else 65535
    shape = (size, size) if channels == 1 else (size, size, channels)
    return (rng.random(shape) * peak).astype(dtype)


def test_preflight_passes_clean_data_with_counts(data):
    report = check_run(paired(*data))
    assert report.errors == [] and report.warnings() == []
    assert (report.images, report.pairs) == (12, 6)


def test_preflight_warns_once_per_conversion_and_the_loader_converts(tmp_path):
    hr, lr = tmp_path / "hr", tmp_path / "lr"
    hr.mkdir()
    cv2.imwrite(str(hr / "a16.png"), image(48, 3, np.uint16))
    cv2.imwrite(str(hr / "gray.png"), image(48, 1))
    cv2.imwrite(str(hr / "gray2.png"), image(48, 1, seed=1))
    cv2.imwrite(str(hr / "rgba.png"), image(48, 4))
    Image.fromarray(image(48)).convert("CMYK").save(hr / "cmyk.jpg", quality=95)
    (hr / "notes.txt").write_text("not an image")
    lr.mkdir()
    for path in hr.glob("*.*"):
        if path.suffix != ".txt":
            write_image(lr / f"{path.stem}.png", read_image(path)[::2, ::2])
    report = check_run(paired(hr, lr))
    assert report.errors == []
    warnings = report.warnings()
    assert len(warnings) == 5, warnings
    assert any(w.startswith("1 files in") and "notes.txt" in w for w in warnings)
    assert any(w.startswith("2 grayscale images become RGB") for w in warnings)
    assert any(w.startswith("1 images with an alpha channel") for w in warnings)
    assert any(w.startswith("1 CMYK images become RGB") for w in warnings)
    assert any(w.startswith("1 16-bit images") for w in warnings)
    for name in ("gray.png", "rgba.png", "cmyk.jpg", "a16.png"):
        assert read_image(hr / name).shape == (48, 48, 3)


def test_preflight_lists_every_fatal_problem_with_its_fix(tmp_path):
    hr, lr = tmp_path / "hr", tmp_path / "lr"
    for i in range(4):
        write_image(hr / f"ok{i}.png", image(48, seed=i))
        write_image(lr / f"ok{i}.png", image(24, seed=i))
    write_image(hr / "lonely.png", image(48))  # no LR
    write_image(lr / "orphan.png", image(24))  # no HR
    write_image(hr / "size.png", image(48))
    write_image(lr / "size.png", image(20))  # not HR/2
    write_image(hr / "small.png", image(20))
    write_image(lr / "small.png", image(10))  # smaller than the 16-pixel patch
    (hr / "text.png").write_text("not an image")
    write_image(lr / "text.png", image(24))
    write_image(hr / "cut.png", image(48))
    write_image(lr / "cut.png", image(24))
    (lr / "cut.png").write_bytes((lr / "cut.png").read_bytes()[:300])  # truncated
    write_image(hr / "twice.png", image(48))
    write_image(hr / "twice.jpg", image(48))  # same name twice
    write_image(lr / "twice.png", image(24))
    errors = check_run(paired(hr, lr, **{"train.seed": 0})).errors
    expected = {
        "lonely.png": "has no LR image", "orphan.png": "has no HR image", "size.png": "must be 24x24",
        "small.png": "smaller than the training patch train.lq_size=16", "text.png": "is not an image",
        "cut.png": "truncated PNG", "twice.jpg": "have the same name",
    }
    for name, words in expected.items():
        assert any(name in e and words in e for e in errors), (name, errors)
    assert len(errors) == len(expected), errors


def test_preflight_accepts_data_appended_after_the_end_marker(tmp_path):
    hr, lr = tmp_path / "hr", tmp_path / "lr"
    for i, ext in enumerate(("png", "jpg")):
        write_image(hr / f"x{i}.{ext}", image(48, seed=i))
        write_image(lr / f"x{i}.{ext}", image(24, seed=i))
        path = hr / f"x{i}.{ext}"  # a "motion photo" or a metadata tool appends bytes after the end marker
        path.write_bytes(path.read_bytes() + b"\0" * 4096)
    assert check_run(paired(hr, lr, **{"train.seed": 0, "data.n_val": 1})).errors == []


def test_preflight_missing_and_empty_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    errors = check_run(paired(tmp_path / "missing", tmp_path / "empty")).errors
    assert any("data.gt_path" in e and "does not exist" in e for e in errors)
    assert any("data.lq_path" in e and "has no images" in e for e in errors)
    with pytest.raises(UserError, match="preflight found 2 problems"):
        preflight(paired(tmp_path / "missing", tmp_path / "empty"))


def test_preflight_refuses_a_pretrain_file_of_another_variant(data, tmp_path):
    weights = archs.save(archs.build("paragonsr2_micro", 2), tmp_path / "micro.safetensors")
    errors = check_run(paired(*data, **{"train.pretrain": weights})).errors
    assert len(errors) == 1 and "holds paragonsr2_micro x2" in errors[0]


def test_preflight_of_the_demo_data_passes(tmp_path, monkeypatch):
    monkeypatch.setenv("ZEROSR_CACHE_DIR", str(tmp_path))
    report = check_run(compose_config([]))
    assert report.errors == [] and report.pairs > 0


def test_doctor_cli_one_line_per_problem_exit_2(data, tmp_path):
    ok = doctor_cli(["data=paired", f"data.gt_path={data[0]}", f"data.lq_path={data[1]}", "train.lq_size=16"])
    assert ok.returncode == 0, ok.stderr
    assert "12 images, 6 pairs checked" in ok.stdout and "0 errors" in ok.stdout
    bad = doctor_cli(["data=paired", f"data.gt_path={data[0]}", f"data.lq_path={data[1]}", "train.lq_size=32"])
    last = assert_one_line_error(bad, "smaller than the training patch")
    assert last.startswith("error: preflight found ") and "python -m zerosr.doctor" in last
    assert "0 warnings, " in bad.stdout
    assert_one_line_error(doctor_cli(["arch=foo"]), "arch=foo is not an option")


# --------------------------------------------------------------------------- 5. bad overrides


@pytest.mark.parametrize("override, words", [
    ("arch=foo", "arch=foo is not an option: use one of compact, custom, esrgan"),
    ("hardware_tier=tiny", "hardware_tier=tiny is not an option: use one of auto"),
    ("train.batch_size=big", "train.batch_size=big: Value 'big'"),
    ("train.no_such_key=1", "train.no_such_key is not a config key"),
    ("train.lr=[", "cannot parse an override"),
    ("data.gt_path=???", "data.gt_path is not set"),
    ("scale=5", "scale=5 is not supported"),
])
def test_bad_overrides_are_one_line_exit_2(override, words, tmp_path):
    out = train_cli([override, "dry_run=true", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert_one_line_error(out, words)
    assert len([line for line in out.stderr.splitlines() if line.strip() and "NVIDIA" not in line]) == 1, out.stderr


def test_hydra_full_error_keeps_the_traceback(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "train.batch_size=big"], cwd=tmp_path,
                         capture_output=True, text=True, env={**ENV, "HYDRA_FULL_ERROR": "1"}, timeout=120)
    assert out.returncode == 1 and "Traceback" in out.stderr


def test_an_omegaconf_error_inside_the_job_is_a_bug_not_a_config_line():
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigAttributeError

    from zerosr.cli import exit_on_user_error

    @exit_on_user_error
    def job():
        return OmegaConf.create({"a": 1}).missing_key  # a code bug reading a key that is not there

    with pytest.raises(RuntimeError, match="ConfigAttributeError") as caught:
        job()
    assert isinstance(caught.value.__cause__, ConfigAttributeError)


def test_an_explicit_resume_file_is_checked_on_rank_zero_only(data, tmp_path, monkeypatch):
    missing = {"train.resume": str(tmp_path / "nowhere.pt")}
    assert any("train.resume" in e for e in check_run(paired(*data, **missing)).errors)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")  # another node of a torchrun job: rank 0 reads the state and shares it
    assert not any("train.resume" in e for e in check_run(paired(*data, **missing)).errors)
