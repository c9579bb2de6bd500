"""Hyper-parameters of each ParagonSR2 variant: the single source the builder and the Hydra
`arch` config group read.

The numbers are those of the reference factories (traiNNer-redux, ParagonSR2 "hybrid" generation).
Values stay plain JSON so they can be written into a config or a weights file unchanged. `scale`
is not a hyper-parameter here: it is chosen per run.
"""

from __future__ import annotations

ARCHITECTURE = "ParagonSR2"

SCALES: tuple[int, ...] = (2, 3, 4, 8)


def _variant(
    num_feat: int,
    num_groups: int,
    num_blocks: int,
    ffn_expansion: float,
    band_kernel_size: int,
    upsampler_alpha: float,
    detail_gain: float,
    fast_body_mode: bool,
    use_norm: bool,
    use_channel_mod: bool,
    use_attention: bool,
) -> dict:
    return {
        "num_feat": num_feat,
        "num_groups": num_groups,
        "num_blocks": num_blocks,
        "ffn_expansion": ffn_expansion,
        "band_kernel_size": band_kernel_size,
        "upsampler_alpha": upsampler_alpha,
        "detail_gain": detail_gain,
        "fast_body_mode": fast_body_mode,
        "use_norm": use_norm,
        "use_channel_mod": use_channel_mod,
        "use_content_aware": True,
        "use_attention": use_attention,
        "use_channels_last": True,
    }


# fast_body_mode halves groups and blocks at build time (reference behaviour), so e.g. `s`
# really runs 1 group x 2 blocks. l and xl never enable attention in the reference factories.
VARIANTS: dict[str, dict] = {
    "paragonsr2_nano": _variant(12, 1, 1, 1.2, 7, 0.4, 0.05, True, False, False, True),
    "paragonsr2_micro": _variant(16, 1, 2, 1.5, 7, 0.45, 0.08, True, False, True, True),
    "paragonsr2_tiny": _variant(24, 2, 2, 1.5, 9, 0.5, 0.1, True, True, True, True),
    "paragonsr2_xs": _variant(32, 2, 3, 1.8, 11, 0.5, 0.1, True, True, True, True),
    "paragonsr2_s": _variant(48, 3, 4, 2.0, 11, 0.5, 0.1, True, True, True, True),
    "paragonsr2_m": _variant(64, 4, 6, 2.0, 11, 0.5, 0.1, False, True, True, True),
    "paragonsr2_l": _variant(96, 6, 8, 2.0, 13, 0.55, 0.1, False, True, True, False),
    "paragonsr2_xl": _variant(128, 8, 10, 2.0, 15, 0.6, 0.1, False, True, True, False),
}
