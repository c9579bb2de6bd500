"""Start-up warnings for values set far outside what works: one line per value, naming it, the
preset value and the risk; none for zerosr's own values or moderate ones; and the run still uses
the user's value (read back from the optimizer state a real `train.py` saved)."""

from __future__ import annotations

import pytest

from test_scaling import train_py
from test_train import make_dataset
from test_train_automations import auto_overrides
from zerosr.config.compose import compose_config
from zerosr.config.far_out import RULES, far_out_warnings
from zerosr.engine.checkpoint import load_training_state

GAN = "[{_target_:zerosr.losses.CharbonnierLoss,weight:1.0},{_target_:zerosr.losses.GANLoss,weight:%s}]"


def warnings_for(*overrides: str) -> list[str]:
    """The warnings for a nano x2 run of 300 iterations on the cpu tier, with `overrides` set by the user."""
    cfg = compose_config(["data=demo", "hardware_tier=cpu", "train.total_iter=300", *overrides])
    return far_out_warnings(cfg, {o.split("=", 1)[0] for o in overrides})


# (overrides, what the one line starts with, the preset value it names)
FAR_OUT = [
    (["train.lr=4e-2"], "train.lr=0.04 is 10x the preset 0.004", "diverge"),
    (["train.lr=0.2"], "train.lr=0.2 is 50x the preset 0.004", "diverge"),
    (["train.lr_scale=20"], "train.lr=0.08 is 20x the preset 0.004", "diverge"),
    (["train.lr=4e-6"], "train.lr=4e-06 is 1000x below the preset 0.004", "barely"),
    (["train.warmup_iter=0", "train.lr=8e-3"], "train.warmup_iter=0 with lr 0.008 above the preset 0.004 "
                                              "(preset warm-up 30 iterations)", "blow up"),
    (["train.batch_size=1"], "train.batch_size=1 (preset 8 on this tier)", "noisy"),
    (["train.lq_size=8"], "train.lq_size=8 px (preset 48 px on this tier, at least 16)", "border"),
    (["train.ema_decay=0.99999"], "train.ema_decay=0.99999 averages over ~100000 iterations, more than the run's 300 "
                                  "(preset 0.999: ~1000)", "lag"),
    (["train.optimizer.betas=[0.5,0.5]"], "train.optimizer.betas=[0.5, 0.5] (preset [0.9, 0.99])", "beta2"),
    (["train.optimizer.betas=[0.99,0.9]"], "train.optimizer.betas=[0.99, 0.9] (preset [0.9, 0.99])", "beta1"),
    (["train.optimizer.weight_decay=1.0"], "train.optimizer.weight_decay=1 (preset 0, at most 0.1)", "underfits"),
    ([f"train.losses={GAN % 0.5}"], "train.losses.1.weight=0.5 for a GAN trained from scratch", "after iteration 150"),
]


@pytest.mark.parametrize("overrides, starts, risk", FAR_OUT, ids=[" ".join(case[0])[:40] for case in FAR_OUT])
def test_a_far_out_value_gives_one_line_naming_it_the_preset_and_the_risk(overrides, starts, risk):
    lines = warnings_for(*overrides)
    if overrides[0].startswith("train.warmup_iter"):
        lines = [line for line in lines if line.startswith("train.warmup_iter")]  # the LR has its own rule
    assert len(lines) == 1 and lines[0].startswith(starts) and risk in lines[0], lines


@pytest.mark.parametrize("overrides", [
    [],  # zerosr's own values are never judged
    ["train.lr=2e-2"], ["train.lr=2e-4"], ["train.batch_size=2"], ["train.lq_size=16"],
    ["train.ema_decay=0.9999"], ["train.optimizer.betas=[0.9,0.999]"], ["train.optimizer.betas=[0.5,0.999]"],
    ["train.optimizer.weight_decay=0.05"], ["train.warmup_iter=0"], [f"train.losses={GAN % 0.05}"],
    [f"train.losses={GAN % 0.5}", "train.pretrain=weights.safetensors"],
])
def test_moderate_values_and_derived_ones_give_no_warning(overrides):
    assert warnings_for(*overrides) == []


def test_derived_values_are_not_judged_even_when_far_out():
    # A 300-iteration run's derived EMA (0.999 remembers ~1000 steps) and a tier's batch of 1 are zerosr's.
    cfg = compose_config(["data=demo", "hardware_tier=cpu", "train.total_iter=300", "train.ema_decay=0.99999",
                          "train.batch_size=1"])
    assert far_out_warnings(cfg, set()) == []
    assert len(far_out_warnings(cfg, {"train"})) == 2  # a whole node set: every rule under it is armed


def test_every_rule_has_a_case():
    named = {case[1].split("=", 1)[0] for case in FAR_OUT}
    assert {rule.key for rule in RULES} == (named - {"train.losses.1.weight"}) | {"train.losses"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


def test_the_screen_warns_once_per_value_and_the_run_uses_the_values(data, tmp_path):
    run = tmp_path / "run"
    overrides = auto_overrides(data, **{"train.total_iter": 2, "train.val_freq": 2, "train.save_freq": 2,
                                        "train.lr": 8e-2, "train.optimizer.betas": "[0.5,0.5]",
                                        "train.optimizer.weight_decay": 1.0})
    out = train_py(*overrides, f"hydra.run.dir={run}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    warnings = [line for line in out.stdout.splitlines() if line.startswith("warning ")]
    assert [line.split()[1] for line in warnings] == ["train.lr=0.08", "train.optimizer.betas=[0.5,",
                                                      "train.optimizer.weight_decay=1"], warnings
    assert "preset 0.004" in warnings[0] and "preset [0.9, 0.99]" in warnings[1] and "preset 0" in warnings[2]
    # What the optimizer stepped with: the user's values (the LR after its one-step warm-up).
    group = load_training_state(run / "training_state" / "state_00000002.pt")["optimizer"]["param_groups"][0]
    assert group["lr"] == pytest.approx(8e-2) and tuple(group["betas"]) == (0.5, 0.5)
    assert group["weight_decay"] == 1.0
