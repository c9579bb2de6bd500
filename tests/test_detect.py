"""Hardware probe and tiering: fake descriptions, and NVML failures falling back with one warning."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest

from zerosr.detect import hardware as hw
from zerosr.detect import loader_workers, precision_for, probe, tier_for
from zerosr.errors import UserError


def gpu(vram, cc=(8, 6), name="GPU"):
    return {"name": name, "vram_gb": vram, "compute_capability": list(cc)}


@pytest.mark.parametrize("gpus, tier", [
    ([], "cpu"),
    ([gpu(2.0)], "budget"), ([gpu(4.0)], "budget"),
    ([gpu(6.0)], "mid_range"), ([gpu(7.8)], "mid_range"), ([gpu(8.0)], "mid_range"),
    ([gpu(12.0)], "high_end"), ([gpu(23.6)], "high_end"), ([gpu(24.0)], "high_end"),
    ([gpu(40.0)], "workstation"), ([gpu(80.0)], "workstation"),
    ([gpu(80.0), gpu(12.0)], "high_end"),  # the smallest card decides: every rank must fit
])
def test_tier_by_vram(fake_hardware, gpus, tier):
    fake_hardware(gpus=gpus)
    assert tier_for(probe()) == tier


def test_precision_follows_compute_capability(fake_hardware):
    fake_hardware(gpus=[gpu(24.0, (8, 6))])
    assert precision_for(probe(), "fp16") == "bf16"
    fake_hardware(gpus=[gpu(16.0, (7, 5))])  # T4: bf16 only emulated, so fp16 + GradScaler
    assert precision_for(probe(), "bf16") == "fp16"
    fake_hardware(gpus=[])
    assert precision_for(probe(), "bf16") == "bf16"  # the tier's own default when no GPU is seen


def test_loader_workers_from_cores(fake_hardware, monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    fake_hardware(cpu_cores=2)
    assert loader_workers(probe(), cap=8) == 1
    assert loader_workers(probe(), cap=2, share=0.25) == 0  # cpu tier: the model needs both cores
    assert loader_workers(probe(), cap=2, share=0.25, data="realistic") == 1  # unless the loader degrades
    fake_hardware(cpu_cores=1)
    assert loader_workers(probe(), cap=2, share=0.25, data="realistic") == 0  # no second core to give
    fake_hardware(cpu_cores=32)
    assert loader_workers(probe(), cap=8) == 8
    fake_hardware(gpus=[gpu(24.0)] * 4, cpu_cores=16)
    assert loader_workers(probe(), cap=8) == 8  # one process, on one of the four GPUs: every core is its
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun, one process per GPU: they share the cores
    assert loader_workers(probe(), cap=8) == 2


def test_no_driver_means_cpu_tier_without_asking_nvml(monkeypatch, capsys):
    monkeypatch.delenv(hw.FAKE_ENV, raising=False)
    monkeypatch.setattr(hw, "_nvidia_driver_present", lambda: False)
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())  # would report a GPU if asked
    probe.cache_clear()
    assert tier_for(probe()) == "cpu"
    assert "no NVIDIA driver" in capsys.readouterr().err


def test_probe_is_cached_and_fast_path_has_no_torch():
    assert probe() is probe()
    code = "import sys, zerosr.detect as d; d.probe(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_bad_fake_file_is_a_user_error(tmp_path, monkeypatch):
    bad = tmp_path / "hw.json"
    bad.write_text("{not json")
    monkeypatch.setenv(hw.FAKE_ENV, str(bad))
    with pytest.raises(UserError, match="ZEROSR_FAKE_HARDWARE"):
        probe()


# --- NVML failures -------------------------------------------------------------------------------

class FakeNVMLError(Exception):
    pass


def fake_pynvml(**overrides):
    """A stand-in pynvml module: one RTX 3090 unless a function is overridden."""
    memory = types.SimpleNamespace(total=24 * 2**30, free=20 * 2**30)
    module = types.SimpleNamespace(
        NVMLError=FakeNVMLError,
        nvmlInit=lambda: None, nvmlShutdown=lambda: None,
        nvmlSystemGetDriverVersion=lambda: "550.54",
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: object(),
        nvmlDeviceGetName=lambda h: b"NVIDIA GeForce RTX 3090",
        nvmlDeviceGetMemoryInfo=lambda h: memory,
        nvmlDeviceGetCudaComputeCapability=lambda h: (8, 6),
    )
    for name, value in overrides.items():
        setattr(module, name, value)
    return module


def raises(*_):
    raise FakeNVMLError("simulated failure")


@pytest.fixture
def with_nvml(monkeypatch):
    monkeypatch.delenv(hw.FAKE_ENV, raising=False)
    monkeypatch.setattr(hw, "_nvidia_driver_present", lambda: True)

    def install(module):
        monkeypatch.setitem(sys.modules, "pynvml", module)
        probe.cache_clear()

    return install


def test_probe_reads_nvml(with_nvml, capsys):
    with_nvml(fake_pynvml())
    found = probe()
    assert [g.name for g in found.gpus] == ["NVIDIA GeForce RTX 3090"]
    assert found.gpus[0].vram_gb == 24.0 and found.gpus[0].free_vram_gb == 20.0
    assert found.gpus[0].compute_capability == (8, 6) and found.gpus[0].driver == "550.54"
    assert tier_for(found) == "high_end"
    assert capsys.readouterr().err == ""


def test_nvml_missing_means_cpu_tier_with_one_warning(with_nvml, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    probe.cache_clear()
    assert tier_for(probe()) == "cpu"
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_nvml_init_raising_means_cpu_tier(with_nvml, capsys):
    with_nvml(fake_pynvml(nvmlInit=raises))
    assert tier_for(probe()) == "cpu"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning:")


def test_unreadable_vram_counts_as_8_gb(with_nvml, capsys):
    with_nvml(fake_pynvml(nvmlDeviceGetMemoryInfo=raises))
    found = probe()
    assert found.gpus[0].vram_gb == 8.0 and tier_for(found) == "mid_range"
    assert "8 GB" in capsys.readouterr().err


@pytest.mark.parametrize("garbage", [
    {"nvmlDeviceGetMemoryInfo": lambda h: types.SimpleNamespace(total=-1, free=0)},
    {"nvmlDeviceGetMemoryInfo": lambda h: types.SimpleNamespace(total="lots", free=None)},
    {"nvmlDeviceGetMemoryInfo": lambda h: None},
])
def test_garbage_vram_falls_back(with_nvml, capsys, garbage):
    with_nvml(fake_pynvml(**garbage))
    assert probe().gpus[0].vram_gb == 8.0
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_garbage_compute_capability_falls_back(with_nvml, capsys):
    with_nvml(fake_pynvml(nvmlDeviceGetCudaComputeCapability=lambda h: ("x", None)))
    assert probe().gpus[0].compute_capability == (7, 0)
    assert "compute capability" in capsys.readouterr().err


def test_device_count_failure_means_cpu(with_nvml, capsys):
    with_nvml(fake_pynvml(nvmlDeviceGetCount=raises))
    assert not probe().has_gpu
    assert capsys.readouterr().err.count("warning:") == 1


@pytest.mark.parametrize("visible, names", [("1", ["GPU b"]), ("2,0", ["GPU c", "GPU a"]), ("", []),
                                            ("0,7,1", ["GPU a"]), (None, ["GPU a", "GPU b", "GPU c"]),
                                            ("GPU-cccc1234,GPU-aaaa", ["GPU c", "GPU a"]), ("GPU-bbbb,GPU-x", ["GPU b"])])
def test_detection_counts_only_the_gpus_cuda_visible_devices_shows(with_nvml, monkeypatch, visible, names):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    with_nvml(fake_pynvml(nvmlDeviceGetCount=lambda: 3, nvmlDeviceGetHandleByIndex=lambda i: i,
                          nvmlDeviceGetName=lambda h: f"GPU {'abc'[h]}",
                          nvmlDeviceGetUUID=lambda h: f"GPU-{'abc'[h] * 4}1234-5678"))
    assert [g.name for g in probe().gpus] == names
    # CUDA counts the GPUs in NVML's (PCI bus) order from here on: CUDA_VISIBLE_DEVICES=1 is NVML's 1.
    assert os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_cuda_numbering_unlike_nvmls_counts_every_gpu(with_nvml, monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "FASTEST_FIRST")  # CUDA's 1 may be any of NVML's
    with_nvml(fake_pynvml(nvmlDeviceGetCount=lambda: 3, nvmlDeviceGetHandleByIndex=lambda i: i,
                          nvmlDeviceGetName=lambda h: f"GPU {'abc'[h]}"))
    assert [g.name for g in probe().gpus] == ["GPU a", "GPU b", "GPU c"]
    assert "CUDA_DEVICE_ORDER=FASTEST_FIRST numbers GPUs unlike NVML" in capsys.readouterr().err


def test_the_cpu_tier_gives_realistic_data_a_loader_worker(fake_hardware):
    from zerosr.config.compose import compose_config

    fake_hardware(cpu_cores=2)
    assert compose_config(["data=demo"]).hardware_tier.num_workers == 0
    assert compose_config(["data=realistic", "data.gt_path=/x"]).hardware_tier.num_workers == 1
