"""ParagonSR2's current generation (realtime, stream, photo, pro): equivalence with the reference.

The reference is `traiNNer/archs/paragonsr2_arch.py` of Phhofm/ParagonSR2 at commit 921e57d; it
is not part of this repository. The fixtures under tests/fixtures/archs/ were made by running
that file alone:

- `gen2_keys.json`: for every factory at scales 2, 3, 4 and 8, its state-dict keys and shapes
  (in order) and its parameter count; and the keys with `export_safe=True`.
- `gen2_<variant>.safetensors`, one per factory, with the weights given by `fixture_weights`
  below (a formula, so the files stay small and hold no weights):
  - `input.x{S}` (batch 1, sizes that are not multiples of the 16-pixel window) and
    `output.x{S}`, the reference's eval output, for S = 2, 3, 4, 8; `output.export_safe.x2`
    (photo and pro) from the factory with `export_safe=True`;
  - `loss_weight.x2` (uniform in [-0.5, 0.5)) and `grad`: the training forward of
    `gradient_batch(input.x2)` times the loss weights, summed, backpropagated; a row per
    trained parameter in `named_parameters` order: the gradient's `_signature`;
  - `init`: a row per state-dict tensor, its sum and sum of squares (float64) in a build
    seeded with `torch.manual_seed(0)` at x4;
  - `weight.base.*`: the fixed base-path tensors.

To regenerate: put the reference file in an empty folder with a stand-in
`traiNNer/utils/registry.py` whose `ARCH_REGISTRY.register()` returns the object unchanged;
then, in one float32 CPU process with `torch.set_num_threads(1)`, for each factory: build it
at each scale, load `fixture_weights` into it (over its own `base.*` tensors), make the input
with `torch.Generator().manual_seed(scale)` and `torch.rand(1, 3, h, w)` at the sizes of
`INPUT_SIZES` (at x2 the same generator then draws the loss weights), and save what is listed
above under the tensor names this file reads.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from zerosr import archs
from zerosr.archs import paragonsr2_gen2 as gen2
from zerosr.archs.paragonsr2_gen2 import ParagonSR2Gen2
from zerosr.config.derive import run_length_factor
from zerosr.config.presets import lr_from_range_test

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "archs"
SCALES = (2, 3, 4, 8)
NAMES = ["paragonsr2_realtime", "paragonsr2_stream", "paragonsr2_photo", "paragonsr2_pro"]
INPUT_SIZES = {2: (20, 35), 3: (18, 17), 4: (17, 12), 8: (7, 9)}  # LR (height, width)
GRAD_SAMPLES = 16

# The reference's parameter counts (frozen base-path convolutions included).
PARAMS = {
    4: {"paragonsr2_realtime": 44_620, "paragonsr2_stream": 221_068, "paragonsr2_photo": 1_188_428, "paragonsr2_pro": 2_436_556},
    2: {"paragonsr2_realtime": 16_780, "paragonsr2_stream": 110_092, "paragonsr2_photo": 745_292, "paragonsr2_pro": 1_993_420},
}


def fixture_weights(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Deterministic weights of moderate size for every tensor but the fixed `base.*` ones.

    Each value comes from a hash of its element and tensor index (the fractional part of a
    scaled sine, in float64): no random generator, so the reference and this test get the same
    full-rank weights from the key order alone.
    """
    weights = {}
    for index, (key, shape) in enumerate(shapes.items()):
        if key.startswith("base."):
            continue
        count = math.prod(shape)
        element = torch.arange(count, dtype=torch.float64)
        noise = 2 * torch.frac(torch.sin(element * 12.9898 + index * 78.233).abs() * 43758.5453) - 1  # in [-1, 1)
        if key == "detail_gain":
            value = torch.full((count,), 0.1, dtype=torch.float64)
        elif key.endswith(".gamma"):  # layer scales: active, so every branch matters
            value = 0.1 + 0.05 * noise
        elif key.endswith(".scale"):  # RMSNorm
            value = 1 + 0.2 * noise
        elif key.endswith("token_dict"):
            value = noise
        elif len(shape) >= 2:  # variance 1 / fan-in
            value = noise * math.sqrt(3 / (count // shape[0]))
        else:
            value = 0.1 * noise
        weights[key] = value.reshape(shape).float()
    return weights


@functools.cache
def reference_table() -> dict:
    return json.loads((FIXTURES / "gen2_keys.json").read_text())["variants"]


def fixture(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / f"gen2_{name.removeprefix('paragonsr2_')}.safetensors"))


def with_fixture_weights(model: torch.nn.Module) -> torch.nn.Module:
    state = model.state_dict()
    state.update(fixture_weights({key: tuple(value.shape) for key, value in state.items()}))
    model.load_state_dict(state)
    return model


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def reference_keys(name: str, scale: int) -> list[tuple[str, tuple[int, ...]]]:
    entry = reference_table()[name]
    changed = entry["changed_at_scale"].get(str(scale), {})
    return [(key, tuple(changed.get(key, shape))) for key, shape in entry["keys_x2"]]


# --------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_shapes_and_parameter_count_equal_the_reference(name, scale):
    with torch.device("meta"):
        model = archs.build(name, scale)
    ours = [(key, tuple(value.shape)) for key, value in model.state_dict().items()]
    assert ours == reference_keys(name, scale)  # same names, same order, same shapes
    count = sum(p.numel() for p in model.parameters())
    assert count == reference_table()[name]["parameters"][str(scale)]
    if scale in PARAMS:
        assert count == PARAMS[scale][name]


@pytest.mark.parametrize("name", ["paragonsr2_photo", "paragonsr2_pro"])
def test_export_safe_keys_equal_the_reference(name):
    with torch.device("meta"):
        model = archs.build(name, 2, export_safe=True)
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == reference_table()[name]["keys_export_safe_x2"]
    assert not model.has_attention and model.tile_alignment == 1


def test_seeded_build_draws_the_reference_initial_weights():
    for name in NAMES:
        tensors = fixture(name)
        torch.manual_seed(0)
        model = archs.build(name, 4)
        moments = [torch.stack([value.double().sum(), value.double().square().sum()]) for value in model.state_dict().values()]
        assert torch.allclose(torch.stack(moments), tensors["init"], rtol=1e-9, atol=1e-12), name


# --------------------------------------------------------------------------------------------
# Outputs and gradients
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_outputs_equal_the_reference_at_every_scale(name):
    tensors = fixture(name)
    for scale in SCALES:
        model = with_fixture_weights(archs.build(name, scale)).eval()
        for key, value in model.state_dict().items():
            if key.startswith("base."):
                assert torch.equal(value, tensors[f"weight.{key}"]), key
        lr = tensors[f"input.x{scale}"]
        assert tuple(lr.shape[2:]) == INPUT_SIZES[scale]
        with torch.no_grad():
            out = model(lr)
        expected = tensors[f"output.x{scale}"]
        assert out.shape == expected.shape
        assert (out - expected).abs().max().item() <= 1e-5, (name, scale)


@pytest.mark.parametrize("name", ["paragonsr2_photo", "paragonsr2_pro"])
def test_export_safe_outputs_equal_the_reference(name):
    tensors = fixture(name)
    model = with_fixture_weights(archs.build(name, 2, export_safe=True)).eval()
    with torch.no_grad():
        out = model(tensors["input.x2"])
    assert (out - tensors["output.export_safe.x2"]).abs().max().item() <= 1e-5


def gradient_batch(lr: torch.Tensor) -> torch.Tensor:
    """Batch 2 from the x2 input: its 12 x 20 corner (padded to 16 x 32: two windows) and its mirror."""
    corner = lr[:, :, :12, :20]
    return torch.cat([corner, corner.flip(-1)])


def _gradients(model: torch.nn.Module, tensors: dict) -> dict[str, torch.Tensor]:
    model.train()
    (model(gradient_batch(tensors["input.x2"])) * tensors["loss_weight.x2"]).sum().backward()
    return {key: p.grad for key, p in model.named_parameters() if p.grad is not None}


def _signature(grad: torch.Tensor) -> torch.Tensor:
    flat = grad.flatten()
    picks = torch.linspace(0, flat.numel() - 1, GRAD_SAMPLES).round().long()
    return torch.cat([flat.norm().view(1), flat[picks]])


@pytest.mark.parametrize("name", NAMES)
def test_training_gradients_equal_the_reference(name):
    tensors = fixture(name)
    grads = _gradients(with_fixture_weights(archs.build(name, 2)), tensors)
    assert len(grads) == len(tensors["grad"])  # the same parameters train (the base path is frozen)
    for (key, grad), reference in zip(grads.items(), tensors["grad"]):
        tolerance = 1e-4 * max(reference[0].item(), 1e-3)
        assert (_signature(grad) - reference).abs().max().item() <= tolerance, key


@pytest.mark.parametrize("name", ["paragonsr2_stream", "paragonsr2_pro"])
def test_gradient_checkpointing_gives_the_same_gradients(name):
    tensors = fixture(name)
    small = {"num_groups": 2, "num_blocks": 2}  # the recomputation is per block, as in every variant
    plain = _gradients(with_fixture_weights(archs.build(name, 2, **small)), tensors)
    model = with_fixture_weights(archs.build(name, 2, use_checkpointing=True, **small))
    calls = []
    model.body[0].blocks[0].register_forward_pre_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    recomputed = _gradients(model, tensors)
    assert len(calls) == 2  # run without saving activations, then again in the backward pass
    for key, grad in plain.items():
        assert torch.allclose(recomputed[key], grad, rtol=1e-5, atol=1e-7), key


def small_photo(**overrides) -> ParagonSR2Gen2:
    params = {**archs.variant("paragonsr2_photo").params, "num_groups": 1, "num_blocks": 2, "num_feat": 16, **overrides}
    torch.manual_seed(1)
    model = ParagonSR2Gen2(scale=2, **params)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if key.endswith("gamma"):
                p.fill_(0.3)
    return model.eval()


def test_flex_attention_computes_the_same_as_sdpa_and_falls_back_without_it(monkeypatch):
    sdpa, flex = small_photo(), small_photo(attention_mode="flex")
    lr = torch.rand(1, 3, 20, 23)
    with torch.no_grad():
        expected = sdpa(lr)
        assert torch.allclose(flex(lr), expected, atol=1e-5)
        monkeypatch.setattr(gen2, "flex_attention_or_none", lambda: None)
        assert torch.allclose(flex(lr), expected, atol=1e-6)


def test_video_blending_mixes_previous_features_into_the_body():
    model = small_photo()
    lr = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        out, feat = model(lr, feature_tap=True)
        assert torch.equal(out, model(lr)) and feat.shape == (1, 16, 12, 12)
        assert torch.allclose(model(lr, prev_feat=feat, alpha=0.5), out, atol=1e-6)  # same frame
        assert not torch.allclose(model(lr, prev_feat=torch.zeros_like(feat), alpha=0.5), out, atol=1e-4)


# --------------------------------------------------------------------------------------------
# Recognising weights
# --------------------------------------------------------------------------------------------


def test_the_options_are_the_reference_factories():
    assert [name for name, v in archs.variants().items() if v.family == gen2.FAMILY.name] == NAMES  # by run length
    for name in NAMES:
        params = archs.variant(name).params
        assert params["variant"] == name.removeprefix("paragonsr2_")
        assert (params["attention_mode"], params["export_safe"]) == ("sdpa", False)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", NAMES)
def test_weights_are_recognised_from_a_bare_state_dict(name, scale):
    with torch.device("meta"):
        state = archs.build(name, scale).state_dict()
    assert archs.infer(state) == (name, scale, {})


def test_trainner_checkpoints_load_with_variant_scale_and_options(tmp_path):
    model = archs.build("paragonsr2_photo", 3, export_safe=True).eval()
    state = {f"module.{key}": value for key, value in model.state_dict().items()}
    path = tmp_path / "net_g_ema.pth"
    torch.save({"params": {}, "params_ema": state}, path)
    weights = archs.read_weights(path)
    assert (weights.name, weights.scale) == ("paragonsr2_photo", 3)
    assert weights.params == {**archs.variant("paragonsr2_photo").params, "export_safe": True}
    loaded = archs.load(path)
    lr = torch.rand(1, 3, 10, 12)
    with torch.no_grad():
        assert torch.equal(loaded(lr), model(lr))
    torch.save(model.state_dict(), path)  # bare, as traiNNer's `params` alone or other trainers
    assert archs.read_weights(path).name == "paragonsr2_photo"


def test_recognise_reads_width_depth_and_channels():
    with torch.device("meta"):
        custom = ParagonSR2Gen2(scale=2, in_chans=1, num_feat=24, num_groups=2, num_blocks=5, variant="pro").state_dict()
    name, scale, overrides = archs.infer(custom)
    assert (name, scale) == ("paragonsr2_pro", 2)
    assert overrides == {"in_chans": 1, "num_feat": 24, "num_groups": 2, "num_blocks": 5}


def test_other_networks_and_damaged_weights_are_not_taken_for_this_generation():
    with torch.device("meta"):
        older = archs.build("paragonsr2_nano", 2).state_dict()
        state = archs.build("paragonsr2_realtime", 2).state_dict()
    table = {name: archs.variant(name).params for name in NAMES}
    assert gen2.recognise(older, table) is None
    assert archs.infer(older)[0] == "paragonsr2_nano"
    assert archs.infer({k: v for k, v in state.items() if k != "conv_mid.bias"}) is None  # a tensor missing
    assert archs.infer(dict(state, **{"conv_mid.weight": torch.empty(16, 16, 5, 5, device="meta")})) is None


# --------------------------------------------------------------------------------------------
# Deployment
# --------------------------------------------------------------------------------------------


def test_onnx_export_keeps_attention_and_dynamic_sizes(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from zerosr.export import export_onnx

    model = archs.spec.mark(small_photo(), "paragonsr2_photo", gen2.FAMILY.name, 2, {})
    path = export_onnx(model, tmp_path / "photo.onnx", opset=gen2.FAMILY.onnx_min_opset)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 20, 18), (2, 3, 33, 16), (1, 3, 9, 40)]:  # paddings other than the traced one
        lr = torch.rand(*shape)
        with torch.no_grad():
            expected = model(lr).numpy()
        (got,) = session.run(None, {"input": lr.numpy()})
        assert got.shape == expected.shape
        assert abs(got - expected).max() <= 1e-4, shape


@pytest.mark.parametrize("name", ["paragonsr2_realtime", "paragonsr2_stream"])
def test_tiles_equal_the_whole_image_within_the_receptive_field(name):
    from zerosr.engine.tiling import tile_geometry, tiled_forward

    model = with_fixture_weights(archs.build(name, 2, num_groups=1)).eval()  # the context follows the depth
    context = archs.spec.tiling(model).context
    tile = 2 * context + 12
    lr = torch.rand(1, 3, tile + 14, tile + 9)  # 2 x 2 tiles
    with torch.no_grad():
        whole = model(lr)
        tiled = tiled_forward(model, lr, 2, tile=tile, overlap=0)
        assert tile_geometry(model, tile, 0)[1] == context  # the family's context is used
        assert (tiled - whole).abs().max().item() <= 1e-5


def test_attention_tiles_sit_on_the_window_grid():
    from zerosr.engine.tiling import tile_geometry, tiled_forward

    model = archs.spec.mark(small_photo(), "paragonsr2_photo", gen2.FAMILY.name, 2, {})
    needs = archs.spec.tiling(model)
    assert (needs.grid, needs.context) == (16, 32)
    tile, overlap, align = tile_geometry(model, 90, 8)
    assert (tile % 16, overlap, align) == (0, 32, 16)
    lr = torch.rand(1, 3, 100, 90)
    with torch.no_grad():
        difference = (tiled_forward(model, lr, 2, tile=80, overlap=0) - model(lr)).abs().max().item()
    assert difference <= 1e-2  # attention reaches the whole map: close, not equal


# --------------------------------------------------------------------------------------------
# Training end to end
# --------------------------------------------------------------------------------------------


# (params, iterations): realtime at its own size; the larger variants shrunk in width and depth for
# CI, every block kind kept. 16 features left photo at bicubic after 600 iterations; 32 pass it.
SHORT_RUNS = {
    "paragonsr2_realtime": ({}, 300),
    "paragonsr2_stream": ({"num_feat": 16, "num_groups": 1, "num_blocks": 2}, 300),
    "paragonsr2_photo": ({"num_feat": 32, "num_groups": 1, "num_blocks": 2}, 400),
    "paragonsr2_pro": ({"num_feat": 32, "num_groups": 1, "num_blocks": 2}, 400),
}


# A shrunk network's LR is measured against its family's trained variant, or nano's where the
# family has none; every one of these takes the rule in proportion (exponent 1).
SHRUNK_ANCHOR = {"span_s": "span_s", "realplksr_tiny": "paragonsr2_nano", "esrgan_lite": "paragonsr2_nano",
                 "paragonsr2_stream": "paragonsr2_nano", "paragonsr2_photo": "paragonsr2_nano",
                 "paragonsr2_pro": "paragonsr2_nano"}


def short_run(option: str, params: dict, iterations: int, tmp_path: Path, scale: int = 2) -> Path:
    """`train.py arch=OPTION` on textured HR-only images the test makes, every automation on:
    every step ran, at the option's preset, and the held-out images end above bicubic. `params`
    shrink the network: another network than the preset's, so its preset LR is measured at
    start-up against its family's anchor. Returns the run folder."""
    from test_custom_arch import make_textured

    hr, _ = make_textured(tmp_path / "data", scale=scale)  # HR only: the LR images are made by the run
    run = tmp_path / "run"
    shrink = [f"arch.params.{key}={value}" for key, value in params.items()]
    out = subprocess.run(
        [sys.executable, "train.py", f"arch={option}", f"scale={scale}", f"data.gt_path={hr}", "data.n_val=2",
         f"train.total_iter={iterations}", f"train.val_freq={iterations // 2}", "train.log_freq=1",
         f"train.lq_size={min(24, 64 // scale)}",  # the test's 64 px images: 16 px LR at x4
         "hardware_tier.num_workers=0", *shrink, f"hydra.run.dir={run}"],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
        env={**os.environ, "ZEROSR_FAKE_HARDWARE": "", "ZEROSR_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    steps = [r for r in records(run / "metrics.jsonl") if "lr" in r]
    assert len(steps) == iterations  # every step ran
    preset = archs.variant(option).preset
    decisions = records(run / "automation.jsonl")
    measured = [d["change"]["preset_lr"][1] for d in decisions if "preset_lr" in d["change"]]
    if params:  # the shrunk network's own preset, by the rule against its family's anchor
        (lr,) = measured
        entry = next(iter(json.loads((tmp_path / "cache" / "lr_presets.json").read_text()).values()))
        base = archs.variant(SHRUNK_ANCHOR[option])  # its family's trained variant, or nano
        assert f"against {base.option}'s" in next(d["reason"] for d in decisions if "preset_lr" in d["change"])
        assert lr == lr_from_range_test(entry["divergence"], entry["anchor_divergence"], preset["batch_size"],
                                        base.preset["batch_size"], base.preset["lr"], 1.0)
    else:
        assert not measured and OmegaConf.load(run / "resolved_config.yaml").train.lr == preset["lr"]
        lr = preset["lr"]
    (start,) = [d["change"]["start_lr"][1] for d in decisions if "start_lr" in d["change"]]
    searched = [d["change"]["batch_size"] for d in decisions if d["automation"] == "batch" and d["iter"] == 0
                and "batch_size" in d["change"]]
    batch_factor = math.sqrt(searched[0][1] / searched[0][0]) if searched else 1.0
    assert start == pytest.approx(lr * run_length_factor(iterations) * batch_factor, rel=1e-3)  # from this preset
    assert max(r["lr"] for r in steps) == pytest.approx(start, rel=1e-6)  # what the optimizer ran at
    last = [r for r in records(run / "metrics.jsonl") if "val/psnr" in r][-1]
    assert last["val/psnr"] > last["val/bicubic_psnr"], last  # held-out images
    return run


@pytest.mark.parametrize("option", list(SHORT_RUNS))
def test_each_variant_trains_end_to_end_with_every_automation_and_ends_above_bicubic(option, tmp_path):
    params, iterations = SHORT_RUNS[option]
    run = short_run(option, params, iterations, tmp_path)
    decisions = records(run / "automation.jsonl")
    assert {d["automation"] for d in decisions} >= {"batch", "clip", "loss_schedule"}  # the automations ran and decided
    model = archs.load(run / "models" / "best.safetensors")
    assert isinstance(model, ParagonSR2Gen2) and (model.arch_name, model.scale) == (option, 2)
