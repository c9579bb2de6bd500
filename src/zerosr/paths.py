"""Where zerosr's own files live: its Hydra config tree (`conf/` at the repository root)."""

from pathlib import Path

# conf/ at the repository root (the package is installed editable, see README).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"
