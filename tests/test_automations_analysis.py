"""Dataset analysis: three scores in [0, 1] that move with the content."""

from __future__ import annotations

import pytest
import torch

from zerosr.automations.dataset_analysis import analyse

SIZE = 32


def grey(value: float = 0.5, n: int = 4) -> torch.Tensor:
    return torch.full((n, 3, SIZE, SIZE), value)


def stripes(period: int = 4, n: int = 4) -> torch.Tensor:
    """Grey vertical stripes: strong edges, no colour."""
    row = ((torch.arange(SIZE) // (period // 2)) % 2).float()
    return row.expand(n, 3, SIZE, SIZE).clone()


def smooth_colours(n: int = 8) -> torch.Tensor:
    """Each image one gentle gradient of a different saturated colour: colour, few edges."""
    g = torch.Generator().manual_seed(0)
    colours = torch.rand(n, 3, 1, 1, generator=g)
    ramp = torch.linspace(0.8, 1.0, SIZE).view(1, 1, 1, SIZE)
    return (colours * ramp).expand(n, 3, SIZE, SIZE).clone()


def noise(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def test_flat_grey_scores_zero():
    scores = analyse([grey(), grey(0.2)])
    assert scores == pytest.approx({"texture_variance": 0.0, "edge_density": 0.0, "colour_variation": 0.0}, abs=1e-6)


def test_scores_tell_flat_edgy_colourful_and_textured_apart():
    flat, edgy, colourful, textured = (analyse([x]) for x in (grey(), stripes(), smooth_colours(), noise()))
    assert edgy["edge_density"] > 0.5 > flat["edge_density"]
    assert colourful["edge_density"] < 0.05
    assert colourful["colour_variation"] > 0.3 > edgy["colour_variation"] == flat["colour_variation"]
    assert textured["texture_variance"] > 0.6
    assert textured["texture_variance"] > colourful["texture_variance"]
    for scores in (flat, edgy, colourful, textured):
        assert all(0.0 <= v <= 1.0 for v in scores.values())


def test_edge_density_follows_the_share_of_edgy_content():
    half = stripes()
    half[..., : SIZE // 2, :] = 0.5  # the top half flat
    full, part = analyse([stripes()])["edge_density"], analyse([half])["edge_density"]
    assert 0.3 * full < part < 0.7 * full


def test_scores_aggregate_over_batches_and_accept_grey_channels():
    mixed = analyse([grey(), stripes()])
    assert analyse([grey()])["edge_density"] < mixed["edge_density"] < analyse([stripes()])["edge_density"]
    assert analyse([stripes()[:, :1]])["colour_variation"] == 0.0


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        analyse([])
    with pytest.raises(ValueError):
        analyse([torch.rand(3, SIZE, SIZE)])
