"""logger=wandb: Weights & Biases beside TensorBoard, checked on what an offline run writes locally
(RUN/wandb/offline-run-*/run-<id>.wandb, W&B's record log, and the media files beside it)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from test_train import make_dataset, tiny_overrides
from zerosr.config.compose import compose_config
from zerosr.engine.run import train
from zerosr.report.logs import read_jsonl
from zerosr.report.wandb_log import ID_FILE

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 32768  # W&B's record log: LevelDB's log format, 32 KiB blocks of 7-byte-headed chunks


def wandb_records(path: Path):
    """Every record of an offline run's .wandb file, parsed with W&B's own protobuf schema."""
    from wandb.proto import wandb_internal_pb2

    data, position, chunk = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B", f"{path} is not a W&B record log"
    while position + 7 <= len(data):
        left = BLOCK - position % BLOCK
        length, kind = struct.unpack("<HB", data[position + 4:position + 7])
        if left < 7 or (length == 0 and kind == 0):  # block trailer / padding
            position += left
            continue
        chunk += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def offline_run(run_dir: Path) -> dict:
    """What one run directory's W&B offline runs hold: ids, name, config, history rows, media."""
    found = {"ids": [], "names": [], "config": {}, "history": [], "media": []}
    for record_file in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        for record in wandb_records(record_file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                found["ids"].append(record.run.run_id)
                found["names"].append(record.run.display_name)
                found["config"].update({item.key: json.loads(item.value_json) for item in record.run.config.update})
            elif kind == "config":
                found["config"].update({item.key: json.loads(item.value_json) for item in record.config.update})
            elif kind == "history":
                found["history"].append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                         for item in record.history.item})
        found["media"] += [p.relative_to(record_file.parent) for p in (record_file.parent / "files").rglob("*")
                           if p.is_file() and "media" in p.parts]
    return found


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture
def offline(monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))  # W&B's own settings and caches stay in the test's folder
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))


def test_an_offline_run_records_config_metrics_decisions_and_images_and_resume_continues_it(
        data, tmp_path, offline, capsys):
    first = tmp_path / "first"
    overrides = tiny_overrides(data, logger="[tensorboard,wandb]",
                               **{"debug.inject_oom_at": "[2]", "automation.batch.enabled": True})
    train(compose_config(overrides), first)
    assert "wandb        run " in capsys.readouterr().out
    run = offline_run(first)
    assert len(set(run["ids"])) == 1 and run["names"] == ["paragonsr2_nano_x2"]
    assert run["config"]["train"]["total_iter"] == 6 and run["config"]["logger"] == ["tensorboard", "wandb"]
    # Every metric of metrics.jsonl, at its iteration.
    logged = {(row["iter"], key) for row in run["history"] for key in row if not key.startswith("_")}
    written = {(row["iter"], key) for row in read_jsonl(first / "metrics.jsonl") for key in row}
    assert written <= logged
    # The decisions: the halved batch as a number at its iteration, every decision with its reason in a table.
    decisions = read_jsonl(first / "automation.jsonl")
    assert any(d["automation"] == "batch" for d in decisions)
    assert (2, "automation/batch/batch_size") in logged
    table = [p for p in run["media"] if "table" in p.parts]
    assert len(table) == 1
    rows = json.loads((next((first / "wandb").glob("offline-run-*")) / table[0]).read_text())["data"]
    assert [row[3] for row in rows] == [d["reason"] for d in decisions]
    # The validation comparison images: as many as the run wrote, per validation.
    compares = sorted(first.glob("visualization/*/*_compare.png"))
    assert compares and len([p for p in run["media"] if "comparison" in p.name]) == len(compares)
    assert (first / "tb").is_dir() and any((first / "tb").iterdir())  # TensorBoard beside it

    # Resumed into another directory from the first run's state: the same W&B run goes on.
    second = tmp_path / "second"
    state = sorted((first / "training_state").glob("state_*.pt"))[-1]
    train(compose_config(tiny_overrides(data, logger="wandb", **{"train.total_iter": 9, "train.resume": state})), second)
    resumed = offline_run(second)
    assert set(resumed["ids"]) == set(run["ids"]) == {(second / ID_FILE).read_text()}
    assert max(row["iter"] for row in resumed["history"]) == 9


def test_without_the_package_one_warning_and_tensorboard_goes_on(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    run_dir = tmp_path / "run"
    train(compose_config(tiny_overrides(data, logger="wandb", **{"train.total_iter": 2, "train.val_freq": 2})), run_dir)
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if "wandb" in line and not line.startswith("set by you")]
    assert warnings == ['warning      wandb is not installed (pip install -e ".[wandb]"): logging to TensorBoard only']
    assert any((run_dir / "tb").iterdir()) and read_jsonl(run_dir / "metrics.jsonl")
    assert not (run_dir / "wandb").exists()


def test_without_a_login_one_warning_line_and_the_run_finishes(data, tmp_path):
    pytest.importorskip("wandb")
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), WANDB_CONFIG_DIR=str(tmp_path / "wandb_config"), NETRC=str(tmp_path / "no_netrc"))
    run_dir = tmp_path / "run"
    args = tiny_overrides(data, logger="wandb", **{"train.total_iter": 2, "train.val_freq": 2})
    done = subprocess.run([sys.executable, "train.py", *args, f"hydra.run.dir={run_dir}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines()
             if "wandb" in line.lower() and not line.startswith("set by you")]
    assert lines == ["warning      wandb is not logged in (run `wandb login`, set WANDB_API_KEY, or WANDB_MODE=offline): "
                     "logging to TensorBoard only"]
    assert any((run_dir / "tb").iterdir())


def test_an_unknown_logger_is_one_line_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "train.py", "logger=[tensorboard,mlflow]", "dry_run=true",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == ("error: logger=mlflow is not a logger: use one of tensorboard, wandb, "
                                                    "or a list such as logger=[tensorboard,wandb]")
    assert not (tmp_path / "run" / "resolved_config.yaml").exists()
