"""`--cfg job` shows only what the job would run: a key added with `+` that the job refuses is
refused here too, with the job's own line and exit code (real train.py processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "ZEROSR_FAKE_HARDWARE": ""}


def train_py(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env=ENV, timeout=120)


def error_lines(out: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in out.stderr
    return [line for line in out.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("shown", [["--cfg", "job"], ["--cfg", "all"], ["--cfg", "job", "--resolve"]])
@pytest.mark.parametrize("added", ["+train.foo=1", "++train.foo=1"])
def test_shown_config_refuses_an_added_key_as_the_job_does(shown, added):
    out = train_py(*shown, added)
    assert out.returncode == 2 and out.stdout == ""
    job = train_py(added, "dry_run=true")
    assert job.returncode == 2
    assert error_lines(out) == error_lines(job) and len(error_lines(job)) == 1
    assert "train.foo is not a config key" in error_lines(out)[0]


def test_a_free_form_node_still_takes_new_keys_when_shown():
    out = train_py("--cfg", "job", "+train.optimizer.foo=1")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "  foo: 1" in out.stdout.split("optimizer:", 1)[1].split("\n  losses:", 1)[0]
