"""The device a run trains on, and every memory query and device decision about it.

Three kinds, one interface:

- `CudaAccelerator`: a real NVIDIA GPU, read through `torch.cuda`.
- `SimulatedAccelerator` (`ZEROSR_SIMULATE_GPU=1` with `ZEROSR_FAKE_HARDWARE=FILE`): the GPU
  branches run on the CPU against a card with that file's VRAM and compute capability. Its memory
  is the live storage of the run's real tensors (parameters, gradients, optimizer state,
  activations saved for backward, the discriminator, validation), counted by a dispatch mode that
  sees every tensor an operator creates or reads; going past the card raises a real
  `torch.OutOfMemoryError`. A run then decides, shrinks and retries exactly as on that card.
- `CpuAccelerator`: no GPU; no memory readings.

Callers ask `is_gpu` for every GPU-only decision (precision, channels_last, the VRAM search, the
memory watch) and never `device.type`, so the code a simulated run tests is the code a GPU runs.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import threading
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

from zerosr.detect.hardware import FAKE_ENV, SIMULATE_ENV, probe
from zerosr.errors import UserError


class CpuAccelerator:
    kind = "cpu"
    is_gpu = False
    compiles = False  # torch.compile pays off on a real GPU only (the simulated card runs eager)

    def __init__(self):
        self.device = torch.device("cpu")

    @property
    def name(self) -> str:
        return "CPU"

    def total_memory(self) -> int | None:
        return None

    def capability(self) -> tuple[int, int] | None:
        return None

    def bf16_supported(self) -> bool:
        return False

    def low_precision_dtype(self) -> torch.dtype | None:
        """What bf16/fp16 work runs in on this card: bf16 where the card has it natively
        (compute capability 8.0 and up), else fp16; None (fp32) without a GPU. Training's
        precision and inference's autocast both ask here."""
        if not self.is_gpu:
            return None
        return torch.bfloat16 if self.bf16_supported() else torch.float16

    def free_memory(self) -> int | None:
        """Bytes free on the device now (None without a GPU)."""
        return None

    def peak_bytes(self) -> int | None:
        """Peak allocated bytes since the last `reset_peak` (None: no readings on this device)."""
        return None

    def reset_peak(self) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def free_cache(self) -> None:
        """Give cached blocks back and start a new peak window (call outside any `except` block:
        a live traceback keeps the failed step's tensors)."""

    def active(self):
        """The context a run trains in (the simulated card counts memory inside it)."""
        return contextlib.nullcontext()

    def host(self):
        """Work that a GPU run does in host memory (loading batches, scoring and saving images):
        the simulated card does not count what is made there until the device reads it."""
        return contextlib.nullcontext()


class CudaAccelerator(CpuAccelerator):
    kind = "cuda"
    is_gpu = True
    compiles = True

    def __init__(self, index: int):
        self.device = torch.device("cuda", index)

    @property
    def name(self) -> str:
        return torch.cuda.get_device_name(self.device)

    def total_memory(self) -> int:
        return int(torch.cuda.get_device_properties(self.device).total_memory)

    def capability(self) -> tuple[int, int]:
        return tuple(torch.cuda.get_device_capability(self.device))

    def bf16_supported(self) -> bool:
        # Without `including_emulation=False` torch answers True on 7.x cards, which emulate bf16 slowly.
        return torch.cuda.is_bf16_supported(including_emulation=False)

    def free_memory(self) -> int:
        free, _ = torch.cuda.mem_get_info(self.device)
        return int(free)

    def peak_bytes(self) -> int:
        return int(torch.cuda.max_memory_allocated(self.device))

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def free_cache(self) -> None:
        gc.collect()
        torch.cuda.empty_cache()
        self.reset_peak()


_MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.bmm.default, torch.ops.aten.addmm.default,
            torch.ops.aten.baddbmm.default}


def _tf32_allowed(func) -> bool:
    """Whether a card of compute capability 8.0+ would run this fp32 operator in TF32 now."""
    if func in _MATMULS:
        return torch.backends.cuda.matmul.allow_tf32
    return func is torch.ops.aten.convolution.default and torch.backends.cudnn.allow_tf32


def _to_tf32(value):
    """An fp32 tensor rounded to TF32's 10-bit mantissa (to nearest), as the card's tensor cores
    read it; anything else unchanged."""
    if not isinstance(value, torch.Tensor) or value.dtype != torch.float32:
        return value
    return ((value.view(torch.int32) + 0x1000) & -0x2000).view(torch.float32)


class _LiveStorage(TorchDispatchMode):
    """Counts the bytes of every live tensor storage an operator produced or read on this thread.
    A storage is counted once, from the first time it is seen until it is freed (a weak reference
    to the storage fires then; torch keeps one Python object per storage alive with it)."""

    def __init__(self, card: SimulatedAccelerator):
        super().__init__()
        self.card = card

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.card.on_host and self.card._capability >= (8, 0) and _tf32_allowed(func):
            args = tree_map(_to_tf32, args)  # as the card's tensor cores read fp32 operands
        out = func(*args, **(kwargs or {}))
        if self.card.on_host:
            return out
        self.card._track(tree_leaves(args), raise_oom=False)
        self.card._track(tree_leaves(out), raise_oom=True)
        return out


class SimulatedAccelerator(CpuAccelerator):
    """A GPU of the fake hardware file's VRAM and compute capability, run on the CPU."""

    kind = "simulated"
    is_gpu = True

    def __init__(self, name: str, total_bytes: int, capability: tuple[int, int]):
        self.device = torch.device("cpu")
        self._name, self.total, self._capability = name, int(total_bytes), tuple(capability)
        self.live: dict[int, tuple[weakref.ref, int]] = {}
        self.allocated = 0
        self.peak = 0
        self.on_host = 0  # inside `host()`: nothing is counted
        # Storages may be freed from another thread (the loader's), and from this one inside the
        # lock: a garbage collection run while the bookkeeping allocates fires `_freed` there.
        self._lock = threading.RLock()

    @property
    def name(self) -> str:
        return f"{self._name} (simulated)"

    def total_memory(self) -> int:
        return self.total

    def capability(self) -> tuple[int, int]:
        return self._capability

    def bf16_supported(self) -> bool:
        return self._capability >= (8, 0)

    def free_memory(self) -> int:
        return self.total - self.allocated

    def peak_bytes(self) -> int:
        return self.peak

    def reset_peak(self) -> None:
        self.peak = self.allocated

    def free_cache(self) -> None:
        gc.collect()  # frees what only reference cycles held, as before a real empty_cache
        self.reset_peak()

    def active(self):
        return _LiveStorage(self)

    @contextlib.contextmanager
    def host(self):
        self.on_host += 1
        try:
            yield
        finally:
            self.on_host -= 1

    def _freed(self, key: int, nbytes: int) -> None:
        with self._lock:
            if self.live.pop(key, None) is not None:
                self.allocated -= nbytes

    def _track(self, leaves, raise_oom: bool) -> None:
        for leaf in leaves:
            if not isinstance(leaf, torch.Tensor):
                continue
            storage = leaf.untyped_storage()
            key = storage._cdata
            if key in self.live:
                continue
            nbytes = storage.nbytes()
            if raise_oom and self.allocated + nbytes > self.total:
                raise torch.OutOfMemoryError(
                    f"simulated out of memory: {nbytes} more bytes on {self.name} with "
                    f"{self.allocated} of {self.total} in use")
            with self._lock:
                self.live[key] = (weakref.ref(storage, functools.partial(self._freed_ref, key, nbytes)), nbytes)
                self.allocated += nbytes
                self.peak = max(self.peak, self.allocated)

    def _freed_ref(self, key: int, nbytes: int, _ref) -> None:
        self._freed(key, nbytes)


def _simulated() -> SimulatedAccelerator:
    if not os.environ.get(FAKE_ENV):
        raise UserError(f"{SIMULATE_ENV}=1 needs {FAKE_ENV}=FILE describing the card to simulate "
                        '(JSON like {"gpus": [{"name": "T4", "vram_gb": 16, "compute_capability": [7, 5]}]})')
    hardware = probe()
    if not hardware.gpus:
        raise UserError(f"{SIMULATE_ENV}=1: {FAKE_ENV}={hardware.source} describes no GPU to simulate; "
                        'add one, e.g. "gpus": [{"name": "T4", "vram_gb": 16, "compute_capability": [7, 5]}]')
    card = min(hardware.gpus, key=lambda gpu: gpu.vram_gb)  # every rank must fit the smallest
    return SimulatedAccelerator(card.name, int(card.vram_gb * 2**30), card.compute_capability)


@functools.cache
def current() -> CpuAccelerator:
    """This process's accelerator: the simulated card when asked for, else CUDA when present."""
    if os.environ.get(SIMULATE_ENV, "") not in ("", "0"):
        return _simulated()
    if torch.cuda.is_available():
        return CudaAccelerator(int(os.environ.get("LOCAL_RANK", 0)))
    return CpuAccelerator()
