"""Training stages: patch sampling with augmentation, the partial-label loss, teacher training and
student distillation (with BN-sparsity so the student can be channel-pruned afterwards).

Partial labels: a voxel's `known` bitmask says which classes its label is authoritative about. The loss
is the marginal cross-entropy -log sum_{c allowed} p_c where `allowed` = {label} plus the classes the
voxel knows nothing about that its label could hide: a body voxel may be any unknown organ (an
unlabelled heart is "body or heart"), a lung voxel may be an unknown airway; voxels with known == 0
allow every class and so contribute nothing.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from appliance.inference.normalise import CHANNELS, normalise_hu, x_coordinate
from compiler.data import ALL_KNOWN, LabelledVolume
from compiler.labels.table import NUM_CLASSES, VALUE

log = logging.getLogger(__name__)

LR_SWAP = np.arange(NUM_CLASSES, dtype=np.uint8)
LR_SWAP[[VALUE["lung_left"], VALUE["lung_right"]]] = [VALUE["lung_right"], VALUE["lung_left"]]


def per_class(default: float, **named: float) -> tuple[float, ...]:
    """A weight per label value: `default`, except the labels named (`per_class(1.0, airway=10.0)`)."""
    weights = [default] * NUM_CLASSES
    for name, w in named.items():
        weights[VALUE[name]] = w
    return tuple(weights)


@dataclass
class TrainConfig:
    patch: tuple[int, int, int] = (48, 48, 48)
    batch: int = 2
    steps: int = 600
    lr: float = 3e-3
    seed: int = 0
    fg_fraction: float = 0.6  # patches centred on a random foreground class
    sparsity: float = 0.0  # L1 on BN gammas (network slimming), for the pruning stage
    distill_alpha: float = 0.5  # weight of the teacher's soft targets
    temperature: float = 2.0
    log_every: int = 50
    label_prior: float = 0.1  # weak plain CE on the given label: where a class is unknown, prefer the label
    # how often a foreground-centred patch picks each class (small structures more often than lungs)
    class_weights: tuple[float, ...] = per_class(1.0, background=0.0, bone=1.5, airway=10.0)
    # the network's input channels (appliance.inference.normalise.network_input)
    channels: tuple[str, ...] = CHANNELS
    bf16: bool = False  # bfloat16 autocast (2.3x faster on CPUs with AVX512-BF16/AMX; weights stay FP32)
    # per-voxel weight of the cross-entropy by the voxel's label. Pure air is outside air almost
    # everywhere, so an unweighted loss learns "air = background" and never the trachea (measured:
    # airway probability 0.03 on its own training patches after 2400 steps)
    loss_weights: tuple[float, ...] = per_class(1.0, airway=10.0)
    # how often a patch with contrast in its heart or aorta has it taken out (`remove_contrast`). Every
    # real case that labels a heart or aorta has contrast; the held-out chest has none. Full teacher on
    # it, reference bone called aorta: 27200 voxels with none, 3400 at 0.3, 0 at 0.5 (compiler/README)
    non_contrast: float = 0.5


def bf16_supported() -> bool:
    """True where oneDNN runs bfloat16 natively (emulated bf16 would be slower than FP32)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def labelled_nll(logp: torch.Tensor, lab: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Plain cross-entropy to the given label from log-probabilities, over voxels that know anything."""
    nll = -logp.gather(1, lab.long().unsqueeze(1)).squeeze(1)
    w = (known != 0).float()
    return (nll * w).sum() / w.sum().clamp(min=1)


def sample_patch(vol: LabelledVolume, patch: tuple[int, int, int], rng: np.random.Generator, fg_fraction: float,
                 class_weights: tuple[float, ...] = (0.0,) + (1.0,) * (NUM_CLASSES - 1)):
    """(hu, labels, known, x coordinate, enclosed air) crops of `patch`, padded with air / background /
    unknown / not enclosed where needed."""
    shape = np.array(vol.hu.shape)
    p = np.array(patch)
    if rng.uniform() < fg_fraction:
        present = [c for c in range(1, NUM_CLASSES) if c in vol.present]
        w = np.array([class_weights[c] for c in present], dtype=np.float64)
        c = int(rng.choice(present, p=w / w.sum())) if present and w.sum() > 0 else 1
        idx = vol.class_index(c)
        centre = np.array(np.unravel_index(idx[rng.integers(len(idx))], vol.hu.shape))
    else:
        centre = np.array([rng.integers(0, s) for s in shape])
    start = centre - p // 2 + rng.integers(-p // 4, p // 4 + 1)
    start = np.clip(start, np.minimum(0, shape - p), np.maximum(0, shape - p))
    hu = np.full(patch, -1024.0, dtype=np.float32)
    lab = np.zeros(patch, dtype=np.uint8)
    known = np.full(patch, 1, dtype=np.uint16)  # outside the scan: known background only
    src = tuple(slice(max(s, 0), min(s + q, n)) for s, q, n in zip(start, p, shape, strict=True))
    dst = tuple(slice(a.start - s, a.stop - s) for a, s in zip(src, start, strict=True))
    hu[dst] = vol.hu[src]
    lab[dst] = vol.labels[src]
    known[dst] = vol.known[src]
    enclosed = np.zeros(patch, dtype=np.uint8)
    enclosed[dst] = vol.enclosed[src]
    coord = x_coordinate(int(shape[2]), vol.grid.spacing[2], int(start[2]), int(p[2]))
    return hu, lab, known, np.ascontiguousarray(np.broadcast_to(coord[None, None, :], patch)), enclosed


BLOOD_POOLS = (VALUE["heart"], VALUE["aorta"])
BLOOD_HU = 40.0  # unenhanced blood
CONTRAST_HU = 100.0  # a blood pool whose median is above this is enhanced


def remove_contrast(hu: np.ndarray, lab: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The patch as an unenhanced scan would show it: an enhanced heart or aorta (median above
    `CONTRAST_HU`) gets blood's HU, its own texture kept at a fifth (in full, a lumen's edge voxels would
    fall below fat). Why: every real case that labels an aorta
    has contrast in it, and a teacher trained on them called the vertebral column of the held-out
    non-contrast chest "aorta" (43600 voxels, 65% of it bone) -- the brightest tube beside the midline."""
    out = hu
    for value in BLOOD_POOLS:
        pool = lab == value
        if not pool.any():
            continue
        lumen = hu[pool]
        median = np.median(lumen)
        if median > CONTRAST_HU:
            if out is hu:
                out = hu.copy()
            out[pool] = BLOOD_HU + rng.normal(0.0, 8.0) + (lumen - median) * 0.2
    return out


def augment(hu, lab, known, coord, enclosed, rng: np.random.Generator, non_contrast: float = 0.0):
    """Contrast removed (`non_contrast` of the time), intensity (scale/shift), noise, resolution (blur),
    left-right flip (lung labels swapped and the coordinate mirrored: a mirrored patient), rotation.
    Enclosed air is taken from the unaugmented scan, as inference takes it from the scan it gets."""
    if non_contrast > 0 and rng.uniform() < non_contrast:
        hu = remove_contrast(hu, lab, rng)
    hu = hu * rng.uniform(0.92, 1.08) + rng.uniform(-30, 30)
    if rng.uniform() < 0.3:
        sig = rng.uniform(0.5, 1.2, size=3)
        sig[0] *= rng.uniform(0.5, 2.0)  # anisotropic: thick slices
        hu = ndimage.gaussian_filter(hu, sig)
    if rng.uniform() < 0.5:
        hu = hu + rng.normal(0, rng.uniform(5, 35), hu.shape).astype(np.float32)
    if rng.uniform() < 0.2:
        hu, lab, known, coord = hu[:, :, ::-1], LR_SWAP[lab[:, :, ::-1]], known[:, :, ::-1], -coord[:, :, ::-1]
        enclosed = enclosed[:, :, ::-1]
    if rng.uniform() < 0.25:
        ang = rng.uniform(-12, 12)
        hu = ndimage.rotate(hu, ang, axes=(1, 2), reshape=False, order=1, cval=-1024.0)
        lab = ndimage.rotate(lab, ang, axes=(1, 2), reshape=False, order=0, cval=0)
        known = ndimage.rotate(known, ang, axes=(1, 2), reshape=False, order=0, cval=1)
        coord = ndimage.rotate(coord, ang, axes=(1, 2), reshape=False, order=1, mode="nearest")
        enclosed = ndimage.rotate(enclosed, ang, axes=(1, 2), reshape=False, order=0, cval=0)
    return (np.ascontiguousarray(hu), np.ascontiguousarray(lab), np.ascontiguousarray(known),
            np.ascontiguousarray(coord, dtype=np.float32), np.ascontiguousarray(enclosed, dtype=np.float32))


def class_masks(lab: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(is the voxel's label, is known) per class: (N, C, ...) bool each, computed once per batch for
    every term of the loss (int32 bit tests, not int64: this runs over every voxel of every class)."""
    cls = torch.arange(NUM_CLASSES, dtype=torch.int32).reshape(1, -1, *([1] * (lab.dim() - 1)))
    return lab.unsqueeze(1).int() == cls, (known.unsqueeze(1).int() >> cls) & 1 == 1


def allowed_mask(lab: torch.Tensor, known: torch.Tensor,
                 masks: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """(N, C, ...) bool: classes each voxel's target admits (module docstring)."""
    is_label, is_known = masks if masks is not None else class_masks(lab, known)
    cls = torch.arange(NUM_CLASSES).reshape(1, -1, *([1] * (lab.dim() - 1)))
    lab1 = lab.unsqueeze(1)
    # rules label an organ they cannot see as body, and an unseen bronchus as lung: only those may hide it
    body = lab1 == VALUE["body"]
    lung = (lab1 == VALUE["lung_left"]) | (lab1 == VALUE["lung_right"])
    hideable = (body & (cls > 1)) | (lung & (cls == VALUE["airway"]))
    return is_label | (~is_known & hideable) | (known.unsqueeze(1) == 0)


def marginal_ce(logp: torch.Tensor, allowed: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of -log P(allowed) over the informative voxels, each counted `weight` times (default 1);
    `logp` are log-probabilities (log_softmax over the classes)."""
    lse = torch.logsumexp(logp.masked_fill(~allowed, -1e4), dim=1)
    w = (~allowed).any(dim=1).float()
    if weight is not None:
        w = w * weight
    return -(lse * w).sum() / w.sum().clamp(min=1)


def distillation_kl(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                    weight: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean per voxel of KL(teacher || student) at `temperature`. The weight is the hard
    label's loss weight: unweighted, the few airway voxels of a patch add almost nothing to the soft
    term, and the distilled student lost the airway its teacher had (scratch build, preview lidc:
    teacher 0.84, student 0.59)."""
    soft = torch.softmax(teacher_logits / temperature, dim=1)
    kl = nn.functional.kl_div(torch.log_softmax(logits / temperature, dim=1), soft, reduction="none").sum(dim=1)
    if weight is None:
        return kl.mean()
    return (kl * weight).sum() / weight.sum().clamp(min=1)


def soft_dice(prob: torch.Tensor, is_label: torch.Tensor, is_known: torch.Tensor) -> torch.Tensor:
    """Mean soft Dice loss over foreground classes, counted only where the class is known (`class_masks`)."""
    onehot, kmask = is_label.float(), is_known.float()
    dims = (0, *range(2, prob.dim()))
    inter = (prob * onehot * kmask).sum(dims)
    denom = ((prob + onehot) * kmask).sum(dims)
    present = onehot.mul(kmask).sum(dims) > 0
    dice = (2 * inter + 1) / (denom + 1)
    return (1 - dice[1:])[present[1:]].mean() if present[1:].any() else prob.sum() * 0


def supervised_loss(logits: torch.Tensor, lab: torch.Tensor, known: torch.Tensor, weight: torch.Tensor,
                    label_prior: float) -> torch.Tensor:
    """Marginal CE (per-voxel `weight`) + soft Dice + `label_prior` x plain CE, sharing one log-softmax
    and one set of class masks (three softmaxes and int64 masks took 10% of a teacher step)."""
    logp = torch.log_softmax(logits, dim=1)
    masks = class_masks(lab, known)
    return (marginal_ce(logp, allowed_mask(lab, known, masks), weight) + soft_dice(logp.exp(), *masks)
            + label_prior * labelled_nll(logp, lab, known))


class PatchStream:
    """Endless augmented batches from a list of volumes (weights pick the volume)."""

    def __init__(self, volumes: list[LabelledVolume], cfg: TrainConfig, weights: list[float] | None = None):
        self.volumes = volumes
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        w = np.asarray(weights if weights is not None else [1.0] * len(volumes), dtype=np.float64)
        self.p = w / w.sum()

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hs, ls, ks = [], [], []
        for _ in range(self.cfg.batch):
            vol = self.volumes[int(self.rng.choice(len(self.volumes), p=self.p))]
            h, lab, k, c, e = augment(*sample_patch(vol, self.cfg.patch, self.rng, self.cfg.fg_fraction,
                                                        self.cfg.class_weights), self.rng, self.cfg.non_contrast)
            inputs = {"hu": normalise_hu(h), "x_coordinate": c, "enclosed_air": e}
            hs.append(np.stack([inputs[name] for name in self.cfg.channels]))
            ls.append(lab)
            ks.append(k.astype(np.int32))
        return (torch.from_numpy(np.stack(hs)), torch.from_numpy(np.stack(ls)),
                torch.from_numpy(np.stack(ks)))


def _bn_l1(model: nn.Module) -> torch.Tensor:
    return sum(m.weight.abs().sum() for m in model.modules() if isinstance(m, nn.BatchNorm3d))


def train(model: nn.Module, stream: PatchStream, cfg: TrainConfig, teacher: nn.Module | None = None,
          stage: str = "train", checkpoint: Path | None = None, checkpoint_every: int = 100) -> dict:
    """Adam + cosine LR; marginal CE + soft Dice, plus KL to the teacher's soft outputs when given.

    With `checkpoint`, the whole training state (weights, optimiser, schedule, both random streams) is
    written there atomically every `checkpoint_every` steps and at the end, and a run of the same stage,
    config, starting weights and teacher resumes from it: a CPU build takes hours, and a reboot or a kill must not cost them
    (the resumed run computes exactly what an uninterrupted one does)."""
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s / max(cfg.steps, 1), 1.0))))
    fmt = torch.channels_last_3d
    if teacher is not None:
        teacher.eval().to(memory_format=fmt)
    model.train().to(memory_format=fmt)
    t0, hist, start, before = time.monotonic(), [], 0, 0.0
    # the same stage, config, starting weights and teacher: anything else starts over
    key = {"stage": stage, "config": asdict(cfg), "start": _digest(model),
           "teacher": _digest(teacher) if teacher is not None else None}
    ck = _load_checkpoint(checkpoint, stage) if checkpoint is not None else None
    if ck is not None:
        if ck.get("key") == key:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimiser"])
            sched.load_state_dict(ck["schedule"])
            stream.rng.bit_generator.state = ck["stream_rng"]
            torch.set_rng_state(ck["torch_rng"])
            start, hist, before = ck["step"], ck["losses"], ck["seconds"]
            log.info("event=train_resumed stage=%s step=%d of=%d", stage, start, cfg.steps)
        else:
            log.info("event=train_checkpoint_ignored stage=%s reason=another stage, config, start or teacher", stage)
    lw = torch.tensor(cfg.loss_weights, dtype=torch.float32)
    for step in range(start, cfg.steps):
        x, lab, known = stream.next()
        x = x.contiguous(memory_format=fmt)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = model(x).float()
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(x).float()
        weight = lw[lab.long()]
        loss = supervised_loss(logits, lab, known, weight, cfg.label_prior)
        if teacher is not None:
            kl = distillation_kl(logits, t_logits, cfg.temperature, weight)
            loss = (1 - cfg.distill_alpha) * loss + cfg.distill_alpha * kl * cfg.temperature**2
        if cfg.sparsity > 0:
            loss = loss + cfg.sparsity * _bn_l1(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        hist.append(float(loss.detach()))
        if (step + 1) % cfg.log_every == 0 or step == cfg.steps - 1:
            # the stage's remaining time at this run's pace: on a CPU without native bf16 a full build
            # takes hours, and the operator should know that from the first lines
            pace = (time.monotonic() - t0) / (step + 1 - start)
            log.info("event=train stage=%s step=%d loss=%.4f elapsed_s=%.0f stage_eta_s=%.0f", stage, step + 1,
                     float(np.mean(hist[-cfg.log_every:])), before + time.monotonic() - t0,
                     pace * (cfg.steps - step - 1))
        if checkpoint is not None and ((step + 1) % checkpoint_every == 0 or step == cfg.steps - 1):
            _save_atomically(checkpoint, {
                "key": key, "step": step + 1, "losses": hist, "seconds": before + time.monotonic() - t0,
                "model": model.state_dict(), "optimiser": opt.state_dict(), "schedule": sched.state_dict(),
                "stream_rng": stream.rng.bit_generator.state, "torch_rng": torch.get_rng_state()})
    model.eval().to(memory_format=torch.contiguous_format)
    if teacher is not None:
        teacher.to(memory_format=torch.contiguous_format)
    return {"stage": stage, "steps": cfg.steps, "final_loss": float(np.mean(hist[-cfg.log_every:])) if hist else None,
            "seconds": round(before + time.monotonic() - t0, 1)}


def _load_checkpoint(path: Path, stage: str) -> dict | None:
    """The checkpoint at `path`, or None where there is none or it cannot be read (then the stage starts
    over: a damaged file costs the steps it held, never the build)."""
    if not path.exists():
        return None
    try:
        ck = torch.load(path, weights_only=False)
        return ck if isinstance(ck, dict) else None
    except Exception as exc:  # a truncated or foreign file: any unpickling error
        log.warning("event=train_checkpoint_unreadable stage=%s error=%s", stage, type(exc).__name__)
        return None


def _digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def _save_atomically(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


__all__ = ["ALL_KNOWN", "PatchStream", "TrainConfig", "allowed_mask", "class_masks", "distillation_kl", "marginal_ce",
           "per_class", "soft_dice", "supervised_loss", "train"]
