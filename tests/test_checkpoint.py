import errno
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from zerosr.engine import checkpoint
from zerosr.engine.checkpoint import (
    CorruptCheckpoint,
    capture_rng_state,
    find_resume_state,
    latest_valid_state,
    load_training_state,
    restore_rng_state,
    save_training_state,
)
from zerosr.errors import UserError


def small_state(iteration: int) -> dict:
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return {
        "iteration": iteration,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "data_position": {"epoch": 2, "index": 17},
        "automation": {"batch_size": {"current": 12, "history": [(16, "oom")]}},
        "rng": capture_rng_state(),
    }


def draw_random_numbers() -> tuple:
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), torch.rand(3).tolist())


def test_round_trip_restores_values_and_rng(tmp_path):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    random.gauss(0, 1)  # leaves a cached gauss value in python's state
    state = small_state(500)
    state["numpy_array"] = np.arange(5, dtype=np.float32)
    state["numpy_scalar"] = np.float64(2.5)
    expected = draw_random_numbers()

    path = save_training_state(tmp_path / "training_state", 500, state)
    assert path.name == "state_00000500.pt"
    assert (path.parent / "state_00000500.pt.sha256").is_file()

    draw_random_numbers()  # move every generator on
    loaded = load_training_state(path)
    restore_rng_state(loaded["rng"])
    assert draw_random_numbers() == expected

    assert loaded["iteration"] == 500
    assert loaded["data_position"] == {"epoch": 2, "index": 17}
    assert loaded["automation"]["batch_size"]["history"] == [(16, "oom")]
    assert torch.equal(loaded["model"]["weight"], state["model"]["weight"])
    assert torch.equal(loaded["numpy_array"], torch.arange(5, dtype=torch.float32))
    assert loaded["numpy_scalar"] == 2.5
    fresh = torch.optim.AdamW(torch.nn.Linear(4, 3).parameters(), lr=1e-3)
    fresh.load_state_dict(loaded["optimizer"])


def test_save_refuses_objects_weights_only_cannot_load(tmp_path):
    with pytest.raises(TypeError, match=r"state\['automation'\]\['when'\]"):
        save_training_state(tmp_path, 1, {"automation": {"when": Path("x")}})
    assert list(tmp_path.iterdir()) == []


def test_keeps_only_the_newest_states(tmp_path):
    for iteration in (100, 200, 300, 400, 500):
        save_training_state(tmp_path, iteration, {"iteration": iteration}, keep=3)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "state_00000300.pt", "state_00000300.pt.sha256",
        "state_00000400.pt", "state_00000400.pt.sha256",
        "state_00000500.pt", "state_00000500.pt.sha256",
    ]


def test_never_deletes_the_state_just_written(tmp_path):
    for iteration in (700, 800):
        save_training_state(tmp_path, iteration, {"iteration": iteration}, keep=1)
    save_training_state(tmp_path, 300, {"iteration": 300}, keep=1)
    assert (tmp_path / "state_00000300.pt").is_file()


def test_truncated_latest_falls_back_with_one_warning(tmp_path, caplog):
    save_training_state(tmp_path / "training_state", 600, {"iteration": 600})
    latest = save_training_state(tmp_path / "training_state", 800, {"iteration": 800})
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])

    with caplog.at_level(logging.WARNING, logger="zerosr"):
        chosen = latest_valid_state(tmp_path / "training_state")

    assert chosen.name == "state_00000600.pt"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "training_state/state_00000800.pt is corrupt or truncated (checksum mismatch); using state_00000600.pt"
    ]
    with pytest.raises(CorruptCheckpoint, match="checksum mismatch"):
        load_training_state(latest)


def test_flipped_byte_and_missing_checksum_are_corrupt(tmp_path):
    path = save_training_state(tmp_path, 10, {"weights": torch.randn(64)})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpoint, match="checksum mismatch"):
        load_training_state(path)

    other = save_training_state(tmp_path, 20, {"weights": torch.randn(64)})
    (tmp_path / "state_00000020.pt.sha256").unlink()
    with pytest.raises(CorruptCheckpoint, match="no checksum file"):
        load_training_state(other)
    assert latest_valid_state(tmp_path) is None


def create_marker(path):
    Path(path).write_text("unpickling ran code")


class RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (create_marker, (str(self.marker),))


def test_load_refuses_arbitrary_pickled_objects_without_running_them(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "state_00000001.pt"
    torch.save({"iteration": 1, "payload": RunsCodeWhenUnpickled(marker)}, path)
    # A valid checksum, so only the weights_only loader stands in the way.
    digest = checkpoint._sha256_of_file(path)
    (tmp_path / "state_00000001.pt.sha256").write_text(f"{digest}  {path.name}\n")

    with pytest.raises(CorruptCheckpoint, match="weights_only"):
        load_training_state(path)
    assert not marker.exists()


def make_run(outputs_root: Path, name: str, stamp: str, iterations=()) -> Path:
    run_dir = outputs_root / name / stamp
    (run_dir / "training_state").mkdir(parents=True)
    for iteration in iterations:
        save_training_state(run_dir / "training_state", iteration, {"iteration": iteration})
    return run_dir


def test_resume_auto_uses_own_then_latest_earlier_run(tmp_path):
    outputs = tmp_path / "outputs"
    make_run(outputs, "x2", "2024-01-01_10-00-00", [100])
    second = make_run(outputs, "x2", "2024-01-02_10-00-00", [200, 300])
    make_run(outputs, "other", "2024-01-05_10-00-00", [900])
    current = make_run(outputs, "x2", "2024-01-03_10-00-00")

    found = find_resume_state("auto", current, outputs, "x2")
    assert found == second / "training_state" / "state_00000300.pt"

    # The latest earlier run has only a broken state: fall back to the run before it.
    for path in (second / "training_state").glob("*.sha256"):
        path.unlink()
    found = find_resume_state("auto", current, outputs, "x2")
    assert found.name == "state_00000100.pt"

    save_training_state(current / "training_state", 50, {"iteration": 50})
    assert find_resume_state("auto", current, outputs, "x2").name == "state_00000050.pt"


def test_resume_auto_ignores_later_runs_and_starts_fresh_without_states(tmp_path):
    outputs = tmp_path / "outputs"
    current = make_run(outputs, "x2", "2024-01-03_10-00-00")
    make_run(outputs, "x2", "2024-01-04_10-00-00", [100])
    assert find_resume_state("auto", current, outputs, "x2") is None
    assert find_resume_state("auto", tmp_path / "elsewhere", tmp_path / "missing", "x2") is None


@pytest.mark.parametrize("resume", [None, "", "none", "false", "None"])
def test_resume_disabled(tmp_path, resume):
    make_run(tmp_path, "x2", "2024-01-01_10-00-00", [100])
    assert find_resume_state(resume, tmp_path / "x2" / "2024-01-01_10-00-00", tmp_path, "x2") is None


def test_resume_explicit_file_run_dir_or_state_dir(tmp_path):
    run = make_run(tmp_path, "x2", "2024-01-01_10-00-00", [100, 200])
    expected = run / "training_state" / "state_00000200.pt"
    current = tmp_path / "current"
    assert find_resume_state(str(expected), current, tmp_path, "x2") == expected
    assert find_resume_state(str(run), current, tmp_path, "x2") == expected
    assert find_resume_state(str(run / "training_state"), current, tmp_path, "x2") == expected


def test_resume_bad_path_is_a_user_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(UserError) as info:
        find_resume_state(str(missing), tmp_path, tmp_path, "x2")
    assert str(info.value) == (
        f"train.resume={missing}: no such file or directory; give a training_state/state_*.pt "
        "file, a run directory, or auto"
    )
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(UserError, match="no valid training state"):
        find_resume_state(str(empty), tmp_path, tmp_path, "x2")


def test_disk_full_keeps_previous_state(tmp_path, monkeypatch):
    previous = save_training_state(tmp_path, 100, {"iteration": 100, "w": torch.ones(8)})
    before = previous.read_bytes()

    def torch_save_on_full_disk(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", torch_save_on_full_disk)
    for iteration in (200, 100):  # a new file, and overwriting an existing one
        with pytest.raises(UserError) as info:
            save_training_state(tmp_path, iteration, {"iteration": iteration})
        message = str(info.value)
        assert message.startswith(f"could not write {tmp_path / checkpoint.state_file_name(iteration)}: ")
        assert "No space left on device" in message and "previous checkpoint is intact" in message
        assert "\n" not in message
    monkeypatch.undo()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["state_00000100.pt", "state_00000100.pt.sha256"]
    assert previous.read_bytes() == before
    assert load_training_state(previous)["iteration"] == 100
