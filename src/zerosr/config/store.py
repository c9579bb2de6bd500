"""Everything Hydra needs before it composes: resolvers, the schema, the detected tier.

The arch options are files, `conf/arch/<option>.yaml`, like every other group's.

`register()` runs before `@hydra.main` (see train.py) and before any Compose-API call. The
`hardware_tier/auto` option is stored here with the detected tier as its only default: the Hydra
way to pick a group option from code (Hydra does not resolve interpolations inside a defaults
list), and `hardware_tier=<name>` on the command line still replaces it.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from zerosr.config.resolvers import register_resolvers
from zerosr.config.schema import ZeroSRConfig
from zerosr.detect import probe, tier_for


def register() -> str:
    """Register resolvers and config nodes; returns the detected tier's name."""
    register_resolvers()
    store = ConfigStore.instance()
    store.store(name="zerosr_schema", node=ZeroSRConfig)
    tier = tier_for(probe())
    store.store(group="hardware_tier", name="auto", node={"defaults": [tier]})
    return tier
