import pytest
import torch
from torch import nn

from zerosr.engine.checkpoint import load_training_state, save_training_state
from zerosr.engine.ema import ModelEMA, unwrap_model


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 3, 1))


def test_shadow_is_a_frozen_fp32_eval_copy():
    model = small_model().to(torch.bfloat16)
    ema = ModelEMA(model, decay=0.999)
    assert ema.module is not model
    assert not ema.module.training
    for shadow, live in zip(ema.module.parameters(), model.parameters()):
        assert shadow.dtype == torch.float32 and not shadow.requires_grad
        assert shadow.data_ptr() != live.data_ptr()
    ema.update(model)  # bf16 live weights into the fp32 shadow
    assert all(p.dtype == torch.float32 for p in ema.module.parameters())


def test_update_averages_parameters_with_the_decay():
    model = small_model()
    ema = ModelEMA(model, decay=0.9, warmup=False)
    old = [p.detach().clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for shadow, before, live in zip(ema.module.parameters(), old, model.parameters()):
        torch.testing.assert_close(shadow, 0.9 * before + 0.1 * live)


def test_warmup_decay_schedule():
    model = small_model()
    ema = ModelEMA(model, decay=0.99)
    decays = []
    for _ in range(1000):
        decays.append(ema.current_decay())
        ema.update(model)
    assert decays[0] == pytest.approx(0.1)
    assert decays[8] == pytest.approx(0.5)
    assert decays[-1] == 0.99
    assert decays == sorted(decays)
    assert ModelEMA(model, decay=0.99, warmup=False).current_decay() == 0.99


def test_buffers_are_copied_not_averaged():
    model = small_model().train()
    ema = ModelEMA(model, decay=0.999)
    model(torch.randn(2, 3, 8, 8) * 5 + 3)
    ema.update(model)
    batch_norm_live, batch_norm_shadow = model[1], ema.module[1]
    assert torch.equal(batch_norm_shadow.running_mean, batch_norm_live.running_mean)
    assert torch.equal(batch_norm_shadow.num_batches_tracked, batch_norm_live.num_batches_tracked)


class CompiledLike(nn.Module):
    """Stands in for torch.compile's OptimizedModule, which keeps the model as `_orig_mod`."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self._orig_mod = inner


def test_unwraps_data_parallel_and_compiled_models():
    model = small_model()
    wrapped = CompiledLike(nn.DataParallel(model))
    assert unwrap_model(wrapped) is model
    ema = ModelEMA(wrapped, decay=0.5, warmup=False)
    assert isinstance(ema.module, nn.Sequential)
    with torch.no_grad():
        model[0].weight.fill_(2.0)
    ema.update(wrapped)
    assert isinstance(ema.module, nn.Sequential)


def test_state_dict_round_trip_through_a_training_state(tmp_path):
    model = small_model()
    ema = ModelEMA(model, decay=0.9)
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.5)
        ema.update(model)

    path = save_training_state(tmp_path, 3, {"ema": ema.state_dict()})
    restored = ModelEMA(small_model(), decay=0.9)
    restored.load_state_dict(load_training_state(path)["ema"])

    assert restored.updates == 3
    assert restored.current_decay() == ema.current_decay()
    for a, b in zip(restored.module.state_dict().values(), ema.module.state_dict().values()):
        assert torch.equal(a, b)
