"""Hold out a few training pairs for validation when the user gives no validation folders."""

from __future__ import annotations

import random
from typing import Sequence, TypeVar

from zerosr.errors import UserError

T = TypeVar("T")


def split_validation(pairs: Sequence[T], n_val: int, seed: int = 0) -> tuple[list[T], list[T]]:
    """(train, val): `n_val` pairs chosen by `seed`, the same ones on every run; order is kept."""
    if n_val < 0:
        raise UserError(f"data.n_val={n_val} is negative; set data.n_val to 0 or more")
    if n_val == 0:
        return list(pairs), []
    if n_val >= len(pairs):
        raise UserError(
            f"only {len(pairs)} training images, too few to hold out data.n_val={n_val} for validation: "
            "add images, lower data.n_val, or set data.val_gt_path to a validation folder"
        )
    held_out = set(random.Random(seed).sample(range(len(pairs)), n_val))
    train = [p for i, p in enumerate(pairs) if i not in held_out]
    val = [p for i, p in enumerate(pairs) if i in held_out]
    return train, val
