"""Weight files users exchange: `.safetensors` with our metadata, and other trainers' `.pth`.

A `.safetensors` written by `save` names the family (`architecture`), the option and variant, the
scale and the hyper-parameters (for `arch=custom`: the class's import path, `target`, and its
parameters), so `load` rebuilds the model from the file alone. Files without that metadata
(traiNNer-redux checkpoints with `params_ema` / `params`, neosr's, bare state dicts) are given to
every family's `recognise` (see `spec.py`) and accepted only where the network it names has
exactly the file's keys and shapes. Pickled files are only ever read with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_bytes
from torch import nn

from zerosr.atomic import atomic_write_bytes
from zerosr.errors import UserError

from .spec import CUSTOM, Recognised, build, families, options, variant, variants

# Prefixes that DistributedDataParallel and torch.compile put in front of parameter names.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

# traiNNer and neosr checkpoints keep the weights under one of these keys; EMA weights are preferred.
CHECKPOINT_KEYS = ("params_ema", "params-ema", "params", "state_dict", "model_state_dict", "model", "net_g", "net")


def unwrap(model: nn.Module) -> nn.Module:
    """The bare network inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def save(model: nn.Module, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write the model's weights to `path` as safetensors, atomically, with metadata.

    Extra `metadata` values are stored as strings (JSON for non-strings). Returns the path.
    """
    net = unwrap(model)
    state = strip_prefixes(net.state_dict())
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state.items()}
    header = {key: value if isinstance(value, str) else json.dumps(value) for key, value in (metadata or {}).items()}
    header.update(identity_metadata(net, state))
    path = Path(path)
    # Serialised in memory, then written by atomic_write_bytes: a crash leaves the old file or the
    # new one, and a full disk is one line (UserError) instead of a safetensors I/O traceback.
    atomic_write_bytes(path, save_bytes(tensors, metadata=header))
    return path


def identity_metadata(net: nn.Module, state: dict) -> dict[str, str]:
    """The header entries that say which network the weights are for."""
    name = getattr(net, "arch_name", None)
    if name == CUSTOM:
        return {"architecture": CUSTOM, "name": CUSTOM, "target": net.arch_target, "scale": str(int(net.scale)),
                "params": json.dumps(net.arch_params, sort_keys=True)}
    if name is not None:
        found = Recognised(name, int(net.scale), dict(net.arch_params))
    else:
        found = recognise(state)  # built without `build`: recognised from its weights
        if found is None:
            raise ValueError("cannot save: the model was not made by zerosr.archs.build and matches no known variant")
    chosen = variant(found.option)
    return {"architecture": chosen.family, "name": found.option, "variant": chosen.variant,
            "scale": str(found.scale), "params": json.dumps(found.params, sort_keys=True)}


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def load_state_dict_file(path: str | os.PathLike, key: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read (state dict, metadata) from a safetensors or torch file without building a model.

    Torch files may hold a bare state dict or a traiNNer checkpoint; `key` picks the entry,
    otherwise `params_ema`, then `params` (then `state_dict`, `model`) is used. `module.` and
    `_orig_mod.` prefixes are removed. Metadata is empty for torch files.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such weights file: check the path")
    if _is_safetensors(path):
        state, metadata = _read_safetensors(path)
    else:
        state, metadata = _read_torch(path, key), {}
    if not state or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise UserError(f"{path} holds no state dict of tensors: pass a weights file saved by zerosr or traiNNer")
    return strip_prefixes(state), metadata


def _is_safetensors(path: Path) -> bool:
    # 8-byte little-endian header length, then the JSON header; torch files are zip or pickle.
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            state = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable safetensors file ({_short(exc)}): re-download or re-save it") from None
    return state, metadata


def _read_torch(path: Path, key: str | None) -> dict:
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle corruption surfaces as many different types
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if isinstance(exc, pickle.UnpicklingError) and refused:
            raise UserError(
                f"{path} contains Python objects besides tensors ({refused.group(1)}), which are never "
                f"unpickled: re-save it as a plain state dict or as .safetensors"
            ) from None
        raise UserError(f"{path} is not a readable torch weights file ({_short(exc)}): re-download or re-save it") from None
    if not isinstance(content, dict):
        raise UserError(f"{path} holds a {type(content).__name__}, not a state dict: pass a weights file")
    if key is not None:
        if key not in content:
            raise UserError(f"{path} has no entry {key!r}: available entries are {', '.join(map(str, content))}")
        content = content[key]
    else:
        for candidate in CHECKPOINT_KEYS:
            if isinstance(content.get(candidate), dict):
                content = content[candidate]
                break
    return content if isinstance(content, dict) else {}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _short(exc: BaseException) -> str:
    text = _one_line(exc)
    return text if len(text) <= 120 else text[:117] + "..."


# --------------------------------------------------------------------------------------------
# Recognising a state dict
# --------------------------------------------------------------------------------------------


def recognise(state: dict[str, torch.Tensor]) -> Recognised | None:
    """The built-in network (option, scale, full hyper-parameters) with exactly these keys and
    shapes, asking every family in turn; None when none has them."""
    found = _recognise(state)
    return None if found is None else found[0]


def _recognise(state: dict[str, torch.Tensor]) -> tuple[Recognised, dict] | None:
    """`recognise`, with the state dict in the family's own key layout (see `Family.rename`)."""
    state = strip_prefixes(state)
    for entry in families().values():
        if entry.recognise is None or not entry.variants:
            continue
        own = entry.rename(state) if entry.rename is not None else state
        table = {name: v.params for name, v in entry.variants.items()}
        found = entry.recognise(own, table)
        if found is not None and _shapes_match(own, found):
            return found, own
    return None


def infer(state: dict[str, torch.Tensor]) -> tuple[str, int, dict] | None:
    """(option, scale, overrides of the option's hyper-parameters) for a recognised state dict."""
    found = recognise(state)
    if found is None:
        return None
    defaults = variants()[found.option].params
    return found.option, found.scale, {k: v for k, v in found.params.items() if defaults.get(k, _ABSENT) != v}


_ABSENT = object()


def identify(state: dict[str, torch.Tensor]) -> tuple[str, int] | None:
    """(option, scale) when the state dict is exactly that variant with its default settings."""
    found = infer(state)
    if found is None or found[2]:
        return None
    return found[0], found[1]


def _shapes_match(state: dict, found: Recognised) -> bool:
    try:
        expected = expected_shapes(found.option, found.scale, **found.params)
    except UserError:
        return False
    return expected == {key: tuple(value.shape) for key, value in state.items()}


def expected_shapes(name: str, scale: int, **params) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of a built-in network, built on the meta device (no memory)."""
    return dict(_expected_shapes(name, scale, tuple(sorted(params.items()))))


@functools.lru_cache(maxsize=64)
def _expected_shapes(name: str, scale: int, params: tuple) -> tuple[tuple[str, tuple[int, ...]], ...]:
    with torch.device("meta"):
        model = build(name, scale, **dict(params))
    return tuple((key, tuple(value.shape)) for key, value in model.state_dict().items())


# --------------------------------------------------------------------------------------------
# Loading a model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Weights:
    """A weights file read and recognised: its state dict and the network it is for."""

    path: Path
    state: dict
    name: str  # the arch option (a conf/arch file's name), or custom
    scale: int
    params: dict
    label: str  # how messages name the file, e.g. "best.safetensors" or "train.pretrain=PATH"
    target: str | None = None  # arch=custom: the network class's import path

    @property
    def holds(self) -> str:
        """What the file holds, as messages name it: `<option> x4`, `custom my_pkg.Net x2`."""
        return f"{self.name}{f' {self.target}' if self.target else ''} x{self.scale}"


def read_weights(
    path: str | os.PathLike,
    name: str | None = None,
    scale: int | None = None,
    key: str | None = None,
    label: str | None = None,
    target: str | None = None,
) -> Weights:
    """Read a weights file and say which network it holds; the one reader behind every loader.

    Files with zerosr metadata say it; others are recognised from their weights, and when that
    fails `name` and `scale` (and `target` for arch=custom) are taken as given. With them given, a
    file of another family, variant, network class or scale is refused in one line saying what
    it holds. `label` names the file in messages (default: its file name).
    """
    path = Path(path)
    label = label or path.name
    state, metadata = load_state_dict_file(path, key)
    weights = _file_identity(path, state, metadata, name, scale, target, label)
    if ((name is not None and name != weights.name) or (scale is not None and int(scale) != weights.scale)
            or (target is not None and weights.target is not None and target != weights.target)):
        wanted = Weights(path, {}, name or weights.name, int(scale) if scale is not None else weights.scale, {}, label,
                         target if (name or weights.name) == CUSTOM else None).holds
        raise UserError(
            f"{label} holds {weights.holds}, but the run uses {wanted}: "
            f"use weights for {wanted} or set the run to {weights.holds}"
        )
    return weights


def load_weights(model: nn.Module, weights: Weights) -> nn.Module:
    """Copy `weights` into `model` (every tensor, exact shapes); a misfit is one line naming it."""
    net = unwrap(model)
    try:
        net.load_state_dict(weights.state, strict=True)
    except RuntimeError:
        name, scale = getattr(net, "arch_name", weights.name), getattr(net, "scale", weights.scale)
        raise UserError(f"{weights.label} does not fit {name} x{scale}: {_mismatch(net, weights.state)}") from None
    return model


def load(
    path: str | os.PathLike,
    name: str | None = None,
    scale: int | None = None,
    device: str | torch.device = "cpu",
    key: str | None = None,
) -> nn.Module:
    """Rebuild the network a weights file was saved from, in eval mode on `device`.

    With `name` / `scale` given, a file for another variant or scale is refused with a message
    saying what it holds (see `read_weights`).
    """
    weights = read_weights(path, name, scale, key)
    model = build(weights.name, weights.scale, weights.target, **weights.params)
    return load_weights(model, weights).to(device).eval()


def _file_identity(path: Path, state: dict, metadata: dict, name: str | None, scale: int | None,
                   target: str | None, label: str) -> Weights:
    if "architecture" in metadata or "params" in metadata:
        family_name = metadata.get("architecture", "unknown")
        if family_name != CUSTOM and family_name not in families():
            raise UserError(f"{path.name} holds a {family_name} model, which this zerosr cannot build: pass weights "
                            f"of {', '.join(sorted(families()))}, or of arch=custom")
        try:
            file_name = metadata.get("name") or metadata["variant"]
            file_scale = int(metadata["scale"])
            params = json.loads(metadata.get("params", "{}"))
            file_target = metadata["target"] if family_name == CUSTOM else None
        except (KeyError, ValueError) as exc:
            raise UserError(f"{path.name} has damaged zerosr metadata ({_one_line(exc)}): re-save it") from None
        if family_name != CUSTOM and file_name not in variants():
            raise UserError(f"{path.name} holds unknown {family_name} variant {file_name!r}: choose one of "
                            f"{', '.join(options())}")
        return Weights(path, state, file_name if family_name != CUSTOM else CUSTOM, file_scale, params, label,
                       file_target)
    found = _recognise(state)
    if found is not None:
        return Weights(path, found[1], found[0].option, found[0].scale, found[0].params, label)
    if name is not None and scale is not None:
        return Weights(path, state, name, int(scale), {}, label, target if name == CUSTOM else None)
    raise UserError(
        f"cannot tell which network {path.name} is for: zerosr recognises plain files of "
        f"{', '.join(sorted(families()))}; pass the arch option and scale it was trained with"
    )


def _mismatch(model: nn.Module, state: dict) -> str:
    own = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    theirs = {key: tuple(value.shape) for key, value in state.items()}
    missing = sorted(set(own) - set(theirs))
    extra = sorted(set(theirs) - set(own))
    resized = sorted(k for k in set(own) & set(theirs) if own[k] != theirs[k])
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if extra:
        parts.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
    if resized:
        parts.append(f"{len(resized)} with other shapes (e.g. {resized[0]} {theirs[resized[0]]} vs {own[resized[0]]})")
    return "; ".join(parts) or "tensors do not match"
