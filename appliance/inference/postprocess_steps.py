"""Post-processing as data: each bundle mode lists its chain of named steps in the manifest.

A step is a function registered under its name with `@register`, of one signature:

    def step(ctx: PostprocessContext, *, <argument>: LabelValue | LabelValues, ...) -> None

It changes `ctx.labels` in place. `ctx` carries what every step may read (the label map, the network's
probabilities, HU, the enclosed-air mask, the voxel spacing, the bundle's label table); its keyword-only
arguments are the labels it acts on, each annotated `LabelValue` (one label) or `LabelValues` (several).
A step adapts one pure function on arrays of `appliance.inference.postprocess`: the thresholds and the
reasons live there, the names of the labels here and in the manifest.

The manifest names labels, never values. A mode's `postprocess` is a list of entries, run in the order
listed, each the step's name and one key per argument: a label name for a `LabelValue`, a list of names
for `LabelValues`; the name "background" is value 0 (no label of the table has it):

    "postprocess": [
     {"step": "confine_experimental", "host": "body", "bone": "bone"},
     {"step": "keep_single_structures", "labels": ["lung_left", "lung_right"]},
     {"step": "grow_lungs_into_air", "lungs": ["lung_left", "lung_right"], "hosts": ["background", "body"]}
    ]

`load_bundle` resolves every entry against the bundle's labels when it loads (`resolve`) and refuses an
unknown step, a missing or unexpected argument, a list where one name belongs (or the reverse) and a name
the bundle's labels do not have, naming the mode, the step's index and name and the key. So a bundle with
other labels ("kidney", "spleen") runs the steps its manifest names for them, and none keyed on a chest.

A mode without `postprocess` (a manifest written before the chain was data) is not post-processed: its
labels are the network's argmax, and `load_bundle` says so in one warning per mode. An empty list means
the same, chosen, without the warning. The compiler writes the chest chain (`CHEST_POSTPROCESS` in
`compiler/build.py`). Which labels keep only their largest component is the `labels` of the mode's
keep_single_structures and keep_airway_tree steps; the mode's `keep_largest_component` is the compiler's
record of the same labels, not read here.

Adding a step: the pure function goes into `postprocess.py`, its adapter here, e.g.

    @register("fill_kidney_pelvis")
    def _fill_kidney_pelvis(ctx: PostprocessContext, *, kidney: LabelValue, host: LabelValue) -> None:
        fill_kidney_pelvis(ctx.labels, ctx.hu, kidney, host)

and an entry `{"step": "fill_kidney_pelvis", "kidney": "kidney_left", "host": "body"}` where it belongs in
the chain of the manifest modes that want it (for bundles the compiler builds: `CHEST_POSTPROCESS`).
"""

from __future__ import annotations

import inspect
import logging
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NewType, TypeVar

import numpy as np

from appliance.inference.postprocess import (
    airway_beside_lumen,
    airway_is_air,
    bone_edge,
    confine_experimental,
    drop_bone_outside_patient,
    drop_bone_with_soft_surface,
    drop_bone_without_cortex,
    drop_implausible_airway,
    extend_airway_through_air,
    fill_airway_lumen,
    fill_bone_marrow,
    grow_lungs_into_air,
    keep_airway_tree,
    keep_patient,
    keep_single_structures,
    lung_edge,
    trim_bone_surface,
)

if TYPE_CHECKING:
    from appliance.inference.bundle import Label, PostprocessStep

log = logging.getLogger(__name__)

LabelValue = NewType("LabelValue", int)  # an argument that is one label: a label name in the manifest
LabelValues = tuple[LabelValue, ...]  # an argument that is several labels: a list of label names
BACKGROUND = "background"  # the name of value 0 in a step's arguments


@dataclass
class PostprocessContext:
    """What every step may read; `labels` is the one thing a step changes (in place)."""

    labels: np.ndarray  # (z, y, x) uint8 label values
    probabilities: np.ndarray  # (C, z, y, x) the network's, before post-processing, indexed by label value
    hu: np.ndarray  # (z, y, x) HU on the grid of `labels`
    enclosed: np.ndarray  # (z, y, x) enclosed air (`appliance.inference.normalise.enclosed_air`)
    spacing: tuple[float, float, float]  # (sz, sy, sx) mm
    table: Sequence[Label]  # the bundle's labels

    def name_of(self, value: int) -> str:
        return next((lab.name for lab in self.table if lab.value == value), BACKGROUND)


Step = Callable[..., None]
F = TypeVar("F", bound=Step)


@dataclass(frozen=True)
class StepSpec:
    name: str
    fn: Step
    arguments: dict[str, bool]  # argument -> takes several labels (LabelValues) rather than one


STEPS: dict[str, StepSpec] = {}


def register(name: str) -> Callable[[F], F]:
    """Register a step under `name`: its parameters after `ctx` are keyword-only, each annotated
    `LabelValue` or `LabelValues` (module docstring)."""

    def add(fn: F) -> F:
        if name in STEPS:
            raise ValueError(f"post-processing step {name!r} is registered twice")
        hints = typing.get_type_hints(fn)
        arguments: dict[str, bool] = {}
        for param in list(inspect.signature(fn).parameters.values())[1:]:
            hint = hints.get(param.name)
            if param.kind is not inspect.Parameter.KEYWORD_ONLY or hint not in (LabelValue, LabelValues):
                raise TypeError(f"post-processing step {name!r}: parameter {param.name!r} must be keyword-only "
                                f"and annotated LabelValue or LabelValues")
            arguments[param.name] = hint == LabelValues
        STEPS[name] = StepSpec(name, fn, arguments)
        return fn

    return add


class StepError(ValueError):
    """A chain entry that cannot run on this bundle; the message names the step and the key."""


def resolve(step: str, args: Mapping[str, object], table: Sequence[Label]) -> dict[str, LabelValue | LabelValues]:
    """The keyword arguments of `step` from a manifest entry's `args` (label names), by the label table.
    Raises StepError naming the missing or unexpected argument or the unknown label (the caller names the
    step)."""
    spec = STEPS.get(step)
    if spec is None:
        raise StepError(f"unknown step (known: {', '.join(sorted(STEPS))})")
    missing = [k for k in spec.arguments if k not in args]
    if missing:
        raise StepError(f"missing argument {missing[0]!r} (takes {', '.join(spec.arguments)})")
    extra = [k for k in args if k not in spec.arguments]
    if extra:
        raise StepError(f"unexpected argument {extra[0]!r} (takes {', '.join(spec.arguments) or 'none'})")
    values = {lab.name: lab.value for lab in table}
    if BACKGROUND in values:
        raise StepError(f"the bundle has a label named {BACKGROUND!r}, the name steps give value 0")
    values[BACKGROUND] = 0
    out: dict[str, LabelValue | LabelValues] = {}
    for key, several in spec.arguments.items():
        given = args[key]
        if several != isinstance(given, list) or not all(isinstance(n, str) for n in (given if several else [given])):
            raise StepError(f"argument {key!r} must be {'a list of label names' if several else 'a label name'}, "
                            f"not {given!r}")
        names: list[str] = given if several else [given]  # type: ignore[assignment]
        unknown = [n for n in names if n not in values]
        if unknown:
            raise StepError(f"argument {key!r} names label {unknown[0]!r}, which the bundle does not have "
                            f"(labels: {', '.join(values)})")
        out[key] = tuple(LabelValue(values[n]) for n in names) if several else LabelValue(values[names[0]])
    return out


def run_chain(ctx: PostprocessContext, chain: Sequence[PostprocessStep]) -> dict[str, float]:
    """Run the manifest's steps in order on `ctx.labels` (in place); seconds per step (index:name)."""
    seconds: dict[str, float] = {}
    for i, entry in enumerate(chain):
        try:
            kwargs = resolve(entry.step, entry.args, ctx.table)
        except StepError as exc:
            raise StepError(f"postprocess step {i} ({entry.step}): {exc}") from exc
        t = time.perf_counter()
        STEPS[entry.step].fn(ctx, **kwargs)
        seconds[f"{i}:{entry.step}"] = time.perf_counter() - t
        log.debug("event=postprocess_step index=%d step=%s seconds=%.3f", i, entry.step, seconds[f"{i}:{entry.step}"])
    return seconds


# the steps of `appliance.inference.postprocess`


@register("confine_experimental")
def _confine_experimental(ctx: PostprocessContext, *, host: LabelValue, bone: LabelValue) -> None:
    """Experimental labels (the table says which) take the best validated class unless that is `host`."""
    confine_experimental(ctx.labels, ctx.probabilities, [lab.value for lab in ctx.table if not lab.experimental],
                         [lab.value for lab in ctx.table if lab.experimental], host, bone=bone)


@register("airway_is_air")
def _airway_is_air(ctx: PostprocessContext, *, airway: LabelValue, host: LabelValue) -> None:
    airway_is_air(ctx.labels, ctx.hu, airway, host)


@register("airway_beside_lumen")
def _airway_beside_lumen(ctx: PostprocessContext, *, airway: LabelValue) -> None:
    airway_beside_lumen(ctx.labels, ctx.hu, airway)


@register("keep_patient")
def _keep_patient(ctx: PostprocessContext) -> None:
    keep_patient(ctx.labels)


@register("keep_single_structures")
def _keep_single_structures(ctx: PostprocessContext, *, labels: LabelValues) -> None:
    """The largest component of each of `labels`."""
    keep_single_structures(ctx.labels, labels)


@register("keep_airway_tree")
def _keep_airway_tree(ctx: PostprocessContext, *, airway: LabelValue) -> None:
    """The airway's island with the most pure air."""
    keep_airway_tree(ctx.labels, ctx.hu, airway)


@register("drop_implausible_airway")
def _drop_implausible_airway(ctx: PostprocessContext, *, airway: LabelValue, lungs: LabelValues) -> None:
    drop_implausible_airway(ctx.labels, ctx.hu, airway, lungs)


@register("fill_airway_lumen")
def _fill_airway_lumen(ctx: PostprocessContext, *, airway: LabelValue) -> None:
    fill_airway_lumen(ctx.labels, ctx.enclosed, airway)


@register("extend_airway_through_air")
def _extend_airway_through_air(ctx: PostprocessContext, *, airway: LabelValue, hosts: LabelValues) -> None:
    extend_airway_through_air(ctx.labels, ctx.hu, airway, hosts, ctx.spacing)


@register("drop_bone_outside_patient")
def _drop_bone_outside_patient(ctx: PostprocessContext, *, bone: LabelValue) -> None:
    drop_bone_outside_patient(ctx.labels, bone)


@register("fill_bone_marrow")
def _fill_bone_marrow(ctx: PostprocessContext, *, bone: LabelValue, host: LabelValue) -> None:
    fill_bone_marrow(ctx.labels, ctx.hu, bone, host, ctx.spacing)


@register("drop_bone_without_cortex")
def _drop_bone_without_cortex(ctx: PostprocessContext, *, bone: LabelValue) -> None:
    drop_bone_without_cortex(ctx.labels, ctx.hu, bone, ctx.spacing)


@register("trim_bone_surface")
def _trim_bone_surface(ctx: PostprocessContext, *, bone: LabelValue, host: LabelValue) -> None:
    trim_bone_surface(ctx.labels, ctx.hu, bone, host)


@register("drop_bone_with_soft_surface")
def _drop_bone_with_soft_surface(ctx: PostprocessContext, *, bone: LabelValue) -> None:
    drop_bone_with_soft_surface(ctx.labels, ctx.hu, bone, ctx.spacing)


@register("bone_edge")
def _bone_edge(ctx: PostprocessContext, *, bone: LabelValue, host: LabelValue) -> None:
    bone_edge(ctx.labels, ctx.hu, bone, host, ctx.spacing)


@register("lung_edge")
def _lung_edge(ctx: PostprocessContext, *, lungs: LabelValues, host: LabelValue) -> None:
    lung_edge(ctx.labels, ctx.hu, lungs, host, ctx.spacing)


@register("grow_lungs_into_air")
def _grow_lungs_into_air(ctx: PostprocessContext, *, lungs: LabelValues, hosts: LabelValues) -> None:
    grow_lungs_into_air(ctx.labels, ctx.hu, ctx.enclosed, lungs, hosts, ctx.spacing)
