"""SPAN, Compact, RealPLKSR and ESRGAN against spandrel 0.4.2, the loader chaiNNer uses.

The fixtures under tests/fixtures/archs/community/ were made by running spandrel's architecture
files alone (spandrel itself is never imported or installed here):
1. copy `libs/spandrel/spandrel/{util,__helpers/model_descriptor.py,__helpers/size_req.py,
   architectures/__arch_helpers/{block,padding}.py,architectures/{SPAN,Compact,PLKSR,ESRGAN}}`
   from chaiNNer-org/spandrel at tag v0.4.2 into a scratch `spandrel/` package (empty
   `__init__.py` files, `dysample.py` reduced to `DySample = None`);
2. for each variant, build spandrel's network with traiNNer-redux's factory settings at x2 and
   x4 (ESRGAN x2: `ESRGAN(scale=4, in_nc=12, shuffle_factor=2, ...)`; SPAN `norm=False`; plus a
   16-channel SPAN with `norm=True`), load `seeded_state(shapes)` from tests/seeded_weights.py,
   and record: every state-dict key and shape, what `<Family>Arch().load(state)` detects
   (id, scale, hyperparameters) -> spandrel_keys.json; the outputs for `seeded_input()` in
   train and eval mode -> spandrel_outputs.safetensors (key `<variant>_x<scale>/<mode>`);
3. for a 16-channel x2 SPAN with and without `norm`, in train mode: the gradients of
   `(output * torch.rand(output.shape, generator=torch.Generator().manual_seed(2))).sum()` for
   the parameters under conv_1, block_3.c2_r, block_6.c1_r, conv_2, conv_cat and upsampler ->
   spandrel_span_grads.safetensors (key `span_16_<norm|plain>/<parameter>`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from seeded_weights import seeded_input, seeded_state
from zerosr.archs import compact, esrgan, realplksr, span

FIXTURES = Path(__file__).parent / "fixtures" / "archs" / "community"
META = json.loads((FIXTURES / "spandrel_keys.json").read_text())
FAMILIES = {"SPAN": span, "Compact": compact, "PLKSR": realplksr, "ESRGAN": esrgan}
NETWORKS = {"SPAN": span.SPAN, "Compact": compact.Compact, "PLKSR": realplksr.RealPLKSR, "ESRGAN": esrgan.ESRGAN}
VARIANTS = {name: (family, params) for family, module in FAMILIES.items() for name, params in module.VARIANTS.items()}
EXTRA = {"span_norm": ("SPAN", {"feature_channels": 16, "norm": True})}  # spandrel's default normalised input
CASES = sorted(META)


def _case(tag: str) -> tuple[str, int, str, dict]:
    name, scale = tag.rsplit("_x", 1)
    family, params = {**VARIANTS, **EXTRA}[name]
    return name, int(scale), family, params


def _ours(tag: str, device: str = "meta") -> torch.nn.Module:
    _, scale, family, params = _case(tag)
    with torch.device(device):
        return NETWORKS[family](scale, **params)


def test_every_variant_is_pinned_at_x2_and_x4():
    assert {f"{name}_x{scale}" for name in VARIANTS for scale in (2, 4)} <= set(META)


@pytest.mark.parametrize("tag", CASES)
def test_state_dict_keys_and_shapes_match_spandrel(tag):
    ours = {key: list(value.shape) for key, value in _ours(tag).state_dict().items()}
    assert ours == META[tag]["keys"]


@pytest.mark.parametrize("tag", CASES)
def test_outputs_match_spandrel_in_train_and_eval_mode(tag):
    expected = load_file(FIXTURES / "spandrel_outputs.safetensors")
    model = _ours(tag, "cpu")
    model.load_state_dict(seeded_state(META[tag]["keys"]))
    x = expected["input"]
    with torch.no_grad():
        for mode in ("train", "eval"):
            model.train(mode == "train")
            reference, ours = expected[f"{tag}/{mode}"], model(x.clone())
            # Within 1e-5 of the output's scale: float32 rounding grows with the values, and its order
            # is the CPU's (vector width, summation order). ESRGAN x4's outputs (up to 21) after 23
            # RRDB blocks differ by 3.3e-5 from a fixture made on another machine.
            scale = max(1.0, reference.abs().max().item())
            if tag.startswith("span_norm"):
                # Inputs x255 make float32 rounding 255x larger, in spandrel as here. Spandrel's output
                # must equal our float64 result within that rounding (the networks compute the same),
                # and ours must be at least as close to it as spandrel's.
                exact = model.double()(x.double()).float()
                model.float()
                assert (reference - exact).abs().max() <= 1e-3 * scale, mode
                assert (ours - exact).abs().max() <= (reference - exact).abs().max() + 1e-5, mode
            else:
                assert (ours - reference).abs().max().item() <= 1e-5 * scale, mode


@pytest.mark.parametrize("tag", CASES)
def test_recognised_from_keys_and_shapes_as_spandrel_does(tag):
    name, scale, family, params = _case(tag)
    state = {key: torch.empty(shape, device="meta") for key, shape in META[tag]["keys"].items()}
    detected = META[tag]["spandrel"]
    assert detected["id"] == family and detected["scale"] == scale
    for other, module in FAMILIES.items():
        found = module.recognise(state)
        assert (found is not None) == (other == family), other
    assert FAMILIES[family].recognise(state) == (scale, params)


def _new_layout(old: dict, blocks: int, ups: int, prefix: str = "body", rdb: str = "rdb") -> dict:
    """Real-ESRGAN's (or BSRGAN's) names for an old-layout ESRGAN state dict."""
    names = {"model.0": "conv_first", f"model.1.sub.{blocks}": "conv_body" if prefix == "body" else "trunk_conv"}
    names.update({f"model.{3 * i}": f"conv_up{i}" if prefix == "body" else f"upconv{i}" for i in range(1, ups + 1)})
    names[f"model.{3 * ups + 2}"] = "conv_hr" if prefix == "body" else "HRconv"
    names[f"model.{3 * ups + 4}"] = "conv_last"
    new = {}
    for key, value in old.items():
        base, kind = key.rsplit(".", 1)
        if base.startswith("model.1.sub.") and ".RDB" in base:
            _, _, _, block, dense, conv, _ = base.split(".")
            new[f"{prefix}.{block}.{rdb}{dense[-1]}.{conv}.{kind}"] = value
        else:
            new[f"{names[base]}.{kind}"] = value
    return new


@pytest.mark.parametrize("layout", [("body", "rdb"), ("RRDB_trunk", "RDB")])
def test_esrgan_files_in_newer_key_layouts_are_read_as_spandrel_reads_them(layout):
    model = esrgan.ESRGAN(4, num_filters=8, num_blocks=2)
    old = model.state_dict()
    new = _new_layout(old, blocks=2, ups=2, prefix=layout[0], rdb=layout[1])
    assert not set(new) & set(old)
    assert esrgan.recognise(new) == (4, {"num_filters": 8, "num_blocks": 2, "pixel_unshuffle": True})
    renamed = esrgan.to_old_layout(new)
    assert renamed.keys() == old.keys()
    assert all(torch.equal(renamed[key], old[key]) for key in old)


def test_esrgan_x2_without_pixel_unshuffle_is_its_own_layout():
    direct = esrgan.ESRGAN(2, num_filters=8, num_blocks=1, pixel_unshuffle=False)
    assert direct.state_dict()["model.0.weight"].shape[1] == 3
    assert esrgan.recognise(direct.state_dict()) == (2, {"num_filters": 8, "num_blocks": 1, "pixel_unshuffle": False})
    assert direct(torch.rand(1, 3, 5, 7)).shape == (1, 3, 10, 14)


def _span_gradients(norm: bool, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    model = span.SPAN(2, feature_channels=16, norm=norm).train()
    model.load_state_dict(seeded_state({key: value.shape for key, value in model.state_dict().items()}))
    model.to(dtype)
    out = model(seeded_input().to(dtype))
    (out * torch.rand(out.shape, generator=torch.Generator().manual_seed(2)).to(dtype)).sum().backward()
    return {name: p.grad.float() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("norm", [False, True])
def test_span_trains_with_spandrels_gradients(norm):
    """Training runs each branch pair as its collapsed kernel: the gradients must not change."""
    prefix = f"span_16_{'norm' if norm else 'plain'}/"
    grads = load_file(FIXTURES / "spandrel_span_grads.safetensors")
    expected = {key.removeprefix(prefix): value for key, value in grads.items() if key.startswith(prefix)}
    ours = _span_gradients(norm, torch.float32)
    exact = _span_gradients(norm, torch.float64) if norm else None
    assert len(expected) > 30
    for name, reference in expected.items():
        scale = reference.abs().max().item()
        if norm:  # inputs x255: float32 rounding reaches 1e-3 in spandrel too; be as close to float64 as it is
            assert (ours[name] - exact[name]).abs().max() <= 2 * (reference - exact[name]).abs().max() + 1e-6 * scale, name
        else:
            assert (ours[name] - reference).abs().max().item() <= 1e-4 * scale, name


def test_span_files_carry_the_trained_collapsed_kernel():
    """A SPAN saved straight from training (never run in eval mode) still infers as trained
    when a tool uses `eval_conv` as it is, without collapsing the branches itself."""
    model = span.SPAN(2, feature_channels=8, norm=False).train()
    torch.optim.SGD(model.parameters(), lr=0.1).zero_grad()
    model(torch.rand(1, 3, 6, 6)).mean().backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    state = model.state_dict()
    weight, bias = model.block_3.c2_r.collapsed()
    assert torch.equal(state["block_3.c2_r.eval_conv.weight"], weight.detach())
    assert torch.equal(state["block_3.c2_r.eval_conv.bias"], bias.detach())
    assert not torch.equal(model.block_3.c2_r.eval_conv.weight, weight.detach())  # the module itself is untouched


@pytest.mark.parametrize("name", sorted(compact.VARIANTS))
def test_a_new_compact_trains_from_its_first_layer_and_starts_near_the_enlarged_input(name):
    """The init, not spandrel's layout: under PyTorch's default init compact's first convolution
    got 1e-6 of the last one's gradient and sat at the nearest enlargement for 450 iterations."""
    torch.manual_seed(0)
    model = compact.Compact(2, **compact.VARIANTS[name])
    lq = torch.rand(2, 3, 24, 24)
    enlarged = torch.nn.functional.interpolate(lq, scale_factor=2, mode="nearest")
    out = model(lq)
    assert (out - enlarged).abs().mean() < 0.1  # 0.2-0.8 with the last layer at full He scale
    (out - torch.nn.functional.interpolate(lq, scale_factor=2, mode="bicubic")).abs().mean().backward()
    first, last = model.body[0].weight.grad.norm(), model.body[-1].weight.grad.norm()
    assert first > 1e-2 * last
