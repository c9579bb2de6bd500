"""Training automations: each watches real measurements, decides within safety bounds, exposes
the value the loop applies, records why, and is saved in every checkpoint (see `base.py`)."""

from zerosr.automations.base import Automation, Decision
from zerosr.automations.batch import BatchController, cpu_batch_size, find_batch_size, peak_memory_of
from zerosr.automations.clip import AutoClip
from zerosr.automations.dataset_analysis import analyse
from zerosr.automations.early_stop import EarlyStopping
from zerosr.automations.loss_schedule import LossSchedule
from zerosr.automations.lr import LRController, lr_range_test
from zerosr.automations.suite import Automations, build_automations

__all__ = [
    "Automation", "Decision", "LRController", "lr_range_test", "BatchController", "find_batch_size",
    "cpu_batch_size", "peak_memory_of", "AutoClip", "EarlyStopping", "LossSchedule", "analyse",
    "Automations", "build_automations",
]
