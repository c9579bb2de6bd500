"""`debug.kill_at`: SIGKILL this process at chosen points, to prove that `kill -9` anywhere loses nothing.

Entries are `POINT:ITER`, e.g. `debug.kill_at=[step:5,save:6]`:

- `step:N`      after iteration N's optimizer step, before its validation and checkpoint;
- `save:N`      inside the checkpoint write of iteration N: the temporary state file is complete
                on disk but not yet renamed into place;
- `checksum:N`  the state file of iteration N is in place but its `.sha256` sidecar is not written.

A killed run is continued with the same command plus `train.resume=auto` (and without
`debug.kill_at`). Nothing here imports torch; an unarmed process pays one dict lookup per point.
"""

from __future__ import annotations

import os
import signal
from typing import Iterable

from zerosr.errors import UserError

POINTS = ("step", "save", "checksum")

_armed: set[tuple[str, int]] = set()


def parse(entries: Iterable[str]) -> set[tuple[str, int]]:
    points = set()
    for entry in entries:
        point, _, iteration = str(entry).partition(":")
        if point not in POINTS or not iteration.strip().isdigit():
            raise UserError(f"debug.kill_at entry '{entry}' is not POINT:ITER with POINT one of "
                            f"{', '.join(POINTS)}: e.g. debug.kill_at=[step:5,save:6]")
        points.add((point, int(iteration)))
    return points


def arm(entries: Iterable[str]) -> None:
    """Replace the armed kill points of this process (an empty list disarms)."""
    _armed.clear()
    _armed.update(parse(entries))


def kill_point(point: str, iteration: int) -> None:
    """SIGKILL the process if `point:iteration` is armed: no cleanup, no flush, like `kill -9`."""
    if _armed and (point, int(iteration)) in _armed:
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))  # Windows: SIGTERM is TerminateProcess
