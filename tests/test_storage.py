"""Spool, index, series completion and crash recovery, tested without the network."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from appliance.completion import SeriesCompletion
from appliance.config import parse_config
from appliance.jobs import JobQueue
from compiler.phantom import make_phantom, write_ct_series
from dicom_node.database import Database
from dicom_node.index import InstanceIndex, InstanceRecord
from dicom_node.part10 import IMPLEMENTATION_CLASS_UID, encode_file_meta
from dicom_node.recovery import recover_spool
from dicom_node.spool import InvalidUIDError, SpoolLayout, check_uid, store_durably


@pytest.fixture
def db(tmp_path) -> Database:
    return Database(tmp_path / "isonode.db")


def _record(sop: str, series: str = "1.2.3", image: bool = True, calling: str = "CT1") -> InstanceRecord:
    return InstanceRecord(sop_instance_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                          transfer_syntax_uid=ExplicitVRLittleEndian, study_uid="1.2", series_uid=series,
                          modality="CT", is_image=image, relpath=f"1.2/{series}/{sop}.dcm", size=10,
                          calling_ae=calling, called_ae="ISONODE")


def test_store_durably_writes_atomically_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "a" / "b" / "x.dcm"
    assert store_durably(path, [b"abc", memoryview(b"defg")]) == 7
    assert path.read_bytes() == b"abcdefg"
    assert [p.name for p in path.parent.iterdir()] == ["x.dcm"]


@pytest.mark.parametrize("bad", ["", "   ", "1.2.3/../x", "1.2.a", "1." + "2" * 70, "1..2"])
def test_uid_that_cannot_be_a_file_name_is_refused(bad):
    with pytest.raises(InvalidUIDError):
        check_uid(bad, "SeriesInstanceUID")


def test_uid_padding_is_stripped():
    assert check_uid("1.2.840.10008\x00", "SOPInstanceUID") == "1.2.840.10008"


def _dataset_body(path: Path) -> bytes:
    """The encoded data set of a Part-10 file (what a C-STORE carries), without preamble and file meta."""
    meta_length = pydicom.dcmread(path, stop_before_pixels=True).file_meta[0x00020000].value
    return path.read_bytes()[132 + 12 + meta_length:]


def test_file_meta_we_write_is_read_back_by_pydicom(tmp_path):
    src = write_ct_series(make_phantom((1, 16, 16), (1, 1, 1)).hu, tmp_path / "s", spacing=(1, 1, 1))[0]
    ds = pydicom.dcmread(src)
    body = _dataset_body(src)
    path = tmp_path / "out.dcm"
    path.write_bytes(encode_file_meta(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian, "CT1") + body)
    back = pydicom.dcmread(path)
    assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert back.file_meta.SourceApplicationEntityTitle == "CT1"
    assert back.PixelData == ds.PixelData


def test_instances_after_completion_open_a_new_series_version(db):
    index = InstanceIndex(db)
    assert index.record(_record("1.1")) == 1
    assert index.record(_record("1.2")) == 1
    assert index.record(_record("1.1")) is None  # duplicate
    with db.transaction() as conn:
        assert InstanceIndex.mark_complete(conn, "1.2.3", 1, "test", 0.0)
    assert index.record(_record("1.3")) == 2
    assert index.latest_version("1.2.3").instance_count == 1
    assert len(index.series_files("1.2.3")) == 3
    # a version's job sees the series as that version completed it, never a newer version still arriving
    assert len(index.series_files("1.2.3", up_to_version=1)) == 2
    assert len(index.series_files("1.2.3", up_to_version=2)) == 3


def _full_only(sv) -> tuple[str, ...]:  # noqa: ANN001 - routing stand-in: one job per completed version
    return ("full",)


def test_a_released_association_completes_its_series_at_once_unless_its_route_waits(db):
    index, jobs = InstanceIndex(db), JobQueue(db)
    config = parse_config("series: {completion_timeout_s: 60, routes: [{calling_ae_title: TRICKLE, "
                          "complete_on_release: false}]}").series
    completion = SeriesCompletion(index, jobs, config, lambda sv: ("preview", "full"))
    index.record(_record("5.1", series="6.1", calling="CT1"), now=1000.0)
    index.record(_record("5.2", series="6.2", calling="TRICKLE"), now=1000.0)
    assert completion.complete_released({"6.1"}, "CT1", "ISONODE", now=1001.0) == [("6.1", 1)]
    assert completion.complete_released({"6.2"}, "TRICKLE", "ISONODE", now=1001.0) == []
    assert completion.complete_released({"6.1"}, "CT1", "ISONODE", now=1002.0) == []  # already complete
    assert [(j.mode, j.state) for j in reversed(jobs.list())] == [("preview", "queued"), ("full", "queued")]


def test_the_preview_runs_first_and_a_full_job_waits_for_its_own_preview(db):
    jobs = JobQueue(db)
    jobs.enqueue(kind="process_series", series_uid="1.1", series_version=1, mode="full")  # an older study
    jobs.enqueue(kind="process_series", series_uid="2.2", series_version=1, mode="preview")
    jobs.enqueue(kind="process_series", series_uid="2.2", series_version=1, mode="full")
    first = jobs.claim("w1", 60.0)
    assert (first.series_uid, first.mode) == ("2.2", "preview")  # a new preview overtakes an older full run
    second = jobs.claim("w2", 60.0)
    assert (second.series_uid, second.mode) == ("1.1", "full")  # 2.2's full waits while its preview runs
    assert jobs.claim("w3", 60.0) is None
    jobs.complete(first.id, "w1", {})
    third = jobs.claim("w3", 60.0)
    assert (third.series_uid, third.mode) == ("2.2", "full")


def test_idle_series_completes_after_its_route_timeout_and_queues_one_job(db):
    index, jobs = InstanceIndex(db), JobQueue(db)
    config = parse_config("series: {completion_timeout_s: 5, routes: [{calling_ae_title: SLOW, "
                          "completion_timeout_s: 60}]}").series
    completion = SeriesCompletion(index, jobs, config, _full_only)
    index.record(_record("1.1", series="7.1", calling="CT1"), now=1000.0)
    index.record(_record("2.1", series="7.2", calling="SLOW"), now=1000.0)
    assert completion.complete_idle(now=1004.0) == []
    assert completion.complete_idle(now=1005.0) == [("7.1", 1)]
    assert completion.complete_idle(now=1059.0) == []
    assert completion.complete_idle(now=1060.0) == [("7.2", 1)]
    assert jobs.counts()["queued"] == 2
    assert completion.complete_idle(now=2000.0) == []


def test_series_without_ct_images_is_completed_but_not_processed(db):
    index, jobs = InstanceIndex(db), JobQueue(db)
    index.record(_record("3.1", series="8.1", image=False), now=0.0)
    completion = SeriesCompletion(index, jobs, parse_config("").series, _full_only)
    assert completion.complete_idle(now=100.0) == [("8.1", 1)]
    assert jobs.counts()["queued"] == 0


def test_operator_completion_only_applies_to_a_receiving_series(db):
    index, jobs = InstanceIndex(db), JobQueue(db)
    completion = SeriesCompletion(index, jobs, parse_config("").series, _full_only)
    index.record(_record("4.1", series="9.1"))
    assert completion.complete_now("9.1") == 1
    assert completion.complete_now("9.1") is None
    assert completion.complete_now("0.0") is None


def test_recovery_removes_temp_files_and_reindexes_files_the_index_lost(tmp_path, db):
    series = write_ct_series(make_phantom((3, 16, 16), (1, 1, 1)).hu, tmp_path / "src", spacing=(1, 1, 1))
    spool = SpoolLayout(tmp_path / "spool")
    for f in series:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        store_durably(spool.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID),
                      f.read_bytes())
    half_written = spool.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, "9.9").with_suffix(".dcm.1.tmp")
    half_written.write_bytes(b"partial")
    index = InstanceIndex(db)
    report = recover_spool(spool, index)
    assert (report.temp_files_removed, report.reindexed, report.unreadable) == (1, 3, 0)
    assert not half_written.exists()
    assert index.counts()["instances"] == 3
    assert recover_spool(spool, index).reindexed == 0


def test_database_is_in_wal_mode(db):
    assert db.connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _stored_series(tmp_path, db, n: int = 3):
    from dicom_node.scp import DicomScp, ScpSettings

    files = write_ct_series(make_phantom((n, 16, 16), (1, 1, 1)).hu, tmp_path / "src", spacing=(1, 1, 1))
    spool = SpoolLayout(tmp_path / "spool")
    index = InstanceIndex(db)
    scp = DicomScp(ScpSettings(min_free_bytes=0), spool, index)
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert scp.store(_dataset_body(f), ExplicitVRLittleEndian, ds.SOPClassUID, ds.SOPInstanceUID).status == 0
    return spool, index, str(ds.SeriesInstanceUID)


def test_retention_deletes_old_processed_series_but_never_one_with_pending_work(tmp_path, db):
    import time

    from appliance.retention import sweep

    spool, index, series_uid = _stored_series(tmp_path, db)
    jobs = JobQueue(db)
    completion = SeriesCompletion(index, jobs, parse_config("").series, _full_only)
    assert completion.complete_now(series_uid) == 1
    retention = parse_config("retention: {instances_days: 7, results_days: 30}").retention
    later = time.time() + 8 * 86400
    assert sweep(db, spool.root, tmp_path / "results", retention, now=later).series_deleted == 0  # job queued
    job = jobs.claim("w", lease_s=60)
    jobs.complete(job.id, "w", {})
    assert sweep(db, spool.root, tmp_path / "results", retention, now=time.time()).series_deleted == 0  # too new
    report = sweep(db, spool.root, tmp_path / "results", retention, now=later)
    assert (report.series_deleted, report.instances_deleted) == (1, 3)
    assert index.counts()["instances"] == 0
    assert not list(spool.root.rglob("*.dcm"))


def test_retention_keeps_an_old_result_folder_until_its_delivery_is_acknowledged(tmp_path, db):
    import os

    from appliance.outbox import Destination, Outbox, OutboxFile
    from appliance.retention import sweep

    results = tmp_path / "results"
    kept, gone = results / "1.2.3" / "v1-preview", results / "1.2.4" / "v1-preview"
    for d in (kept, gone):
        d.mkdir(parents=True)
        (d / "surfaces.dcm").write_bytes(b"x")
        os.utime(d, (0, 0))
    InstanceIndex(db), JobQueue(db)  # the node's other tables
    outbox = Outbox(db, results)
    outbox.enqueue(destination=Destination("PACS", "PACS", "127.0.0.1", 104),
                   files=[OutboxFile("1.2.3/v1-preview/surfaces.dcm", "1.2.840.10008.5.1.4.1.1.66.5", "9.9")])
    retention = parse_config("").retention
    assert sweep(db, tmp_path / "spool", results, retention).result_dirs_deleted == 1
    assert kept.exists() and not gone.exists()


def test_store_path_refuses_pixel_data_it_cannot_decode_without_touching_disk(tmp_path, db):
    from dicom_node.scp import DicomScp, ScpSettings

    files = write_ct_series(make_phantom((1, 16, 16), (1, 1, 1)).hu, tmp_path / "src", spacing=(1, 1, 1))
    ds = pydicom.dcmread(files[0])
    ds.PixelData = ds.PixelData[:100]
    from pynetdicom.dsutils import encode

    scp = DicomScp(ScpSettings(min_free_bytes=0), SpoolLayout(tmp_path / "spool"), InstanceIndex(db))
    outcome = scp.store(encode(ds, False, True), ExplicitVRLittleEndian, ds.SOPClassUID, ds.SOPInstanceUID)
    assert outcome.status == 0xC230 and "truncated" in outcome.reason
    assert not (tmp_path / "spool").exists() or not list((tmp_path / "spool").rglob("*.dcm"))


def test_routing_reads_body_part_and_description_from_a_stored_instance(tmp_path, db):
    from appliance.routing import Router
    from dicom_node.scp import DicomScp, ScpSettings

    files = write_ct_series(make_phantom((2, 16, 16), (1, 1, 1)).hu, tmp_path / "src", spacing=(1, 1, 1))
    index = InstanceIndex(db)
    scp = DicomScp(ScpSettings(min_free_bytes=0), SpoolLayout(tmp_path / "spool"), index)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.BodyPartExamined, ds.SeriesDescription = "HEAD", "Brain 5mm"
        f_out = tmp_path / f.name
        ds.save_as(f_out, enforce_file_format=True)
        assert scp.store(_dataset_body(f_out), ExplicitVRLittleEndian, ds.SOPClassUID, ds.SOPInstanceUID,
                         calling_ae="CT1", called_ae="ISONODE").status == 0
    config = parse_config("""
destinations: [{name: PACS, ae_title: PACS, host: h, port: 1}, {name: NEURO, ae_title: NEURO, host: h, port: 2}]
routing:
  rules:
    - {name: heads, body_part_examined: HEAD, series_description: "brain*", modes: [full], destinations: [NEURO]}
""")
    router = Router(config, index, tmp_path / "spool")
    sv = index.latest_version(str(pydicom.dcmread(files[0]).SeriesInstanceUID))
    route = router.route(sv)
    assert (route.rule, route.modes, route.destinations) == ("heads", ("full",), ("NEURO",))
    assert router.modes(sv) == ("full",)


def test_a_stored_instance_is_catalogued_for_query_in_the_same_transaction(tmp_path, db):
    _, index, series_uid = _stored_series(tmp_path, db)
    assert index.catalog.counts() == {"studies": 1, "series": 1, "instances": 3}
    (row,) = db.connection.execute("SELECT modality FROM catalog_series WHERE series_uid = ?", (series_uid,))
    assert row["modality"] == "CT"


def test_recovery_catalogues_instances_and_finished_results_an_older_node_left_uncatalogued(tmp_path, db):
    from dicom_node.recovery import recover_catalog

    spool, index, series_uid = _stored_series(tmp_path, db)
    result_dir = tmp_path / "results" / series_uid / "v1-preview"
    result_dir.mkdir(parents=True)
    result = pydicom.dcmread(next(spool.root.rglob("*.dcm")))
    result.SeriesInstanceUID, result.SOPInstanceUID, result.Modality = "1.2.9", "1.2.9.1", "SEG"
    result.save_as(result_dir / "surfaces.dcm")
    (tmp_path / "results" / "unfinished").mkdir()
    result.save_as(tmp_path / "results" / "unfinished" / "x.dcm")  # no finished job names it: not catalogued
    with db.transaction() as conn:  # as a node from before the catalog left it
        conn.execute("DELETE FROM catalog_instances")
    assert recover_catalog(index, spool.root, tmp_path / "results", [f"{series_uid}/v1-preview"]) == 4
    assert index.catalog.counts()["instances"] == 4
    assert index.catalog.known_relpaths("results") == {f"{series_uid}/v1-preview/surfaces.dcm"}
    assert recover_catalog(index, spool.root, tmp_path / "results", [f"{series_uid}/v1-preview"]) == 0


def test_retention_removes_what_it_deletes_from_the_catalog_first(tmp_path, db):
    import os
    import time

    from appliance.retention import sweep
    from dicom_node.catalog import Catalog, CatalogEntry

    spool, index, series_uid = _stored_series(tmp_path, db)
    result_dir = tmp_path / "results" / series_uid / "v1-preview"
    result_dir.mkdir(parents=True)
    result = pydicom.dcmread(next(spool.root.rglob("*.dcm")))
    result.SeriesInstanceUID, result.SOPInstanceUID = "1.2.9", "1.2.9.1"
    result.save_as(result_dir / "surfaces.dcm")
    Catalog(db).record([CatalogEntry.from_file(result_dir / "surfaces.dcm", store="results",
                                               relpath=f"{series_uid}/v1-preview/surfaces.dcm")])
    os.utime(result_dir, (0, 0))
    JobQueue(db)
    with db.transaction() as conn:
        conn.execute("UPDATE series SET state = 'complete'")
    report = sweep(db, spool.root, tmp_path / "results", parse_config("").retention, now=time.time() + 8 * 86400)
    assert (report.series_deleted, report.result_dirs_deleted) == (1, 1)
    assert index.catalog.counts() == {"studies": 0, "series": 0, "instances": 0}


def _scp(tmp_path, db):
    from dicom_node.scp import DicomScp, ScpSettings

    index = InstanceIndex(db)
    return DicomScp(ScpSettings(min_free_bytes=0), SpoolLayout(tmp_path / "spool"), index), index


def _encoded(ds, implicit: bool = False) -> bytes:
    from pynetdicom.dsutils import encode

    return encode(ds, implicit, True)


def test_an_identical_instance_sent_again_is_success_in_any_transfer_syntax(tmp_path, db):
    from pydicom.uid import ImplicitVRLittleEndian

    scp, index = _scp(tmp_path, db)
    ds = pydicom.dcmread(write_ct_series(make_phantom((1, 16, 16), (1, 1, 1)).hu, tmp_path / "src", spacing=(1, 1, 1))[0])
    assert scp.store(_encoded(ds), ExplicitVRLittleEndian, ds.SOPClassUID, ds.SOPInstanceUID).status == 0
    stored = tmp_path / "spool" / index.relpath_of(ds.SOPInstanceUID)
    before = stored.read_bytes()
    assert scp.store(_encoded(ds), ExplicitVRLittleEndian, ds.SOPClassUID, ds.SOPInstanceUID).status == 0
    assert scp.store(_encoded(ds, implicit=True), ImplicitVRLittleEndian, ds.SOPClassUID,
                     ds.SOPInstanceUID).status == 0
    assert stored.read_bytes() == before and len(list((tmp_path / "spool").rglob("*.dcm"))) == 1


@pytest.mark.parametrize("change", ["pixels", "attribute", "series"])
def test_other_content_under_a_stored_uid_is_refused_and_the_stored_object_kept(tmp_path, db, change):
    scp, index = _scp(tmp_path, db)
    ds = pydicom.dcmread(write_ct_series(make_phantom((1, 16, 16), (1, 1, 1)).hu, tmp_path / "src", spacing=(1, 1, 1))[0])
    assert scp.store(_encoded(ds), ExplicitVRLittleEndian, ds.SOPClassUID, ds.SOPInstanceUID).status == 0
    stored = tmp_path / "spool" / index.relpath_of(ds.SOPInstanceUID)
    before = stored.read_bytes()
    other = pydicom.dcmread(tmp_path / "src" / sorted(p.name for p in (tmp_path / "src").iterdir())[0])
    if change == "pixels":
        arr = other.pixel_array.copy()
        arr[0, 0] += 1
        other.PixelData = arr.tobytes()
    elif change == "attribute":
        other.WindowCenter = 999
    else:
        other.SeriesInstanceUID = "1.2.3.999"
    outcome = scp.store(_encoded(other), ExplicitVRLittleEndian, other.SOPClassUID, other.SOPInstanceUID)
    assert outcome.status == 0xC240 and "other" in outcome.reason
    assert stored.read_bytes() == before
    assert len(list((tmp_path / "spool").rglob("*.dcm"))) == 1  # no orphan file
    assert index.counts()["instances"] == 1


def test_concurrent_stores_of_one_uid_keep_exactly_the_acknowledged_object(tmp_path, db):
    import threading

    files = write_ct_series(make_phantom((1, 16, 16), (1, 1, 1)).hu, tmp_path / "src", spacing=(1, 1, 1))
    base = pydicom.dcmread(files[0])
    for trial in range(20):
        uid = f"1.2.826.0.1.3680043.9.7777.{trial}"
        variants = []
        for k in range(4):
            ds = pydicom.dcmread(files[0])
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
            ds.WindowCenter = 40 + (k % 2)  # two distinct contents, each sent twice
            if k >= 2 and trial % 2:
                ds.SeriesInstanceUID = f"1.2.3.4.{k}"  # and, every other trial, other series
            variants.append(_encoded(ds))
        scp, index = _scp(tmp_path, db)
        barrier = threading.Barrier(len(variants))
        outcomes: list = [None] * len(variants)

        def send(i: int, body: bytes, scp=scp, barrier=barrier, outcomes=outcomes, uid=uid) -> None:
            barrier.wait()
            outcomes[i] = scp.store(body, ExplicitVRLittleEndian, base.SOPClassUID, uid)

        threads = [threading.Thread(target=send, args=(i, b)) for i, b in enumerate(variants)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ok = [i for i, o in enumerate(outcomes) if o.status == 0]
        assert ok and all(outcomes[i].status == 0xC240 for i in set(range(4)) - set(ok)), outcomes
        stored = (tmp_path / "spool" / index.relpath_of(uid)).read_bytes()
        assert all(stored.endswith(variants[i]) for i in ok)  # every Success names the object kept
        assert len([p for p in (tmp_path / "spool").rglob(f"{uid}.dcm")]) == 1
        assert not list((tmp_path / "spool").rglob("*.tmp"))


def _old_complete_series(tmp_path, db):
    """Three stored instances in a complete series whose last instance arrived ten days ago."""
    from dicom_node.scp import DicomScp, ScpSettings

    files = write_ct_series(make_phantom((3, 16, 16), (1, 1, 1)).hu, tmp_path / "src", spacing=(1, 1, 1))
    index = InstanceIndex(db)
    JobQueue(db)
    scp = DicomScp(ScpSettings(min_free_bytes=0), SpoolLayout(tmp_path / "spool"), index)
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert scp.store(_dataset_body(f), ExplicitVRLittleEndian, ds.SOPClassUID, ds.SOPInstanceUID).status == 0
    with db.transaction() as conn:
        conn.execute("UPDATE series SET state = 'complete', last_received_at = last_received_at - 10 * 86400")
    return scp, index, files


def _resend(scp, f) -> int:
    ds = pydicom.dcmread(f, stop_before_pixels=True)
    return scp.store(_dataset_body(f), ExplicitVRLittleEndian, ds.SOPClassUID, ds.SOPInstanceUID).status


def test_an_old_instance_sent_again_restarts_its_series_retention_clock(tmp_path, db):
    from appliance.retention import sweep

    scp, index, files = _old_complete_series(tmp_path, db)
    assert _resend(scp, files[0]) == 0
    report = sweep(db, scp.spool.root, tmp_path / "results", parse_config("").retention, guard=scp.spool_guard)
    assert report.series_deleted == 0 and index.counts()["instances"] == 3


def test_an_instance_acknowledged_while_retention_runs_is_never_deleted_after(tmp_path, db, monkeypatch):
    """The instance is re-sent just as retention forgets its series, before the files go (the window is
    widened to 0.3 s): it must end up indexed and on disk, never acknowledged and then deleted."""
    import threading

    from appliance import retention as retention_module

    scp, index, files = _old_complete_series(tmp_path, db)
    forgetting = threading.Event()
    real_forget = InstanceIndex.forget_series_in

    def slow_forget(conn, series_uid):  # noqa: ANN001, ANN202 - InstanceIndex.forget_series_in
        relpaths = real_forget(conn, series_uid)
        forgetting.set()
        time.sleep(0.3)
        return relpaths

    monkeypatch.setattr(retention_module.InstanceIndex, "forget_series_in", staticmethod(slow_forget))
    statuses: list[int] = []
    resend = threading.Thread(target=lambda: (forgetting.wait(5), statuses.append(_resend(scp, files[0]))))
    resend.start()
    sweep_report = retention_module.sweep(db, scp.spool.root, tmp_path / "results", parse_config("").retention,
                                          guard=scp.spool_guard)
    resend.join()
    assert sweep_report.series_deleted == 1 and statuses == [0]
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID)
    relpath = index.relpath_of(uid)
    assert relpath is not None and (scp.spool.root / relpath).exists()


def _series_with_history(tmp_path, db, name: str, age_days: float, history: str) -> str:
    """A complete series of three instances received `age_days` ago, whose job is `history`: done and
    delivered, done with its delivery pending, failed, or none (stored only)."""
    from appliance.outbox import Destination, Outbox, OutboxFile
    from dicom_node.scp import DicomScp, ScpSettings

    files = write_ct_series(make_phantom((3, 16, 16), (1, 1, 1)).hu, tmp_path / name, spacing=(1, 1, 1))
    index, jobs, outbox = InstanceIndex(db), JobQueue(db), Outbox(db, tmp_path / "results")
    scp = DicomScp(ScpSettings(min_free_bytes=0), SpoolLayout(tmp_path / "spool"), index)
    for f in files:
        assert _resend(scp, f) == 0
    series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    with db.transaction() as conn:
        conn.execute("UPDATE series SET state = 'complete', last_received_at = ? WHERE series_uid = ?",
                     (time.time() - age_days * 86400, series_uid))
    if history != "none":
        job_id = jobs.enqueue(kind="process_series", series_uid=series_uid, series_version=1, mode="preview")
        job = jobs.claim("w", lease_s=60)
        if history == "failed":
            jobs.fail(job.id, "w", "boom", retryable=False)
        else:
            jobs.complete(job.id, "w", {})
            outbox.enqueue(destination=Destination("PACS", "PACS", "127.0.0.1", 104), job_id=job_id,
                           files=[OutboxFile(f"{series_uid}/v1-preview/surfaces.dcm", "1.2.840.10008.5.1.4.1.1.66.5",
                                             f"9.{job_id}")])
            if history == "delivered":
                with db.transaction() as conn:
                    conn.execute("UPDATE outbox SET state = 'done' WHERE job_id = ?", (job_id,))
    return series_uid


def test_under_disk_pressure_the_oldest_delivered_series_go_first_and_undelivered_work_never(tmp_path, db):
    from appliance.retention import sweep

    uids = {history: _series_with_history(tmp_path, db, history, age_days, history)
            for history, age_days in (("delivered", 4), ("pending", 3), ("failed", 2), ("none", 1))}
    spool = tmp_path / "spool"

    def free_space() -> int:  # every stored instance takes 100 bytes of a 10,000-byte disk
        return 10_000 - 100 * len(list(spool.rglob("*.dcm")))

    report = sweep(db, spool, tmp_path / "results", parse_config("").retention, evict_below_bytes=9_400,
                   free_space=free_space)
    left = {r["series_uid"] for r in db.connection.execute("SELECT DISTINCT series_uid FROM instances")}
    assert left == {uids["pending"], uids["failed"]}  # oldest first: delivered, then stored-only
    assert report.series_evicted == 2 and free_space() == 9_400
    report = sweep(db, spool, tmp_path / "results", parse_config("").retention, evict_below_bytes=10_000,
                   free_space=free_space)
    assert report.series_evicted == 0  # what is left is undelivered or failed: kept even now


def test_old_finished_jobs_and_acknowledged_deliveries_are_pruned_with_their_series(tmp_path, db):
    from appliance.retention import sweep

    uid = _series_with_history(tmp_path, db, "old", 10, "delivered")
    later = time.time() + 40 * 86400
    report = sweep(db, tmp_path / "spool", tmp_path / "results", parse_config("").retention, now=later)
    assert report.series_deleted == 1 and report.records_pruned == 2
    assert not db.connection.execute("SELECT 1 FROM jobs WHERE series_uid = ?", (uid,)).fetchone()
    assert not db.connection.execute("SELECT 1 FROM outbox").fetchone()


def test_a_data_set_with_an_element_that_cannot_be_read_is_refused_not_acknowledged(tmp_path, db):
    """Found by the malformed-input campaign: a private creator's VR changed from LO to SL leaves a 6-byte
    SL, which no reader can read; it used to be acknowledged and stored."""
    scp, index = _scp(tmp_path, db)
    ds = pydicom.dcmread(write_ct_series(make_phantom((1, 16, 16), (1, 1, 1)).hu, tmp_path / "src",
                                         spacing=(1, 1, 1))[0])
    ds.add_new(0x00091010, "LO", "ACME 1")  # a private creator, 6 bytes
    body = _encoded(ds).replace(b"\x09\x00\x10\x10LO", b"\x09\x00\x10\x10SL")
    outcome = scp.store(body, ExplicitVRLittleEndian, ds.SOPClassUID, ds.SOPInstanceUID)
    assert outcome.status == 0xC210 and "(0009,1010) (SL): 6 bytes" in outcome.reason
    unknown_vr = _encoded(ds).replace(b"\x09\x00\x10\x10LO", b"\x09\x00\x10\x10XX")
    outcome = scp.store(unknown_vr, ExplicitVRLittleEndian, ds.SOPClassUID, ds.SOPInstanceUID)
    assert outcome.status == 0xC210 and "unknown VR" in outcome.reason
    item = pydicom.Dataset()
    item.CodeMeaning = "Ribs"
    ds.add_new(0x00081032, "SQ", [item])  # Procedure Code Sequence: the bad VR inside an item
    in_item = _encoded(ds).replace(b"\x08\x00\x04\x01LO", b"\x08\x00\x04\x01\x4c\xf0")
    outcome = scp.store(in_item, ExplicitVRLittleEndian, ds.SOPClassUID, ds.SOPInstanceUID)
    assert outcome.status == 0xC210 and "(0008,0104)" in outcome.reason
    assert index.counts()["instances"] == 0
