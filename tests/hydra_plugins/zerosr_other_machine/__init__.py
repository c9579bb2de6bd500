"""A test launcher that runs each job as if on another machine, like Hydra's submitit launcher.

submitit composes a job's config with the ConfigStore pickled on the submitting machine (whose
`hardware_tier/auto` names that machine's tier), then runs the job on a node with other hardware.
This launcher composes each job here, exactly as the basic launcher does, then switches the
simulated hardware to `$ZEROSR_JOB_FAKE_HARDWARE` (see zerosr.detect) before the job runs.
Used with PYTHONPATH=tests: `python train.py -m hydra/launcher=other_machine ...`.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.config_store import ConfigStore
from hydra.core.utils import run_job, setup_globals
from omegaconf import open_dict


@dataclass
class OtherMachineLauncherConf:
    _target_: str = "hydra_plugins.zerosr_other_machine.OtherMachineLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="other_machine", node=OtherMachineLauncherConf)


class OtherMachineLauncher(BasicLauncher):
    def launch(self, job_overrides, initial_job_idx):
        from zerosr.detect import FAKE_ENV, probe

        setup_globals()
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        runs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            os.environ[FAKE_ENV] = os.environ["ZEROSR_JOB_FAKE_HARDWARE"]  # the job's node
            probe.cache_clear()
            runs.append(run_job(hydra_context=self.hydra_context, task_function=self.task_function,
                                config=sweep_config, job_dir_key="hydra.sweep.dir",
                                job_subdir_key="hydra.sweep.subdir"))
        return runs
