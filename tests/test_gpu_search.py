"""The start-up batch search on the simulated card: whole iterations as probes, validation checked
at its tile, a cost bounded by the run's length, and torch.compile once, after it."""

from __future__ import annotations

import pytest
import torch

from test_simulated_gpu import card, records, sim_overrides  # noqa: F401 - `card` is a fixture
from test_train import make_dataset
from zerosr.automations.batch import NOT_RUN, find_batch_size, peak_memory_of, probe_cost
from zerosr.config.compose import compose_config
from zerosr.engine.accelerator import SimulatedAccelerator
from zerosr.engine.learner import Learner
from zerosr.engine.loop import Trainer
from zerosr.engine.run import train
from zerosr.engine.startup import _synthetic_step, search_batch_size

MIB = 2**20


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


def count_probes(monkeypatch) -> list[str]:
    """Events in order: "probe" for each start-up step (`Learner.train_on` runs only those)."""
    events, train_on = [], Learner.train_on

    def counted(self, *args, **kwargs):
        events.append("probe")
        return train_on(self, *args, **kwargs)

    monkeypatch.setattr(Learner, "train_on", counted)
    return events


def test_a_short_run_skips_the_search_and_says_so(card, data, tmp_path, monkeypatch, capsys):  # noqa: F811
    card(0.0035, capability=(8, 6))
    events = count_probes(monkeypatch)
    run_dir = tmp_path / "run"
    train(compose_config(sim_overrides(data, **{"train.lq_size": 8, "train.total_iter": 20})), run_dir)
    search = [d for d in records(run_dir, "automation.jsonl") if d["automation"] == "batch"][0]
    assert search["reason"].startswith("start-up search skipped") and "20-iteration run" in search["reason"]
    assert events == []  # not one probe step
    assert "[batch] iter 0: no change (start-up search skipped" in capsys.readouterr().out


def test_the_search_stays_within_its_cost_bound():
    def try_batch(batch, lq):  # 1 MiB per sample on a 1 GiB card: 900 samples would fit
        return batch * MIB

    unbounded = find_batch_size(try_batch, 8, 512, [16], 0.95, 0.05, 1024 * MIB)
    bounded = find_batch_size(try_batch, 8, 512, [16], 0.95, 0.05, 1024 * MIB, cost_bound=30)
    assert unbounded[0] == 512 and all(p.why != NOT_RUN for p in unbounded[2])
    ran = [p for p in bounded[2] if p.why != NOT_RUN]
    assert sum(probe_cost(p.batch, p.lq_size, 8, 16) for p in ran) <= 30
    assert any(p.why == NOT_RUN for p in bounded[2]) and 8 < bounded[0] < 512
    # Past the bound a size that must shrink still runs: none fits yet.
    shrunk = find_batch_size(lambda b, lq: b * 300 * MIB, 8, 512, [16], 0.95, 0.05, 1024 * MIB, cost_bound=1)
    assert shrunk[0] == 2  # 4 failed, 2 fits; refining to 3 is past the bound


GAN = ("[{_target_:zerosr.losses.CharbonnierLoss,weight:1.0},{_target_:zerosr.losses.GANLoss,weight:0.1,"
       "discriminator:{_target_:zerosr.losses.UNetDiscriminatorSN,num_feat:16}}]")


def test_a_probe_is_the_whole_iteration_discriminator_and_optimizer_steps_included(card, data, tmp_path):  # noqa: F811
    # A probe's peak is what the search judges a size by: it must be the real step's, a GAN's too.
    sim = card(1.0, capability=(8, 6))
    trainer = Trainer(compose_config(sim_overrides(data, **{"train.lq_size": 16, "train.total_iter": 400,
                                                            "train.batch_size": 4, "train.losses": GAN,
                                                            "automation.loss_schedule.gan_delay": 0})),
                      tmp_path / "run")
    try:
        with sim.active():
            with trainer.learner.probing():
                probed = peak_memory_of(lambda: _synthetic_step(trainer.learner, 4, 16, 2), sim)
            steps = [trainer.step()["peak_mem_bytes"] for _ in range(3)]
    finally:
        trainer.close()
    assert 0.95 * max(steps) <= probed <= 1.05 * max(steps), (probed, steps)


def test_a_validation_tile_that_does_not_fit_is_halved_at_start_up(card, tmp_path):  # noqa: F811
    sim = card(0.017, capability=(8, 6))  # 17 MiB: nano validates 192px LR in 96px tiles in 14 MiB, whole in 21
    data = make_dataset(tmp_path / "data", size=384)  # 192px LR validation images
    trainer = Trainer(compose_config(sim_overrides(data, **{"train.lq_size": 8, "train.total_iter": 400,
                                                            "automation.batch.max_batch_size": 2})),
                      tmp_path / "run")
    try:
        with sim.active():
            assert trainer.validator.tile == 256
            _, _, decision = search_batch_size(trainer.learner, trainer.cfg, trainer.stream.batch_size, 8,
                                               keep_lq_size=True, validator=trainer.validator)
            halved = trainer.validator.tile
            sim.reset_peak()
            trainer.validate()  # at the tile the search kept: no out-of-memory error, no halving
    finally:
        trainer.close()
    assert halved == 96 and f"validation did not fit in 256px tiles: {halved}px" in decision.reason
    assert trainer.validator.tile == halved and sim.peak_bytes() <= sim.total_memory()


def test_compile_happens_once_after_the_search(card, data, tmp_path, monkeypatch):  # noqa: F811
    card(0.0035, capability=(8, 6))
    monkeypatch.setattr(SimulatedAccelerator, "compiles", True)  # as on a real GPU
    events = count_probes(monkeypatch)
    calls = []

    def fake_compile(model, **kwargs):
        events.append("compile")

        def compiled(*args):
            calls.append(args[0].shape)
            return model(*args)

        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    run_dir = tmp_path / "run"
    train(compose_config(sim_overrides(data, **{"train.lq_size": 8, "train.total_iter": 120, "train.val_freq": 120,
                                                "hardware_tier": "high_end", "automation.batch.max_batch_size": 8})),
          run_dir)
    probes = events.index("compile")
    # The search's eager probes, one compile, then the chosen size confirmed through the compiled step.
    assert probes > 0 and events.count("compile") == 1 and set(events) - {"compile"} == {"probe"}
    assert 0 < len(events) - probes - 1 <= 2 * 2  # one probe of two steps, maybe a smaller second
    searched = [d for d in records(run_dir, "automation.jsonl") if d["automation"] == "batch"][0]
    assert searched["reason"].startswith("start-up search in")
    first = [r for r in records(run_dir, "metrics.jsonl") if "loss" in r][0]
    assert len(calls) >= 120 and calls[0][0] == first["batch_size"]  # traced for the chosen shape


def test_an_fp16_gan_search_survives_oom_in_the_discriminator_and_in_the_scaler_step(card, data, tmp_path,  # noqa: F811
                                                                                      monkeypatch):
    # capability 7.5: fp16 with a GradScaler. The card runs out of memory for real (its total is
    # lowered to what is in use) once inside the discriminator's step, after the generator's
    # gradients were unscaled, and once inside `scaler.step` (Adam creating its state). Each
    # failed probe must be recovered from; the next probe and the run's first step then work.
    sim = card(1.0, capability=(7, 5))
    trainer = Trainer(compose_config(sim_overrides(data, **{"train.lq_size": 8, "train.total_iter": 400,
                                                            "train.losses": GAN, "automation.batch.max_batch_size": 8,
                                                            "automation.loss_schedule.gan_delay": 0})),
                      tmp_path / "run")
    learner = trainer.learner
    assert learner.precision.name == "fp16" and learner.precision.scaler.is_enabled()
    full, fired, recovered = sim.total, [], []

    def run_out(point):
        def hook(*_args):
            if point not in fired and len(fired) == ["discriminator", "scaler.step"].index(point):
                fired.append(point)
                sim.total = sim.allocated + 1024  # the next allocation fails
        return hook

    discriminator = learner.objective.gan.discriminator
    discriminator.register_forward_hook(run_out("discriminator"))
    learner.optimizer.register_step_pre_hook(run_out("scaler.step"))
    recover = Learner.recover_from_oom

    def recover_and_count(self):
        recovered.append(sim.total)
        sim.total = full
        recover(self)

    monkeypatch.setattr(Learner, "recover_from_oom", recover_and_count)
    try:
        with sim.active():
            batch, lq, decision = search_batch_size(learner, trainer.cfg, 8, 8, keep_lq_size=True)
            assert fired == ["discriminator", "scaler.step"] and len(recovered) == 2
            assert "probes" in decision.reason and batch >= 1
            # Nothing of a failed probe is left: no unscaled mark, no gradients, the discriminator frozen.
            assert all(not state for state in learner.precision.scaler._per_optimizer_states.values())
            assert not any(p.requires_grad or p.grad is not None for p in discriminator.parameters())
            assert all(p.grad is None for p in learner.module.parameters())
            trainer.apply_batch(batch, lq)
            stats = [trainer.step() for _ in range(2)]
    finally:
        trainer.close()
    assert all(torch.isfinite(torch.tensor(s["loss"])) for s in stats)


def test_a_wsl2_like_machine_trains_on_the_card_only_torch_sees(data, tmp_path, monkeypatch, capsys):
    # WSL2: NVML reports no GPU (no /proc/driver/nvidia), yet CUDA works. The tier, the memory
    # target and the search must all read the card torch sees, the simulated one here.
    import json

    from zerosr.detect.hardware import FAKE_ENV, probe
    from zerosr.engine import accelerator

    spec = {"gpus": [], "gpus_without_nvml": [{"name": "WSL card", "vram_gb": 0.5, "compute_capability": [8, 6]}],
            "cpu_cores": 2, "ram_gb": 16}
    (tmp_path / "wsl.json").write_text(json.dumps(spec))
    monkeypatch.setenv(FAKE_ENV, str(tmp_path / "wsl.json"))
    monkeypatch.setenv("ZEROSR_SIMULATE_GPU", "1")
    probe.cache_clear()
    accelerator.current.cache_clear()
    try:
        cfg = compose_config(sim_overrides(data, **{"train.lq_size": 8, "train.total_iter": 400,
                                                    "automation.batch.max_batch_size": 4}))
        assert cfg.hardware_tier.name != "cpu" and cfg.automation.batch.target_vram_usage is not None
        trainer = Trainer(cfg, tmp_path / "run")
        try:
            with trainer.accelerator.active():
                batch, _, decision = search_batch_size(trainer.learner, trainer.cfg, 2, 8, keep_lq_size=True)
        finally:
            trainer.close()
    finally:
        probe.cache_clear()
        accelerator.current.cache_clear()
    assert trainer.accelerator.is_gpu and trainer.accelerator.total_memory() == 2**29
    assert decision.reason.startswith("start-up search in") and "WSL card (simulated)" in decision.reason
    assert "NVML reports no GPU but torch sees 1 (WSL card" in capsys.readouterr().err


def test_the_cpu_tier_named_on_a_gpu_times_the_search_instead_of_failing(card, data, tmp_path):  # noqa: F811
    sim = card(0.5, capability=(8, 6))  # the cpu tier has no memory target
    trainer = Trainer(compose_config(sim_overrides(data, **{"train.lq_size": 8, "train.total_iter": 400,
                                                            "hardware_tier": "cpu"})), tmp_path / "run")
    try:
        with sim.active():
            _, _, decision = search_batch_size(trainer.learner, trainer.cfg, 2, 8, keep_lq_size=True)
    finally:
        trainer.close()
    assert "measured samples/s" in decision.reason


def test_the_cpu_search_with_one_size_to_choose_from_runs_no_step(data, tmp_path, monkeypatch):
    # The tier's batch 2 with automation.batch.max_batch_size=2: no larger size to time, and no
    # smaller one while 2 fits, so timing would cost steps and decide nothing.
    events = count_probes(monkeypatch)
    trainer = Trainer(compose_config(sim_overrides(data, **{"train.lq_size": 8, "train.total_iter": 400,
                                                            "automation.batch.max_batch_size": 2})),
                      tmp_path / "run")
    try:
        batch, _, decision = search_batch_size(trainer.learner, trainer.cfg, 2, 8, keep_lq_size=True)
    finally:
        trainer.close()
    assert batch == 2 and events == [] and decision.change == {}
    assert "no timing: 2 is the only size to choose" in decision.reason


def test_cudnn_autotunes_the_training_step_only(card, data, tmp_path):  # noqa: F811
    # cuDNN's benchmark mode searches kernels (and grows its workspace) at every new shape: on for
    # the training step's fixed shape, off for the probes' many batches and validation's images.
    sim = card(1.0, capability=(8, 6))
    trainer = Trainer(compose_config(sim_overrides(data, **{"train.lq_size": 8, "train.total_iter": 400,
                                                            "automation.batch.max_batch_size": 4})), tmp_path / "run")
    seen = []
    for module in (trainer.learner.module, trainer.learner.ema.module):  # validation runs the EMA
        module.register_forward_hook(lambda *_: seen.append(torch.backends.cudnn.benchmark))
    try:
        with sim.active():
            search_batch_size(trainer.learner, trainer.cfg, 2, 8, keep_lq_size=True)
            probes, seen[:] = list(seen), []
            trainer.step()
            stepped, seen[:] = list(seen), []
            trainer.validate()
            validated = list(seen)
    finally:
        trainer.close()
    assert probes and not any(probes)
    assert stepped and all(stepped)
    assert validated and not any(validated) and not torch.backends.cudnn.benchmark


def test_the_searched_batch_is_confirmed_through_the_compiled_step(card, data, tmp_path, monkeypatch):  # noqa: F811
    # The probes run the eager generator; training runs the compiled one, whose memory differs.
    # Here the "compiled" forward holds 4 MiB more per sample: the batch must shrink to fit.
    sim = card(0.02, capability=(8, 6))
    monkeypatch.setattr(SimulatedAccelerator, "compiles", True)
    held = []

    def fake_compile(model, **kwargs):
        def compiled(x):
            held.append(torch.zeros(x.shape[0], 2**20))  # 4 MiB a sample, kept while the step runs
            return model(x)
        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    trainer = Trainer(compose_config(sim_overrides(data, **{"train.lq_size": 8, "train.total_iter": 400,
                                                            "hardware_tier": "high_end",
                                                            "automation.batch.max_batch_size": 16})),
                      tmp_path / "run")
    monkeypatch.setattr(Learner, "train_on", lambda self, *a, _t=Learner.train_on: (held.clear(), _t(self, *a))[1])
    try:
        with sim.active():
            batch, _, decision = search_batch_size(trainer.learner, trainer.cfg, 2, 8, keep_lq_size=True)
    finally:
        trainer.close()
    budget = (trainer.cfg.automation.batch.target_vram_usage - trainer.cfg.automation.batch.safety_margin) * sim.total
    assert "the compiled step needs more" in decision.reason
    assert batch * 4 * 2**20 < budget and batch < 8
