"""torch.compile over the real training step of each ParagonSR2 size: dynamo must capture the
generator's forward (and with it the backward AOTAutograd derives) as one graph, with the same
outputs and gradients as eager. A graph break leaves every later operator to run eagerly and
costs most of what compile buys on a GPU. `aot_eager` runs the capture without generating code
(inductor's C++ compile would take minutes here); the breaks are the same for every backend."""

from __future__ import annotations

import pytest
import torch

from zerosr.archs import build

# xl at one group of two blocks: the same block (norm, channel gate, no attention) as its 8 x 10,
# whose capture takes minutes on two cores.
SIZES = {"nano": {}, "s": {}, "xl": {"num_groups": 1, "num_blocks": 2}}


def _dynamo_available() -> bool:
    try:
        import torch._dynamo

        return torch._dynamo.is_dynamo_supported()
    except Exception:  # e.g. a Python version dynamo does not support yet
        return False


@pytest.mark.skipif(not _dynamo_available(), reason="torch.compile is not supported on this Python")
@pytest.mark.parametrize("variant", list(SIZES))
def test_the_training_step_compiles_to_one_graph_with_eager_gradients(variant):
    import torch._dynamo
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build(f"paragonsr2_{variant}", 2, **SIZES[variant]).train()
    for module in model.modules():  # the residual scales start at 0, which would hide wrong gradients
        if hasattr(module, "gamma"):
            torch.nn.init.constant_(module.gamma, 0.1)
    model = model.to(memory_format=torch.channels_last)  # as training on a GPU runs it
    x = torch.rand(2, 3, 12, 10).contiguous(memory_format=torch.channels_last)
    graphs = {"forward": 0, "backward": 0}

    def counted(kind):
        def compiler(gm, _inputs):
            graphs[kind] += 1
            return make_boxed_func(gm.forward)
        return compiler

    backend = aot_autograd(fw_compiler=counted("forward"), bw_compiler=counted("backward"))
    expected = model(x)
    expected.float().mean().backward()
    expected_grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    # fullgraph: a graph break raises instead of splitting the step.
    out = torch.compile(model, backend=backend, fullgraph=True)(x)
    out.float().mean().backward()
    assert graphs == {"forward": 1, "backward": 1}
    assert torch.allclose(out, expected, atol=1e-5)
    for (name, p), reference in zip(model.named_parameters(), expected_grads, strict=True):
        assert (p.grad is None) == (reference is None), name
        assert reference is None or torch.allclose(p.grad, reference, atol=1e-6, rtol=1e-4), name


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_the_gated_projection_saves_no_full_size_tensor_of_its_own(layout):
    # The gate is folded into the projection's weights: backward keeps x's own storage and small
    # matrices, never x * gate. Gradients match project(modulation(x)) in float64.
    from zerosr.archs.paragonsr2 import CheapChannelModulation, gated_projection

    torch.manual_seed(0)
    modulation, project = CheapChannelModulation(16).double(), torch.nn.Conv2d(16, 8, 1).double()
    x = torch.rand(2, 16, 24, 20, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    full = x.numel() * x.element_size()
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = gated_projection(x, modulation, project)
    own = sum(n for ptr, n in saved.items() if ptr != x.untyped_storage().data_ptr())
    assert own < full / 10, (own, full)
    grad = torch.rand_like(out)
    got = torch.autograd.grad(out, [x, *modulation.parameters(), *project.parameters()], grad)
    reference = project(modulation(x))
    want = torch.autograd.grad(reference, [x, *modulation.parameters(), *project.parameters()], grad)
    assert torch.allclose(out, reference, atol=1e-12)
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(got, want, strict=True))
