"""Structured channel pruning: drop whole output channels of every conv layer by |BN gamma|.

Training with an L1 penalty on the BatchNorm scales (network slimming) drives unimportant channels
towards zero; this module keeps the strongest `keep` fraction per layer (at least `min_channels`) and
builds a smaller UNet3d with the surviving weights copied in, slicing the input channels of every
consumer consistently, skip concatenations included. Fine-tuning afterwards recovers the accuracy.
"""

from __future__ import annotations

import torch

from compiler.model.unet import UNet3d


def channel_importance(model: UNet3d) -> dict[str, torch.Tensor]:
    return {name: layer.bn.weight.detach().abs() for name, layer in model.layers.items()}


def prune_unet(model: UNet3d, keep: float, min_channels: int = 4, floors: dict[str, int] | None = None) -> UNet3d:
    """A new, narrower UNet3d holding the kept channels' weights (BN statistics included); `floors` sets a
    higher minimum width for named layers."""
    imp = channel_importance(model)
    kept: dict[str, torch.Tensor] = {}
    for name, scores in imp.items():
        n = max(min_channels, (floors or {}).get(name, 0), int(round(len(scores) * keep)))
        n = min(n, len(scores))
        kept[name] = torch.sort(torch.topk(scores, n).indices).values
    small = UNet3d({k: len(v) for k, v in kept.items()}, model.depth, model.n_classes, model.in_channels)
    with torch.no_grad():
        for spec in model.specs:
            old, new = model.layers[spec.name], small.layers[spec.name]
            in_idx, offset = [], 0
            for src in spec.inputs:
                if src == "input":
                    in_idx.append(torch.arange(model.in_channels) + offset)
                    offset += model.in_channels
                else:
                    in_idx.append(kept[src] + offset)
                    offset += model.widths[src]
            cin = torch.cat(in_idx)
            out = kept[spec.name]
            new.conv.weight.copy_(old.conv.weight[out][:, cin])
            for attr in ("weight", "bias", "running_mean", "running_var"):
                getattr(new.bn, attr).copy_(getattr(old.bn, attr)[out])
        last = model.specs[-1].name
        small.head.weight.copy_(model.head.weight[:, kept[last]])
        small.head.bias.copy_(model.head.bias)
    return small.eval()
