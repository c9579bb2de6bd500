"""`python -m zerosr.doctor [OVERRIDES...]`: check the config and the data of a run without training.

Takes the same overrides as `train.py` (`data=paired data.gt_path=HR data.lq_path=LR scale=4 ...`),
composes the same config, runs the same checks as `train.py` and its `dry_run=true` (unknown keys,
bounds, every `_target_` imported, the losses, optimizer and DataLoader settings, then the data
preflight, `zerosr.preflight`), prints one line per problem and the counts, and exits 0 when the
run can start, 2 when something must be fixed first. A `data.gt_path` implies `data=paired`.
"""

from __future__ import annotations

import os
import sys

from zerosr.cli import config_error_line, exit_on_user_error


def check(overrides: list[str]) -> int:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from zerosr.config.compose import compose_config
    from zerosr.config.validate import validate
    from zerosr.preflight import preflight

    try:
        cfg = compose_config(overrides)
        validate(cfg)
    except (HydraException, OmegaConfBaseException) as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {config_error_line(error)}", file=sys.stderr)
        return 2
    preflight(cfg)
    print("doctor       no problems found: the run can start", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(__doc__.strip())
        return 0
    return exit_on_user_error(check)(args)


if __name__ == "__main__":
    sys.exit(main())
