"""The bedside API against a real node: a series sent with storescu, its preview job seen through every
endpoint, the access rules (open health, 401 elsewhere, login cookie, throttled guessing) and bad input."""

from __future__ import annotations

import gzip
import json
import ssl
import subprocess
import time
from collections.abc import Iterator

import httpx
import nibabel as nib
import numpy as np
import pytest
from conftest import NodeProcess, free_port, shared_case, storescu, write_node_config

TOKEN = "test-token-4d1e0c9a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def web_node(tmp_path_factory) -> Iterator[tuple[NodeProcess, str]]:
    tmp = tmp_path_factory.mktemp("web")
    web_port = free_port()
    cfg = write_node_config(tmp / "node.yaml", web_port=web_port)
    node = NodeProcess(data_dir=tmp / "data", port=free_port(), config_path=cfg, log_path=tmp / "node.log",
                       extra_env={"ISONODE_WEB_TOKEN": TOKEN}).start()
    try:
        _wait_for_web(f"http://127.0.0.1:{web_port}")
        yield node, f"http://127.0.0.1:{web_port}"
    finally:
        node.stop()


@pytest.fixture(scope="module")
def done_job(web_node) -> dict:
    """The preview job of a real CT series (41 slices), once it is done."""
    node, base = web_node
    storescu(node.port, shared_case("crlm_ct_1004_ge_abdomen") / "ct_dicom", extra=("+sd",))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        jobs = httpx.get(f"{base}/api/jobs", headers=AUTH).json()["jobs"]
        if jobs and jobs[0]["state"] in ("done", "failed"):
            assert jobs[0]["state"] == "done", jobs[0]["error"]
            return jobs[0]
        time.sleep(0.3)
    raise TimeoutError(node.log_text()[-3000:])


def test_health_answers_without_login_and_says_nothing_about_patients(web_node, done_job):
    _, base = web_node
    r = httpx.get(f"{base}/api/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["checks"] == {"database": "ok", "disk": "ok", "workers": "ok"}
    assert "CRLM" not in r.text


@pytest.mark.parametrize("path", ["/", "/api/jobs", "/api/series", "/api/system", "/api/events", "/api/jobs/1",
                                  "/api/jobs/1/ct.nii.gz", "/api/jobs/1/meshes/1.mz3", "/api/openapi.json",
                                  "/static/app.js", "/docs", "/openapi.json"])
def test_every_other_route_refuses_a_visit_without_the_token(web_node, path):
    _, base = web_node
    r = httpx.get(f"{base}{path}")
    assert r.status_code in (401, 404)  # FastAPI's own docs routes do not exist at all
    if path in ("/docs", "/openapi.json"):
        assert r.status_code == 404
    else:
        assert r.status_code == 401
    assert httpx.get(f"{base}{path}", headers={"Authorization": "Bearer wrong-token"}).status_code in (401, 404)


def test_the_page_asks_for_the_token_and_a_login_sets_a_session_cookie(web_node):
    _, base = web_node
    anonymous = httpx.get(f"{base}/")
    assert anonymous.status_code == 401 and 'name="token"' in anonymous.text
    with httpx.Client(base_url=base) as browser:
        r = browser.post("/login", data={"token": TOKEN}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert browser.get("/api/jobs").status_code == 200
        assert browser.get("/").status_code in (200, 503)  # 503: the page is not built (make web)
        browser.post("/logout")
        assert browser.get("/api/jobs").status_code == 401


def test_repeated_wrong_tokens_are_throttled(web_node):
    _, base = web_node
    codes = [httpx.post(f"{base}/login", data={"token": f"guess-{i}"}).status_code for i in range(7)]
    assert codes[:5] == [401] * 5 and codes[-1] == 429
    assert TOKEN not in web_node[0].log_text()  # neither the token nor the guesses are logged
    assert "guess-" not in web_node[0].log_text()


def test_jobs_list_the_preview_with_every_stage_timed_and_its_segments(done_job):
    assert done_job["mode"] == "preview" and done_job["attempts"] == 1
    assert [s["name"] for s in done_job["stages"]] == ["read", "segment", "mesh", "encode", "write"]
    assert all(s["state"] == "done" and s["seconds"] >= 0 and s["started_at"] for s in done_job["stages"])
    result = done_job["result"]
    assert result["model"]["name"] and result["model"]["version"]
    names = {s["name"] for s in result["segments"]}
    assert {"body", "lung_left", "lung_right"} <= names
    for s in result["segments"]:
        assert len(s["color"]) == 3 and s["triangles"] > 0 and s["volume_ml"] > 0 and not s["experimental"]
    assert {"surfaces.dcm", "seg.dcm"} <= {f["name"] for f in result["files"]}


def test_series_carry_their_study_for_the_logged_in_page_only(web_node, done_job):
    _, base = web_node
    series = httpx.get(f"{base}/api/series", headers=AUTH).json()["series"]
    assert len(series) == 1
    s = series[0]
    assert s["modality"] == "CT" and s["instances"] == 41 and s["state"] == "complete"
    assert s["study"]["patient_name"] and s["study"]["study_description"]
    assert [j["id"] for j in s["jobs"]] == [done_job["id"]]
    assert httpx.get(f"{base}/api/series/{s['id']}", headers=AUTH).json()["id"] == s["id"]
    assert httpx.get(f"{base}/api/series/99999", headers=AUTH).status_code == 404


def test_studies_group_the_series_and_unknown_ids_are_404(web_node, done_job):
    _, base = web_node
    studies = httpx.get(f"{base}/api/studies", headers=AUTH).json()["studies"]
    assert len(studies) == 1 and studies[0]["series_ids"] == [done_job["series_id"]]
    assert studies[0]["study"]["study_description"]
    assert httpx.get(f"{base}/api/studies/{studies[0]['id']}", headers=AUTH).json() == studies[0]
    assert httpx.get(f"{base}/api/studies/424242", headers=AUTH).status_code == 404


def test_display_ct_is_a_downsampled_nifti_in_ras_that_the_meshes_sit_in(web_node, done_job, tmp_path):
    _, base = web_node
    ct = httpx.get(f"{base}{done_job['result']['ct_url']}", headers=AUTH)
    assert ct.status_code == 200 and ct.content[:2] == b"\x1f\x8b"
    (tmp_path / "ct.nii.gz").write_bytes(ct.content)
    img = nib.load(tmp_path / "ct.nii.gz")
    assert img.get_data_dtype() == np.int16 and max(img.shape[:2]) <= 256
    assert nib.aff2axcodes(img.affine)[2] in ("S", "I")
    lung = next(s for s in done_job["result"]["segments"] if s["name"] == "lung_left")
    raw = gzip.decompress(httpx.get(f"{base}{lung['mesh_url']}", headers=AUTH).content)
    magic, attr, nface, nvert, nskip = np.frombuffer(raw[:16], "<u2", 2).tolist() + np.frombuffer(
        raw[4:16], "<u4").tolist()
    assert (magic, attr, nskip) == (23117, 3, 0) and nface == lung["triangles"]
    verts = np.frombuffer(raw[16 + 12 * nface:], "<f4").reshape(nvert, 3)
    # RAS: +x is the patient's right, so the left lung lies at negative x (in LPS it would be positive);
    # and the mesh lies inside the CT's field of view
    assert verts[:, 0].mean() < 0
    corners = nib.affines.apply_affine(img.affine, np.array(np.meshgrid(*[[0, n - 1] for n in img.shape]))
                                       .reshape(3, -1).T)
    assert (verts.min(0) >= corners.min(0) - 5).all() and (verts.max(0) <= corners.max(0) + 5).all()


def test_result_files_download_and_bad_names_are_refused(web_node, done_job):
    _, base = web_node
    job = done_job["id"]
    surf = httpx.get(f"{base}/api/jobs/{job}/files/surfaces.dcm", headers=AUTH)
    assert surf.status_code == 200 and surf.content[128:132] == b"DICM"
    for bad in ("display_ct.nii.gz", "..%2Fv1-preview", ".hidden", "nothing.dcm"):
        assert httpx.get(f"{base}/api/jobs/{job}/files/{bad}", headers=AUTH).status_code == 404
    assert httpx.get(f"{base}/api/jobs/{job}/meshes/99.mz3", headers=AUTH).status_code == 404
    assert httpx.get(f"{base}/api/jobs/99999/ct.nii.gz", headers=AUTH).status_code == 404
    assert httpx.get(f"{base}/api/jobs/abc", headers=AUTH).status_code == 422
    assert httpx.get(f"{base}/api/jobs?limit=0", headers=AUTH).status_code == 422


def test_feedback_is_stored_with_the_model_and_bad_feedback_is_refused(web_node, done_job):
    node, base = web_node
    url = f"{base}/api/jobs/{done_job['id']}/feedback"
    flag = httpx.post(url, headers=AUTH, json={"verdict": "flag", "segment": "lung_left", "reason": "misses base"})
    assert flag.status_code == 201
    assert flag.json()["model"] == done_job["result"]["model"]
    assert httpx.post(url, headers=AUTH, json={"verdict": "accept"}).status_code == 201
    for bad in ({"verdict": "maybe"}, {"verdict": "flag"}, {"verdict": "flag", "segment": "spleen"},
                {"verdict": "accept", "reason": "x" * 501}, {}):
        r = httpx.post(url, headers=AUTH, json=bad)
        assert r.status_code == 422, bad
        assert r.json()["detail"]
    assert httpx.post(f"{base}/api/jobs/99999/feedback", headers=AUTH, json={"verdict": "accept"}).status_code == 404
    listed = httpx.get(url, headers=AUTH).json()["feedback"]
    assert [(f["verdict"], f["segment"]) for f in listed] == [("flag", "lung_left"), ("accept", None)]
    out = node.run_cli("feedback", "list", "--json")
    assert [f["verdict"] for f in json.loads(out)] == ["flag", "accept"]


def test_feedback_export_is_the_review_list_the_model_toolchain_reads(web_node, done_job, tmp_path):
    from compiler.feedback import load_review_list

    node, base = web_node
    httpx.post(f"{base}/api/jobs/{done_job['id']}/feedback", headers=AUTH,
               json={"verdict": "flag", "segment": "bone", "reason": "ribs missing"})
    node.run_cli("feedback", "export", "--out", str(tmp_path / "fb.json"))
    cases = load_review_list(tmp_path / "fb.json")
    assert len(cases) == 1 and cases[0].series_version == 1
    assert "bone" in cases[0].segments and any("ribs missing" in r for r in cases[0].reasons)


def test_events_stream_the_series_list_at_once(web_node, done_job):
    _, base = web_node
    with httpx.stream("GET", f"{base}/api/events", headers=AUTH, timeout=10) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = []
        for line in r.iter_lines():
            lines.append(line)
            if line.startswith("data: "):
                break
    assert "event: series" in lines
    payload = json.loads(lines[-1][len("data: "):])
    assert payload["series"][0]["jobs"][0]["id"] == done_job["id"]


def test_system_names_the_backends_model_disk_and_queue(web_node, done_job):
    _, base = web_node
    body = httpx.get(f"{base}/api/system", headers=AUTH).json()
    assert body["node"]["ae_title"] == "ISONODE"
    assert body["backends"]["inference"] and body["backends"]["marching_cubes"] in ("cpu", "cuda")
    assert body["model"]["name"] == done_job["result"]["model"]["name"]
    assert body["disk"]["free_bytes"] > 0 and body["jobs"]["done"] >= 1


def test_the_openapi_document_lists_every_api_route(web_node):
    _, base = web_node
    paths = set(httpx.get(f"{base}/api/openapi.json", headers=AUTH).json()["paths"])
    assert {"/api/health", "/api/studies", "/api/series", "/api/jobs", "/api/jobs/{job_id}", "/api/events", "/api/system",
            "/api/jobs/{job_id}/feedback", "/api/jobs/{job_id}/ct.nii.gz"} <= paths


def test_no_patient_name_reaches_the_log(web_node, done_job):
    node, _ = web_node
    assert "CRLM-CT-1004" not in node.log_text()
    assert any(e["event"] == "web.started" for e in node.log_events("web.started"))


def test_a_node_whose_web_port_is_taken_still_serves_dicom_and_says_why(node_factory):
    import socket

    from conftest import echoscu

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen(1)
        node = node_factory(web_port=taken.getsockname()[1])
        node.extra_env["ISONODE_WEB_TOKEN"] = TOKEN
        node.start()
        deadline = time.monotonic() + 20
        while not node.log_events("web.not_started") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert echoscu(node.port).returncode == 0
        [event] = node.log_events("web.not_started")
        assert event["level"] == "error" and event["reason"]


def _wait_for_web(base: str, timeout: float = 30.0, **kwargs) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(f"{base}/api/health", **kwargs)
            return
        except httpx.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _web_section(port: int, cert, key) -> str:
    """A whole `web:` section (the last mapping of a key wins in the test config)."""
    return f"web:\n  port: {port}\n  certificate: {cert}\n  private_key: {key}\n"


def _self_signed(tmp_path) -> tuple:
    cert, key = tmp_path / "web.crt", tmp_path / "web.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_with_a_certificate_the_page_is_served_over_https_only_with_secure_cookies(node_factory, tmp_path):
    cert, key = _self_signed(tmp_path)
    web_port = free_port()
    node = node_factory(web_port=web_port, extra=_web_section(web_port, cert, key))
    node.extra_env["ISONODE_WEB_TOKEN"] = TOKEN
    node.start()
    base = f"https://127.0.0.1:{web_port}"
    trust = ssl.create_default_context(cafile=str(cert))
    _wait_for_web(base, verify=trust)
    health = httpx.get(f"{base}/api/health", verify=trust)
    assert health.status_code == 200
    assert health.headers["strict-transport-security"].startswith("max-age=")
    login = httpx.post(f"{base}/login", data={"token": TOKEN}, verify=trust)
    assert "secure" in login.headers["set-cookie"].lower()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{web_port}/api/health", timeout=3)


def test_an_unreadable_certificate_stops_the_start_naming_the_file(node_factory, tmp_path):
    port = free_port()
    node = node_factory(web_port=port, extra=_web_section(port, tmp_path / "absent.crt", tmp_path / "absent.key"))
    node.extra_env["ISONODE_WEB_TOKEN"] = TOKEN
    node.start()  # DICOM listens first; the web service's start then fails and so does the node's
    assert node.proc.wait(timeout=60) == 1
    assert "absent.crt" in node.log_text() and "cannot load" in node.log_text()
