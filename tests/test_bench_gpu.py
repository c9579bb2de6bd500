"""bench/gpu.py --quick end to end on simulated cards, as the lead runs it on a real one: every
part measured (none failed), the JSON on disk. The two cards that broke a real run: a 7.5 card
(fp16 with a GradScaler) training a GAN, and a WSL2-like machine where NVML sees no GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = {"search", "compile", "step", "flops", "oom", "loop_vs_bare", "agreement"}


def run_bench(tmp_path: Path, card: dict, *extra: str) -> dict:
    (tmp_path / "card.json").write_text(json.dumps({**card, "cpu_cores": 2, "ram_gb": 16}))
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "bench/gpu.py", "--simulate", str(tmp_path / "card.json"), "--quick",
                           "--archs", "nano", "--tier", "budget", "--lq", "8", "--num-workers", "0", "--max-batch", "4",
                           "--steps", "1", "--agreement-steps", "1", "--out", str(out), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert json.loads(proc.stdout) == report  # the same JSON on stdout and on disk
    return report


@pytest.mark.parametrize("card, extra", [
    ({"gpus": [{"name": "T4", "vram_gb": 0.25, "compute_capability": [7, 5]}]}, ["--gan"]),
    ({"gpus": [], "gpus_without_nvml": [{"name": "WSL card", "vram_gb": 0.25, "compute_capability": [8, 6]}]}, []),
], ids=["fp16-gan", "wsl2"])
def test_the_quick_bench_passes_on_a_simulated_card(tmp_path, card, extra):
    report = run_bench(tmp_path, card, *extra)
    nano = report["results"]["nano"]
    assert PARTS <= set(nano) and not any("error" in nano[part] for part in PARTS), nano
    assert nano["precision"] == ("fp16" if extra else "bf16")
    assert "probes of 2 real steps" in nano["search"]["reason"]
    assert nano["oom"]["survived"] and nano["loop_vs_bare"]["mode"] == "eager"
    assert nano["agreement"]["reference"] == "fp32 without TF32"
    assert report["lr_equality"]["equal"] and report["lr_equality"]["within_1_255"] >= 0.999
    assert report["degradation"]["ms_per_batch"] > 0 and report["degradation"]["nano_step_ms"] > 0
