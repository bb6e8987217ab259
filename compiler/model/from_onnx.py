"""A trainable UNet3d recovered from an exported FP32 ONNX file (`export.export_onnx`).

Why: the shipped bundle holds the only copy of a trained teacher once a build's `work/` is gone (a fresh
clone, a new machine), and distilling or pruning a new student needs the teacher as a torch module with
BatchNorm. Export folded every BatchNorm into its conv and wrote each upsample + conv as 2x2x2 parity
convs (`SubpixelUpConv`); both steps are undone here:

- the parity weights are a linear, invertible function of the 3x3x3 weights (per axis 4 values from 3
  taps), so the 3x3x3 weights come back exactly;
- a folded conv `z + b` is written back as conv `z` then BatchNorm with running mean m and variance v
  measured on real patches, scale sqrt(v + eps) and shift b + m: in eval mode exactly the exported
  function, and each channel's BN scale is again its output's spread, which is what pruning ranks by
  (in the trained network BN made that spread its scale).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from compiler.model.unet import UNet3d, layer_graph

# per axis: coarse-parity taps (parity 0 offsets -1, 0; parity 1 offsets 0, +1) as rows q = 2 * parity +
# offset, from the 3 fine taps (SubpixelUpConv's _PHASE_TAPS); _UNPHASE is its left inverse
_UNPHASE = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, -1.0], [0.0, 0.0, 0.0, 1.0]])


def _initializers(path: Path) -> dict[str, torch.Tensor]:
    model = onnx.load(str(path))
    return {i.name: torch.from_numpy(np.array(numpy_helper.to_array(i))) for i in model.graph.initializer}


def _unphase(parity_weight: torch.Tensor) -> torch.Tensor:
    """(8 * cout, cin, 2, 2, 2) parity weights (block k = 4 pd + 2 ph + pw) -> (cout, cin, 3, 3, 3)."""
    cout, cin = parity_weight.shape[0] // 8, parity_weight.shape[1]
    q = parity_weight.reshape(2, 2, 2, cout, cin, 2, 2, 2).permute(3, 4, 0, 5, 1, 6, 2, 7).reshape(cout, cin, 4, 4, 4)
    return torch.einsum("oiabc,za,yb,xc->oizyx", q, _UNPHASE, _UNPHASE, _UNPHASE)


def unet_from_onnx(path: Path, patches: list[np.ndarray]) -> UNet3d:
    """The network of an exported FP32 ONNX file as a UNet3d with BatchNorm, its statistics measured on
    `patches` ((1, channels, D, H, W) float32 network inputs); in eval mode it computes what the file does."""
    init = _initializers(path)
    names = sorted({k.split(".")[1] for k in init if k.startswith("layers.")})
    depth = 1 + max(int(n[3]) for n in names)
    specs = layer_graph(depth)
    if sorted(s.name for s in specs) != names or "head.weight" not in init:
        raise ValueError(f"{path.name} is not an exported UNet3d (layers {names})")
    weights, biases = {}, {}
    for spec in specs:
        w = init[f"layers.{spec.name}.conv.weight"]
        weights[spec.name] = _unphase(w) if spec.upsample else w
        biases[spec.name] = init[f"layers.{spec.name}.conv.bias"][: weights[spec.name].shape[0]]
    in_channels = weights[specs[0].name].shape[1]
    net = UNet3d({n: int(w.shape[0]) for n, w in weights.items()}, depth, int(init["head.weight"].shape[0]),
                 int(in_channels))
    stats: dict[str, list[torch.Tensor]] = {n: [] for n in weights}
    hooks = []
    with torch.no_grad():
        for spec in specs:
            layer = net.layers[spec.name]
            layer.conv.weight.copy_(weights[spec.name])
            # identity BN carrying the bias while the statistics are measured
            layer.bn.weight.fill_(1.0)
            layer.bn.bias.copy_(biases[spec.name])
            layer.bn.running_mean.zero_()
            layer.bn.running_var.fill_(1.0 - layer.bn.eps)
            hooks.append(layer.bn.register_forward_pre_hook(
                lambda _m, args, name=spec.name: stats[name].append(_moments(args[0]))))
        net.head.weight.copy_(init["head.weight"])
        net.head.bias.copy_(init["head.bias"])
        net.eval()
        for x in patches:
            net(torch.from_numpy(x))
        for h in hooks:
            h.remove()
        for spec in specs:
            layer = net.layers[spec.name]
            m = torch.stack(stats[spec.name])  # (patches, 2, channels): mean, mean of squares
            mean, sq = m[:, 0].mean(0), m[:, 1].mean(0)
            var = (sq - mean**2).clamp(min=0)
            layer.bn.running_mean.copy_(mean)
            layer.bn.running_var.copy_(var)
            layer.bn.weight.copy_(torch.sqrt(var + layer.bn.eps))
            layer.bn.bias.copy_(biases[spec.name] + mean)
    return net


def _moments(z: torch.Tensor) -> torch.Tensor:
    dims = (0, *range(2, z.dim()))
    return torch.stack([z.mean(dims), (z.double() ** 2).mean(dims).float()])
