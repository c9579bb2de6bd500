"""Config: schemas, presets, derivation rules and their registration with Hydra (`store.register`)."""

from pathlib import Path

# conf/ at the repository root (the package is installed editable, see README).
CONFIG_DIR = Path(__file__).resolve().parents[3] / "conf"
