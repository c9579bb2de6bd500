"""The yardstick for bench/compose_speed.py: a Hydra app over the same conf/ without zerosr's
hardware probe and resolvers (the same schema and conf/arch options, the tier fixed to `cpu`)."""

from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from zerosr.config.schema import ZeroSRConfig

store = ConfigStore.instance()
store.store(name="zerosr_schema", node=ZeroSRConfig)
store.store(group="hardware_tier", name="auto", node={"defaults": ["cpu"]})


@hydra.main(config_path=str(Path(__file__).resolve().parents[1] / "conf"), config_name="train",
            version_base="1.3")
def main(cfg: DictConfig) -> None:
    pass


if __name__ == "__main__":
    main()
