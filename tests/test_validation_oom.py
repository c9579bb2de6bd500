"""Validation that runs out of memory halves its tile and scores the same image again."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zerosr.engine.validation import Validator
from zerosr.errors import UserError


class Images(torch.utils.data.Dataset):
    def __init__(self, size: int, scale: int = 2):
        self.size, self.scale = size, scale

    def __len__(self):
        return 1

    def __getitem__(self, index):
        lq = torch.rand(3, self.size, self.size, generator=torch.Generator().manual_seed(index))
        return {"lq": lq, "gt": nn.functional.interpolate(lq[None], scale_factor=self.scale)[0], "name": "a"}


class FitsUpTo(nn.Module):
    """Nearest upscaling that runs out of memory on inputs larger than `side` (what it saw is kept)."""

    def __init__(self, side: int):
        super().__init__()
        self.side, self.seen = side, []

    def forward(self, x):
        self.seen.append(max(x.shape[-2:]))
        if max(x.shape[-2:]) > self.side:
            raise torch.OutOfMemoryError("fake: tile too large")
        return nn.functional.interpolate(x, scale_factor=2)


def test_validation_out_of_memory_halves_the_tile_and_keeps_it(tmp_path):
    freed = []
    validator = Validator(Images(64), 2, tile=256, device=torch.device("cpu"), out_dir=tmp_path,
                          images_to_save=0, free_memory=lambda: freed.append(1))
    model = FitsUpTo(32)
    metrics = validator(model, 1)
    assert model.seen[:2] == [64, 32] and max(model.seen[2:]) <= 32  # whole image failed, then 32px tiles
    assert metrics["val/psnr"] > 60  # nearest upscaling reproduces the nearest-upscaled target
    assert validator.tile == 32 and freed == [1]
    model.seen.clear()
    validator(model, 2)
    assert max(model.seen) == 32  # the next validation starts at the smaller tile


def test_validation_that_never_fits_is_one_error(tmp_path):
    validator = Validator(Images(64), 2, tile=256, device=torch.device("cpu"), out_dir=tmp_path, images_to_save=0)
    with pytest.raises(UserError, match="validation runs out of memory even in 24px tiles"):
        validator(FitsUpTo(4), 1)
