"""Hardware probe: GPUs through NVML, CPU and RAM through psutil.

This runs before Hydra composes the config, so it must be fast, must not import torch (a second
or more on import) and must never raise: a failed probe falls back to conservative values and
prints one warning line. `ZEROSR_FAKE_HARDWARE=/path/to.json` replaces the probe, so users and
tests can see what zerosr would choose on another machine.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field

FAKE_ENV = "ZEROSR_FAKE_HARDWARE"
FALLBACK_VRAM_GB = 8.0  # a GPU whose memory cannot be read is assumed to be a common 8 GB card
FALLBACK_CPU_CORES = 2
FALLBACK_RAM_GB = 8.0


@dataclass(frozen=True)
class GPUInfo:
    name: str
    vram_gb: float
    free_vram_gb: float
    compute_capability: tuple[int, int]
    driver: str = "unknown"


@dataclass(frozen=True)
class Hardware:
    gpus: tuple[GPUInfo, ...]
    cpu_physical_cores: int
    cpu_logical_cores: int
    ram_gb: float
    ram_available_gb: float
    source: str = "probe"  # "probe" or the fake-hardware file's path
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    @property
    def vram_gb(self) -> float:
        """Per-GPU VRAM that decides the tier: the smallest card, since every rank must fit."""
        return min(g.vram_gb for g in self.gpus) if self.gpus else 0.0

    @property
    def compute_capability(self) -> tuple[int, int] | None:
        return min(g.compute_capability for g in self.gpus) if self.gpus else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["gpus"] = [asdict(g) | {"compute_capability": list(g.compute_capability)} for g in self.gpus]
        d["warnings"] = list(self.warnings)
        return d


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _positive_float(value, what: str) -> float:
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{what} must be a positive number, got {value!r}")
    return number


def _nvidia_driver_present() -> bool:
    """On Linux the NVIDIA kernel driver publishes /proc/driver/nvidia; without it NVML cannot work,
    and skipping the pynvml import saves a third of the probe's time. Elsewhere, ask NVML."""
    return not sys.platform.startswith("linux") or os.path.exists("/proc/driver/nvidia")


def _probe_gpus() -> tuple[list[GPUInfo], list[str]]:
    """Ask NVML for every GPU. Returns the GPUs and the problems met (each becomes a warning)."""
    if not _nvidia_driver_present():
        return [], ["no NVIDIA driver found (/proc/driver/nvidia is missing): using the cpu tier"]
    try:
        import pynvml
    except ImportError:
        return [], ["nvidia-ml-py is not installed: no GPU can be detected, using the cpu tier"]
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return [], [f"NVML unavailable ({exc}): no NVIDIA GPU detected, using the cpu tier"]
    problems: list[str] = []
    gpus: list[GPUInfo] = []
    try:
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
            driver = driver.decode() if isinstance(driver, bytes) else str(driver)
        except pynvml.NVMLError:
            driver = "unknown"
        try:
            count = int(pynvml.nvmlDeviceGetCount())
        except (pynvml.NVMLError, TypeError, ValueError) as exc:
            return [], [f"NVML could not count GPUs ({exc}): using the cpu tier"]
        for index in _visible_indices(count, problems, lambda i: _uuid(pynvml, i)):
            gpus.append(_probe_one_gpu(pynvml, index, driver, problems))
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
    return gpus, problems


def _uuid(pynvml, index: int) -> str:
    try:
        raw = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(index))
        return raw.decode() if isinstance(raw, bytes) else str(raw)
    except (pynvml.NVMLError, AttributeError):
        return ""


def _visible_indices(count: int, problems: list[str], uuid=lambda index: "") -> list[int]:
    """The NVML indices CUDA will use. NVML numbers GPUs in PCI bus order, CUDA by default fastest
    first: `probe()` sets CUDA_DEVICE_ORDER=PCI_BUS_ID (when unset) so that both count alike.
    CUDA_VISIBLE_DEVICES, when set, lists them by index or by UUID (or a UUID's prefix), up to the
    first invalid entry, as CUDA reads it; MIG instances cannot be matched: all are counted."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(range(count))
    if os.environ.get("CUDA_DEVICE_ORDER", "PCI_BUS_ID") != "PCI_BUS_ID" and count > 1:
        problems.append(f"CUDA_DEVICE_ORDER={os.environ['CUDA_DEVICE_ORDER']} numbers GPUs unlike NVML: "
                        f"counting all {count}")
        return list(range(count))
    indices: list[int] = []
    for entry in (part.strip() for part in visible.split(",")):
        if entry.startswith("GPU-"):
            matches = [i for i in range(count) if uuid(i).startswith(entry)]
            index = matches[0] if len(matches) == 1 else -1
        elif entry.lstrip("-").isdigit():
            index = int(entry)
        else:
            if entry:
                problems.append(f"CUDA_VISIBLE_DEVICES={visible} names GPUs by MIG id: counting all {count}")
                return list(range(count))
            break
        if not 0 <= index < count or index in indices:
            break  # CUDA stops at the first invalid entry
        indices.append(index)
    return indices


def _probe_one_gpu(pynvml, index: int, driver: str, problems: list[str]) -> GPUInfo:
    """One GPU; anything unreadable or nonsensical falls back (8 GB, compute 7.0) with a problem noted."""
    name = f"GPU {index}"
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        raw = pynvml.nvmlDeviceGetName(handle)
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
    except pynvml.NVMLError as exc:
        problems.append(f"could not read the name of GPU {index} ({exc})")
        handle = None
    vram = free = FALLBACK_VRAM_GB
    try:
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        vram = _positive_float(memory.total / 2**30, "VRAM")
        free = max(0.0, min(vram, float(memory.free) / 2**30))
    except (pynvml.NVMLError, AttributeError, TypeError, ValueError) as exc:
        problems.append(f"could not read the VRAM of {name} ({exc}): assuming {FALLBACK_VRAM_GB:g} GB")
        vram = free = FALLBACK_VRAM_GB
    try:
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        capability = (int(major), int(minor))
        if not 1 <= capability[0] <= 20:
            raise ValueError(f"implausible compute capability {capability}")
    except (pynvml.NVMLError, TypeError, ValueError) as exc:
        problems.append(f"could not read the compute capability of {name} ({exc}): assuming 7.0")
        capability = (7, 0)
    return GPUInfo(name=name, vram_gb=round(vram, 2), free_vram_gb=round(free, 2),
                   compute_capability=capability, driver=driver)


def _probe_host() -> tuple[int, int, float, float, list[str]]:
    import psutil

    problems: list[str] = []
    logical = psutil.cpu_count(logical=True) or os.cpu_count() or FALLBACK_CPU_CORES
    physical = psutil.cpu_count(logical=False) or logical
    try:
        memory = psutil.virtual_memory()
        ram, available = memory.total / 2**30, memory.available / 2**30
    except (OSError, RuntimeError) as exc:
        problems.append(f"could not read the RAM size ({exc}): assuming {FALLBACK_RAM_GB:g} GB")
        ram = available = FALLBACK_RAM_GB
    return int(physical), int(logical), round(ram, 2), round(available, 2), problems


def _fake_hardware(path: str) -> Hardware:
    """Hardware described by a JSON file (format in the README); a broken file is a user error."""
    from zerosr.errors import UserError

    try:
        with open(path, encoding="utf-8") as handle:
            spec = json.load(handle)

        def cards(key: str) -> tuple[GPUInfo, ...]:
            return tuple(
                GPUInfo(
                    name=str(g.get("name", f"GPU {i}")),
                    vram_gb=_positive_float(g.get("vram_gb", FALLBACK_VRAM_GB), "vram_gb"),
                    free_vram_gb=float(g.get("free_vram_gb", g.get("vram_gb", FALLBACK_VRAM_GB))),
                    compute_capability=tuple(int(x) for x in g.get("compute_capability", (7, 0)))[:2],
                    driver=str(g.get("driver", "fake")),
                )
                for i, g in enumerate(spec.get(key, []))
            )

        gpus = cards("gpus")
        hidden = cards("gpus_without_nvml")  # a WSL2-like machine: torch sees these, NVML does not
        if hidden and not gpus:
            problems: list[str] = []
            gpus = tuple(_nvml_missed([], problems, fake={"gpus": hidden}))
            for problem in problems:
                _warn(problem)
        cores = int(spec.get("cpu_cores", FALLBACK_CPU_CORES))
        ram = _positive_float(spec.get("ram_gb", FALLBACK_RAM_GB), "ram_gb")
        return Hardware(gpus=gpus, cpu_physical_cores=int(spec.get("cpu_physical_cores", cores)),
                        cpu_logical_cores=cores, ram_gb=ram,
                        ram_available_gb=float(spec.get("ram_available_gb", ram)), source=path)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"{FAKE_ENV}={path} is not a usable hardware description ({exc}); "
                        'expected JSON like {"gpus": [{"name": "...", "vram_gb": 24.0, '
                        '"compute_capability": [8, 6]}], "cpu_cores": 16, "ram_gb": 64.0}') from exc


SIMULATE_ENV = "ZEROSR_SIMULATE_GPU"


def _simulating() -> bool:
    return os.environ.get(SIMULATE_ENV, "") not in ("", "0")


def _cuda_without_nvml_possible() -> bool:
    """Signs of a GPU that NVML may not report: WSL2 passes its GPU as /dev/dxg with no
    /proc/driver/nvidia; some containers pass /dev/nvidia0 without NVML's library."""
    return any(os.path.exists(path) for path in ("/dev/dxg", "/dev/nvidia0", "/proc/driver/nvidia"))


def _gpus_seen_by_torch(fake: dict | None) -> list[GPUInfo]:
    """The CUDA devices torch sees (the simulated card's file when simulating one). Imports torch,
    so it runs only when NVML found nothing where a GPU may still be."""
    if fake is not None:
        return list(fake["gpus"]) if _simulating() else []
    import torch

    if not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        vram = round(props.total_memory / 2**30, 2)
        gpus.append(GPUInfo(name=props.name, vram_gb=vram, free_vram_gb=vram,
                            compute_capability=(int(props.major), int(props.minor)), driver="unknown (no NVML)"))
    return gpus


def _nvml_missed(gpus: list[GPUInfo], problems: list[str], fake: dict | None = None) -> list[GPUInfo]:
    """NVML's GPUs, or where it found none (WSL2, some containers) those torch sees, so the tier,
    the memory target and the device a run trains on all describe the same card."""
    if gpus or (fake is None and not _cuda_without_nvml_possible()):
        return gpus
    seen = _gpus_seen_by_torch(fake)
    if seen:
        problems[:] = [p for p in problems if "using the cpu tier" not in p]
        problems.append(f"NVML reports no GPU but torch sees {len(seen)} ({seen[0].name}, as under WSL2): "
                        "tier and memory read through torch")
    return seen


@functools.cache
def probe() -> Hardware:
    """The machine's hardware, probed once per process (Hydra composes several times a run)."""
    fake = os.environ.get(FAKE_ENV)
    if fake:
        return _fake_hardware(fake)
    # CUDA then numbers the GPUs as NVML does (set before torch starts CUDA; inherited by torchrun's ranks).
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    gpus, problems = _probe_gpus()
    gpus = _nvml_missed(gpus, problems)
    physical, logical, ram, available, host_problems = _probe_host()
    problems += host_problems
    if problems:
        # One line, however many probes failed: the details follow on the same line.
        _warn("; ".join(problems))
    return Hardware(gpus=tuple(gpus), cpu_physical_cores=physical, cpu_logical_cores=logical,
                    ram_gb=ram, ram_available_gb=available, warnings=tuple(problems))
