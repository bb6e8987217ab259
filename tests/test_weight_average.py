"""Weight averaging of teacher snapshots (compiler/model/average.py)."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from compiler.model.average import average_states, recompute_batchnorm  # noqa: E402
from compiler.model.unet import make_unet  # noqa: E402


def test_average_of_snapshots_is_their_elementwise_mean_and_keeps_step_counters():
    a = make_unet(4, 2, 3, 2)
    b = copy.deepcopy(a)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1.0)
    avg = average_states([a.state_dict(), b.state_dict()])
    name = next(k for k, v in a.state_dict().items() if v.is_floating_point() and v.ndim == 5)
    assert torch.allclose(avg[name], a.state_dict()[name] + 0.5)
    counter = next(k for k in avg if k.endswith("num_batches_tracked"))
    assert avg[counter].dtype == torch.int64
    net = make_unet(4, 2, 3, 2)
    net.load_state_dict(avg)  # a valid state of the same network


def test_average_refuses_snapshots_of_different_networks():
    with pytest.raises(ValueError, match="other entries"):
        average_states([make_unet(4, 2, 3, 2).state_dict(), make_unet(4, 3, 3, 2).state_dict()])


def test_recomputed_batchnorm_statistics_are_the_exact_average_over_every_batch():
    net = torch.nn.Sequential(torch.nn.BatchNorm3d(2))
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, 2, 4, 4, 4, generator=gen) * s + m for s, m in ((1.0, 0.0), (3.0, 5.0))]
    assert recompute_batchnorm(net, batches) == 2
    bn = net[0]
    per_batch_mean = torch.stack([x.mean(dim=(0, 2, 3, 4)) for x in batches])
    per_batch_var = torch.stack([x.var(dim=(0, 2, 3, 4), unbiased=True) for x in batches])
    assert torch.allclose(bn.running_mean, per_batch_mean.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, per_batch_var.mean(0), atol=1e-4)
    assert bn.momentum == 0.1 and not net.training  # left as it was found, in eval mode
