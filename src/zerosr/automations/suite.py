"""All automations of a run behind one object, so the loop has one call per event.

The suite routes each event to every automation and handles the one link between them: when the
batch size changes (memory watch or out-of-memory), the LR follows by the square-root rule. The
loop then applies the values the suite exposes and logs every returned decision.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from zerosr.automations.base import Automation, Decision, param
from zerosr.automations.batch import BatchController
from zerosr.automations.clip import AutoClip
from zerosr.automations.early_stop import EarlyStopping
from zerosr.automations.loss_schedule import LossSchedule
from zerosr.automations.lr import LRController
from zerosr.metrics.catalog import METRICS, Metric


class Automations:
    def __init__(self, lr: LRController, batch: BatchController, clip: AutoClip, early_stop: EarlyStopping,
                 loss_schedule: LossSchedule, analyse_batches: int = 0):
        self.lr, self.batch, self.clip = lr, batch, clip
        self.early_stop, self.loss_schedule = early_stop, loss_schedule
        self.analyse_batches = int(analyse_batches)  # 0: dataset analysis off

    @property
    def members(self) -> dict[str, Automation]:
        return {a.name: a for a in (self.lr, self.batch, self.clip, self.early_stop, self.loss_schedule)}

    def on_step_end(self, iteration: int, stats: Mapping[str, float]) -> list[Decision]:
        old_batch = self.batch.batch_size
        decisions = []
        for automation in (self.clip, self.lr, self.loss_schedule, self.early_stop, self.batch):
            decisions += automation.on_step_end(iteration, stats)
        schedule = self.loss_schedule
        if schedule.gan_name is not None and iteration == schedule.gan_delay > 0:  # the GAN joins next step
            self.lr.restart_loss_baseline()
        return decisions + self.lr.scale_for_batch(old_batch, self.batch.batch_size, iteration)

    def on_validation(self, iteration: int, metrics: Mapping[str, float]) -> list[Decision]:
        decisions = []
        for automation in (self.lr, self.early_stop, self.clip, self.loss_schedule, self.batch):
            made = automation.on_validation(iteration, metrics)
            decisions += made
            if automation is self.early_stop and made:  # a stop begins the cool-down
                decisions += self.lr.on_early_stop(iteration)
        return decisions

    def on_oom(self, iteration: int) -> list[Decision]:
        """Halve the batch (raises UserError when it cannot) and scale the LR to match."""
        old_batch = self.batch.batch_size
        decisions = self.batch.on_oom(iteration)
        return decisions + self.lr.scale_for_batch(old_batch, self.batch.batch_size, iteration)

    def adopt_batch(self, iteration: int, batch_size: int) -> list[Decision]:
        """A batch size measured at start-up: the controller takes it and the LR follows."""
        old_batch, self.batch.batch_size = self.batch.batch_size, int(batch_size)
        return self.lr.scale_for_batch(old_batch, self.batch.batch_size, iteration)

    def on_nonfinite(self, iteration: int) -> list[Decision]:
        return self.lr.on_nonfinite(iteration)

    def state_dict(self) -> dict:
        return {name: automation.state_dict() for name, automation in self.members.items()}

    def missing_state(self, state: Mapping[str, Mapping]) -> list[str]:
        """The `automation.key`s a saved state lacks (saved by another zerosr version)."""
        return [f"{name}.{key}" for name, automation in self.members.items()
                for key in automation.STATE if key not in state.get(name, {})]

    def load_state_dict(self, state: Mapping[str, Mapping]) -> None:
        for name, automation in self.members.items():
            automation.load_state_dict(state[name])


def build_automations(cfg, *, base_lr: float, total_iter: int, warmup_iter: int, batch_size: int,
                      base_weights: Mapping[str, float], user_set: Iterable[str] = frozenset(),
                      gan_name: str | None = None, total_memory: int | None = None,
                      select: Metric = METRICS["psnr"]) -> Automations:
    """Every automation from the `automation` config node; the master `enabled=false` turns all
    off (each then gives the plain-training behaviour: fixed schedule, fixed batch, no clipping,
    no early stop, fixed loss weights)."""
    master = bool(param(cfg, "enabled", True))

    def node(key: str) -> dict:
        sub = cfg[key]
        values = {k: sub[k] for k in sub}
        values["enabled"] = master and bool(param(sub, "enabled", True))
        return values

    analysis = node("dataset_analysis")
    return Automations(
        lr=LRController(node("lr"), base_lr, total_iter, warmup_iter, select),
        batch=BatchController(node("batch"), batch_size, total_memory),
        clip=AutoClip(node("clip")),
        early_stop=EarlyStopping(node("early_stop"), select),
        loss_schedule=LossSchedule(node("loss_schedule"), base_weights, total_iter, user_set, gan_name),
        analyse_batches=int(analysis["batches"]) if analysis["enabled"] else 0,
    )
