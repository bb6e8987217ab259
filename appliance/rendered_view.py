"""A rendered 3D view of a result's segment meshes, for the PACS viewers that show neither Surface
Segmentation nor SEG: every viewer shows an RGB picture (sent as a Secondary Capture, see
dicom_node.secondary_capture).

Rendered offscreen on the CPU (Mesa llvmpipe) or whatever GPU EGL finds, with VTK. The render window is
made explicitly offscreen, EGL first and OSMesa where EGL has no display: no environment variable, no
X server, nothing process-wide is changed. VTK is imported on first use, so importing the pipeline
stays cheap on a node that never renders.

The look follows radiology habits: black background, smooth (Phong) shading from the meshes' own normals,
a parallel projection with one scale for every frame (sizes compare between views), fixed views in
patient orientation (anterior: patient facing the viewer, patient's left on the image right, head up),
the orientation letters at the frame edges (derived from the camera, so they cannot disagree with it),
a legend of the drawn segments in their colours, and a notice such as "PREVIEW - not for diagnosis
alone" with the model name and version, all burned in.

A segment whose type is the body envelope (SNOMED CT "Entire body") is drawn faint and translucent:
drawn opaque it hides every organ inside it and shows a face on a head series.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from dicom_node.derived import SegmentInfo
from kernels.mesh import Mesh

log = logging.getLogger(__name__)

DEFAULT_SIZE = 512
# Segment types that enclose the others: drawn translucent (SNOMED CT "Entire body", "Skin structure").
ENVELOPE_TYPES = frozenset({("SCT", "38266002"), ("SCT", "39937001")})
ENVELOPE_OPACITY = 0.15
_LEGEND_MAX = 12  # more segments than this: the rest are summarised as "+N more"

# VTK's text renderer and font cache are process singletons that are not thread safe: one render at a time.
_RENDER_LOCK = threading.Lock()


class RenderError(RuntimeError):
    """No view can be rendered: bad input (the message names the argument) or no OpenGL to render with."""


class RenderUnavailableError(RenderError):
    """Neither EGL nor OSMesa gives an offscreen OpenGL context on this machine."""


_LETTERS = {(0, 1): "L", (0, -1): "R", (1, 1): "P", (1, -1): "A", (2, 1): "H", (2, -1): "F"}


def _letter(vector: np.ndarray) -> str:
    """The patient-orientation letter (LPS: +x L, +y P, +z H) of the dominant axis of a direction."""
    axis = int(np.argmax(np.abs(vector)))
    return _LETTERS[(axis, 1 if vector[axis] > 0 else -1)]


@dataclass(frozen=True)
class View:
    """A fixed view: `toward_camera` points from the scene centre to the camera and `up` is the image's
    up direction, both in patient LPS. `label` is burned in and names the frame (Frame Label Vector)."""

    label: str
    toward_camera: tuple[float, float, float]
    up: tuple[float, float, float]

    @property
    def right(self) -> np.ndarray:
        """Patient direction toward the image's right edge (view direction x up)."""
        return np.cross(-np.asarray(self.toward_camera, float), np.asarray(self.up, float))

    @property
    def edge_letters(self) -> dict[str, str]:
        """Orientation letters at the image's left, right, top and bottom edges."""
        right, up = self.right, np.asarray(self.up, float)
        return {"left": _letter(-right), "right": _letter(right), "top": _letter(up), "bottom": _letter(-up)}


VIEWS: dict[str, View] = {
    "anterior": View("ANTERIOR", (0.0, -1.0, 0.0), (0.0, 0.0, 1.0)),
    "left": View("LEFT LATERAL", (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
    "posterior": View("POSTERIOR", (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
    "right": View("RIGHT LATERAL", (-1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
    "superior": View("SUPERIOR", (0.0, 0.0, 1.0), (0.0, -1.0, 0.0)),
    "inferior": View("INFERIOR", (0.0, 0.0, -1.0), (0.0, -1.0, 0.0)),
}
DEFAULT_VIEWS = ("anterior", "left", "posterior", "right")


@cache
def _window_class() -> str:
    """The first offscreen window kind that gives an OpenGL context here (probed once per process: a
    failing EGL probe logs VTK warnings, which need not repeat for every result)."""
    from vtkmodules.vtkRenderingOpenGL2 import vtkEGLRenderWindow, vtkOSOpenGLRenderWindow

    for cls in (vtkEGLRenderWindow, vtkOSOpenGLRenderWindow):
        window = cls()
        window.SetOffScreenRendering(1)
        if window.SupportsOpenGL():
            window.Finalize()
            log.info("event=rendered_view_backend window=%s", cls.__name__)
            return cls.__name__
    return ""


def _offscreen_window(rows: int, cols: int) -> Any:
    from vtkmodules import vtkRenderingOpenGL2

    name = _window_class()
    if not name:
        raise RenderUnavailableError("no offscreen OpenGL: neither EGL nor OSMesa gives a context (install Mesa's "
                                "libegl-mesa0 or libosmesa6)")
    window = getattr(vtkRenderingOpenGL2, name)()
    window.SetOffScreenRendering(1)
    window.SetMultiSamples(0)  # FXAA below smooths edges for a fraction of MSAA's cost on llvmpipe
    window.SetSize(cols, rows)
    return window


def _check(meshes: object, segments: object, size: object, views: object) -> tuple[int, int, list[View]]:
    if not isinstance(meshes, Mapping):
        raise RenderError(f"meshes must map label values to Mesh, got {type(meshes).__name__}")
    if isinstance(segments, (str, bytes)) or not isinstance(segments, Sequence) or not segments:
        raise RenderError("segments must be a non-empty sequence of SegmentInfo")
    for i, s in enumerate(segments):
        if not isinstance(s, SegmentInfo):
            raise RenderError(f"segments[{i}] must be a SegmentInfo, got {type(s).__name__}")
    dims = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, Sequence) else ()
    if len(dims) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and 64 <= n <= 4096 for n in dims):
        raise RenderError(f"size must be rows, columns (or one number) within 64..4096, got {size!r}")
    rows, cols = dims
    if isinstance(views, str) or not isinstance(views, Sequence) or not views:
        raise RenderError("views must be a non-empty sequence of view names or View")
    chosen = []
    for v in views:
        if isinstance(v, View):
            chosen.append(v)
        elif v in VIEWS:
            chosen.append(VIEWS[v])
        else:
            raise RenderError(f"views: unknown view {v!r} (known: {', '.join(VIEWS)})")
    return rows, cols, chosen


def _drawn(meshes: Mapping[int, Mesh], segments: Sequence[SegmentInfo]) -> list[tuple[SegmentInfo, Mesh]]:
    """The segments that have a non-empty mesh, checked: a segment without one is neither drawn nor listed."""
    out = []
    for s in segments:
        mesh = meshes.get(s.label_value)
        if mesh is None or len(mesh.triangles) == 0:
            continue
        v, t = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
        what = f"segment {s.number} ({s.label})"
        if v.ndim != 2 or v.shape[1] != 3 or t.ndim != 2 or t.shape[1] != 3:
            raise RenderError(f"{what}: vertices must be (N, 3) and triangles (M, 3), got {v.shape}, {t.shape}")
        if not np.issubdtype(t.dtype, np.integer) or int(t.min()) < 0 or int(t.max()) >= len(v):
            raise RenderError(f"{what}: triangles must be integer indices into the {len(v)} vertices")
        if not np.isfinite(v).all():
            raise RenderError(f"{what}: vertices must be finite")
        out.append((s, mesh))
    return out


def _polydata(mesh: Mesh) -> Any:
    """The mesh as vtkPolyData with point normals (the mesh's own, else area-weighted from its triangles)."""
    from vtkmodules.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData

    from kernels.mesh_ops import vertex_normals

    v = np.ascontiguousarray(mesh.vertices, dtype=np.float32)
    normals = mesh.normals if mesh.normals is not None and len(mesh.normals) == len(v) else vertex_normals(mesh)
    points = vtkPoints()
    points.SetData(numpy_to_vtk(v, deep=True))
    cells = vtkCellArray()
    connectivity = np.ascontiguousarray(mesh.triangles, dtype=np.int64).ravel()
    cells.SetData(3, numpy_to_vtkIdTypeArray(connectivity, deep=True))
    poly = vtkPolyData()
    poly.SetPoints(points)
    poly.SetPolys(cells)
    vtk_normals = numpy_to_vtk(np.ascontiguousarray(normals, dtype=np.float32), deep=True)
    vtk_normals.SetName("Normals")
    poly.GetPointData().SetNormals(vtk_normals)
    return poly


def _text(renderer: Any, text: str, x: int, y: int, size: int, rgb: Sequence[float] = (1.0, 1.0, 1.0), *,
          justify: str = "left", valign: str = "bottom", bold: bool = False) -> Any:
    from vtkmodules.vtkRenderingCore import vtkTextActor

    actor = vtkTextActor()
    actor.SetInput(text)
    prop = actor.GetTextProperty()
    prop.SetFontFamilyToArial()
    prop.SetFontSize(size)
    prop.SetColor(*rgb)
    prop.SetBold(bold)
    prop.ShadowOn()  # readable where text crosses a bright surface
    {"left": prop.SetJustificationToLeft, "center": prop.SetJustificationToCentered,
     "right": prop.SetJustificationToRight}[justify]()
    {"bottom": prop.SetVerticalJustificationToBottom, "center": prop.SetVerticalJustificationToCentered,
     "top": prop.SetVerticalJustificationToTop}[valign]()
    actor.SetDisplayPosition(x, y)
    renderer.AddViewProp(actor)
    return actor


def render_views(
    meshes: Mapping[int, Mesh],
    segments: Sequence[SegmentInfo],
    *,
    size: int | tuple[int, int] = DEFAULT_SIZE,
    views: Sequence[str | View] = DEFAULT_VIEWS,
    notice: str = "",
    caption: str = "",
    opacity: Mapping[int, float] | None = None,
) -> np.ndarray:
    """Frames (len(views), rows, cols, 3) uint8 RGB, row 0 at the top, of the segments' meshes.

    `meshes` maps `SegmentInfo.label_value` to a mesh in patient LPS mm (the pipeline's dict); a segment
    without a mesh (or with an empty one) is not drawn and not listed in the legend. `size`: rows, cols or
    one number for square frames. `views`: names from VIEWS or View objects. `notice` and `caption` are
    burned in at the bottom left (e.g. "PREVIEW - not for diagnosis alone" and the model name and
    version). `opacity`: label value -> 0..1 (default: 1, the body envelope ENVELOPE_OPACITY).

    One render window serves every frame; only the camera and the letters change between frames.
    Raises RenderError for bad input, RenderUnavailableError where no offscreen OpenGL exists.
    """
    t0 = time.perf_counter()
    rows, cols, chosen = _check(meshes, segments, size, views)
    drawn = _drawn(meshes, segments)
    if not drawn:
        raise RenderError("none of the segments has a mesh: nothing to render")
    with _RENDER_LOCK:
        frames = _render(drawn, rows, cols, chosen, notice, caption, dict(opacity or {}))
    log.info("event=rendered_view frames=%d size=%dx%d segments=%d triangles=%d seconds=%.3f", len(frames), rows,
             cols, len(drawn), sum(len(m.triangles) for _, m in drawn), time.perf_counter() - t0)
    return frames


def _render(drawn: list[tuple[SegmentInfo, Mesh]], rows: int, cols: int, views: list[View], notice: str,
            caption: str, opacity: dict[int, float]) -> np.ndarray:
    import vtkmodules.vtkRenderingFreeType  # noqa: F401  (registers the text renderer vtkTextActor needs)
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkCommonCore import vtkUnsignedCharArray
    from vtkmodules.vtkRenderingCore import vtkActor, vtkPolyDataMapper, vtkRenderer

    window = _offscreen_window(rows, cols)
    try:
        renderer = vtkRenderer()
        renderer.SetBackground(0.0, 0.0, 0.0)
        renderer.UseFXAAOn()
        window.AddRenderer(renderer)
        lo = np.full(3, np.inf)
        hi = np.full(3, -np.inf)
        for s, mesh in drawn:
            mapper = vtkPolyDataMapper()
            mapper.SetInputData(_polydata(mesh))
            mapper.ScalarVisibilityOff()
            actor = vtkActor()
            actor.SetMapper(mapper)
            prop = actor.GetProperty()
            prop.SetColor(*(c / 255.0 for c in s.color_rgb))
            prop.SetInterpolationToPhong()
            prop.SetAmbient(0.15)
            prop.SetDiffuse(0.85)
            prop.SetSpecular(0.15)
            prop.SetSpecularPower(20.0)
            envelope = (s.type.scheme, s.type.value) in ENVELOPE_TYPES
            alpha = float(opacity.get(s.label_value, ENVELOPE_OPACITY if envelope else 1.0))
            prop.SetOpacity(min(max(alpha, 0.0), 1.0))
            renderer.AddActor(actor)
            v = np.asarray(mesh.vertices, dtype=np.float64)
            lo, hi = np.minimum(lo, v.min(axis=0)), np.maximum(hi, v.max(axis=0))
        centre = (lo + hi) / 2.0
        half = max(float((hi - lo).max()) / 2.0, 1.0)
        camera = renderer.GetActiveCamera()
        camera.ParallelProjectionOn()
        # one scale for every frame: the largest extent fits with room for the burned-in text
        camera.SetParallelScale(half * 1.18 * max(1.0, rows / cols))
        distance = 4.0 * half + 10.0

        scale = min(rows, cols) / DEFAULT_SIZE
        big, small = max(10, round(16 * scale)), max(9, round(13 * scale))
        pad = max(4, round(8 * scale))
        title = _text(renderer, "", pad, rows - pad, big, justify="left", valign="top", bold=True)
        edges = {
            "top": _text(renderer, "", cols // 2, rows - pad, big, justify="center", valign="top", bold=True),
            "bottom": _text(renderer, "", cols // 2, pad + 2 * (small + 4), big, justify="center", bold=True),
            "left": _text(renderer, "", pad, rows // 2, big, justify="left", valign="center", bold=True),
            "right": _text(renderer, "", cols - pad, rows // 2, big, justify="right", valign="center", bold=True),
        }
        listed = drawn[:_LEGEND_MAX]
        for k, (s, _) in enumerate(listed):
            _text(renderer, s.label, cols - pad, rows - pad - k * (small + 4), small,
                  [c / 255.0 for c in s.color_rgb], justify="right", valign="top", bold=True)
        if len(drawn) > len(listed):
            _text(renderer, f"+{len(drawn) - len(listed)} more", cols - pad,
                  rows - pad - len(listed) * (small + 4), small, justify="right", valign="top")
        for k, line in enumerate(t for t in (caption, notice) if t):
            _text(renderer, line, pad, pad + k * (small + 4), small, (0.85, 0.85, 0.85))

        frames = np.empty((len(views), rows, cols, 3), dtype=np.uint8)
        pixels = vtkUnsignedCharArray()
        for i, view in enumerate(views):
            camera.SetFocalPoint(*centre)
            camera.SetPosition(*(centre + distance * np.asarray(view.toward_camera, float)))
            camera.SetViewUp(*view.up)
            renderer.ResetCameraClippingRange()
            title.SetInput(view.label)
            for edge, letter in view.edge_letters.items():
                edges[edge].SetInput(letter)
            window.Render()
            window.GetPixelData(0, 0, cols - 1, rows - 1, 0, pixels, 0)
            frames[i] = vtk_to_numpy(pixels).reshape(rows, cols, 3)[::-1]  # OpenGL's row 0 is the bottom
        return frames
    finally:
        window.Finalize()
