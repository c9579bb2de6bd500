"""Training-state files: save, verify, load safely, rotate, and find the one to resume from.

A training state is `RUN/training_state/state_{iteration:08d}.pt` (written with `torch.save`)
plus a sidecar `state_{iteration:08d}.pt.sha256` holding the sha256 of the state file in
`sha256sum` format. The sidecar is written only after the state file is completely on disk, so
a state file without a matching sidecar is one whose write was interrupted or that was damaged
later; both are rejected. (A sidecar rather than an embedded checksum because torch's zip format
cannot carry a trailer over its own bytes, and `sha256sum -c` can check a sidecar by hand.)

States are loaded with `torch.load(..., weights_only=True)` only, so a state file can never run
code. Therefore a state may contain only what that loader accepts: tensors, dict/OrderedDict,
list, tuple, str, int, float, bool, None, torch.Size, torch.dtype, torch.device.
`save_training_state` converts numpy arrays to tensors and numpy scalars to Python numbers and
refuses anything else with a TypeError naming the offending key, at save time rather than at
resume time. `capture_rng_state` already returns RNG states in that form.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zerosr.atomic import atomic_save, atomic_write_bytes
from zerosr.engine.killpoints import kill_point
from zerosr.errors import UserError

log = logging.getLogger("zerosr")

STATE_FILE_PATTERN = re.compile(r"^state_(\d+)\.pt$")
CHECKSUM_SUFFIX = ".sha256"
NO_RESUME_VALUES = (None, "", "none", "false")


class CorruptCheckpoint(UserError):
    """A state file that is truncated, damaged, unverifiable, or holds non-weights-only objects.

    A `UserError` so that resuming from such a file explicitly ends with one line, not a traceback.
    `reason` is the short cause, e.g. "checksum mismatch".
    """

    def __init__(self, message: str, reason: str = "unreadable"):
        super().__init__(message)
        self.reason = reason


def _corrupt(path: Path, reason: str) -> CorruptCheckpoint:
    return CorruptCheckpoint(f"{path} is corrupt or truncated ({reason})", reason)


# --------------------------------------------------------------------------- save / load


def state_file_name(iteration: int) -> str:
    return f"state_{iteration:08d}.pt"


def save_training_state(state_dir: Path, iteration: int, state: dict, keep: int = 3) -> Path:
    """Write `state` as `state_dir/state_{iteration:08d}.pt` (+ checksum), keep the newest `keep`.

    Raises TypeError if `state` holds something `torch.load(weights_only=True)` cannot read back,
    and UserError if the disk is full (the previous state files are then untouched).
    """
    state_dir = Path(state_dir)
    safe_state = to_weights_only(state)
    path = state_dir / state_file_name(iteration)

    def write(tmp: Path) -> None:
        # A Python file object, not a path: torch's native writer reports a full disk as a
        # RuntimeError, while Python file writes raise OSError, which atomic_save turns into a
        # clear one-line error.
        with open(tmp, "wb") as f:
            torch.save(safe_state, f)
        kill_point("save", iteration)  # debug.kill_at: the temporary file is written, not renamed

    atomic_save(write, path)
    kill_point("checksum", iteration)  # debug.kill_at: the state is in place, its checksum is not
    digest = _sha256_of_file(path)
    atomic_write_bytes(_checksum_path(path), f"{digest}  {path.name}\n".encode("ascii"))
    _remove_old_states(state_dir, keep=keep, just_written=path)
    return path


def load_training_state(path: Path) -> dict:
    """Verify the checksum of a state file and load it with weights_only=True onto the CPU."""
    path = Path(path)
    verify_state_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only refuses any global it does not know, before constructing it.
        raise CorruptCheckpoint(
            f"{path} contains objects other than tensors and plain values; refusing to load it "
            f"(only weights_only=True loading is allowed){_unpickler_detail(err)}"
        ) from err
    except (RuntimeError, EOFError) as err:
        # torch reports a damaged zip archive as RuntimeError; reaching here means the file was
        # damaged before its checksum was taken.
        raise CorruptCheckpoint(f"{path} is not a readable training state: {_first_line(err)}") from err
    if not isinstance(state, dict):
        raise CorruptCheckpoint(f"{path} holds a {type(state).__name__}, not a training-state dict")
    return state


def verify_state_file(path: Path) -> None:
    """Raise CorruptCheckpoint unless `path` exists and matches its recorded sha256."""
    path = Path(path)
    if not path.is_file():
        raise CorruptCheckpoint(f"{path} does not exist", "missing")
    checksum_path = _checksum_path(path)
    if not checksum_path.is_file():
        # Either its write did not finish, or the file was copied without its .sha256 file.
        raise _corrupt(path, f"no checksum file {checksum_path.name}")
    recorded = checksum_path.read_text(encoding="ascii", errors="replace").split()
    if not recorded or recorded[0] != _sha256_of_file(path):
        raise _corrupt(path, "checksum mismatch")


def to_weights_only(obj: Any, where: str = "state") -> Any:
    """Return `obj` in a form torch.load(weights_only=True) accepts, or raise TypeError.

    Containers are rebuilt only when something inside them changed, so module state dicts keep
    their OrderedDict `_metadata` (used by load_state_dict for versioned modules).
    """
    # Exact types: subclasses such as IntEnum pickle as their class, which weights_only refuses.
    if obj is None or type(obj) in (bool, int, float, str) or isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (torch.Size, torch.dtype, torch.device)):
        return obj
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError(f"{where} is a numpy object array, which weights_only loading cannot read")
        return torch.from_numpy(np.ascontiguousarray(obj).copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        converted = {key: to_weights_only(value, f"{where}[{key!r}]") for key, value in obj.items()}
        for key in converted:
            if not (key is None or type(key) in (str, int, float, bool)):
                raise TypeError(f"{where} has a key of type {type(key).__name__}; use str or int keys")
        if all(converted[key] is obj[key] for key in obj) and type(obj) in (dict, collections.OrderedDict):
            return obj
        rebuilt = collections.OrderedDict(converted) if isinstance(obj, collections.OrderedDict) else converted
        if hasattr(obj, "_metadata"):
            rebuilt._metadata = obj._metadata  # type: ignore[attr-defined]
        return rebuilt
    if isinstance(obj, (list, tuple)):
        converted_items = [to_weights_only(item, f"{where}[{i}]") for i, item in enumerate(obj)]
        if type(obj) in (list, tuple) and all(new is old for new, old in zip(converted_items, obj)):
            return obj
        # Named tuples and list subclasses become plain tuples/lists.
        return tuple(converted_items) if isinstance(obj, tuple) else converted_items
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}, which "
        "torch.load(weights_only=True) cannot read back; store it as tensors or plain values"
    )


# --------------------------------------------------------------------------- finding states


def list_state_files(state_dir: Path) -> list[Path]:
    """State files in `state_dir`, oldest (lowest iteration) first."""
    state_dir = Path(state_dir)
    if not state_dir.is_dir():
        return []
    found = []
    for entry in state_dir.iterdir():
        match = STATE_FILE_PATTERN.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry))
    return [path for _, path in sorted(found)]


def latest_valid_state(state_dir: Path) -> Path | None:
    """Newest state file in `state_dir` whose checksum verifies; warn once per newer bad file."""
    state_dir = Path(state_dir)
    rejected: list[tuple[Path, str]] = []
    chosen = None
    for path in reversed(list_state_files(state_dir)):
        try:
            verify_state_file(path)
        except CorruptCheckpoint as err:
            rejected.append((path, err.reason))
            continue
        chosen = path
        break
    fallback = f"using {chosen.name}" if chosen else "no valid training state left"
    for path, reason in rejected:
        log.warning("%s/%s is corrupt or truncated (%s); %s", state_dir.name, path.name, reason, fallback)
    return chosen


def find_resume_state(resume: str | None, run_dir: Path, outputs_root: Path, run_name: str) -> Path | None:
    """Resolve the `train.resume` setting to a state file, or None for a fresh start.

    - None / "" / "none" / "false": fresh start.
    - "auto": newest valid state of this run directory, else of the latest earlier run with the
      same name (`outputs_root/run_name/<timestamp>/`), else None.
    - a state file, a run directory, or a training_state directory.
    """
    if resume is None or str(resume).strip().lower() in NO_RESUME_VALUES:
        return None
    run_dir = Path(run_dir)
    if str(resume).strip().lower() == "auto":
        own = latest_valid_state(run_dir / "training_state")
        if own is not None:
            return own
        for earlier_run in _earlier_runs(Path(outputs_root) / run_name, run_dir):
            state = latest_valid_state(earlier_run / "training_state")
            if state is not None:
                return state
        return None
    return _resolve_resume_path(str(resume))


def _resolve_resume_path(resume: str) -> Path:
    path = Path(resume).expanduser()
    if not path.exists():
        raise UserError(
            f"train.resume={resume}: no such file or directory; give a training_state/state_*.pt "
            "file, a run directory, or auto"
        )
    if path.is_file():
        return path
    state_dir = path / "training_state" if (path / "training_state").is_dir() else path
    state = latest_valid_state(state_dir)
    if state is None:
        raise UserError(
            f"train.resume={resume}: no valid training state in {state_dir}; give a "
            "training_state/state_*.pt file, a run directory, or auto"
        )
    return state


def _earlier_runs(runs_root: Path, run_dir: Path) -> list[Path]:
    """Run directories under `runs_root` other than `run_dir`, newest first.

    Hydra names them `YYYY-MM-DD_HH-MM-SS[_suffix]`, so name order is start-time order (and,
    unlike mtime, survives copying). When `run_dir` is one of them, only earlier names count.
    """
    if not runs_root.is_dir():
        return []
    current = run_dir.resolve()
    same_parent = current.parent == runs_root.resolve()
    candidates = []
    for entry in runs_root.iterdir():
        if not entry.is_dir() or entry.resolve() == current:
            continue
        if same_parent and entry.name > current.name:
            continue
        candidates.append(entry)
    return sorted(candidates, key=lambda p: p.name, reverse=True)


# --------------------------------------------------------------------------- RNG state


def capture_rng_state() -> dict:
    """RNG states of python `random`, numpy's global generator, torch CPU and CUDA, as tensors."""
    version, internal, gauss_next = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state(legacy=True)
    state = {
        "python": {
            "version": version,
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "kind": np_kind,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of capture_rng_state. CUDA states are restored for as many devices as both have."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


# --------------------------------------------------------------------------- helpers


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def _sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _remove_old_states(state_dir: Path, keep: int, just_written: Path) -> None:
    states = list_state_files(state_dir)
    newest = set(states[-max(keep, 1):]) | {just_written}
    for path in states:
        if path not in newest:
            # State file first: an orphan .sha256 is harmless, an orphan state would warn.
            path.unlink(missing_ok=True)
            _checksum_path(path).unlink(missing_ok=True)
    # Hidden temporaries of writes killed mid-way (atomic_save names them ".state_*.tmp").
    for leftover in state_dir.glob(".state_*.tmp"):
        if leftover.is_file():
            leftover.unlink(missing_ok=True)


def _unpickler_detail(err: BaseException) -> str:
    # torch's message is a long how-to for unsafe loading; keep only the line naming the object.
    for line in str(err).splitlines():
        if "WeightsUnpickler error" in line or "Unsupported global" in line:
            return ": " + line.split("WeightsUnpickler error:")[-1].split(" was not an allowed")[0].strip()
    return ""


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
