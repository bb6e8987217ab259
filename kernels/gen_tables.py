"""Generate the marching-cubes case tables (kernels/csrc/mc_tables.h) from first principles.

Why generate instead of pasting the classic table: the classic 256-case table has ambiguous faces
resolved inconsistently between complementary cases, which leaves cracks. Here every case is derived
from one rule applied per cube FACE, so two cubes sharing a face always cut it identically:

1. On each of the 6 faces, the surface crosses every edge whose two corners differ (inside/outside).
   A face with 2 crossings gets one segment. A face with 4 crossings (diagonal corners inside) is
   ambiguous; we always SEPARATE the inside corners: each inside corner is cut off by its own segment.
2. Each segment is oriented so that, seen along the face's outward normal n, cross(q - p, n) points to
   the inside corners. With that orientation, every crossed edge starts exactly one segment and ends
   exactly one, so the segments chain into closed loops on the cube surface.
3. Each loop is triangulated. The loop direction makes triangle normals point to the outside (towards
   lower field values); the neighbour cube traverses the shared face segment in the opposite direction,
   so the mesh is a consistently oriented closed manifold away from the volume border. Diagonals between
   two vertices on the same cube face are forbidden: the neighbour cube could draw the same diagonal and
   the edge would then carry four triangles. Among the allowed triangulations the one with the shortest
   total diagonal length (on edge midpoints) is taken (dynamic programming over the polygon).

Corner c has offsets (dx, dy, dz) = (c & 1, (c >> 1) & 1, (c >> 2) & 1); bit c of the case index is
set when corner c is inside. Edges: 0-3 run along x at (dy, dz) = (e & 1, e >> 1); 4-7 along y at
(dx, dz); 8-11 along z at (dx, dy).

Run `python -m kernels.gen_tables` to rewrite the header; a test checks the header is up to date.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HEADER = Path(__file__).resolve().parent / "csrc" / "mc_tables.h"


def corner_offset(c: int) -> np.ndarray:
    return np.array([c & 1, (c >> 1) & 1, (c >> 2) & 1], dtype=float)


def edge_corners(e: int) -> tuple[int, int]:
    """The two corners of edge e (lower corner first)."""
    axis, rest = divmod(e, 4)
    a, b = rest & 1, rest >> 1
    others = [d for d in range(3) if d != axis]
    base = (a << others[0]) | (b << others[1])
    return base, base | (1 << axis)


EDGE_OF = {frozenset(edge_corners(e)): e for e in range(12)}


def face_cycles() -> list[tuple[np.ndarray, list[int]]]:
    """(outward normal, 4 corners in cyclic order) for the 6 cube faces."""
    faces = []
    for axis in range(3):
        u, v = [d for d in range(3) if d != axis]
        for side in (0, 1):
            normal = np.zeros(3)
            normal[axis] = 1.0 if side else -1.0
            base = side << axis
            cyc = [base, base | (1 << u), base | (1 << u) | (1 << v), base | (1 << v)]
            faces.append((normal, cyc))
    return faces


def edge_mid(e: int) -> np.ndarray:
    a, b = edge_corners(e)
    return 0.5 * (corner_offset(a) + corner_offset(b))


def face_segments(case: int, normal: np.ndarray, cyc: list[int]) -> list[tuple[int, int]]:
    inside = [(case >> c) & 1 for c in cyc]
    crossing = [EDGE_OF[frozenset((cyc[i], cyc[(i + 1) % 4]))] for i in range(4) if inside[i] != inside[(i + 1) % 4]]
    if not crossing:
        return []
    if len(crossing) == 2:
        pairs = [(crossing[0], crossing[1], next(c for c, s in zip(cyc, inside, strict=True) if s))]
    else:  # ambiguous face: cut off each inside corner separately
        pairs = []
        for i in range(4):
            if inside[i]:
                e_prev = EDGE_OF[frozenset((cyc[i - 1], cyc[i]))]
                e_next = EDGE_OF[frozenset((cyc[i], cyc[(i + 1) % 4]))]
                pairs.append((e_prev, e_next, cyc[i]))
    segs = []
    for ea, eb, corner in pairs:
        p, q = edge_mid(ea), edge_mid(eb)
        if np.dot(np.cross(q - p, normal), corner_offset(corner) - p) < 0:
            ea, eb = eb, ea
        segs.append((ea, eb))
    return segs


def case_triangles(case: int) -> list[tuple[int, int, int]]:
    nxt: dict[int, int] = {}
    for normal, cyc in face_cycles():
        for a, b in face_segments(case, normal, cyc):
            assert a not in nxt, (case, a)
            nxt[a] = b
    tris = []
    while nxt:
        start = min(nxt)
        loop = [start]
        e = nxt.pop(start)
        while e != start:
            loop.append(e)
            e = nxt.pop(e)
        tris.extend(triangulate(loop))
    return tris


def edge_faces(e: int) -> set[tuple[int, int]]:
    """The two faces (axis, side) containing edge e."""
    a, b = edge_corners(e)
    axis = e // 4
    return {(d, (a >> d) & 1) for d in range(3) if d != axis}


def triangulate(loop: list[int]) -> list[tuple[int, int, int]]:
    """Minimum-diagonal-length triangulation of a loop with no diagonal lying in a cube face."""
    n = len(loop)
    pts = [edge_mid(e) for e in loop]

    def allowed(i: int, j: int) -> bool:
        return (j - i) % n in (1, n - 1) or not (edge_faces(loop[i]) & edge_faces(loop[j]))

    def cost(i: int, j: int) -> float:
        return 0.0 if (j - i) % n in (1, n - 1) else float(np.linalg.norm(pts[i] - pts[j]))

    best: dict[tuple[int, int], tuple[float, int]] = {}
    for span in range(2, n):
        for i in range(0, n - span):
            j = i + span
            options = []
            for m in range(i + 1, j):
                if allowed(i, m) and allowed(m, j) and (m - i < 2 or (i, m) in best) and (j - m < 2 or (m, j) in best):
                    sub = (best[(i, m)][0] if m - i >= 2 else 0.0) + (best[(m, j)][0] if j - m >= 2 else 0.0)
                    options.append((sub + cost(i, m) + cost(m, j), m))
            if options and allowed(i, j):
                best[(i, j)] = min(options)
    if (0, n - 1) not in best:
        raise ValueError(f"no face-safe triangulation for loop {loop}")
    tris: list[tuple[int, int, int]] = []

    def collect(i: int, j: int) -> None:
        if j - i < 2:
            return
        m = best[(i, j)][1]
        tris.append((loop[i], loop[m], loop[j]))
        collect(i, m)
        collect(m, j)

    collect(0, n - 1)
    return tris


def build_tables() -> tuple[np.ndarray, np.ndarray]:
    """(count[256] uint8, edges[256, 3*max] int8 padded with -1)."""
    all_tris = [case_triangles(c) for c in range(256)]
    max_t = max(len(t) for t in all_tris)
    count = np.array([len(t) for t in all_tris], dtype=np.uint8)
    edges = np.full((256, 3 * max_t), -1, dtype=np.int8)
    for c, tris in enumerate(all_tris):
        flat = [e for t in tris for e in t]
        edges[c, : len(flat)] = flat
    return count, edges


def render_header() -> str:
    count, edges = build_tables()
    max_t = edges.shape[1] // 3
    lines = [
        "// Generated by kernels/gen_tables.py -- do not edit by hand.",
        "// Marching-cubes case tables: face-consistent ambiguity resolution (inside corners separated).",
        "#pragma once",
        "",
        f"#define MC_MAX_TRI {max_t}",
        "",
        "MC_TABLE unsigned char mc_tri_count[256] = {",
    ]
    for r in range(0, 256, 32):
        lines.append("    " + ", ".join(str(int(v)) for v in count[r : r + 32]) + ",")
    lines += ["};", "", f"MC_TABLE signed char mc_tri_edges[256][{3 * max_t}] = {{"]
    for c in range(256):
        lines.append("    {" + ", ".join(str(int(v)) for v in edges[c]) + "},")
    lines += ["};", ""]
    return "\n".join(lines)


def main() -> int:
    HEADER.write_text(render_header())
    print(f"wrote {HEADER}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
