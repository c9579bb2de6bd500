"""Which keys the user set: explicit values win over start-up measurement and calibration.

A key counts as set by the user when it is
- named on the command line;
- written in one of the job's config files from outside zerosr's own `conf/` (a `--config-dir`
  file), whatever its value;
- listed in `set_by_user`, the record that the configs zerosr writes carry (`resolved_config.yaml`,
  the Python API's YAML): these files write every derived value out, so their keys alone say nothing;
- or given a value other than the one zerosr's `conf/` gives for the same options (arch, tier,
  automation, data): a value edited into a written config by hand.
"""

from __future__ import annotations

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

# The running job's keys set in its config (see `remember`); None before a job says so.
_from_config: set[str] | None = None
_UNRESOLVABLE = object()
RECORD_KEY = "set_by_user"


def user_set_keys(prefix: str) -> set[str]:
    """Keys under `prefix` the user set (explicit keys win over calibration), relative to it."""
    keys = command_line_keys() | (_from_config or set())
    if not prefix:
        return keys
    found = set()
    for key in keys:
        if key.startswith(prefix + "."):
            found.add(key[len(prefix) + 1:])
        elif key == prefix:
            found.add("")
    return found


def remember(cfg: DictConfig) -> set[str]:
    """Record which keys this job's config sets; returns every key the user set."""
    global _from_config
    _from_config = keys_set_in(cfg)
    return user_set_keys("")


def forget() -> None:
    global _from_config
    _from_config = None


def command_line_keys() -> set[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    return {override.split("=", 1)[0].lstrip("+~") for override in HydraConfig.get().overrides.task}


def keys_set_in(cfg: DictConfig) -> set[str]:
    """Keys the job's config sets: its record of them, else its files' keys, and changed values."""
    record = OmegaConf.select(cfg, RECORD_KEY, default=None)
    found = set(record) if record is not None else keys_in_user_files()
    return found | keys_changed_in(cfg, found | command_line_keys())


def keys_in_user_files() -> set[str]:
    """Leaf keys written in the running job's config files that are not zerosr's or Hydra's own."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.config_repository import ConfigRepository
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from zerosr.config import CONFIG_DIR

    if not HydraConfig.initialized():
        return set()
    job = HydraConfig.get()
    search_path = ConfigSearchPathImpl()
    for source in job.runtime.config_sources:
        search_path.append(source.provider, f"{source.schema}://{source.path}")
    loader = ConfigLoaderImpl(config_search_path=search_path)
    defaults = loader.compute_defaults_list(job.job.config_name, list(job.overrides.task), RunMode.RUN)
    repository = ConfigRepository(config_search_path=search_path)
    ours = (f"file://{CONFIG_DIR}", "structured://", "pkg://hydra")
    found = set()
    for default in defaults.defaults:
        if default.config_path is None or default.package.split(".")[0] == "hydra":
            continue
        loaded = repository.load_config(default.config_path)
        if loaded is None or loaded.path.startswith(ours):
            continue
        keys = [key for key in leaves(loaded.config) if key]  # an empty file has the one key ""
        found |= {f"{default.package}.{key}" if default.package else key for key in keys}
    return found


def keys_changed_in(cfg: DictConfig, known: set[str]) -> set[str]:
    """Leaf keys of `cfg` whose value differs from what zerosr's conf/ gives for the same options
    and the `known` set keys (so a value derived from a set key, written out, is not a change)."""
    reference = builtin_config(cfg)
    with open_dict(reference):
        for key in sorted(known, key=lambda k: k.count(".")):  # a list before its items (train.losses.1.weight)
            value = OmegaConf.select(cfg, key, default=_UNRESOLVABLE)
            if key.startswith("hydra.") or value is _UNRESOLVABLE:
                continue
            try:
                OmegaConf.update(reference, key, value, force_add=True)
            except OmegaConfBaseException:
                pass  # no place for it in the built-in config: it is set already, nothing to compare
    ours, theirs = leaves(cfg), leaves(reference)
    found = set()
    for key, value in ours.items():
        if key == RECORD_KEY:
            continue
        if key in theirs and value == theirs[key]:
            continue  # the built-in value (an interpolation stays one)
        mine = _resolved(cfg, key)
        if key in theirs and mine is not _UNRESOLVABLE and mine == _resolved(reference, key):
            continue  # the derived value written out unchanged
        found.add(key)
    return found


def builtin_config(cfg: DictConfig) -> DictConfig:
    """zerosr's own train config with the options `cfg` uses (options of its own only)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.types import RunMode

    from zerosr.config import CONFIG_DIR
    from zerosr.config.store import register

    register()  # the schema and hardware_tier/auto
    overrides = []
    for group in ("arch", "hardware_tier", "automation", "data"):
        name = OmegaConf.select(cfg, f"{group}.name", default=None)
        if name is not None and _is_option(CONFIG_DIR, group, str(name)):
            overrides.append(f"{group}={name}")
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONFIG_DIR)))
    reference = loader.load_configuration("train", overrides, RunMode.RUN, from_shell=False)
    with open_dict(reference):
        reference.pop("hydra", None)
    return reference


def _is_option(config_dir, group: str, name: str) -> bool:
    return (config_dir / group / f"{name}.yaml").is_file()


def leaves(cfg: DictConfig) -> dict[str, object]:
    """Dotted key -> unresolved value; lists are single values (a list is set as a whole)."""
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)
    out: dict[str, object] = {}

    def walk(node, prefix: str):
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            out[prefix] = node

    walk(plain, "")
    return out


def _resolved(cfg: DictConfig, key: str):
    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
    except Exception:  # noqa: BLE001 - a `???` or a value that cannot resolve: never "equal"
        return _UNRESOLVABLE
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value
