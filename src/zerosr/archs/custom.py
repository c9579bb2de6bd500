"""`arch=custom`: the user's own network, named by its import path.

    python train.py arch=custom arch._target_=my_pkg.MyNet '+arch.params={width: 32}'

The contract: `MyNet(scale=S, **params)` is an `nn.Module` (a class, or a function returning one)
and its forward maps LR (N, 3, h, w) to (N, 3, h*S, w*S). `build_custom` checks the first half
when it builds, `check_contract` the second with one small forward (preflight runs it before any
training); whatever does not hold is one line. Its weights are saved with `target` and `params`
in the metadata, so `archs.load` rebuilds it wherever the class can be imported.
"""

from __future__ import annotations

import importlib
import inspect

import torch
from torch import nn

from zerosr.errors import UserError

# The LR side of the contract check: small, and a multiple of the usual window sizes (8, 16, 32).
CHECK_SIZE = 32


def import_target(target: str | None):
    """The class or factory `target` names (`package.module.Name`), or one line saying why not."""
    if not target or target == "???":
        raise UserError("arch=custom needs the network's import path: add arch._target_=my_pkg.MyNet")
    module_name, _, attribute = str(target).rpartition(".")
    if not module_name:
        raise UserError(f"arch._target_={target} is not an import path: write it as package.module.ClassName")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - the user's module: any error it raises is theirs
        raise UserError(f"arch._target_={target}: cannot import {module_name} ({type(exc).__name__}: "
                        f"{_short(exc)}): check the path and that the package is on PYTHONPATH") from None
    if not hasattr(module, attribute):
        raise UserError(f"arch._target_={target}: {module_name} has no {attribute!r}: check the name")
    return getattr(module, attribute)


def build_custom(target: str | None, scale: int, params: dict) -> nn.Module:
    """The user's network at `scale`, with `arch_target` set (`spec.build` marks the rest, so that
    `archs.save` records `target` and `params`)."""
    network = import_target(target)
    if not callable(network):
        raise UserError(f"arch._target_={target} is a {type(network).__name__}, not a network class: "
                        "name an nn.Module subclass")
    try:
        accepted = inspect.signature(network).parameters
    except (TypeError, ValueError):
        accepted = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    if "scale" not in accepted and not takes_any:
        raise UserError(f"arch._target_={target} takes no `scale` argument: its __init__ must accept scale "
                        "(zerosr passes the run's scale)")
    unknown = sorted(set(params) - set(accepted)) if not takes_any else []
    if unknown:
        raise UserError(f"arch.params has {', '.join(unknown)}, which {target} does not take: its arguments are "
                        f"{', '.join(name for name in accepted if name != 'self')}")
    try:
        model = network(scale=int(scale), **params)
    except Exception as exc:  # noqa: BLE001 - the user's constructor
        raise UserError(f"arch._target_={target} could not be built with scale={scale} and arch.params "
                        f"{dict(params)} ({type(exc).__name__}: {_short(exc)}): fix arch.params or the class") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"arch._target_={target} made a {type(model).__name__}, not an nn.Module: name a network class")
    model.arch_target = str(target)
    return model


def check_contract(model: nn.Module, scale: int) -> None:
    """One forward of a (1, 3, 32, 32) LR patch: the output must be (1, 3, 32*scale, 32*scale)."""
    target = getattr(model, "arch_target", type(model).__name__)
    lq = torch.rand(1, 3, CHECK_SIZE, CHECK_SIZE)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(lq)
    except Exception as exc:  # noqa: BLE001 - the user's forward
        raise UserError(f"arch._target_={target} fails on a (1, 3, {CHECK_SIZE}, {CHECK_SIZE}) LR input "
                        f"({type(exc).__name__}: {_short(exc)}): forward must take an (N, 3, h, w) image") from None
    finally:
        model.train(was_training)
    expected = (1, 3, CHECK_SIZE * scale, CHECK_SIZE * scale)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"arch._target_={target} turns a (1, 3, {CHECK_SIZE}, {CHECK_SIZE}) input into {shape}, "
                        f"expected {expected} at scale {scale}: forward must return (N, 3, h*scale, w*scale)")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."
