"""The Python API and the hardware report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import RTX_3090
from zerosr import HardwareDetector, create_zero_config_training, print_hardware_report

ROOT = Path(__file__).resolve().parents[1]


def test_api_returns_plain_resolved_dict(fake_hardware):
    fake_hardware(gpus=[RTX_3090])
    config = create_zero_config_training("paragonsr2_s", "/data/hr", "/data/lr", val_gt_path="/data/vhr",
                                         val_lq_path="/data/vlr", custom_overrides={"train": {"total_iter": 60000}})
    assert config["arch"]["name"] == "paragonsr2_s" and config["hardware_tier"]["name"] == "high_end"
    assert config["data"]["gt_path"] == "/data/hr" and config["data"]["val_lq_path"] == "/data/vlr"
    assert config["train"]["total_iter"] == 60000
    assert config["train"]["val_freq"] == 2000  # derived from the overridden run length
    text = yaml.safe_dump({k: v for k, v in config.items() if k != "hydra"})
    assert "${" not in text


def test_api_yaml_replays_through_train_py(tmp_path, fake_hardware):
    fake = fake_hardware(gpus=[RTX_3090])
    config = create_zero_config_training("paragonsr2_tiny", str(tmp_path / "hr"), str(tmp_path / "lr"))
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "auto.yaml").write_text(yaml.safe_dump(config))
    out = subprocess.run([sys.executable, "train.py", "--config-dir", str(tmp_path / "cfg"), "--config-name",
                          "auto", "--cfg", "job", "--resolve"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "ZEROSR_FAKE_HARDWARE": str(fake)}, timeout=120)
    assert out.returncode == 0, out.stderr
    replayed = yaml.safe_load(out.stdout)
    expected = {k: v for k, v in config.items() if k not in ("defaults", "hydra")}
    assert replayed == expected


def test_hardware_report_text_and_json(fake_hardware, capsys):
    fake_hardware(gpus=[RTX_3090], cpu_cores=16, ram_gb=64.0)
    report = HardwareDetector().generate_hardware_report()
    for words in ("NVIDIA GeForce RTX 3090", "24.0 GB", "Ampere", "high_end", "bf16", "batch size",
                  "channels_last", "torch.compile"):
        assert words in report
    print_hardware_report()
    assert "Hardware tier: high_end" in capsys.readouterr().out
    out = subprocess.run([sys.executable, "-m", "zerosr.hardware", "--json"], capture_output=True, text=True,
                         env={**os.environ, "ZEROSR_FAKE_HARDWARE": os.environ["ZEROSR_FAKE_HARDWARE"]},
                         timeout=120)
    data = json.loads(out.stdout)
    assert data["tier"] == "high_end" and data["precision"] == "bf16" and data["cpu_cores"] == 16
    assert data["ram_gb"] == 64.0 and data["gpus"][0]["compute_capability"] == [8, 6]


def test_hardware_report_on_this_machine():
    out = subprocess.run([sys.executable, "-m", "zerosr.hardware", "--json"], capture_output=True, text=True,
                         env={**os.environ, "ZEROSR_FAKE_HARDWARE": ""}, timeout=120)
    assert out.returncode == 0
    assert {"tier", "gpus", "cpu_cores", "ram_gb", "precision"} <= set(json.loads(out.stdout))
