"""Start-up recovery of the spool after a crash (kill -9, power loss).

Acknowledged instances are always fully on disk. What a crash can leave behind is (a) half-written temp
files, never acknowledged, which are removed, and (b) a file renamed into place whose index row did not
commit (crash between rename and commit, or a power loss undoing the last WAL commits): such files are
indexed again, because the spool, not the index, is the record of what was received.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydicom import dcmread

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
            index.record(InstanceRecord(
                sop_instance_uid=str(ds.SOPInstanceUID),
                sop_class_uid=sop_class,
                transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                study_uid=path.parent.parent.name,
                series_uid=path.parent.name,
                modality=str(ds.get("Modality", "") or ""),
                is_image=sop_class in PROCESSED_IMAGE_CLASSES,
                relpath=rel,
                size=path.stat().st_size,
                calling_ae="recovered",
            ))
            reindexed += 1
        except Exception as exc:
            unreadable += 1
            log_event(logger, "recovery.unreadable_file", level=logging.ERROR, path=rel, error=type(exc).__name__)
    report = RecoveryReport(removed, reindexed, unreadable)
    if removed or reindexed or unreadable:
        log_event(logger, "recovery.spool", temp_files_removed=removed, reindexed=reindexed, unreadable=unreadable)
    return report
