"""Hardware tiers and the per-machine facts a tier's config node reads through resolvers."""

from __future__ import annotations

import os
import sys

from zerosr.detect.hardware import Hardware

TIERS = ("cpu", "budget", "mid_range", "high_end", "workstation")

# Upper VRAM bound (GB, inclusive) of each GPU tier; above the last one is `workstation`.
_VRAM_LIMITS = (("budget", 4.0), ("mid_range", 8.0), ("high_end", 24.0))

# Cards sold as "4 GB" or "8 GB" report a little less than that to NVML; a GB of slack keeps a
# 24 GB card in high_end and an 8 GB one in mid_range whatever the driver reserves.
_REPORTING_SLACK_GB = 0.5


def tier_for(hardware: Hardware) -> str:
    """The tier of this machine: `cpu` without a CUDA GPU, otherwise by per-GPU VRAM."""
    if not hardware.has_gpu:
        return "cpu"
    vram = hardware.vram_gb
    for tier, limit in _VRAM_LIMITS:
        if vram <= limit + _REPORTING_SLACK_GB:
            return tier
    return "workstation"


def precision_for(hardware: Hardware, no_gpu_default: str) -> str:
    """bf16 needs compute capability >= 8.0 (Ampere); older GPUs use fp16 with a GradScaler.

    `no_gpu_default` is the tier's own choice for when no GPU is seen (a tier forced on the command
    line on a CPU-only machine, to inspect what it would do); the trainer still runs fp32 on CPU.
    """
    capability = hardware.compute_capability
    if capability is None:
        return no_gpu_default
    return "bf16" if capability >= (8, 0) else "fp16"


def processes_on_this_node() -> int:
    """Training processes sharing this machine's cores: torchrun's LOCAL_WORLD_SIZE, SLURM's tasks
    on this node under hydra/launcher=slurm_ddp, else one (a plain run uses one GPU, however many
    are visible)."""
    value = os.environ.get("LOCAL_WORLD_SIZE")
    if value is None and os.environ.get("ZEROSR_SLURM_DDP") == "1":
        value = os.environ.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return 1


def loader_workers(hardware: Hardware, cap: int, share: float = 0.5, data: str = "") -> int:
    """DataLoader workers: `share` of the logical cores per training process, at most `cap`.

    GPU tiers give half the cores to loading (the GPU does the maths). On the cpu tier the model's
    own threads need the cores: a worker there takes a core from every matrix product, and with
    decoded images cached in RAM the main process cuts patches in ~1 % of a step anyway. Not so
    with `data=realistic`, whose loader makes every LR patch (blur, noise, JPEG, twice): on 2 cores
    that is 20 % of a nano step at 0 workers and 2.7 % with one, which also trains slightly faster
    (`python bench/degradations.py --skip-runs`), so it gets at least one worker where there are
    two cores to share.
    """
    per_process = hardware.cpu_logical_cores // processes_on_this_node()
    workers = max(0, min(cap, int(per_process * share)))
    return max(workers, 1) if data == "realistic" and per_process >= 2 else workers


def generation(capability: tuple[int, int] | None) -> str:
    """Marketing name of an NVIDIA architecture generation, for the report."""
    if capability is None:
        return "none"
    names = {(3,): "Kepler", (5,): "Maxwell", (6,): "Pascal", (7, 0): "Volta", (7, 2): "Volta",
             (7, 5): "Turing", (8, 0): "Ampere", (8, 6): "Ampere", (8, 7): "Ampere",
             (8, 9): "Ada Lovelace", (9,): "Hopper", (10,): "Blackwell", (12,): "Blackwell"}
    return names.get(capability) or names.get((capability[0],), f"compute {capability[0]}.{capability[1]}")


# torch.compile's GPU backend (Inductor) writes Triton kernels, and Triton has no Windows build.
COMPILE_OFF_ON_WINDOWS = "off on Windows: torch.compile needs Triton, which has no Windows build (hardware_tier.compile=true to try)"


def on_windows() -> bool:
    return sys.platform == "win32"


def compile_for(wanted: bool) -> bool:
    """The tier's torch.compile, unless this is Windows (see COMPILE_OFF_ON_WINDOWS)."""
    return bool(wanted) and not on_windows()
