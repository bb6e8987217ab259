"""A TensorRT-friendly 3D U-Net whose every conv layer has its own width, so it can be channel-pruned.

TensorRT-friendly: Conv3d + BatchNorm (folded into the conv at export) + ReLU, strided convs to go
down, nearest upsample + conv to go up (no ConvTranspose3d; exported as the equivalent `SubpixelUpConv`),
concatenation skips, static shapes.
The layer graph is explicit (`LayerSpec.inputs`) so structured pruning can slice every weight tensor
consistently, concatenations included (`compiler.model.prune`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LayerSpec:
    name: str
    inputs: tuple[str, ...]  # layer names, concatenated in order; "input" is the image
    stride: int = 1
    upsample: bool = False  # nearest x2 upsample of the (single) input before the conv


def layer_graph(depth: int) -> list[LayerSpec]:
    """enc{i}a/b down the encoder, dec{i}u (upsample+conv) and dec{i}b (after the skip concat) up."""
    specs = [LayerSpec("enc0a", ("input",)), LayerSpec("enc0b", ("enc0a",))]
    for i in range(1, depth):
        specs += [LayerSpec(f"enc{i}a", (f"enc{i - 1}b",), stride=2), LayerSpec(f"enc{i}b", (f"enc{i}a",))]
    prev = f"enc{depth - 1}b"
    for i in range(depth - 2, -1, -1):
        specs += [LayerSpec(f"dec{i}u", (prev,), upsample=True), LayerSpec(f"dec{i}b", (f"dec{i}u", f"enc{i}b"))]
        prev = f"dec{i}b"
    return specs


def default_widths(base: int, depth: int) -> dict[str, int]:
    w = {}
    for spec in layer_graph(depth):
        level = int(spec.name[3])
        w[spec.name] = base * (2**level)
    return w


# Per axis, a 3-tap conv after a nearest x2 upsample is a 4-tap transposed conv of stride 2 (padding 1)
# on the coarse grid: fine output 2m reads coarse m-1 (tap 0) and m (taps 1, 2), output 2m+1 reads m
# (taps 0, 1) and m+1 (tap 2); row k of this matrix says which 3-taps make transposed tap k.
_UPSAMPLED_TAPS = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`conv3x3x3(nearest_upsample_x2(x))` as one stride-2 transposed conv: the same function with 64
    instead of 216 multiply-adds per coarse voxel and no fine-grid upsampled copy. Training only: the
    exported graph carries no ConvTranspose (TensorRT-friendly), it uses `SubpixelUpConv`. Measured on a
    2-core Zen 2, forward + backward of the teacher's finest up-conv: 1.24 s -> 0.46 s."""
    taps = _UPSAMPLED_TAPS.to(weight.dtype)
    kernel = torch.einsum("oizyx,az,by,cx->ioabc", weight, taps, taps, taps)
    return nn.functional.conv_transpose3d(x, kernel, bias, stride=2, padding=1)


class ConvBnAct(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, upsample: bool = False) -> None:
        super().__init__()
        self.upsample = upsample
        self.conv = nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm3d(cout)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = upsample_conv(x, self.conv.weight, self.conv.bias) if self.upsample else self.conv(x)
        return self.act(self.bn(y))


class UNet3d(nn.Module):
    """Input (N, in_channels, D, H, W): the channels the manifest's normalisation names (normalised CT,
    left-right coordinate, enclosed air); output (N, classes, D, H, W) logits. D, H, W % 2**(depth-1) == 0."""

    def __init__(self, widths: dict[str, int], depth: int, n_classes: int, in_channels: int = 2) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.depth = depth
        self.n_classes = n_classes
        self.widths = dict(widths)
        self.specs = layer_graph(depth)
        self.layers = nn.ModuleDict()
        for spec in self.specs:
            cin = sum(in_channels if src == "input" else widths[src] for src in spec.inputs)
            self.layers[spec.name] = ConvBnAct(cin, widths[spec.name], spec.stride, spec.upsample)
        self.head = nn.Conv3d(widths[self.specs[-1].name], n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = {"input": x}
        for spec in self.specs:
            srcs = [out[s] for s in spec.inputs]
            out[spec.name] = self.layers[spec.name](srcs[0] if len(srcs) == 1 else torch.cat(srcs, dim=1))
        return self.head(out[self.specs[-1].name])

    def config(self) -> dict:
        return {"widths": self.widths, "depth": self.depth, "n_classes": self.n_classes,
                "in_channels": self.in_channels}

    @classmethod
    def from_config(cls, cfg: dict) -> UNet3d:
        return cls(cfg["widths"], cfg["depth"], cfg["n_classes"], cfg.get("in_channels", 2))


def make_unet(base: int, depth: int, n_classes: int, in_channels: int = 2) -> UNet3d:
    return UNet3d(default_widths(base, depth), depth, n_classes, in_channels)


def widen_input(model: UNet3d, in_channels: int) -> UNet3d:
    """A copy taking `in_channels` inputs, the new ones appended with zero weights: it computes exactly what
    `model` did, so a trained network can learn to use a new input channel instead of starting over."""
    import copy

    if in_channels < model.in_channels:
        raise ValueError(f"cannot narrow the input from {model.in_channels} to {in_channels} channels")
    wide = UNet3d(model.widths, model.depth, model.n_classes, in_channels)
    state = copy.deepcopy(model.state_dict())
    for spec in model.specs:
        if "input" not in spec.inputs:
            continue
        key = f"layers.{spec.name}.conv.weight"
        w = state[key]
        at = sum(model.in_channels if s == "input" else model.widths[s]
                 for s in spec.inputs[: spec.inputs.index("input") + 1])
        zeros = torch.zeros((w.shape[0], in_channels - model.in_channels, *w.shape[2:]), dtype=w.dtype)
        state[key] = torch.cat([w[:, :at], zeros, w[:, at:]], dim=1)
    wide.load_state_dict(state)
    return wide.eval()


def fold_batchnorm(model: UNet3d) -> UNet3d:
    """A copy where every BatchNorm is folded into its conv (conv gets a bias, BN becomes identity)."""
    import copy

    m = copy.deepcopy(model).eval()
    for layer in m.layers.values():
        conv, bn = layer.conv, layer.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv3d(conv.in_channels, conv.out_channels, 3, stride=conv.stride, padding=1, bias=True)
        with torch.no_grad():
            fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1, 1))
            fused.bias.copy_(bn.bias - bn.running_mean * scale)
        layer.conv = fused
        layer.bn = nn.Identity()
    return m


# Per axis, the taps of a 3-wide kernel that land on each coarse voxel after a nearest x2 upsample:
# an even output 2i reads fine voxels 2i-1, 2i, 2i+1 = coarse i-1, i, i; an odd one 2i+1 reads i, i, i+1.
_PHASE_TAPS = (torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]),   # even: coarse offsets -1, 0
               torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))   # odd:  coarse offsets 0, +1


class SubpixelUpConv(nn.Module):
    """Exactly `relu(conv3x3x3(nearest_upsample_x2(x)))`, computed on the coarse grid.

    Each of the 8 output parities is a 2x2x2 conv of the coarse input, so one 2x2x2 conv with 8x the
    output channels (padding 1) computes them all; each parity's window is then sliced out and the
    parities are interleaved (a depth-to-space). That is 8*8 instead of 27*8 multiply-adds per coarse
    voxel and no Resize, which ONNX Runtime runs slowly in 3D (28% of the teacher's CPU time, measured).
    Built from a BN-folded conv at export, so training never sees it."""

    def __init__(self, conv: nn.Conv3d) -> None:
        super().__init__()
        if conv.kernel_size != (3, 3, 3) or conv.stride != (1, 1, 1) or conv.bias is None:
            raise ValueError("SubpixelUpConv needs a folded 3x3x3 stride-1 conv with a bias")
        w, b = conv.weight.detach(), conv.bias.detach()
        self.cout = w.shape[0]
        phases = [torch.einsum("oizyx,az,by,cx->oiabc", w, _PHASE_TAPS[pd], _PHASE_TAPS[ph], _PHASE_TAPS[pw])
                  for pd in (0, 1) for ph in (0, 1) for pw in (0, 1)]
        self.conv = nn.Conv3d(w.shape[1], 8 * self.cout, 2, padding=1, bias=True)
        with torch.no_grad():
            self.conv.weight.copy_(torch.cat(phases, 0))
            self.conv.bias.copy_(b.repeat(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, d, h, w = x.shape
        c = self.cout
        y = self.conv(x)  # (n, 8c, d+1, h+1, w+1): parity p's outputs start at offset p on each axis
        parts = [y[:, k * c:(k + 1) * c, pd:pd + d, ph:ph + h, pw:pw + w]
                 for k, (pd, ph, pw) in enumerate((a, b, e) for a in (0, 1) for b in (0, 1) for e in (0, 1))]
        z = torch.stack(parts, 1).reshape(n, 2, 2, 2, c, d, h, w)
        z = z.permute(0, 4, 5, 1, 6, 2, 7, 3).reshape(n, c, 2 * d, 2 * h, 2 * w)
        return torch.relu(z)


def subpixel_upsampling(folded: UNet3d) -> UNet3d:
    """A copy of a BN-folded model whose upsample+conv layers are `SubpixelUpConv`: the same function,
    cheaper to run (the form we export)."""
    import copy

    m = copy.deepcopy(folded).eval()
    for spec in m.specs:
        if spec.upsample:
            m.layers[spec.name] = SubpixelUpConv(m.layers[spec.name].conv)
    return m
