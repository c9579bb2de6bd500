"""Out of memory anywhere in an iteration on the simulated card: forward, backward, the
discriminator step, the optimizer step (the batch halves and the same samples go again), and in
validation (the tile halves)."""

from __future__ import annotations

import pytest
import torch

from test_simulated_gpu import card, records, sim_overrides  # noqa: F401 - `card` is a fixture
from test_train import make_dataset
from zerosr.config.compose import compose_config
from zerosr.config.user_set import forget, remember
from zerosr.engine.checkpoint import load_training_state
from zerosr.engine.data import BatchStream
from zerosr.engine.learner import Learner
from zerosr.engine.run import train
from zerosr.errors import UserError

GAN = ("[{_target_:zerosr.losses.CharbonnierLoss,weight:1.0},{_target_:zerosr.losses.GANLoss,weight:0.05,"
       "discriminator:{_target_:zerosr.losses.UNetDiscriminatorSN,num_feat:8}}]")
EVERY_POINT = "[forward:1,backward:2,discriminator:3,optimizer:4,validation:4]"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 96px LR validation images: over nano's smallest tile (72px), so an out-of-memory error can halve it.
    return make_dataset(tmp_path_factory.mktemp("data"), size=192)


def count_batches(monkeypatch) -> list[int]:
    """How many samples every training batch drawn from the run's stream had."""
    drawn, next_batch = [], BatchStream.next_batch

    def counted(self):
        batch = next_batch(self)
        drawn.append(int(batch["lq"].shape[0]))
        return batch

    monkeypatch.setattr(BatchStream, "next_batch", counted)
    return drawn


def test_an_oom_anywhere_in_the_iteration_halves_the_batch_and_retries_the_same_samples(
        card, data, tmp_path, monkeypatch, capsys):  # noqa: F811 - the fixture
    # fp16 with a GradScaler: a retry after the generator's gradients were unscaled must not trip
    # the scaler (bf16 runs the same points in test_done_when.py).
    card(0.5, capability=(7, 5))
    drawn = count_batches(monkeypatch)
    run_dir = tmp_path / "run"
    cfg = compose_config(sim_overrides(data, **{
        "train.batch_size": 16, "train.lq_size": 8, "train.total_iter": 5, "train.val_freq": 4, "train.save_freq": 5,
        "train.losses": GAN, "debug.inject_oom_at": EVERY_POINT, "automation.early_stop.enabled": False,
        "automation.dataset_analysis.enabled": False, "data.n_val": 1}))
    remember(cfg)  # as train.py does: the batch and patch are the user's, so no search
    try:
        train(cfg, run_dir)
    finally:
        forget()
    steps = {r["iter"]: r for r in records(run_dir, "metrics.jsonl") if "loss" in r}
    halvings = [d for d in records(run_dir, "automation.jsonl")
                if d["automation"] == "batch" and "out of memory" in d["reason"]]
    # One halving per point of the iteration, at the iteration it hit: 16 -> 8 -> 4 -> 2 -> 1.
    assert [(d["iter"], d["change"]["batch_size"]) for d in halvings] == [
        (1, [16, 8]), (2, [8, 4]), (3, [4, 2]), (4, [2, 1])]
    # The retried iterations trained on the samples they had drawn: no batch drawn twice or skipped.
    assert drawn == [16, 8, 4, 2, 1]
    assert [steps[i]["batch_size"] for i in range(1, 6)] == drawn
    assert all(steps[i].get("skipped") is None and torch.isfinite(torch.tensor(steps[i]["loss"])) for i in steps)
    state = load_training_state(run_dir / "training_state" / "state_00000005.pt")
    assert state["faults"]["oom_retried"] == 4
    assert all(torch.isfinite(p).all() for p in state["model"].values())
    assert all(torch.isfinite(p).all() for p in state["objective"]["discriminator"].values())
    assert all(set(s) == {"step", "exp_avg", "exp_avg_sq"} for s in state["optimizer"]["state"].values())
    # Validation at iteration 4 halved its 96px tile; every validation scored.
    assert "validation: out of memory in 96px tiles, now 72px" in capsys.readouterr().out
    assert len([r for r in records(run_dir, "metrics.jsonl") if "val/psnr" in r]) == 2


def test_an_oom_while_adam_creates_its_state_leaves_none_half_made(card, data):  # noqa: F811 - the fixture
    sim = card(0.5, capability=(8, 6))
    learner = Learner(compose_config(sim_overrides(data, **{"train.batch_size": 2})), sim)
    lq, gt = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16)
    with sim.active():
        learner.clip(learner.forward_backward(lq, gt, 2), float("inf"))
        # Room for the gradients but not for Adam's two moments of every weight.
        params = sum(p.numel() * p.element_size() for p in learner.module.parameters())
        sim.total = sim.allocated + params
        with pytest.raises(torch.OutOfMemoryError):
            learner.apply()
        assert len(learner.optimizer.state) == 0  # the moments made before the error are not kept
        learner.recover_from_oom()
        sim.total = 2**30
        learner.clip(learner.forward_backward(lq, gt, 2), float("inf"))
        learner.apply()  # a half-made state would fail here (no exp_avg_sq)
    assert learner.optimizer.state and all(len(s) == 3 for s in learner.optimizer.state.values())


@pytest.mark.parametrize("entry", ["optimiser:3", "forward:0", "forward:x"])
def test_an_unknown_injection_point_is_one_error(entry):
    from zerosr.engine.injection import OomInjection

    with pytest.raises(UserError, match="POINT:ITER with POINT one of forward, backward, discriminator"):
        OomInjection([entry])


def test_the_memory_watch_sees_the_optimizer_step_and_the_ema(card, data, tmp_path):  # noqa: F811 - the fixture
    # The optimizer step and the EMA update run after the step's readback; their memory (here a
    # large temporary of the optimizer's, as foreach updates make) must reach the watch all the same.
    from zerosr.engine.loop import Trainer

    sim = card(1.0, capability=(8, 6))
    trainer = Trainer(compose_config(sim_overrides(data, **{"train.batch_size": 2, "train.lq_size": 8})), tmp_path / "r")
    extra = 64 * 2**20

    def big_temporary(*_):
        torch.empty(extra, dtype=torch.uint8).fill_(1)

    try:
        with sim.active():
            first = trainer.step()["peak_mem_bytes"]
            trainer.learner.optimizer.register_step_post_hook(big_temporary)
            trainer.step()  # its update allocates the temporary, after the readback
            seen = trainer.step()["peak_mem_bytes"]
    finally:
        trainer.close()
    assert seen >= extra > 4 * first, (first, seen)
