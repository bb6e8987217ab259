"""Start-up recovery of the spool after a crash (kill -9, power loss).

Acknowledged instances are always fully on disk. What a crash can leave behind is (a) half-written temp
files, never acknowledged, which are removed, and (b) a file renamed into place whose index row did not
commit (crash between rename and commit, or a power loss undoing the last WAL commits): such files are
indexed again, because the spool, not the index, is the record of what was received.

The Query/Retrieve catalog is rebuilt the same way: an instance or a delivered result that it lacks (a
node upgraded from a version without the catalog) is catalogued from its file's header.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread

from dicom_node.catalog import CatalogEntry, Store
from dicom_node.index import InstanceIndex, InstanceRecord
from dicom_node.logfmt import log_event
from dicom_node.sop_classes import PROCESSED_IMAGE_CLASSES
from dicom_node.spool import SpoolLayout, iter_instance_files, remove_temp_files

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoveryReport:
    temp_files_removed: int
    reindexed: int
    unreadable: int


def recover_spool(spool: SpoolLayout, index: InstanceIndex) -> RecoveryReport:
    removed = remove_temp_files(spool.root)
    known = index.all_relpaths()
    reindexed = unreadable = 0
    for path in iter_instance_files(spool.root):
        rel = path.relative_to(spool.root).as_posix()
        if rel in known:
            continue
        try:
            ds = dcmread(path, stop_before_pixels=True)
            sop_class = str(ds.SOPClassUID)
            ts = str(ds.file_meta.TransferSyntaxUID)
            size = path.stat().st_size
            index.record(InstanceRecord(
                sop_instance_uid=str(ds.SOPInstanceUID),
                sop_class_uid=sop_class,
                transfer_syntax_uid=ts,
                study_uid=path.parent.parent.name,
                series_uid=path.parent.name,
                modality=str(ds.get("Modality", "") or ""),
                is_image=sop_class in PROCESSED_IMAGE_CLASSES,
                relpath=rel,
                size=size,
                calling_ae="recovered",
            ), catalog=CatalogEntry.from_dataset(ds, transfer_syntax_uid=ts, store="spool", relpath=rel, size=size))
            reindexed += 1
        except Exception as exc:
            unreadable += 1
            log_event(logger, "recovery.unreadable_file", level=logging.ERROR, path=rel, error=type(exc).__name__)
    report = RecoveryReport(removed, reindexed, unreadable)
    if removed or reindexed or unreadable:
        log_event(logger, "recovery.spool", temp_files_removed=removed, reindexed=reindexed, unreadable=unreadable)
    return report


def recover_catalog(index: InstanceIndex, spool_root: Path, results_dir: Path, result_dirs: Iterable[str]) -> int:
    """Catalog indexed instances and the DICOM files of finished jobs' result folders that the catalog
    lacks; the number catalogued."""
    catalog = index.catalog
    todo: list[tuple[Store, Path, str]] = [
        ("spool", spool_root / rel, rel) for rel in sorted(index.all_relpaths() - catalog.known_relpaths("spool"))]
    known_results = catalog.known_relpaths("results")
    for folder in result_dirs:
        for path in sorted((results_dir / folder).glob("*.dcm")):
            rel = path.relative_to(results_dir).as_posix()
            if rel not in known_results:
                todo.append(("results", path, rel))
    entries: list[CatalogEntry] = []
    for store, path, rel in todo:
        try:
            entries.append(CatalogEntry.from_file(path, store=store, relpath=rel))
        except Exception as exc:
            log_event(logger, "recovery.uncatalogued_file", level=logging.ERROR, path=rel, error=type(exc).__name__)
    catalog.record(entries)
    if entries:
        log_event(logger, "recovery.catalogued", instances=len(entries))
    return len(entries)
