"""Process-group helpers for `torchrun` (DistributedDataParallel); every one is a no-op in a plain run.

`torchrun --nproc-per-node=N train.py ...` starts N copies of the same command with RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set; `init()` joins them into one process group
(NCCL on GPUs, gloo on CPU). Under SLURM without torchrun (the submitit launcher starts one task
per GPU), `ZEROSR_SLURM_DDP=1` maps SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID onto the same
variables (MASTER_ADDR and MASTER_PORT come from the job script; see conf/hydra/launcher).

The rule every caller follows: anything that decides (automations, early stop, out-of-memory
retries, validation metrics, the resume state) is computed from values that are identical on every
rank (all-reduced or broadcast from rank 0), so every rank takes the same decision at the same
iteration and the ranks' collective calls always line up.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def _adopt_slurm_env() -> None:
    """submitit/srun tasks: SLURM's task ids become torchrun's variables (only when asked for)."""
    if os.environ.get("ZEROSR_SLURM_DDP") != "1" or "WORLD_SIZE" in os.environ:
        return
    if _env_int("SLURM_NTASKS", 1) <= 1:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")


def launched() -> bool:
    """True in a process started by torchrun (or a SLURM DDP task) with more than one process."""
    _adopt_slurm_env()
    return _env_int("WORLD_SIZE", 1) > 1


def is_distributed() -> bool:
    if not launched():
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return _env_int("RANK", 0) if launched() else 0


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0) if launched() else 0


def world_size() -> int:
    return _env_int("WORLD_SIZE", 1) if launched() else 1


def is_main() -> bool:
    return rank() == 0


def init() -> str | None:
    """Join the process group once (NCCL with GPUs, gloo without). Returns the backend, or None
    when this is not a multi-process run."""
    if not launched():
        return None
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
            # Validation and start-up measurements run on rank 0 alone while the others wait in a
            # broadcast: NCCL's default 10-minute watchdog would abort a long validation.
            dist.init_process_group("nccl", timeout=datetime.timedelta(hours=2))
        else:
            dist.init_process_group("gloo", timeout=datetime.timedelta(hours=2))
    return dist.get_backend()


def backend() -> str | None:
    if not is_distributed():
        return None
    import torch.distributed as dist

    return dist.get_backend()


def shutdown() -> None:
    if is_distributed():
        import torch.distributed as dist

        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        import torch.distributed as dist

        dist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """`obj` from rank `src` on every rank (any picklable value; tensors inside come back on the CPU)."""
    if not is_distributed():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list:
    if not is_distributed():
        return [obj]
    import torch.distributed as dist

    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def _all_reduce(values: list[float], op: str) -> list[float]:
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", local_rank()) if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return tensor.cpu().tolist()


def all_reduce_mean(values: list[float]) -> list[float]:
    """The mean over ranks of each value (a NaN on any rank makes that mean NaN on all)."""
    if not is_distributed():
        return list(values)
    return [v / world_size() for v in _all_reduce(list(values), "sum")]


def all_reduce_max(value: float) -> float:
    if not is_distributed():
        return value
    return _all_reduce([value], "max")[0]


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on at least one."""
    if not is_distributed():
        return bool(flag)
    return _all_reduce([1.0 if flag else 0.0], "max")[0] > 0


def combine_step(means, maxes: list[float], flags: list[bool]) -> tuple[list[float], list[float], list[bool]]:
    """A step's numbers, read back in one go: the mean over ranks of `means` (a 1-D tensor on the
    device), the max of `maxes`, and whether any rank raised each of `flags`. One collective under
    torchrun; outside it, the step's one host sync."""
    if not is_distributed():
        return means.tolist(), list(maxes), [bool(flag) for flag in flags]
    import torch
    import torch.distributed as dist

    extra = torch.tensor([*maxes, *map(float, flags)], dtype=torch.float64, device=means.device)
    vector = torch.cat([means.to(torch.float64), extra])
    gathered = [torch.empty_like(vector) for _ in range(world_size())]
    dist.all_gather(gathered, vector)
    table = torch.stack(gathered).cpu()
    n, m = means.numel(), len(maxes)
    return (table[:, :n].mean(0).tolist(), table[:, n:n + m].amax(0).tolist(),
            (table[:, n + m:] > 0).any(0).tolist())


def average_gradients(module) -> None:
    """Replace each gradient of `module` by its mean over ranks (for modules outside DDP), in one
    all-reduce of all of them flattened together."""
    if not is_distributed():
        return
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    grads = [param.grad for param in module.parameters() if param.grad is not None]
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(world_size())
    for grad, mean in zip(grads, _unflatten_dense_tensors(flat, grads)):
        grad.copy_(mean)


class RankZeroFailed(RuntimeError):
    """Raised on the other ranks when what rank 0 ran for everyone failed there."""


def on_main(function: Callable[[], T]) -> T:
    """Run `function` on rank 0 only and give its result to every rank (e.g. read a state file:
    only rank 0 needs the run directory, so nodes need no shared file system). If it raises on
    rank 0, every rank raises (rank 0 its own error), rather than the others waiting in the
    broadcast until the backend's timeout."""
    if not is_distributed():
        return function()
    from zerosr.errors import UserError

    outcome: tuple = (None, None, False)
    error: BaseException | None = None
    if is_main():
        try:
            outcome = (function(), None, False)
        except Exception as failure:  # noqa: BLE001 - re-raised below on every rank
            error, outcome = failure, (None, str(failure), isinstance(failure, UserError))
    result, failed, users_mistake = broadcast_object(outcome)
    if error is not None:
        raise error
    if failed is not None:  # a user's mistake stays one line on every rank
        raise UserError(failed) if users_mistake else RankZeroFailed(f"rank 0 failed: {failed}")
    return result


def wrap(model, device):
    """The model in DistributedDataParallel (a no-op outside a process group)."""
    if not is_distributed():
        return model
    import warnings

    from torch.nn.parallel import DistributedDataParallel

    # Weights of shape [C, 1, k, k] (depthwise convolutions) get gradients whose stride on the
    # size-1 axis differs from the bucket's; the memory layout is the same, so DDP's warning is noise.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, output_device=device.index if ids else None)


def agree_run_dir(own: Path) -> Path:
    """Every rank uses rank 0's run directory.

    Hydra names a run directory by the time in microseconds, so each rank composes its own (and
    on several nodes the clocks differ anyway). After the process group exists, rank 0's directory
    is broadcast; every other rank detaches its log file from its own directory and removes that
    directory when it is not rank 0's and holds only what Hydra put there. Chosen over a
    directory-naming resolver keyed on torchrun's variables because nothing in the environment is
    both shared by all ranks and unique per run (TORCHELASTIC_RUN_ID is "none" unless --rdzv-id
    is given).
    """
    own = Path(own)
    chosen = Path(broadcast_object(str(own)))
    if is_main():
        return chosen
    _detach_file_logging(own)
    if own.resolve() != chosen.resolve() and own.is_dir():
        hydra_only = all(entry.name == ".hydra" or entry.suffix == ".log" for entry in own.iterdir())
        if hydra_only:
            shutil.rmtree(own, ignore_errors=True)
    return chosen


def _detach_file_logging(folder: Path) -> None:
    """Other ranks' log lines do not go into the run directory (only rank 0 writes there)."""
    folder = folder.resolve()
    for logger in [logging.getLogger()] + [logging.getLogger(name) for name in logging.root.manager.loggerDict]:
        for handler in list(getattr(logger, "handlers", [])):
            path = getattr(handler, "baseFilename", None)
            if path is not None and folder in Path(path).resolve().parents:
                logger.removeHandler(handler)
                handler.close()


def weights_digest(module) -> str:
    """sha256 of a module's parameters and buffers, in state-dict order."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for key, value in module.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def replicas_identical(*modules) -> bool:
    """True when every rank holds bit-identical weights in `modules` (one all-gather)."""
    if not is_distributed():
        return True
    digests = all_gather_object("".join(weights_digest(m) for m in modules))
    return len(set(digests)) == 1
