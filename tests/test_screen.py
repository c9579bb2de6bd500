"""One screen format: log lines of zerosr and its libraries during a run appear in the start-up
screen's layout (a 13-character label column), INFO lines only with hydra.verbose; RUN/train.log
keeps them all in Hydra's format."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from test_train import make_dataset, tiny_overrides
from zerosr.detect import FAKE_ENV
from zerosr.report.screen import InfoWhenVerbose, ScreenFormatter

ROOT = Path(__file__).resolve().parents[1]
HYDRA_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+\]\[")  # [2026-12-05 17:32:50,594][zerosr.data.datasets][INFO] - ...
CACHED = re.compile(r"^datasets {5}cached \d+ image pairs in RAM")


def test_library_log_lines_take_the_screens_layout_and_info_needs_verbose(tmp_path):
    data = make_dataset(tmp_path / "data")
    env = {key: value for key, value in os.environ.items() if key != FAKE_ENV}
    args = tiny_overrides(data, **{"train.total_iter": 1, "train.val_freq": 1})
    runs = {"plain": [], "verbose": ["hydra.verbose=zerosr.data"]}
    processes = {name: subprocess.Popen([sys.executable, "train.py", *args, *extra, f"hydra.run.dir={tmp_path / name}"],
                                        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for name, extra in runs.items()}
    screens = {name: process.communicate(timeout=300)[0] for name, process in processes.items()}
    for name, process in processes.items():
        assert process.returncode == 0, screens[name]
        assert not [line for line in screens[name].splitlines() if HYDRA_LINE.match(line)], screens[name]
    assert not [line for line in screens["plain"].splitlines() if "cached" in line]
    assert [line for line in screens["verbose"].splitlines() if CACHED.match(line)], screens["verbose"]
    assert "][zerosr.data.datasets][INFO] - cached" in (tmp_path / "plain" / "train.log").read_text(encoding="utf-8")


def test_warnings_read_like_the_screens_own_lines():
    def record(level, message, name="zerosr.engine.checkpoint"):
        return logging.LogRecord(name, level, __file__, 1, message, None, None)

    screen = ScreenFormatter()
    assert screen.format(record(logging.WARNING, "state_6.pt is corrupt")) == "warning      state_6.pt is corrupt"
    assert screen.format(record(logging.ERROR, "one\ntwo")) == "error        one\n             two"
    assert screen.format(record(logging.INFO, "cached 6 image pairs", "zerosr.data.datasets")) == \
        "datasets     cached 6 image pairs"
    shown = InfoWhenVerbose()
    logging.getLogger("zerosr.quiet_test").setLevel(logging.INFO)
    assert shown.filter(record(logging.WARNING, "w", "zerosr.quiet_test"))
    assert not shown.filter(record(logging.INFO, "i", "zerosr.quiet_test"))
    logging.getLogger("zerosr.quiet_test").setLevel(logging.DEBUG)  # what hydra.verbose=zerosr.quiet_test does
    assert shown.filter(record(logging.INFO, "i", "zerosr.quiet_test"))
