"""Weight files: save/load round trips, traiNNer .pth files, recognition, and clear refusals."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from zerosr.archs import build, families, family, identify, load, load_state_dict_file, save
from zerosr.archs.io import infer
from zerosr.errors import UserError

VARIANTS = {name: v.params for name, v in family("ParagonSR2").variants.items()}


def make(name: str = "paragonsr2_nano", scale: int = 2, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build(name, scale, **overrides)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if key.endswith("gamma"):
                param.fill_(0.25)  # make the attention and layer scales matter
    return model.eval()


def same_outputs(a: torch.nn.Module, b: torch.nn.Module, size=(1, 3, 34, 19)) -> bool:
    x = torch.rand(size)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def meta_state(name: str, scale: int, **overrides) -> dict:
    with torch.device("meta"):
        return build(name, scale, **overrides).state_dict()


# --------------------------------------------------------------------------------------------
# zerosr .safetensors
# --------------------------------------------------------------------------------------------


def test_save_writes_metadata_and_load_rebuilds_from_the_file_alone(tmp_path):
    model = make("paragonsr2_micro", 3, use_norm=True)
    path = save(model, tmp_path / "micro.safetensors", metadata={"iteration": 1200, "note": "demo"})
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["architecture"] == "ParagonSR2"
    assert (meta["name"], meta["variant"]) == ("paragonsr2_micro", "micro")
    assert meta["scale"] == "3"
    assert json.loads(meta["params"]) == {**VARIANTS["paragonsr2_micro"], "use_norm": True}
    assert (meta["iteration"], meta["note"]) == ("1200", "demo")

    loaded = load(path)
    assert (loaded.arch_name, loaded.scale, loaded.arch_params) == ("paragonsr2_micro", 3, model.arch_params)
    assert not loaded.training
    assert same_outputs(model, loaded)


def test_save_is_atomic_and_replaces_existing_files(tmp_path):
    target = tmp_path / "weights.safetensors"
    target.write_bytes(b"old")
    save(make(), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.safetensors"]  # no temp files left
    assert load(target).arch_name == "paragonsr2_nano"


def test_save_unwraps_data_parallel_and_compiled_models(tmp_path):
    model = make()
    for wrapped in (torch.nn.DataParallel(model), torch.compile(model, backend="eager")):
        path = save(wrapped, tmp_path / "wrapped.safetensors")
        state, _ = load_state_dict_file(path)
        assert set(state) == set(model.state_dict())  # safetensors stores names sorted
        assert same_outputs(model, load(path))


def test_save_of_a_directly_built_network_recognises_its_variant(tmp_path):
    from zerosr.archs.paragonsr2 import ParagonSR2

    torch.manual_seed(0)
    net = ParagonSR2(scale=4, **VARIANTS["paragonsr2_tiny"])
    loaded = load(save(net, tmp_path / "tiny.safetensors"))
    assert (loaded.arch_name, loaded.scale) == ("paragonsr2_tiny", 4)


# --------------------------------------------------------------------------------------------
# traiNNer files
# --------------------------------------------------------------------------------------------


def test_trainner_pth_prefers_ema_weights_and_strips_wrapper_prefixes(tmp_path):
    ema, plain = make(), make()
    with torch.no_grad():
        plain.conv_in.bias.add_(1.0)
    checkpoint = {
        "params": {f"module.{k}": v for k, v in plain.state_dict().items()},
        "params_ema": {f"module._orig_mod.{k}": v for k, v in ema.state_dict().items()},
    }
    path = tmp_path / "net_g_1000.pth"
    torch.save(checkpoint, path)
    assert same_outputs(load(path), ema)
    assert same_outputs(load(path, key="params"), plain)
    with pytest.raises(UserError, match="has no entry 'params_x'"):
        load(path, key="params_x")


def test_bare_state_dict_pth_and_metadata_free_safetensors_are_recognised(tmp_path):
    model = make("paragonsr2_tiny", 4)
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "redux.safetensors"))
    for name in ("bare.pth", "redux.safetensors"):
        loaded = load(tmp_path / name)
        assert (loaded.arch_name, loaded.scale) == ("paragonsr2_tiny", 4)
        assert same_outputs(model, loaded)


def test_pickles_with_code_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"params": make().state_dict(), "hook": _NotATensor()}, path)
    with pytest.raises(UserError, match=r"\(test_arch_io._NotATensor\), which are never unpickled") as info:
        load(path)
    assert "\n" not in str(info.value)


class _NotATensor:
    pass


# --------------------------------------------------------------------------------------------
# Recognising variants
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_identify_recognises_every_variant_and_scale(name, scale):
    assert identify(meta_state(name, scale)) == (name, scale)


def test_non_default_structure_is_inferred_as_overrides_but_not_identified():
    state = meta_state("paragonsr2_nano", 2, use_attention=False, use_norm=True)
    assert identify(state) is None
    assert infer(state) == ("paragonsr2_nano", 2, {"use_attention": False, "use_norm": True})
    state = meta_state("paragonsr2_s", 3, fast_body_mode=False)
    assert infer(state) == ("paragonsr2_s", 3, {"fast_body_mode": False})


def test_a_traiNNer_file_with_changed_options_still_loads(tmp_path):
    model = make("paragonsr2_micro", 2, use_attention=False, band_kernel_size=9)
    torch.save({"params_ema": model.state_dict()}, tmp_path / "custom.pth")
    loaded = load(tmp_path / "custom.pth")
    assert loaded.arch_params["use_attention"] is False and loaded.arch_params["band_kernel_size"] == 9
    assert same_outputs(model, loaded)


def test_unrelated_state_dicts_are_not_identified():
    assert identify({"conv.weight": torch.zeros(3, 3, 3, 3)}) is None
    state = dict(meta_state("paragonsr2_nano", 2))
    state["conv_in.weight"] = torch.zeros(20, 3, 3, 3, device="meta")  # no variant is 20 wide
    assert identify(state) is None


# --------------------------------------------------------------------------------------------
# Refusals: one clear line each
# --------------------------------------------------------------------------------------------


def one_line_error(call) -> str:
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_weights_for_another_variant_or_scale_say_what_they_hold(tmp_path):
    path = save(make("paragonsr2_s", 4), tmp_path / "weights.safetensors")
    message = one_line_error(lambda: load(path, name="paragonsr2_nano", scale=2))
    assert message.startswith("weights.safetensors holds paragonsr2_s x4, but the run uses paragonsr2_nano x2")
    assert "x3" in one_line_error(lambda: load(path, name="paragonsr2_s", scale=3))
    torch.save(make("paragonsr2_s", 4).state_dict(), tmp_path / "net.pth")
    assert "net.pth holds paragonsr2_s x4" in one_line_error(lambda: load(tmp_path / "net.pth", scale=2))


def test_missing_corrupt_and_foreign_files_are_refused(tmp_path):
    assert "no such weights file" in one_line_error(lambda: load(tmp_path / "absent.safetensors"))

    truncated = tmp_path / "cut.safetensors"
    data = save(make(), tmp_path / "ok.safetensors").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    assert "not a readable safetensors file" in one_line_error(lambda: load(truncated))

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(256))
    assert "not a readable torch weights file" in one_line_error(lambda: load(garbage))

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"architecture": "FooNet", "scale": "2"})
    message = one_line_error(lambda: load(other))
    assert "holds a FooNet model, which this zerosr cannot build: pass weights of" in message
    assert all(name in message for name in families())  # every family it knows

    unknown = tmp_path / "unknown.pth"
    torch.save({"conv.weight": torch.zeros(3, 3, 3, 3)}, unknown)
    message = one_line_error(lambda: load(unknown))
    assert "cannot tell which network unknown.pth is for: zerosr recognises plain files of" in message
    assert all(name in message for name in families())
    assert "does not fit paragonsr2_nano x2" in one_line_error(lambda: load(unknown, "paragonsr2_nano", 2))
