"""The selection metric: derived from the losses, a user's value wins, and every consumer (early
stop, the LR controller, the sweeper's direction, the start-up screen) follows it."""

from __future__ import annotations

import pytest

from test_automations_clip_stop import STOP
from test_automations_lr import CFG
from test_scaling import train_py
from zerosr.automations.early_stop import EarlyStopping
from zerosr.automations.lr import LRController
from zerosr.config.compose import compose_config
from zerosr.metrics import catalog

L1 = {"_target_": "zerosr.losses.L1Loss", "weight": 1.0}
GAN = "[{_target_:zerosr.losses.L1Loss,weight:1.0},{_target_:zerosr.losses.GANLoss,weight:0.05}]"


@pytest.mark.parametrize("losses, select, extra", [
    ([L1], "psnr", []),
    ([L1, {"_target_": "zerosr.losses.MSSSIMLoss", "weight": 0.2}], "psnr", []),
    ([L1, {"_target_": "zerosr.losses.PerceptualLoss", "weight": 0.1}], "dists", ["lpips", "dists"]),
    ([L1, {"_target_": "zerosr.losses.DISTSLoss", "weight": 0.1}], "dists", ["lpips", "dists"]),
    ([L1, {"_target_": "zerosr.losses.GANLoss", "weight": 0.05}], "dists", ["lpips", "dists"]),
    ([L1, {"_target_": "zerosr.losses.GANLoss", "weight": 0.0}], "psnr", []),  # a term at weight 0 trains nothing
])
def test_the_rule(losses, select, extra):
    assert catalog.select_metric(losses) == select
    assert catalog.val_metrics(losses) == ["psnr", "ssim", *extra]


def test_config_derives_and_a_users_value_wins():
    cfg = compose_config(["data=demo", f"train.losses={GAN}"])
    assert (cfg.train.select_metric, list(cfg.train.val_metrics)) == ("dists", ["psnr", "ssim", "lpips", "dists"])
    assert cfg.automation.early_stop.min_delta == 1e-4  # in DISTS units, not 0.01 dB
    cfg = compose_config(["data=demo", f"train.losses={GAN}", "train.select_metric=lpips", "train.val_metrics=[psnr,ssim]"])
    assert (cfg.train.select_metric, list(cfg.train.val_metrics)) == ("lpips", ["psnr", "ssim"])
    assert catalog.computed(cfg.train.val_metrics, cfg.train.select_metric) == ["psnr", "ssim", "lpips"]
    assert compose_config(["data=demo"]).train.select_metric == "psnr"


def test_early_stop_and_lr_plateaus_follow_a_lower_is_better_metric():
    dists = catalog.METRICS["dists"]
    stop = EarlyStopping({**STOP, "min_delta": 1e-4}, dists)
    assert stop.on_validation(100, {"val/dists": 0.20, "val/psnr": 30.0}) == []
    assert stop.on_validation(200, {"val/dists": 0.18, "val/psnr": 25.0}) == [] and stop.best_iter == 200
    assert stop.on_validation(300, {"val/dists": 0.19, "val/psnr": 35.0}) == [] and stop.best_iter == 200

    lr = LRController(CFG, base_lr=1e-3, total_iter=10_000, warmup_iter=10, select=dists)
    falling, flat = [], []
    for it in range(100, 1501, 100):
        falling += lr.on_validation(it, {"val/dists": 0.3 - it * 1e-4, "val/psnr": 20.0})
    assert falling == []  # DISTS keeps falling: no plateau, however flat PSNR is
    for it in range(1600, 3001, 100):
        flat += lr.on_validation(it, {"val/dists": 0.3, "val/psnr": 40.0 + it})
    assert flat and "validation DISTS" in flat[0].reason  # DISTS stalls: a plateau, however PSNR rises


def test_start_up_screen_and_sweeper_direction(tmp_path):
    out = train_py("dry_run=true", f"train.losses={GAN}", f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "select       dists (lower is better; derived: train.losses has GANLoss" in out.stdout
    assert "val metrics  psnr, ssim, lpips, dists (derived from train.losses" in out.stdout
    out = train_py("dry_run=true", "train.select_metric=ssim", f"hydra.run.dir={tmp_path / 'b'}", cwd=tmp_path)
    assert "select       ssim (higher is better; set by you)" in out.stdout
    assert "val metrics  psnr, ssim (derived from train.losses" in out.stdout

    import optuna

    for losses, direction in ((GAN, "MINIMIZE"), (None, "MAXIMIZE")):
        sweep = tmp_path / f"sweep_{direction}"
        args = ["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=1", "dry_run=true", f"hydra.sweep.dir={sweep}"]
        train_py(*args, *([f"train.losses={losses}"] if losses else []), cwd=tmp_path)
        study = optuna.load_study(study_name="zerosr", storage=f"sqlite:///{sweep}/optuna.db")
        assert study.direction.name == direction
