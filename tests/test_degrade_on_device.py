"""data=realistic on a GPU run: the LR is made on the device after the HR batch arrives, not in the
loader. Tested on the simulated card, whose memory counts what the device path allocates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from test_estimate import save, scene
from zerosr.data.realistic import DegradationSettings
from zerosr.data.realistic_data import RealisticPatchDataset
from zerosr.engine.accelerator import SimulatedAccelerator
from zerosr.engine.data import BatchStream

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20


def hr_dataset(folder: Path) -> RealisticPatchDataset:
    folder.mkdir(exist_ok=True)
    for i in range(4):
        save(folder / f"{i}.png", scene(30 + i, 64))
    return RealisticPatchDataset(sorted(folder.glob("*.png")), 2, 16, DegradationSettings(), length=16)


def batches(stream: BatchStream, card: SimulatedAccelerator | None = None, n: int = 3) -> list[dict]:
    out = []
    for _ in range(n):
        if card is None:
            out.append(stream.next_batch())
            continue
        with card.active():
            card.reset_peak()
            batch = stream.next_batch()
            batch["card_peak"] = card.peak_bytes() - card.allocated  # what the batch's making held at most
        out.append(batch)
    return out


def test_the_device_makes_the_lr_the_loader_would_and_the_card_holds_its_memory(tmp_path):
    dataset = hr_dataset(tmp_path / "hr")
    loader_made = batches(BatchStream(dataset, 4, seed=5, num_workers=2))
    card = SimulatedAccelerator("Test card", 512 * MIB, (8, 6))
    on_device = batches(BatchStream(dataset, 4, seed=5, num_workers=2, degrade_device=card.device, host=card.host),
                        card)
    in_loader = batches(BatchStream(dataset, 4, seed=5, num_workers=2, host=card.host), card)
    for expected, got, loaded in zip(loader_made, on_device, in_loader):
        assert torch.equal(got["lq"], expected["lq"]) and torch.equal(got["gt"], expected["gt"])
        # The device path's blur, resizes, noise and JPEG pass through the card; a batch made in
        # the loader arrives as host memory and costs the card nothing until the forward reads it.
        assert got["card_peak"] > 4 * got["gt"].numel() * 4 and loaded["card_peak"] == 0


def test_a_degradation_that_does_not_fit_the_card_is_made_on_the_cpu(tmp_path, capsys):
    dataset = hr_dataset(tmp_path / "hr")
    expected = batches(BatchStream(dataset, 4, seed=5))
    card = SimulatedAccelerator("Tiny card", MIB // 4, (8, 6))  # the HR batch fits, its degradation not
    got = batches(BatchStream(dataset, 4, seed=5, degrade_device=card.device, host=card.host), card)
    for one, other in zip(expected, got):
        assert torch.equal(one["lq"], other["lq"])
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "made on the CPU" in warnings[0], warnings


def test_a_simulated_gpu_run_degrades_on_the_device(tmp_path):
    hr = tmp_path / "hr"
    hr_dataset(hr)
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"gpus": [{"name": "RTX 3090", "vram_gb": 0.5, "compute_capability": [8, 6]}],
                                "cpu_count": 2, "ram_gb": 16}))
    code = ("import sys, torch; from zerosr.config.compose import compose_config; "
            "from zerosr.engine.loop import Trainer; "
            "cfg = compose_config(sys.argv[2:]); t = Trainer(cfg, sys.argv[1]); "
            "b = t.stream.next_batch(); print(t.stream.degrade_device, t.stream.collate.keywords['degrade'], "
            "tuple(b['lq'].shape))")
    overrides = ["data=realistic", f"data.gt_path={hr}", "data.n_val=1", "train.batch_size=2", "train.lq_size=16",
                 "hardware_tier.num_workers=0", "automation=off"]
    env = {**os.environ, "ZEROSR_FAKE_HARDWARE": str(card), "ZEROSR_SIMULATE_GPU": "1"}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run"), *overrides], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # The run's stream makes the LR on the run's device; its loader leaves the LR out.
    assert done.stdout.split() == ["cpu", "False", "(2,", "3,", "16,", "16)"], done.stdout


def test_tf32_stays_out_of_the_device_degradation(tmp_path):
    # Training turns TF32 on for a card of compute capability 8.0+; the simulated card then rounds
    # fp32 matrix products to TF32 as the tensor cores do. The degradation must run in full fp32,
    # so the LR made on the card matches the loader's: within 1/255 on 99.9 % of the pixels.
    from zerosr.engine.precision import make_precision

    dataset = hr_dataset(tmp_path / "hr")
    loader_made = batches(BatchStream(dataset, 4, seed=5, num_workers=0), n=4)
    card = SimulatedAccelerator("Test card", 512 * MIB, (8, 6))
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        make_precision("bf16", card)
        assert torch.backends.cuda.matmul.allow_tf32
        a, b = torch.rand(64, 64), torch.rand(64, 64)
        plain = a @ b
        with card.active():  # TF32 is really emulated on this card: the same product moves
            assert (a @ b - plain).abs().max() > 1e-4
        on_device = batches(BatchStream(dataset, 4, seed=5, num_workers=0, degrade_device=card.device, host=card.host),
                            card, n=4)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    expected = torch.cat([b["lq"] for b in loader_made])
    got = torch.cat([b["lq"] for b in on_device])
    within = ((got - expected).abs() <= 1 / 255 + 1e-6).float().mean().item()
    assert within >= 0.999, within
    assert torch.equal(got, expected)  # and on this path, exactly


def test_the_blur_reuses_few_fft_sizes(monkeypatch):
    # Second-round sizes vary from sample to sample; every new FFT size makes a new cuFFT plan.
    # The transform is rounded up to a multiple of 32, and the result is unchanged by it.
    import numpy as np

    from zerosr.data import realistic
    from zerosr.data.kernels import gaussian_kernel

    sizes, rfft2 = set(), torch.fft.rfft2

    def recorded(x, *args, **kwargs):
        sizes.add(tuple(x.shape[-2:]))
        return rfft2(x, *args, **kwargs)

    monkeypatch.setattr(torch.fft, "rfft2", recorded)
    kernel = gaussian_kernel(7, 1.5)
    for side in range(40, 72):  # 32 different image sizes
        image = torch.rand(1, 3, side, side + 3)
        blurred = realistic.filter_batch(image, [kernel])
        padded = torch.nn.functional.pad(image, (3, 3, 3, 3), mode="reflect")
        direct = torch.nn.functional.conv2d(padded, torch.from_numpy(np.ascontiguousarray(kernel[::-1, ::-1]))
                                            .float()[None, None].repeat(3, 1, 1, 1), groups=3)
        assert torch.allclose(blurred, direct, atol=1e-5)
    assert len(sizes) <= 4, sizes
