"""The GAN delay: a GAN in train.losses joins only after `automation.loss_schedule.gan_delay`
iterations. Read where training happens: the discriminator's forwards and optimizer steps, the
total that is backpropagated, the logged parts; and as a real `train.py` process, the one
decision and the start-up line."""

from __future__ import annotations

import json

import pytest
import torch

from test_scaling import train_py
from test_train import make_dataset
from test_train_automations import auto_overrides
from zerosr.config.compose import compose_config
from zerosr.engine.loop import Trainer

GAN = ("[{_target_:zerosr.losses.CharbonnierLoss,weight:1.0},{_target_:zerosr.losses.GANLoss,weight:0.5,"
       "discriminator:{_target_:zerosr.losses.UNetDiscriminatorSN,num_feat:8}}]")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


def delay_of(*overrides: str) -> int:
    return int(compose_config(["data=demo", *overrides]).automation.loss_schedule.gan_delay)


def test_the_delay_is_half_the_run_from_scratch_none_from_pretrained_weights_and_a_set_one_wins():
    assert delay_of("train.total_iter=1000") == 500
    assert delay_of("train.total_iter=1000", "train.pretrain=weights.safetensors") == 0
    assert delay_of("train.total_iter=1000", "automation.loss_schedule.gan_delay=20") == 20
    assert delay_of("train.total_iter=1000", "automation=off") == 0  # plain training: the GAN as listed


def test_before_the_delay_the_gan_is_not_in_the_step_and_after_it_is(data, tmp_path):
    trainer = Trainer(compose_config(auto_overrides(data, **{"train.losses": GAN, "train.total_iter": 8})),
                      tmp_path / "run")
    try:
        assert trainer.suite.loss_schedule.gan_delay == 4
        gan = trainer.learner.objective.gan
        forwards, d_steps = [], []
        gan.discriminator.register_forward_pre_hook(lambda module, args: forwards.append(trainer.iteration + 1))
        gan.optimizer.register_step_pre_hook(lambda optimizer, args, kwargs: d_steps.append(trainer.iteration))
        start = {k: v.clone() for k, v in gan.discriminator.state_dict().items()}
        steps = []
        for _ in range(4):
            steps.append(trainer.step())
        # Iterations 1-4: the discriminator never saw an image nor stepped, and the total that was
        # backpropagated is the pixel loss alone.
        assert forwards == [] and d_steps == []
        assert trainer.suite.lr.steps_seen == 0  # the total is about to include the GAN: LR baseline afresh
        assert all(torch.equal(start[k], v) for k, v in gan.discriminator.state_dict().items())
        for stats in steps:
            assert "loss/gan" not in stats and "loss/discriminator" not in stats
            assert stats["loss"] == pytest.approx(stats["loss/charbonnier"], rel=1e-6)
        for _ in range(4):
            steps.append(trainer.step())
        # Iterations 5-8: the generator's loss goes through the discriminator, which steps each time.
        assert d_steps == [5, 6, 7, 8] and set(forwards) == {5, 6, 7, 8}
        assert any(not torch.equal(start[k], v) for k, v in gan.discriminator.state_dict().items())
        for stats in steps[4:]:
            assert stats["loss"] == pytest.approx(stats["loss/charbonnier"] + 0.5 * stats["loss/gan"], rel=1e-5)
            assert "loss/discriminator" in stats
    finally:
        trainer.close()


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("extra, starts_after, decided, why", [
    ((), 4, True, "derived"),
    (("automation.loss_schedule.gan_delay=2",), 2, False, "set by you"),
])
def test_the_run_logs_the_derived_delay_once_and_keeps_a_set_one(data, tmp_path, extra, starts_after, decided, why):
    run = tmp_path / "run"
    overrides = auto_overrides(data, **{"train.losses": GAN, "train.total_iter": 8, "train.val_freq": 8,
                                        "train.save_freq": 8})
    out = train_py(*overrides, *extra, f"hydra.run.dir={run}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    screen = [line for line in out.stdout.splitlines() if line.startswith("gan ")]
    assert len(screen) == 1 and f"joins after iteration {starts_after} of 8 ({why}" in screen[0]
    delays = [r for r in _records(run / "automation.jsonl") if "gan_delay" in r["change"]]
    assert delays == ([{**delays[0], "iter": 0, "automation": "loss_schedule", "change": {"gan_delay": [0, 4]}}]
                      if decided else [])
    steps = [r for r in _records(run / "metrics.jsonl") if "loss" in r]
    assert [r["iter"] for r in steps if "loss/gan" in r] == list(range(starts_after + 1, 9))
    assert [r["iter"] for r in steps if "loss/discriminator" in r] == list(range(starts_after + 1, 9))


def test_the_schedule_gives_the_gan_weight_0_until_the_delay_is_over_and_records_a_derived_delay():
    from zerosr.automations.loss_schedule import LossSchedule
    from zerosr.config.presets import loss_schedule_preset

    cfg = {**loss_schedule_preset("paragonsr2_nano"), "gan_delay": 50}
    schedule = LossSchedule(cfg, {"charbonnier": 1.0, "gan": 0.5}, 100, set(), gan_name="gan")
    assert schedule.weights_at(50) == {"charbonnier": 1.0, "gan": 0.0}
    assert schedule.weights_at(51) == {"charbonnier": 1.0, "gan": 0.5}
    assert [d.change for d in schedule.calibrate(None) if "gan_delay" in d.change] == [{"gan_delay": (0, 50)}]
    kept = LossSchedule(cfg, {"charbonnier": 1.0, "gan": 0.5}, 100, {"gan_delay"}, gan_name="gan")
    assert not [d for d in kept.calibrate(None) if "gan_delay" in d.change]  # the user's, not a decision
    assert kept.weights_at(50)["gan"] == 0.0  # ... and used all the same


def test_a_negative_delay_is_one_error_line(tmp_path):
    out = train_py("automation.loss_schedule.gan_delay=-1", "dry_run=true", f"hydra.run.dir={tmp_path / 'run'}",
                   cwd=tmp_path)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and errors == ["error: automation.loss_schedule.gan_delay must be 0 or more "
                                              "(iterations)"] and "Traceback" not in out.stderr
