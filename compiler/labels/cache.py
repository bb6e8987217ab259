"""Cached reference labels (build/model/cache), keyed by the content that made them.

A case's labels on one grid are reused only while everything that made them is unchanged: the labeller's
source (every .py under compiler/labels/, compiler/data.py, which merges the silver masks before caching,
and every module of this repository those import, the DICOM reader and the resampling included), the
bytes of the case's input files (its CT and its silver mask; not their times, which a fresh clone
changes), the grid spacing, and the versions of the libraries that code imports. `reference_key` is the
sha256 of those ingredients; a JSON beside each cached file lists them, so a person can see what made it.
A file of another key (an older labeller, other input) is ignored, never read.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from appliance.inference.grid import grid_of
from compiler.data import Case, LabelledVolume, labelled_case, resampled_case

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
# where the labeller starts: its own package and the silver merge applied before caching (compiler/data.py)
LABELLER_ROOTS = ("compiler/labels", "compiler/data.py")
FINE_MM = 2.0  # grids finer than this are labelled; coarser ones take the labels of the 1.5 mm grid


def _module_file(repo: Path, module: str) -> Path | None:
    base = repo / Path(*module.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _imported_modules(path: Path, repo: Path) -> frozenset[str]:
    """Dotted names a module imports, anywhere in it (function-level imports too), relative ones resolved;
    for `from a import b` both `a` and `a.b` (b may be a module)."""
    rel = path.resolve().relative_to(repo.resolve())
    package = ".".join(rel.parts[:-1]) if rel.name == "__init__.py" else ".".join(rel.with_suffix("").parts[:-1])
    return _parsed_imports(path.read_bytes(), package)


@functools.lru_cache(maxsize=256)
def _parsed_imports(source: bytes, package: str) -> frozenset[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return frozenset(m for m in out if m)


def labeller_sources(repo: Path = REPO) -> list[Path]:
    """The source files that make the reference labels: LABELLER_ROOTS and every module of this
    repository they import, transitively (with the packages' __init__.py on the way)."""
    todo = [f for r in LABELLER_ROOTS for f in ((repo / r).rglob("*.py") if (repo / r).is_dir() else [repo / r])]
    seen: set[Path] = set()
    while todo:
        f = todo.pop()
        if f in seen or not f.is_file():
            continue
        seen.add(f)
        for module in _imported_modules(f, repo):
            parts = module.split(".")
            for i in range(1, len(parts) + 1):
                g = _module_file(repo, ".".join(parts[:i]))
                if g is not None and g not in seen:
                    todo.append(g)
    return sorted(seen)


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _libraries(sources: Sequence[Path], repo: Path) -> dict[str, str]:
    """Version of each installed distribution the sources import (numpy, scipy, pydicom, nibabel)."""
    dists = _distributions()
    top = {m.split(".")[0] for f in sources for m in _imported_modules(f, repo)}
    local = {name for name in top if _module_file(repo, name) is not None}  # this repository's own packages
    out = {}
    for name in sorted(top - local - set(sys.stdlib_module_names)):
        for dist in dists.get(name, ()):
            out[dist] = importlib.metadata.version(dist)
    return out


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read every time (all cases' files: 134 MB, 0.2 s warm)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def input_files(case: Case, root: Path) -> list[Path]:
    """The files of a case the labeller reads: its CT (a file, or every file under its DICOM folder, as
    `data.load_ct` reads them) and its silver mask."""
    folder = root / case.name
    src = folder / case.source
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    if case.silver is not None:
        files.append(folder / case.silver)
    return files


def reference_ingredients(case: Case, spacing: Sequence[float], root: Path,
                          sources: Iterable[Path] | None = None, repo: Path = REPO) -> dict:
    """Everything that makes a case's reference labels on the grid of `spacing`, with a sha256 for each
    file (`sources`: the labeller's, default `labeller_sources()`)."""
    sources = labeller_sources(repo) if sources is None else sorted(sources)
    return {"case": case.name, "spacing_mm": [float(s) for s in spacing],
            "labeller": {_rel(f, repo): file_sha256(f) for f in sources},
            "inputs": {_rel(f, root): file_sha256(f) for f in input_files(case, root)},
            "libraries": _libraries(sources, repo)}


def key_of(ingredients: dict) -> str:
    return hashlib.sha256(json.dumps(ingredients, sort_keys=True).encode()).hexdigest()


def labeller_code(sources: Iterable[Path] | None = None, repo: Path = REPO) -> dict:
    """The labeller's code alone, equal for every case it labels: its source files and the libraries
    they import, each with its sha256 or version, and `sha256` of the two."""
    sources = labeller_sources(repo) if sources is None else sorted(sources)
    code = {"sources": {_rel(f, repo): file_sha256(f) for f in sources}, "libraries": _libraries(sources, repo)}
    return code | {"sha256": key_of(code)}


def reference_key(case: Case, spacing: Sequence[float], root: Path, sources: Iterable[Path] | None = None,
                  repo: Path = REPO) -> str:
    """sha256 of `reference_ingredients`: changes when the labeller's code, the case's files or the grid do."""
    return key_of(reference_ingredients(case, spacing, root, sources, repo))


def _rel(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def cached_case(case: Case, spacing: tuple[float, float, float], cache: Path, root: Path) -> LabelledVolume:
    """The case's reference labels on the grid of `spacing`: from `cache` where a file of today's key is
    there, else made (grids of `FINE_MM` or finer by the labeller, coarser ones from the 1.5 mm labels)
    and written there with its ingredients."""
    ingredients = reference_ingredients(case, spacing, root)
    key = key_of(ingredients)
    f = cache / f"{case.name}_{spacing[0]:g}mm_{key[:16]}.npz"
    meta = f.with_suffix(".json")
    if f.exists() and meta.exists():
        d, m = np.load(f), json.loads(meta.read_text())
        return LabelledVolume(case.name, d["hu"].astype(np.float32), d["labels"], d["known"],
                              grid_of(d["hu"], d["affine"]), tuple(m.get("notes", ())), m["reference_kind"], key)
    if spacing[0] < FINE_MM:
        lv = labelled_case(case, spacing, root)
    else:
        lv = resampled_case(case, cached_case(case, (1.5, 1.5, 1.5), cache, root), spacing, root)
    lv.reference_key = key
    cache.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, hu=lv.hu.astype(np.int16), labels=lv.labels, known=lv.known, affine=lv.grid.affine)
    os.replace(tmp, f)
    meta.write_text(json.dumps({"key": key, "reference_kind": lv.reference_kind, "notes": list(lv.notes),
                                "ingredients": ingredients}, indent=1) + "\n")
    log.info("event=reference_cached case=%s spacing_mm=%g key=%s", case.name, spacing[0], key[:16])
    return lv
