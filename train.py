"""zerosr: zero-config super-resolution training.

    python train.py arch=paragonsr2_s data.gt_path=HR data.lq_path=LR      # data=paired is implied

Everything else is derived from the detected hardware, the architecture and the data;
`python train.py --cfg job --resolve` shows every value, and any of them can be overridden.
"""

import sys

import hydra
from omegaconf import DictConfig

from zerosr.cli import exit_on_user_error, install_hydra_error_handler
from zerosr.config.overrides import complete_overrides
from zerosr.config.store import register


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> float:
    from zerosr.app import run  # torch is imported only when a job really runs

    return run(cfg)


if __name__ == "__main__":  # not in DataLoader workers started by `spawn` (Windows), which import this file
    # Before Hydra composes: probe the hardware, register resolvers, schemas and `hardware_tier/auto`;
    # complete the command line (a data.gt_path implies data=paired).
    exit_on_user_error(register)()
    sys.argv[1:] = exit_on_user_error(complete_overrides)(sys.argv[1:])
    install_hydra_error_handler()  # Hydra's config errors: one line, exit 2
    main()
