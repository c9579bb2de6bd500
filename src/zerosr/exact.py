"""Full fp32 precision where exact numbers matter.

On compute capability 8.0 and up, training lets matrix products and convolutions run in TF32
(10-bit mantissa) for speed. The degradation pipeline must not: its resize and JPEG DCT are
matrix products, and in TF32 a few percent of LR pixels move by up to 21 levels, so LR made on
the GPU would no longer match LR made on the CPU (validation, calibration). Neither may an fp32
reference that a lower precision is judged against (bench/gpu.py).
"""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def exact_fp32():
    """No TF32 inside (matrix products and cuDNN convolutions); the settings come back after."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
