"""Shared fixtures: fake hardware descriptions and a fresh probe/Hydra state for every test."""

from __future__ import annotations

import json

import pytest
from hydra.core.global_hydra import GlobalHydra

from zerosr.detect import FAKE_ENV, probe

RTX_3090 = {"name": "NVIDIA GeForce RTX 3090", "vram_gb": 24.0, "compute_capability": [8, 6]}


@pytest.fixture(autouse=True)
def fresh_state():
    probe.cache_clear()
    GlobalHydra.instance().clear()
    yield
    probe.cache_clear()
    GlobalHydra.instance().clear()


@pytest.fixture
def fake_hardware(tmp_path, monkeypatch):
    """fake_hardware(gpus=[...], cpu_cores=16, ram_gb=64.0) -> path of the JSON now in force."""

    def describe(gpus=(), cpu_cores=16, ram_gb=64.0):
        path = tmp_path / f"hardware_{len(list(tmp_path.glob('hardware_*.json')))}.json"
        path.write_text(json.dumps({"gpus": list(gpus), "cpu_cores": cpu_cores, "ram_gb": ram_gb}))
        monkeypatch.setenv(FAKE_ENV, str(path))
        probe.cache_clear()
        return path

    return describe
