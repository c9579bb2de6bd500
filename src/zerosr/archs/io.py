"""Weight files users exchange: `.safetensors` with our metadata, and traiNNer-style `.pth`.

A `.safetensors` written by `save` names the architecture, variant, scale and hyper-parameters,
so `load` rebuilds the model from the file alone. Files without that metadata (traiNNer-redux
checkpoints, bare state dicts) are recognised from their tensor names and shapes. Pickled files
are only ever read with `torch.load(weights_only=True)`.
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

from .registry import PARAMETERS, build
from .variants import ARCHITECTURE, SCALES, VARIANTS

# Prefixes that DistributedDataParallel and torch.compile put in front of parameter names.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

# traiNNer checkpoints keep the weights under one of these keys; EMA weights are preferred.
CHECKPOINT_KEYS = ("params_ema", "params", "state_dict", "model")


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
    name, scale, params = _model_identity(net, state)
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state.items()}
    header = {key: value if isinstance(value, str) else json.dumps(value) for key, value in (metadata or {}).items()}
    header.update(
        {
            "architecture": ARCHITECTURE,
            "name": name,
            "variant": name,
            "scale": str(scale),
            "params": json.dumps(params, sort_keys=True),
        }
    )
    path = Path(path)
    # Serialised in memory, then written by atomic_write_bytes: a crash leaves the old file or the
    # new one, and a full disk is one line (UserError) instead of a safetensors I/O traceback.
    atomic_write_bytes(path, save_bytes(tensors, metadata=header))
    return path


def _model_identity(net: nn.Module, state: dict) -> tuple[str, int, dict]:
    name = getattr(net, "arch_name", None)
    if name is not None:
        return name, int(net.scale), dict(net.arch_params)
    found = infer(state)  # built without `build`: recognise it from its weights
    if found is None:
        raise ValueError("cannot save: the model was not made by zerosr.archs.build and matches no known variant")
    name, scale, overrides = found
    return name, scale, {**VARIANTS[name], **overrides}


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


def infer(state: dict[str, torch.Tensor]) -> tuple[str, int, dict] | None:
    """(variant, scale, overrides) whose network has exactly these keys and shapes, else None.

    The width (`conv_in`) names the variant, the upsampler's output channels give the scale,
    and structural options a traiNNer user may have changed (fast body mode, attention, norm,
    channel modulation, content-aware gain, band kernel, expansion) become overrides.
    """
    state = strip_prefixes(state)
    conv_in, up_conv = state.get("conv_in.weight"), state.get("upsampler_net.up_conv.weight")
    if conv_in is None or up_conv is None or conv_in.dim() != 4:
        return None
    num_feat = conv_in.shape[0]
    names = [name for name, params in VARIANTS.items() if params["num_feat"] == num_feat]
    ratio, rest = divmod(up_conv.shape[0], num_feat)
    scale = round(ratio**0.5)
    if not names or rest or scale * scale != ratio or scale not in SCALES:
        return None
    name = names[0]
    overrides = _structural_overrides(state, VARIANTS[name])
    if overrides is None or not _shapes_match(state, name, scale, overrides):
        return None
    return name, scale, overrides


def identify(state: dict[str, torch.Tensor]) -> tuple[str, int] | None:
    """(variant, scale) when the state dict is exactly that variant with its default settings."""
    found = infer(state)
    if found is None or found[2]:
        return None
    return found[0], found[1]


def _structural_overrides(state: dict, defaults: dict) -> dict | None:
    keys = set(state)
    groups = 1 + max((int(k.split(".")[1]) for k in keys if k.startswith("body.")), default=-1)
    blocks = 1 + max((int(k.split(".")[3]) for k in keys if k.startswith("body.0.blocks.")), default=-1)
    if groups < 1 or blocks < 1:
        return None
    block = "body.0.blocks.0."
    found = {
        "use_norm": f"{block}norm.scale" in keys,
        "use_channel_mod": f"{block}transformer.channel_mod.net.1.weight" in keys,
        "use_attention": f"{block}transformer.attention.gamma" in keys,
        "use_content_aware": any(k.startswith("content_processor.") for k in keys),
    }
    overrides = {flag: value for flag, value in found.items() if value != defaults[flag]}

    band = state.get(f"{block}context.dwconv_w.weight")
    if band is None or band.dim() != 4:
        return None
    if band.shape[-1] != defaults["band_kernel_size"]:
        overrides["band_kernel_size"] = int(band.shape[-1])

    hidden = state.get(f"{block}transformer.project_in.weight")
    if hidden is None:
        return None
    num_feat = defaults["num_feat"]
    if int(num_feat * defaults["ffn_expansion"]) != hidden.shape[0]:
        overrides["ffn_expansion"] = hidden.shape[0] / num_feat

    halved = (max(1, defaults["num_groups"] // 2), max(1, defaults["num_blocks"] // 2))
    full = (defaults["num_groups"], defaults["num_blocks"])
    expected = halved if defaults["fast_body_mode"] else full
    if (groups, blocks) != expected:
        overrides["fast_body_mode"] = False
        if (groups, blocks) != full:
            overrides.update(num_groups=groups, num_blocks=blocks)
    return overrides


def _shapes_match(state: dict, name: str, scale: int, overrides: dict) -> bool:
    expected = expected_shapes(name, scale, **overrides)
    return expected == {key: tuple(value.shape) for key, value in state.items()}


def expected_shapes(name: str, scale: int, **overrides) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of a variant, built on the meta device (no memory)."""
    return dict(_expected_shapes(name, scale, tuple(sorted(overrides.items()))))


@functools.lru_cache(maxsize=64)
def _expected_shapes(name: str, scale: int, overrides: tuple) -> tuple[tuple[str, tuple[int, ...]], ...]:
    with torch.device("meta"):
        model = build(name, scale, **dict(overrides))
    return tuple((key, tuple(value.shape)) for key, value in model.state_dict().items())


# --------------------------------------------------------------------------------------------
# Loading a model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Weights:
    """A weights file read and recognised: its state dict and the network it is for."""

    path: Path
    state: dict
    name: str
    scale: int
    params: dict
    label: str  # how messages name the file, e.g. "best.safetensors" or "train.pretrain=PATH"


def read_weights(
    path: str | os.PathLike,
    name: str | None = None,
    scale: int | None = None,
    key: str | None = None,
    label: str | None = None,
) -> Weights:
    """Read a weights file and say which network it holds; the one reader behind every loader.

    Files with zerosr metadata say it; others are recognised from their weights, and when that
    fails `name` and `scale` are taken as given. With `name` / `scale` given, a file for another
    variant or scale is refused in one line saying what it holds. `label` names the file in
    messages (default: its file name).
    """
    path = Path(path)
    label = label or path.name
    state, metadata = load_state_dict_file(path, key)
    file_name, file_scale, params = _file_identity(path, state, metadata, name, scale)
    if (name is not None and name != file_name) or (scale is not None and int(scale) != file_scale):
        wanted = f"{name or file_name} x{scale if scale is not None else file_scale}"
        raise UserError(
            f"{label} holds {file_name} x{file_scale}, but the run uses {wanted}: "
            f"use weights for {wanted} or set the run to {file_name} x{file_scale}"
        )
    return Weights(path, state, file_name, file_scale, params, label)


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
    model = build(weights.name, weights.scale, **weights.params)
    return load_weights(model, weights).to(device).eval()


def _file_identity(path: Path, state: dict, metadata: dict, name: str | None, scale: int | None) -> tuple[str, int, dict]:
    if "architecture" in metadata or "params" in metadata:
        if metadata.get("architecture") != ARCHITECTURE:
            raise UserError(
                f"{path.name} holds a {metadata.get('architecture', 'unknown')} model, not {ARCHITECTURE}: "
                f"pass weights for one of {', '.join(VARIANTS)}"
            )
        try:
            file_name = metadata.get("name") or metadata["variant"]
            file_scale = int(metadata["scale"])
            params = json.loads(metadata.get("params", "{}"))
        except (KeyError, ValueError) as exc:
            raise UserError(f"{path.name} has damaged zerosr metadata ({_one_line(exc)}): re-save it") from None
        if file_name not in VARIANTS:
            raise UserError(f"{path.name} holds unknown variant {file_name!r}: choose one of {', '.join(VARIANTS)}")
        return file_name, file_scale, {k: v for k, v in params.items() if k in PARAMETERS}
    found = infer(state)
    if found is not None:
        return found
    if name is not None and scale is not None:
        return name, int(scale), {}
    raise UserError(
        f"cannot tell which ParagonSR2 variant {path.name} is for: pass its name and scale "
        f"(one of {', '.join(VARIANTS)}; scale {', '.join(map(str, SCALES))})"
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
