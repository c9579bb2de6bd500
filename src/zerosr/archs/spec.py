"""Architecture families: one `Family` entry per network family, the one place that knows it.

zerosr trains any network with the same automations; what differs between networks is said once,
per family, and everything else (engine, config, preflight, upscale, evaluate, export, the
hardware report) asks this module. The idea is torchtitan's `TrainSpec`: one registry entry per
model family.

How to add a family
-------------------
Two things, and no other file changes:

1. One file `src/zerosr/archs/<family>.py` holding the network class and, at module level,

       FAMILY = Family(
           name="SPAN",                       # unique; written into weight files' metadata
           network=SPAN,                      # called as network(scale=S, **params)
           scales=(2, 3, 4),                  # the scales it supports
           recognise=recognise_span,          # plain state dict -> Recognised | None (below)
           tiling=lambda model: Tiling(context=8),         # what tiled inference needs
           feature_width=lambda params: params["feature_channels"],  # for memory estimates
           onnx=True,                         # `python -m zerosr.export` may export it
           onnx_min_opset=11,                 # the oldest ONNX opset its graph needs
           run_options=(),                    # constructor keywords that are run options
       )

   Every module of `zerosr.archs` with a `FAMILY` (or a tuple `FAMILIES`) is registered; the
   file is imported on first use only (it may import torch: config composition never does).

   - `network(scale=S, **params)` maps LR (N, 3, h, w) to HR (N, 3, h*S, w*S). `build` sets
     `model.arch_name`, `.arch_family`, `.arch_params` and `.scale` on what it returns.
   - `recognise(state, variants)` reads a bare state dict (wrapper prefixes already stripped;
     traiNNer's `params_ema`/`params`, neosr's and plain `.pth` all arrive as one) and returns
     `Recognised(option, scale, params)` or None. `variants` maps the family's option names to
     their `params` (its `conf/arch` files), so a file that only says the width can be given the
     variant's other hyper-parameters. `archs.io` then builds that network on the meta device and
     accepts the file only if every key and shape agrees: `recognise` may be approximate.
   - `rename(state)` (optional) maps other key layouts of the same network to the family's own,
     before `recognise`; what it returns is what gets loaded.
   - `tiling(model)` returns `Tiling(context, grid, whole_image)`: LR pixels of context a tile
     needs on each side, the multiple tile origins must sit on (an attention window grid), and
     optionally `whole_image(model, lq, rows) -> dict` of forward keywords computed once over the
     whole image and passed to every tile (a global statistic). `engine/tiling.py` reads nothing
     else.
   - `feature_width(params)`: channels of the network's full-width feature maps; memory
     estimates (`engine/startup.py`, `inference.py`) scale with it. None: estimated from the
     built model's convolutions.
   - `run_options`: keywords the constructor takes that change how it runs, not its weights
     (gradient checkpointing): accepted by `build`, never written into weight files.

2. One file per variant, `conf/arch/<option>.yaml` (the Hydra option `arch=<option>`):

       name: span_s                 # the option, = the file name; runs are named after it
       family: SPAN                 # a registered Family.name
       variant: s                   # the variant's short name inside its family
       params: {...}                # every constructor keyword but `scale`
       preset:                      # how to train it, before the tier and the automations
         lr: 2.2e-4                 # base LR at the batch hint
         lr_source: range-test rule # long-run benchmark | short-run benchmark | range-test rule | by hand | measured at start-up
         divergence_lr: [2.8e-2, 3.3e-2]   # range test, seeds 0 and 1 (bench/lr_presets.py), or null
         anchor_divergence_lr: null  # the anchor's in the same runs, where it was measured again
         lr_anchor: false           # true for the one variant the range-test rule scales from
         lr_family_anchor: false    # true: its family scales from this variant instead
         family_lr_exponent: 1.0    # an anchor's: the rule's exponent for its family (config.presets)
         batch_size: 16             # batch hint (the tier scales it, the search moves it)
         total_iter: 80000
         warmup_iter: 2000
         ema_decay: 0.999
         betas: [0.9, 0.99]
         weight_decay: 0.0
         lq_size: 64                # LR patch side, and the range the batch search may move it in
         lq_size_min: 32
         lq_size_max: 128
         clip_percentile: 98.0      # AutoClip's percentile of recent gradient norms
         short_run_clip_percentile: null  # the same for runs of 600 iterations or fewer (null: as above)
         loss_schedule: {momentum: 0.93, adaptation_rate: 0.006, max_weight: 20.0,
                         adaptation_threshold: 0.08, baseline_iterations: 150}

   The file is the one home of these numbers: `build`, weight recognition and the Hydra config
   all read it. With `lr_source: range-test rule` the LR must be what
   `config.presets.lr_from_range_test` gives for `divergence_lr` against its anchor's (`anchor`:
   the family's own, else the one marked `lr_anchor`; a test checks every option). To measure a
   new option: `python bench/lr_presets.py --data BSD100_X2 --variants <anchor option> <option>
   --seed 0`, then `--seed 1`; its `divergence_lr` values give `lr` by the rule. The anchor is
   measured in the same runs: where its value differs from the anchor file's (the code moved
   since), record it as `anchor_divergence_lr`, and the rule uses it.

   `network` may also be a factory that picks a class from its params (two generations of a
   network in one family); `build` passes it every key of `params` and `scale`.

`arch=custom` (any `nn.Module` by `_target_`) is not a family: see `archs.custom`.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from omegaconf import OmegaConf

from zerosr.errors import UserError
from zerosr.paths import CONFIG_DIR

if TYPE_CHECKING:
    from torch import nn

ARCH_DIR = CONFIG_DIR / "arch"
CUSTOM = "custom"  # the option (and family name in weight files) of a user's own network
LR_SOURCES = ("long-run benchmark", "short-run benchmark", "range-test rule", "by hand", "measured at start-up")
# Modules of this package that are machinery, not families.
_NOT_FAMILIES = {"spec", "io", "custom"}


@dataclass(frozen=True)
class Tiling:
    """What tiled inference needs from a network (see `engine/tiling.py`)."""

    context: int = 0  # LR pixels of context each tile needs on every side (at least; callers may give more)
    grid: int = 1  # tile origins sit on multiples of this (e.g. an attention window's step)
    # (model, lq, rows) -> forward keywords computed once for the whole image, given to every tile
    whole_image: Callable[[Any, Any, int], dict] | None = None


@dataclass(frozen=True)
class Recognised:
    """What a weights file holds: an option of a family, its scale and its full hyper-parameters."""

    option: str
    scale: int
    params: dict


@dataclass(frozen=True)
class Family:
    name: str
    network: Callable[..., nn.Module]
    scales: tuple[int, ...] = (2, 3, 4, 8)
    recognise: Callable[[dict, dict], Recognised | None] | None = None
    tiling: Callable[[nn.Module], Tiling] = field(default=lambda model: Tiling())
    feature_width: Callable[[dict], int] | None = None
    onnx: bool = True
    onnx_min_opset: int = 11
    run_options: tuple[str, ...] = ()
    # Other trainers' key layouts of the same network -> this family's (e.g. ESRGAN's newer names);
    # applied before `recognise`, and the renamed state dict is what gets loaded.
    rename: Callable[[dict], dict] | None = None
    # spandrel (chaiNNer's model loader) reads this family's plain state dicts: `python -m
    # zerosr.export MODEL out.pth` writes one.
    spandrel: bool = False

    @property
    def variants(self) -> dict[str, Variant]:
        """This family's options, in the order of their presets' run length (smallest first)."""
        return {name: v for name, v in variants().items() if v.family == self.name}


@dataclass(frozen=True)
class Variant:
    """One `conf/arch/<option>.yaml`: a family's network with fixed hyper-parameters and a preset."""

    option: str
    family: str
    variant: str
    params: dict
    preset: dict


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def families() -> dict[str, Family]:
    """Every registered family by name (imports each family's file once)."""
    from zerosr import archs

    found: dict[str, Family] = {}
    for module in pkgutil.iter_modules(archs.__path__):
        if module.name in _NOT_FAMILIES or module.name.startswith("_"):
            continue
        loaded = importlib.import_module(f"{archs.__name__}.{module.name}")
        entries = getattr(loaded, "FAMILIES", ())
        if hasattr(loaded, "FAMILY"):
            entries = (*entries, loaded.FAMILY)
        for entry in entries:
            if entry.name in found or entry.name == CUSTOM:
                raise RuntimeError(f"architecture family {entry.name!r} is registered twice")
            found[entry.name] = entry
    return found


def family(name: str) -> Family:
    found = families()
    if name not in found:
        raise UserError(f"unknown architecture family {name!r}: zerosr knows {', '.join(sorted(found))}")
    return found[name]


@functools.lru_cache(maxsize=1)
def variants() -> dict[str, Variant]:
    """Every built-in option (`conf/arch/*.yaml` but `custom`), by family, then by run length.

    Plain data: reading it never imports torch or a family's file.
    """
    found = []
    for path in sorted(ARCH_DIR.glob("*.yaml")):
        if path.stem == CUSTOM:
            continue
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        option = data.get("name")
        if option != path.stem:
            raise RuntimeError(f"{path}: name {option!r} must equal the file name {path.stem!r}")
        preset = data["preset"]
        if preset.get("lr_source") not in LR_SOURCES:
            raise RuntimeError(f"{path}: preset.lr_source must be one of {', '.join(LR_SOURCES)}")
        found.append(Variant(option, str(data["family"]), str(data["variant"]), dict(data.get("params") or {}),
                             dict(preset)))
    found.sort(key=lambda v: (v.family, v.preset["total_iter"], v.option))
    return {v.option: v for v in found}


def variant(option: str) -> Variant:
    """The built-in option `option`; a name it does not know is one line listing the known ones."""
    known = variants()
    if option not in known:
        raise UserError(f"unknown architecture {option!r}: choose one of {', '.join(known)}, or {CUSTOM} with "
                        "arch._target_=your.Network")
    return known[option]


def options() -> list[str]:
    """Every option a run may name: the built-in variants, then `custom`."""
    return [*variants(), CUSTOM]


def anchor(family: str | None = None) -> Variant:
    """The variant the range-test LR rule scales `family`'s presets from: the family's own option
    with `preset.lr_family_anchor: true` (one whose LR training chose) where it has one, else the
    one option with `preset.lr_anchor: true`, which also serves `arch=custom` (family None). The
    divergence LR ranks the networks of one family, not networks across families: two that diverge
    at about the same LR trained best at LRs 2-4x apart (`zerosr.config.presets`)."""
    own = [v for v in variants().values() if v.preset.get("lr_family_anchor") and v.family == family]
    if len(own) > 1:
        raise RuntimeError(f"family {family} marks {len(own)} options with preset.lr_family_anchor: at most one may")
    if own:
        return own[0]
    marked = [v for v in variants().values() if v.preset.get("lr_anchor")]
    if len(marked) != 1:
        raise RuntimeError(f"exactly one conf/arch option must set preset.lr_anchor, found {len(marked)}")
    return marked[0]


def family_of(model: nn.Module) -> Family | None:
    """The family a built network belongs to (None for a custom or foreign network)."""
    name = getattr(model, "arch_family", None)
    return families().get(name) if name not in (None, CUSTOM) else None


# --------------------------------------------------------------------------------------------
# What the rest of zerosr asks
# --------------------------------------------------------------------------------------------


def build(option: str, scale: int, target: str | None = None, **params) -> nn.Module:
    """The network for `option` at `scale`; `params` override the variant's hyper-parameters.

    `option="custom"` builds the user's class `target` (an import path) with `params`.
    """
    if option == CUSTOM:
        from zerosr.archs.custom import build_custom

        return mark(build_custom(target, scale, params), CUSTOM, CUSTOM, int(scale), params)
    chosen = variant(option)
    owner = family(chosen.family)
    if isinstance(scale, bool) or scale not in owner.scales:
        raise UserError(f"{option} does not support scale {scale!r}: use one of {', '.join(map(str, owner.scales))}")
    keywords = {**chosen.params, **params}
    allowed = set(chosen.params) | set(owner.run_options) | set(_keywords(owner.network))
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise UserError(f"unknown parameter(s) {', '.join(unknown)} for {option}: valid ones are "
                        f"{', '.join(sorted(allowed))}")
    run = {key: keywords.pop(key) for key in owner.run_options if key in keywords}
    try:
        model = owner.network(scale=int(scale), **keywords, **run)
    except (TypeError, ValueError, RuntimeError) as exc:  # RuntimeError: torch refusing a size (negative, zero)
        own = ", ".join(f"{k}={v!r}" for k, v in chosen.params.items() if k in params and params[k] != v)
        raise UserError(f"{option} cannot be built with {changed_params(option, params)} ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:120]}): fix arch.params"
                        + (f" (its own: {own})" if own else "")) from None
    return mark(model, option, owner.name, int(scale), keywords)


def is_reshaped(option: str, params: dict) -> bool:
    """Whether `params` (a run's arch.params) make another network than the option's file names:
    its preset LR then no longer holds, and the preflight builds it before any work. The family's
    run options (checkpointing) change how the network runs, not what it is."""
    if option == CUSTOM or dict(params) == dict(variant(option).params):
        return False  # the common case decided without importing a family's file (and torch)
    return network_params(option, params) != network_params(option, variant(option).params)


def network_params(option: str, params: dict) -> dict:
    """`params` without the option's family's run options: what makes the network."""
    run = set(family(variant(option).family).run_options)
    return {key: value for key, value in params.items() if key not in run}


def changed_params(option: str, params: dict) -> str:
    """`params` that differ from the option's file, as `key=value` for a message."""
    own = variant(option).params
    return ", ".join(f"{k}={v!r}" for k, v in params.items() if k not in own or own[k] != v) or "its own parameters"


def mark(model: nn.Module, option: str, family_name: str, scale: int, params: dict) -> nn.Module:
    """Attach the identity that `archs.save` writes and `tiling` / memory estimates read."""
    model.arch_name = option
    model.arch_family = family_name
    model.arch_params = dict(params)
    if not hasattr(model, "scale"):
        model.scale = scale
    return model


def tiling(model: nn.Module) -> Tiling:
    """The tiling needs of a built network; a network of no family gets the defaults."""
    owner = family_of(model)
    return owner.tiling(model) if owner is not None else Tiling()


def onnx_min_opset(model: nn.Module) -> int | None:
    """The oldest ONNX opset the network exports at; None when its family does not export.
    A custom network is tried (the exporter says in one line if it fails)."""
    owner = family_of(model)
    if owner is None:
        return Family.onnx_min_opset
    return owner.onnx_min_opset if owner.onnx else None


def feature_width(model: nn.Module) -> int:
    """Channels of the network's full-width feature maps, the basis of its memory estimates."""
    owner = family_of(model)
    if owner is not None and owner.feature_width is not None:
        return int(owner.feature_width(model.arch_params))
    from torch import nn as torch_nn

    widths = [m.out_channels for m in model.modules() if isinstance(m, torch_nn.Conv2d)]
    return max(set(widths), key=widths.count) if widths else 64  # the most common conv width


def _keywords(network: Callable) -> tuple[str, ...]:
    import inspect

    try:
        signature = inspect.signature(network)
    except (TypeError, ValueError):
        return ()
    return tuple(name for name in signature.parameters if name not in ("self", "scale"))
