import io
import json

import torch

from zerosr.report.logs import RunLogger, read_jsonl
from zerosr.report.plots import write_plots
from zerosr.report.progress import Progress

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_step_and_validation_lines(tmp_path):
    with RunLogger(tmp_path, tensorboard=False) as logger:
        logger.log_step(10, {"loss": torch.tensor(0.5), "loss/l1": 0.25, "lr": 2e-4, "batch_size": 16})
        logger.log_validation(10, {"val/psnr": 30.5, "val/ssim": 0.9, "val/bicubic_psnr": 28.0})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"iter": 10, "loss": 0.5, "loss/l1": 0.25, "lr": 2e-4, "batch_size": 16},
        {"iter": 10, "val/psnr": 30.5, "val/ssim": 0.9, "val/bicubic_psnr": 28.0},
    ]
    assert next(iter(json.loads(lines[0]))) == "iter"
    assert not (tmp_path / "tb").exists()


def test_automation_line_and_tensorboard(tmp_path):
    with RunLogger(tmp_path) as logger:
        logger.log_automation(120, "batch_size", {"batch_size": (16, 12), "mode": ("a", "b")}, "CUDA out of memory")
    (line,) = (tmp_path / "automation.jsonl").read_text().splitlines()
    assert json.loads(line) == {
        "iter": 120,
        "automation": "batch_size",
        "change": {"batch_size": [16, 12], "mode": ["a", "b"]},
        "reason": "CUDA out of memory",
    }
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_disabled_logger_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    logger = RunLogger(run_dir, enabled=False)
    logger.log_step(1, {"loss": 1.0})
    logger.log_validation(1, {"val/psnr": 20.0})
    logger.log_automation(1, "lr", {"lr": (1e-3, 5e-4)}, "plateau")
    logger.close()
    assert not run_dir.exists()


def test_truncated_last_line_is_skipped_and_appending_continues(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iter": 1, "loss": 1.0}\n{"iter": 2, "loss": 0.9}\n{"iter": 3, "lo')
    assert read_jsonl(path) == [{"iter": 1, "loss": 1.0}, {"iter": 2, "loss": 0.9}]

    with RunLogger(tmp_path, tensorboard=False) as logger:  # e.g. resumed after kill -9
        logger.log_step(3, {"loss": 0.8})
    assert [r["iter"] for r in read_jsonl(path)] == [1, 2, 3]


def test_plots_are_png_files_and_missing_metrics_are_skipped(tmp_path):
    assert write_plots(tmp_path) == []
    with RunLogger(tmp_path, tensorboard=False) as logger:
        for i in range(1, 6):
            logger.log_step(i * 10, {"loss": 1.0 / i, "loss/l1": 0.5 / i, "lr": 1e-4, "batch_size": 16 - i})
        logger.log_validation(50, {"val/psnr": 31.0, "val/bicubic_psnr": 28.5})
    written = write_plots(tmp_path)
    assert sorted(p.name for p in written) == ["batch_size.png", "loss.png", "lr.png", "psnr.png"]
    for path in written:
        assert path.parent == tmp_path / "plots"
        assert path.read_bytes().startswith(PNG_SIGNATURE)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(p.name for p in written)

    only_loss = tmp_path / "only_loss"
    with RunLogger(only_loss, tensorboard=False) as logger:
        logger.log_step(1, {"loss": 0.3})
    assert [p.name for p in write_plots(only_loss)] == ["loss.png"]


def test_progress_prints_plain_lines_when_not_a_tty():
    stream = io.StringIO()
    progress = Progress(total=100, start=0, stream=stream, plain_every=25)
    for iteration in range(1, 101):
        progress.update(iteration, loss=0.123456, lr=1e-4, batch_size=16)
    progress.write("validation: psnr 30.1")
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5 and "\r" not in stream.getvalue()
    assert lines[0].startswith("iter 25/100 (25.0%) | ")
    assert "it/s | ETA " in lines[0] and lines[0].endswith("loss 0.1235 | lr 1.00e-04 | bs 16")
    assert lines[3].startswith("iter 100/100 (100.0%)")
    assert lines[4] == "validation: psnr 30.1"


def test_disabled_progress_prints_nothing():
    stream = io.StringIO()
    progress = Progress(total=10, enabled=False, stream=stream, plain_every=1)
    progress.update(5, loss=1.0, lr=1e-3, batch_size=4)
    progress.write("hidden")
    progress.close()
    assert stream.getvalue() == ""


def test_full_disk_while_logging_is_one_user_error(tmp_path, monkeypatch):
    import errno

    import pytest

    from zerosr.errors import UserError

    class FullDisk(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    logger = RunLogger(tmp_path, tensorboard=False)
    logger.log_step(1, {"loss": 0.5})
    monkeypatch.setattr(RunLogger, "_open_for_append", staticmethod(lambda path: FullDisk()))
    with pytest.raises(UserError, match=r"could not write .*automation.jsonl: No space left on device"):
        logger.log_automation(2, "lr", {"lr": (1e-3, 5e-4)}, "plateau")
    logger.close()
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"iter": 1, "loss": 0.5}]  # what was written stays
