"""Each automation's decision, read where training uses it: the optimizer's param groups as it
steps, the gradients it steps with, the total loss that is backpropagated, the batch tensors the
model sees, the number of optimizer steps. A decision that is only logged fails these tests."""

from __future__ import annotations

import math
import time

import pytest
import torch

from test_train import make_dataset
from test_train_automations import auto_overrides
from zerosr.config.compose import compose_config
from zerosr.engine import loop
from zerosr.engine.loop import Trainer
from zerosr.engine.run import train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture
def make_trainer(data, tmp_path):
    made = []

    def make(**overrides) -> Trainer:
        trainer = Trainer(compose_config(auto_overrides(data, **overrides)), tmp_path / f"run{len(made)}")
        made.append(trainer)
        return trainer

    yield make
    for trainer in made:
        trainer.close()


def on_optimizer_step(trainer: Trainer, record) -> None:
    trainer.learner.optimizer.register_step_pre_hook(lambda optimizer, args, kwargs: record(optimizer))


def test_the_lr_decision_is_the_lr_the_optimizer_steps_with(make_trainer):
    # No relative gain reaches 100 %: after the first two 20-step windows (the first is the best)
    # the factor halves; the cool-down then takes the last quarter of the run down to near zero.
    trainer = make_trainer(**{"automation.lr.plateau_patience": 4, "automation.lr.improvement_threshold": 1.0,
                              "automation.lr.cooldown_fraction": 0.25, "train.warmup_iter": 0,
                              "train.total_iter": 80})
    used, wanted = [], []
    on_optimizer_step(trainer, lambda optimizer: used.append(optimizer.param_groups[0]["lr"]))
    while trainer.iteration < trainer.suite.lr.end_iter:
        wanted.append(trainer.suite.lr.lr_at(trainer.iteration + 1))
        trainer.step()
    assert trainer.suite.lr.factor < 1.0  # the controller did cut
    assert used == pytest.approx(wanted, rel=1e-12)
    assert used[59] == pytest.approx(trainer.suite.lr.factor * trainer.suite.lr.base_lr)  # iteration 60
    assert all(a > b for a, b in zip(used[59:], used[60:])) and used[-1] < 0.2 * used[59]  # 61..80 cool down


def test_a_time_budget_begins_the_cool_down_the_optimizer_follows(make_trainer):
    trainer = make_trainer(**{"automation.lr.cooldown_fraction": 0.2, "automation.early_stop.enabled": False,
                              "train.warmup_iter": 0, "train.total_iter": 100})
    for _ in range(12):
        trainer.step()
    # 80 % of the loop's time spent after 12 of this process's iterations: the cool-down is due now
    # and holds the 12 * 0.2 / 0.8 = 3 iterations the remaining time is worth.
    now = time.perf_counter()
    trainer.set_deadline(now + 1000.0, now - 4000.0)
    trainer.loop_began_at = 0
    used = []
    on_optimizer_step(trainer, lambda optimizer: used.append(optimizer.param_groups[0]["lr"]))
    while trainer.iteration < trainer.suite.lr.end_iter:
        trainer.step()
    assert trainer.suite.lr.end_iter == trainer.iteration == 16
    assert [d.reason.split(":")[0] for d in trainer.decisions if "end_iter" in d.change] == ["time budget"]
    assert used[0] == pytest.approx(trainer.suite.lr.base_lr) and used[1] > used[2] > used[3] > 0


def test_the_clip_threshold_bounds_the_gradient_that_steps(make_trainer):
    # A low percentile over a short history: most steps are clipped once the history fills (at a
    # moderate LR: a hot one shrinks the gradients so fast that each beats the last ones' percentile).
    trainer = make_trainer(**{"automation.clip.history": 4, "automation.clip.percentile": 10.0,
                              "automation.early_stop.enabled": False, "train.total_iter": 12, "train.lr": 1e-3})
    params = list(trainer.learner.module.parameters())
    norms = []
    on_optimizer_step(trainer, lambda optimizer: norms.append(
        float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None])))))
    steps = [trainer.step() for _ in range(12)]
    clipped = [(s, n) for s, n in zip(steps, norms) if s["grad_norm"] > s["clip_threshold"]]
    assert len(clipped) >= 4 and all(s["clip_threshold"] < 1.0 for s, _ in clipped)
    for stats, norm in zip(steps, norms):
        assert norm == pytest.approx(min(stats["grad_norm"], stats["clip_threshold"]), rel=1e-3)


def test_the_scheduled_weights_make_the_backpropagated_total(make_trainer):
    losses = ("[{_target_:zerosr.losses.CharbonnierLoss,weight:1.0},"
              "{_target_:zerosr.losses.MSSSIMLoss,weight:0.5,window_size:5,max_scales:2}]")
    trainer = make_trainer(**{"train.losses": losses, "automation.loss_schedule.auto_calibrate": False,
                              "automation.loss_schedule.baseline_iterations": 1,
                              "automation.loss_schedule.adaptation_rate": 0.1,
                              "automation.loss_schedule.adaptation_threshold": 1e-6, "train.total_iter": 10})
    base = dict(trainer.learner.objective.base_weights)
    moved = False
    for _ in range(10):
        weights = dict(trainer.suite.loss_schedule.weights)
        moved = moved or any(not math.isclose(weights[k], base[k]) for k in base)
        stats = trainer.step()
        assert stats["loss"] == pytest.approx(sum(w * stats[f"loss/{k}"] for k, w in weights.items()), rel=1e-5)
    assert moved  # the schedule really changed the weights during the run


def test_the_batch_decision_sizes_the_batch_tensors(make_trainer):
    trainer = make_trainer(**{"automation.batch.enabled": True, "train.batch_size": 4,
                              "automation.batch.max_batch_size": 4, "debug.inject_oom_at": "[2]"})
    seen: list[int] = []
    trainer.learner.module.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    per_step = []
    for _ in range(3):
        seen.clear()
        trainer.step()
        per_step.append(list(seen))
    # Step 2 fails after its first chunk, then the same 4 samples go again in halves; step 3 reads 2.
    assert per_step == [[4], [4, 2, 2], [2]]
    assert trainer.suite.batch.batch_size == 2 and trainer.stream.batch_size == 2


@pytest.fixture
def counted(monkeypatch):
    """The iteration of every optimizer step any Trainer built in the test takes."""
    steps = []
    original_init = loop.Trainer.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        on_optimizer_step(self, lambda optimizer: steps.append(self.iteration))

    monkeypatch.setattr(loop.Trainer, "__init__", init)
    return steps


def test_an_early_stop_ends_the_optimizer_steps(data, tmp_path, counted):
    overrides = auto_overrides(data, **{"train.total_iter": 30, "train.val_freq": 2,
                                        "automation.early_stop.patience": 4, "automation.early_stop.min_iter": 6,
                                        "automation.early_stop.min_delta": 100.0, "automation.lr.cooldown_fraction": 0.5,
                                        "automation.early_stop.past_bicubic": False})  # 2 steps in, below bicubic
    train(compose_config(overrides), tmp_path / "run")
    # First validation (2) is the best; nothing beats it by 100 dB, patience 4 -> stop at 6 (min_iter),
    # then a cool-down of half the 6 iterations done.
    assert len(counted) == 9
    assert sorted(p.name for p in (tmp_path / "run" / "training_state").glob("*.pt"))[-1] == "state_00000009.pt"


def test_a_derived_early_stop_waits_for_the_lr_to_answer_the_stall_first(data, tmp_path, counted):
    overrides = auto_overrides(data, **{"train.total_iter": 40, "train.val_freq": 2, "automation.lr.plateau_patience": 6,
                                        "automation.early_stop.min_iter": 6, "automation.early_stop.min_delta": 100.0,
                                        "automation.lr.cooldown_fraction": 0.5, "automation.early_stop.past_bicubic": False})
    cfg = compose_config(overrides)
    # Three validations are 6 and a quarter of the run 10: twice the plateau patience decides.
    assert cfg.automation.early_stop.patience == 12
    train(cfg, tmp_path / "run")
    # First validation (2) is the best; patience 12 -> stop at 14, then a cool-down of 7.
    assert len(counted) == 21


def test_a_loss_blown_up_past_the_start_restores_the_starting_weights(make_trainer):
    trainer = make_trainer(**{"automation.early_stop.enabled": False, "train.total_iter": 40})
    start = {k: v.clone() for k, v in trainer.learner.module.state_dict().items()}
    lr = trainer.suite.lr
    for _ in range(lr.window - 1):  # the smoothed loss is not judged yet
        trainer.step()
    assert any(not torch.equal(start[k], v) for k, v in trainer.learner.module.state_dict().items())
    lr.start_losses = [1e-9] * len(lr.start_losses)  # any real loss is now far past the start
    trainer.step()  # the first judged step: a blow-up past the start
    assert trainer.faults["rollbacks"] == 1 and lr.factor == 0.5
    assert all(torch.equal(start[k], v) for k, v in trainer.learner.module.state_dict().items())
