"""`debug.inject_oom_at`: real out-of-memory errors at chosen points of chosen iterations.

Entries are `N` (the generator's forward at iteration N) or `POINT:N`, with POINT one of
`forward`, `backward`, `discriminator` (a GAN's discriminator step), `optimizer` (the optimizer
step) and `validation` (as the validation after iteration N starts its first image). Each fires once, as
a `torch.OutOfMemoryError` raised where that point really runs, so the recovery under test is the
one a real card's error takes; the retry then goes through.
"""

from __future__ import annotations

import torch

from zerosr.errors import UserError

POINTS = ("forward", "backward", "discriminator", "optimizer", "validation")


def parse(entries) -> set[tuple[str, int]]:
    """(point, iteration) pairs; one error line for an entry that names neither."""
    pairs = set()
    for entry in entries:
        point, _, number = str(entry).strip().rpartition(":")
        point = point.strip() or "forward"
        try:
            iteration = int(number)
        except ValueError:
            iteration = 0
        if point not in POINTS or iteration < 1:
            raise UserError(f"debug.inject_oom_at entry {entry!r} is not ITER or POINT:ITER with POINT one of "
                            f"{', '.join(POINTS)}: e.g. debug.inject_oom_at=[5,optimizer:7,validation:10]")
        pairs.add((point, iteration))
    return pairs


class OomInjection:
    def __init__(self, entries=()):
        self.pending = parse(entries)
        self.iteration = 0

    def at(self, iteration: int) -> None:
        """The iteration now running (validation after it counts as the same iteration)."""
        self.iteration = int(iteration)

    def armed(self, point: str) -> bool:
        return (point, self.iteration) in self.pending

    def fire(self, point: str) -> None:
        """Raise the out-of-memory error planned for `point` now, once."""
        if (point, self.iteration) in self.pending:
            self.pending.discard((point, self.iteration))
            raise torch.OutOfMemoryError(f"debug.inject_oom_at: injected out-of-memory in the {point} "
                                         f"at iteration {self.iteration}")
