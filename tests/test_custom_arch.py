"""arch=custom: a user's own nn.Module by `_target_`, trained, saved, rebuilt; bad networks refused.

The networks are defined in this file; `train.py` processes import them as `test_custom_arch.<Name>`
with tests/ on PYTHONPATH, as a user's package would be.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from zerosr import archs
from zerosr.data import bicubic_downscale, write_image
from zerosr.engine import preset_lr
from zerosr.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


class TinyNet(nn.Module):
    """Bicubic plus a learned residual: a few convolutions and a pixel shuffle."""

    def __init__(self, scale: int, width: int = 8):
        super().__init__()
        self.scale = scale
        self.head = nn.Conv2d(3, width, 3, padding=1)
        self.body = nn.Conv2d(width, width, 3, padding=1)
        self.tail = nn.Conv2d(width, 3 * scale * scale, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, x):
        feat = F.relu(self.head(x))
        feat = F.relu(self.body(feat)) + feat
        base = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return base + F.pixel_shuffle(self.tail(feat), self.scale)


class NoScale(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3)


class WrongSize(TinyNet):
    def forward(self, x):
        return F.interpolate(x, scale_factor=self.scale + 1)


class WrongChannels(TinyNet):
    def forward(self, x):
        return super().forward(x)[:, :1]


def not_a_module(scale: int, width: int = 8):
    return {"scale": scale}


def make_textured(folder: Path, count: int = 8, size: int = 64, scale: int = 2, seed: int = 0) -> tuple[Path, Path]:
    """Hard-edged discs on stripes: detail that bicubic blurs and a small network learns to restore."""
    rng = np.random.default_rng(seed)
    hr_dir, lr_dir = folder / "hr", folder / "lr"
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for i in range(count):
        img = np.zeros((size, size, 3), np.float32) + rng.uniform(0.2, 0.6, 3)
        for _ in range(6):
            cy, cx, radius = *rng.uniform(0, size, 2), rng.uniform(4, 16)
            inside = ((yy - cy) ** 2 + (xx - cx) ** 2 < radius**2)[..., None]
            img = np.where(inside, rng.uniform(0, 1, 3), img)
        angle, period = rng.uniform(0, np.pi), rng.uniform(5, 9)
        stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0
        hr = np.clip(img * (0.8 + 0.2 * stripes[..., None]), 0, 1).astype(np.float32)
        write_image(hr_dir / f"img{i}.png", hr)
        write_image(lr_dir / f"img{i}.png", bicubic_downscale(hr, scale))
    return hr_dir, lr_dir


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_textured(tmp_path_factory.mktemp("data"))


def train_py(run_dir: Path, cache: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
           "ZEROSR_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env=env)


def custom(data, *extra: str, target: str = "test_custom_arch.TinyNet") -> list[str]:
    hr, lr = data
    return ["arch=custom", f"arch._target_={target}", "+arch.params={width: 8}", f"data.gt_path={hr}",
            f"data.lq_path={lr}", "data.n_val=2", "hardware_tier.num_workers=0", *extra]


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_custom_network_trains_end_to_end_above_bicubic_and_is_rebuilt_from_its_file(data, tmp_path):
    cache = tmp_path / "cache"
    run = tmp_path / "run"
    out = train_py(run, cache, *custom(data, "train.total_iter=300", "train.val_freq=150", "train.lq_size=24"))
    assert out.returncode == 0, out.stderr[-3000:]
    # The preset LR: measured by the range-test rule, shown at start-up, recorded, cached.
    assert "preset lr    " in out.stdout and "measured in" in out.stdout
    decision = [d for d in records(run / "automation.jsonl") if "preset_lr" in d["change"]]
    assert len(decision) == 1 and decision[0]["iter"] == 0
    measured = decision[0]["change"]["preset_lr"][1]
    cached = json.loads((cache / "lr_presets.json").read_text())
    (entry,) = cached.values()
    assert entry["lr"] == measured and len(entry["divergence"]) == len(entry["anchor_divergence"]) == 2
    base = archs.spec.anchor()
    assert measured == preset_lr.lr_from_range_test(entry["divergence"], entry["anchor_divergence"], 16,
                                                    base.preset["batch_size"], base.preset["lr"])
    # ... and the optimizer really started from it (the LR of the first logged steps, in warm-up, is below it).
    steps = [r for r in records(run / "metrics.jsonl") if "lr" in r]
    assert 0 < steps[0]["lr"] <= measured * 1.0001
    # The batch was searched as for any network.
    assert [d for d in records(run / "automation.jsonl") if d["automation"] == "batch" and d["iter"] == 0]
    # Above bicubic on the held-out images.
    last = [r for r in records(run / "metrics.jsonl") if "val/psnr" in r][-1]
    assert last["val/psnr"] > last["val/bicubic_psnr"], last

    best = run / "models" / "best.safetensors"
    with safe_open(str(best), framework="pt") as handle:
        meta = handle.metadata()
    assert (meta["architecture"], meta["target"], json.loads(meta["params"])) == ("custom", "test_custom_arch.TinyNet",
                                                                                 {"width": 8})
    model = archs.load(best)
    assert isinstance(model, TinyNet) and model.scale == 2

    # Cached: a second start measures nothing; train.pretrain rebuilds from the file.
    again = train_py(tmp_path / "again", cache, *custom(data, "train.total_iter=4", "train.lq_size=24", f"train.pretrain={best}",
                                                         "automation.batch.enabled=false"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "cached by the range-test rule" in again.stdout
    start = [line for line in again.stdout.splitlines() if "start_lr" in line]
    assert len(start) == 1 and "cached from an earlier start-up" in start[0] and "cost nothing" in start[0], start

    # zerosr.upscale and zerosr.evaluate rebuild it from the file alone.
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    up = subprocess.run([sys.executable, "-m", "zerosr.upscale", str(run), str(data[1]), str(tmp_path / "up")],
                        cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert up.returncode == 0, up.stderr[-2000:]
    assert len(list((tmp_path / "up").iterdir())) == len(list(data[1].iterdir()))
    ev = subprocess.run([sys.executable, "-m", "zerosr.evaluate", str(best), "--hr", str(data[0]), "--lr", str(data[1]),
                         "--json", "--metrics", "psnr,ssim"],  # LPIPS/DISTS weights cannot be fetched here
                        cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert "psnr" in ev.stdout


@pytest.mark.parametrize("target, says", [
    ("no_such_package.Net", "arch._target_=no_such_package.Net: cannot import no_such_package"),
    ("test_custom_arch.Missing", "test_custom_arch has no 'Missing'"),
    ("test_custom_arch.NoScale", "takes no `scale` argument"),
    ("test_custom_arch.WrongSize", "turns a (1, 3, 32, 32) input into (1, 3, 96, 96), expected (1, 3, 64, 64)"),
    ("test_custom_arch.WrongChannels", "into (1, 1, 64, 64), expected (1, 3, 64, 64)"),
    ("test_custom_arch.not_a_module", "made a dict, not an nn.Module"),
])
def test_a_network_that_breaks_the_contract_is_one_line_exit_2(data, tmp_path, target, says):
    out = train_py(tmp_path / "run", tmp_path / "cache", *custom(data, target=target))
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and says in last, last
    assert not (tmp_path / "cache" / "lr_presets.json").exists()


def test_custom_without_a_target_and_a_target_without_custom_are_refused(data, tmp_path):
    hr, lr = data
    out = train_py(tmp_path / "a", tmp_path / "cache", "arch=custom", f"data.gt_path={hr}")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "arch=custom needs the network's import path: add arch._target_=" in out.stderr.strip().splitlines()[-1]
    out = train_py(tmp_path / "b", tmp_path / "cache", "arch._target_=test_custom_arch.TinyNet", f"data.gt_path={hr}")
    assert out.returncode == 2 and "needs arch=custom" in out.stderr.strip().splitlines()[-1]


def test_a_custom_file_is_refused_for_another_network_or_scale_in_one_line(tmp_path):
    model = archs.build("custom", 2, "test_custom_arch.TinyNet", width=8)
    path = archs.save(model, tmp_path / "tiny.safetensors")
    with pytest.raises(UserError) as info:
        archs.read_weights(path, "custom", 2, target="test_custom_arch.WrongSize")
    assert str(info.value).startswith("tiny.safetensors holds custom test_custom_arch.TinyNet x2, but the run uses "
                                      "custom test_custom_arch.WrongSize x2")
    with pytest.raises(UserError, match="holds custom test_custom_arch.TinyNet x2, but the run uses paragonsr2_nano x2"):
        archs.read_weights(path, "paragonsr2_nano", 2)
    with pytest.raises(UserError, match="holds paragonsr2_nano x2, but the run uses custom test_custom_arch.TinyNet x3"):
        archs.read_weights(archs.save(archs.build("paragonsr2_nano", 2), tmp_path / "nano.safetensors"), "custom", 3,
                           target="test_custom_arch.TinyNet")


def test_the_preset_lr_cache_is_keyed_by_network_params_scale_tier_and_probe_patch():
    from omegaconf import OmegaConf

    def key(**change):
        node = OmegaConf.create({"arch": {"name": "custom", "_target_": "a.Net", "params": {"width": 8}}, "scale": 2,
                                 "hardware_tier": {"name": "cpu"}, "train": {"lq_size": 48}})
        for dotted, value in change.items():
            OmegaConf.update(node, dotted.replace("__", "."), value, merge=False)
        return preset_lr.cache_key(node)

    variants = [key(), key(arch___target_="b.Net"), key(arch__params={"width": 16}), key(scale=4),
                key(hardware_tier__name="budget"), key(train__lq_size=16)]
    assert len(set(variants)) == 6 and key() == variants[0]
    assert key(train__lq_size=24) == key()  # both probe at 24 px
    # A run option (checkpointing) runs the same network: the same measurement.
    nano = {"arch__name": "paragonsr2_nano", "arch___target_": None}
    plain = key(**nano, arch__params=dict(archs.spec.variant("paragonsr2_nano").params))
    checkpointed = key(**nano, arch__params={**archs.spec.variant("paragonsr2_nano").params, "checkpointing": True})
    assert plain == checkpointed


def test_feature_width_comes_from_the_spec_or_the_network():
    assert archs.spec.feature_width(archs.build("paragonsr2_s", 2)) == 48
    assert archs.spec.feature_width(archs.build("custom", 2, "test_custom_arch.TinyNet", width=8)) == 8
    assert archs.spec.tiling(TinyNet(2)).grid == 1


def test_build_custom_passes_scale_and_params_and_checks_the_output():
    from zerosr.archs.custom import check_contract

    model = archs.build("custom", 3, "test_custom_arch.TinyNet", width=4)
    assert (model.scale, model.head.out_channels, model.arch_name, model.arch_params) == (3, 4, "custom", {"width": 4})
    check_contract(model, 3)
    with pytest.raises(UserError, match="expected"):
        check_contract(archs.build("custom", 2, "test_custom_arch.WrongSize"), 2)
    with pytest.raises(UserError, match="arch.params has depth, which test_custom_arch.TinyNet does not take"):
        archs.build("custom", 2, "test_custom_arch.TinyNet", depth=3)
    assert torch.is_tensor(model(torch.rand(1, 3, 8, 8)))


def test_a_custom_network_exports_to_onnx_from_its_file(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from zerosr.export import export_onnx

    torch.manual_seed(0)
    path = archs.save(archs.build("custom", 2, "test_custom_arch.TinyNet", width=4), tmp_path / "tiny.safetensors")
    model = archs.load(path)
    with torch.no_grad():  # a non-zero tail, so the learned path shows in the output
        model.tail.weight.normal_(0, 0.1)
    onnx_file = export_onnx(model, tmp_path / "tiny.onnx")
    lq = torch.rand(1, 3, 20, 28)
    (out,) = ort.InferenceSession(str(onnx_file)).run(None, {"input": lq.numpy()})
    with torch.no_grad():
        assert out.shape == (1, 3, 40, 56) and np.abs(out - model(lq).numpy()).max() < 1e-4
