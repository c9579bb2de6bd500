"""The yardstick for bench/compose_speed.py: a Hydra app over the same conf/ without zerosr's
hardware probe and resolvers (the same schemas and arch options, the tier fixed to `cpu`)."""

from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from zerosr.archs.variants import VARIANTS
from zerosr.config.presets import training_preset, variant_of
from zerosr.config.schema import ArchConfig, ArchPreset, ZeroSRConfig

store = ConfigStore.instance()
store.store(name="zerosr_schema", node=ZeroSRConfig)
for name, params in VARIANTS.items():
    preset = ArchPreset(**training_preset(variant_of(name)))
    store.store(group="arch", name=name, node=ArchConfig(name=name, params=dict(params), preset=preset))
store.store(group="hardware_tier", name="auto", node={"defaults": ["cpu"]})


@hydra.main(config_path=str(Path(__file__).resolve().parents[1] / "conf"), config_name="train",
            version_base="1.3")
def main(cfg: DictConfig) -> None:
    pass


if __name__ == "__main__":
    main()
