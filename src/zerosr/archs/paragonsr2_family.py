"""The ParagonSR2 family ("hybrid" generation, nano to xl) as zerosr's family spec sees it.

The network is `paragonsr2.ParagonSR2`; its variants and presets are `conf/arch/paragonsr2_*.yaml`.
This file says how to recognise its weights from other trainers and what tiled inference needs.
"""

from __future__ import annotations

from .paragonsr2 import SCALES, ParagonSR2
from .spec import Family, Recognised, Tiling


def recognise(state: dict, variants: dict[str, dict]) -> Recognised | None:
    """The variant whose width (`conv_in`) the file has, its scale from the upsampler's output
    channels, and the structural options a traiNNer user may have changed (fast body mode,
    attention, norm, channel modulation, content-aware gain, band kernel, expansion)."""
    conv_in, up_conv = state.get("conv_in.weight"), state.get("upsampler_net.up_conv.weight")
    if conv_in is None or up_conv is None or conv_in.dim() != 4:
        return None
    num_feat = conv_in.shape[0]
    names = [name for name, params in variants.items() if params["num_feat"] == num_feat]
    ratio, rest = divmod(up_conv.shape[0], num_feat)
    scale = round(ratio**0.5)
    if not names or rest or scale * scale != ratio or scale not in SCALES:
        return None
    overrides = _structural_overrides(state, variants[names[0]])
    if overrides is None:
        return None
    return Recognised(names[0], scale, {**variants[names[0]], **overrides})


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


def _whole_image(model: ParagonSR2, lq, rows: int) -> dict:
    """The content-aware detail gain averages over the whole image: computed once, given to every tile."""
    gain = model.content_gain(lq, rows=rows)
    return {} if gain is None else {"gain": gain}


FAMILY = Family(
    name="ParagonSR2",
    network=ParagonSR2,
    scales=SCALES,
    recognise=recognise,
    # Window attention: tiles on the window grid see the whole image's windows.
    tiling=lambda model: Tiling(context=8, grid=model.tile_alignment, whole_image=_whole_image),
    feature_width=lambda params: params["num_feat"],
    onnx=True,
    onnx_min_opset=12,  # the window grid is computed with int64 Min/Max, which opset 12 introduced
    run_options=("checkpointing",),
)
