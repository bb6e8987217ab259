"""The bedside service's parts alone: token and sessions, login throttling, per-stage progress, the display
files (RAS geometry, MZ3 layout) and the config that turns the page on."""

from __future__ import annotations

import gzip
import os
import stat
import time

import nibabel as nib
import numpy as np
import pytest

from appliance.config import AppConfig, ConfigError, WebConfig, parse_config, with_overrides
from appliance.display import display_ct_bytes, display_files, display_mesh_bytes, display_strides
from appliance.jobs import JobQueue, LeaseLostError
from appliance.node import make_outbox
from appliance.web.auth import LoginThrottle, Sessions, resolve_token
from appliance.web.views import list_jobs
from appliance.worker import StageClock
from dicom_node.database import Database
from dicom_node.index import InstanceIndex
from dicom_node.volume import Volume
from kernels.mesh import Mesh
from kernels.mesh_io import mz3_bytes


def test_the_environment_token_wins_over_the_file(tmp_path):
    (tmp_path / "tok").write_text("from-the-file-123\n")
    web = WebConfig(token_file=tmp_path / "tok")
    assert resolve_token(web, tmp_path, {"ISONODE_WEB_TOKEN": "from-the-env-456"}) == ("from-the-env-456",
                                                                                          "ISONODE_WEB_TOKEN")
    assert resolve_token(web, tmp_path, {})[0] == "from-the-file-123"


def test_a_first_start_makes_an_owner_only_token_file_and_keeps_it(tmp_path):
    token, source = resolve_token(WebConfig(), tmp_path, {})
    path = tmp_path / "web-token"
    assert source == str(path) and len(token) >= 24
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert resolve_token(WebConfig(), tmp_path, {})[0] == token


@pytest.mark.parametrize("env, file_text, needle", [
    ({"ISONODE_WEB_TOKEN": "short"}, None, "ISONODE_WEB_TOKEN"),
    ({}, "tiny", "web.token_file"),
])
def test_a_short_or_missing_token_stops_the_start_naming_its_source(tmp_path, env, file_text, needle):
    path = tmp_path / "tok"
    if file_text is not None:
        path.write_text(file_text)
    with pytest.raises(ConfigError, match=needle):
        resolve_token(WebConfig(token_file=path), tmp_path, env)


def test_a_configured_token_file_that_is_missing_is_an_error_not_a_new_token(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_token(WebConfig(token_file=tmp_path / "absent"), tmp_path, {})
    assert not (tmp_path / "absent").exists()


def test_sessions_expire_and_cannot_be_forged_or_carried_to_another_token():
    sessions = Sessions("token-one-abc", lifetime_s=60)
    cookie = sessions.issue(now=1000.0)
    assert sessions.valid(cookie, now=1059.0) and not sessions.valid(cookie, now=1061.0)
    expiry, sig = cookie.split(".")
    assert not sessions.valid(f"{int(expiry) + 3600}.{sig}", now=1000.0)  # a longer life is a new signature
    assert not sessions.valid("garbage", now=1000.0) and not sessions.valid(None)
    assert not Sessions("token-two-abc", 60).valid(cookie, now=1000.0)  # a new token ends old sessions
    assert sessions.token_matches(" token-one-abc ") and not sessions.token_matches("token-one-ab")


def test_login_throttle_blocks_an_address_after_five_failures_for_a_minute():
    throttle = LoginThrottle(max_failures=5, window_s=60)
    for i in range(5):
        assert not throttle.blocked("10.0.0.7", now=100.0 + i)
        throttle.failed("10.0.0.7", now=100.0 + i)
    assert throttle.blocked("10.0.0.7", now=110.0) and not throttle.blocked("10.0.0.8", now=110.0)
    assert not throttle.blocked("10.0.0.7", now=165.0)


def test_web_config_needs_certificate_and_key_together_and_flags_override_it(tmp_path):
    with pytest.raises(ConfigError, match="web"):
        parse_config("web: {certificate: /x.pem}")
    with pytest.raises(ConfigError, match="web.bind_address"):
        parse_config("web: {bind_address: everywhere}")
    config = parse_config("web: {port: 9000}")
    assert with_overrides(config, web_port=9443).web.port == 9443
    off = with_overrides(config, web_port=0).web
    assert not off.enabled and off.port == 9000


def test_stage_clock_times_each_stage_and_reports_every_change():
    reports = []
    clock = StageClock(lambda stages: reports.append([dict(s) for s in stages]))
    clock.start("read")
    clock.start("segment")
    clock.finish()
    assert [[s["name"] for s in r] for r in reports] == [["read"], ["read", "segment"], ["read", "segment"]]
    assert reports[0][0]["seconds"] is None and reports[1][0]["seconds"] >= 0
    assert all(s["seconds"] is not None for s in reports[-1])


def test_stage_clock_keeps_the_job_going_when_progress_cannot_be_recorded():
    def failing(stages):
        raise OSError("disk full")

    clock = StageClock(failing)
    clock.start("read")
    clock.finish()
    assert clock.stages[0]["seconds"] is not None


def _views(tmp_path):
    db = Database(tmp_path / "db.sqlite")
    queue = JobQueue(db)
    make_outbox(db, AppConfig())  # the views read the outbox and index tables too
    InstanceIndex(db)
    return db, queue


def test_job_stages_show_running_failed_and_a_fresh_retry_as_pending(tmp_path):
    db, queue = _views(tmp_path)
    job_id = queue.enqueue(kind="process_series", series_uid="1.2.3", series_version=1, mode="preview")
    job = queue.claim("w1", lease_s=60)
    queue.report_stages(job.id, "w1", [{"name": "read", "started_at": time.time(), "seconds": 0.5},
                                       {"name": "segment", "started_at": time.time(), "seconds": None}])
    view = list_jobs(db.connection, tmp_path, job_id=job_id)[0]
    assert [s["state"] for s in view["stages"]] == ["done", "running", "pending", "pending", "pending"]
    queue.fail(job.id, "w1", "boom", retryable=False)
    view = list_jobs(db.connection, tmp_path, job_id=job_id)[0]
    assert [s["state"] for s in view["stages"]][:2] == ["done", "failed"] and view["error"] == "boom"
    queue.retry(job_id)
    view = list_jobs(db.connection, tmp_path, job_id=job_id)[0]
    assert {s["state"] for s in view["stages"]} == {"pending"}


def test_progress_from_a_worker_that_lost_its_lease_is_refused(tmp_path):
    _, queue = _views(tmp_path)
    queue.enqueue(kind="process_series", series_uid="1.2.3", series_version=1, mode="preview")
    job = queue.claim("w1", lease_s=60)
    with pytest.raises(LeaseLostError):
        queue.report_stages(job.id, "someone-else", [])


def _volume(shape=(40, 300, 520), spacing=(0.7, 0.7, 2.5)) -> Volume:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-180.0, -170.0, -400.0)
    arr = np.full(shape, -1000, np.int16)
    arr[:, 100:200, 300:400] = 40  # a block at known voxels
    return Volume(arr, affine, "1.2", "1.2.3", "1.2.4", [])


def test_display_ct_is_int16_within_256_in_plane_and_keeps_positions_in_ras(tmp_path):
    vol = _volume()
    assert display_strides(vol.array.shape) == (3, 3, 1)
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(display_ct_bytes(vol))
    img = nib.load(path)
    assert img.shape == (174, 100, 40) and img.get_data_dtype() == np.int16
    data = np.asarray(img.dataobj)
    i, j, k = np.argwhere(data == 40)[0]
    x, y, z = nib.affines.apply_affine(img.affine, (i, j, k))
    lps = vol.affine @ [300, 100, 0, 1]  # the block's first voxel in the source, LPS
    assert np.allclose((x, y, z), (-lps[0], -lps[1], lps[2]), atol=2.2)


def test_the_preview_display_ct_keeps_slices_at_least_2_mm_apart_and_the_full_one_all_of_them():
    thin = _volume(shape=(60, 64, 64), spacing=(0.7, 0.7, 1.0))
    preview = nib.Nifti1Image.from_bytes(gzip.decompress(display_files(thin, [], {}, "preview")[0].data))
    full = nib.Nifti1Image.from_bytes(gzip.decompress(display_files(thin, [], {}, "full")[0].data))
    assert preview.shape[2] == 30 and full.shape[2] == 60
    assert np.isclose(preview.header.get_zooms()[2], 2.0) and np.isclose(full.header.get_zooms()[2], 1.0)


def test_mz3_holds_indexed_triangles_and_transformed_vertices():
    mesh = Mesh(np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], np.float32), np.array([[0, 1, 2]], np.uint32))
    raw = mz3_bytes(mesh, np.diag([-1.0, -1.0, 1.0, 1.0]))
    assert np.frombuffer(raw[:4], "<u2").tolist() == [23117, 3]
    assert np.frombuffer(raw[4:16], "<u4").tolist() == [1, 3, 0]
    assert np.frombuffer(raw[16:28], "<i4").tolist() == [0, 1, 2]
    assert np.frombuffer(raw[28:], "<f4").reshape(3, 3)[0].tolist() == [-1, -2, 3]
    assert gzip.decompress(display_mesh_bytes(mesh)) == raw


def test_the_display_ct_is_a_valid_gzip_even_for_a_float_volume():
    vol = _volume(shape=(4, 16, 16))
    vol.array = vol.array.astype(np.float32) + 0.4
    img = nib.Nifti1Image.from_bytes(gzip.decompress(display_ct_bytes(vol)))
    assert img.get_data_dtype() == np.int16
