"""Weight averaging of a network's snapshots (stochastic weight averaging, Izmailov et al. 2018).

Why: the teacher's last phases are cosine cycles of their own, each ending at a low learning rate, so
their endpoints are nearby low-loss solutions; the average of such endpoints sits in a flatter region
than any one of them and generalises more evenly. A rebuild's held-out bone varies most between seeds
of one recipe (compiler/README.md), which is the variance averaging is meant to take out.

An average of weights is not an average of BatchNorm statistics: the averaged convs produce activations
no snapshot saw, so the statistics are measured again on training patches (`recompute_batchnorm`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the floating-point entries of `states` (same keys and shapes); integer
    entries (BatchNorm's step counters) are taken from the last. BN running statistics are averaged too,
    only as a starting value: `recompute_batchnorm` replaces them."""
    if not states:
        raise ValueError("average_states needs at least one state")
    keys = states[-1].keys()
    for i, s in enumerate(states):
        if s.keys() != keys:
            raise ValueError(f"state {i} has other entries than the last: {sorted(set(s) ^ set(keys))[:5]}")
    out: dict[str, torch.Tensor] = {}
    for k in keys:
        last = states[-1][k]
        if last.is_floating_point():
            out[k] = torch.stack([s[k].detach().float().contiguous() for s in states]).mean(0).to(last.dtype)
        else:
            out[k] = last.clone()
    return out


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Replace every BatchNorm's running mean and variance by their exact average over `batches` (train
    mode forward passes, no gradients); returns the number of batches seen. The model is left in eval
    mode with its other weights untouched."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over every batch, not an exponential one
    model.train()
    n = 0
    try:
        for x in batches:
            model(x)
            n += 1
    finally:
        for bn, m in zip(bns, momenta, strict=True):
            bn.momentum = m
        model.eval()
    if n == 0:
        raise ValueError("recompute_batchnorm needs at least one batch")
    return n


__all__ = ["average_states", "recompute_batchnorm"]
