"""Makes Hydra's Compose API work on zerosr's conf/ without calling zerosr first.

`conf/train.yaml` names options that zerosr registers in Hydra's ConfigStore (the typed schema,
`hardware_tier/auto` for the detected tier) and resolvers
(`${zerosr.*:...}`). Hydra builds every app's config search path through SearchPathPlugins, so
this one registers them when the search path holds zerosr's conf/ and nothing registered them
yet (`train.py` and `zerosr.config.compose` register before Hydra starts):

    from hydra import compose, initialize_config_dir
    from zerosr.config import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["scale=4"])
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class ZeroSRCompose(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from zerosr.config import CONFIG_DIR

        if _registered():
            return
        for element in search_path.get_path():
            path = element.path or ""
            if path.startswith("file://"):
                path = path[len("file://"):]
            if path and "://" not in path and Path(path).resolve() == CONFIG_DIR:
                from zerosr.config.store import register

                register()
                return


def _registered() -> bool:
    from hydra.core.config_store import ConfigStore

    try:
        return "auto.yaml" in ConfigStore.instance().list("hardware_tier")
    except OSError:  # Hydra: "Path not found" while the group does not exist yet
        return False
