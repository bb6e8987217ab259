"""The bedside page in a real browser (Debian's chromium, headless, Playwright): a series sent with
storescu appears and progresses live, the preview's meshes are drawn over the CT in the segments' colours,
a toggle changes the picture, the full result replaces the preview without a reload, feedback is stored,
and a visit without the token sees only the login form."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from conftest import NodeProcess, free_port, require_tool, shared_case, storescu, write_node_config

from bench.bedside_browser import canvas_rgb, chromium, colour_fraction, log_in, new_page, wait_for_3d_view

TOKEN = "browser-token-7f3a2b"


@pytest.fixture(scope="module")
def bedside(tmp_path_factory) -> Iterator[dict]:
    """A node (preview then full, the product's default routing), and a logged-in page before any series."""
    require_tool("chromium")
    tmp = tmp_path_factory.mktemp("browser")
    web_port = free_port()
    cfg = write_node_config(tmp / "node.yaml", web_port=web_port, routing="")
    node = NodeProcess(data_dir=tmp / "data", port=free_port(), config_path=cfg, log_path=tmp / "node.log",
                       extra_env={"ISONODE_WEB_TOKEN": TOKEN}).start()
    base = f"http://127.0.0.1:{web_port}"
    try:
        with chromium() as browser:
            page = new_page(browser)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            log_in(page, base, TOKEN)
            yield {"node": node, "base": base, "page": page, "errors": errors, "tmp": tmp, "browser": browser}
    finally:
        node.stop()


@pytest.fixture(scope="module")
def sent(bedside) -> dict:
    """storescu sends a real CT series while the page is open; the page is watched as it arrives."""
    page = bedside["page"]
    assert page.locator("#series-empty").is_visible()
    storescu(bedside["node"].port, shared_case("crlm_ct_1004_ge_abdomen") / "ct_dicom", extra=("+sd",))
    item = page.wait_for_selector("#series-list [data-series-id]", timeout=30_000)
    states = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # sample the job states the page shows while the preview runs
        states |= set(page.eval_on_selector_all("[data-job-id]", "els => els.map(e => e.dataset.state)"))
        if page.query_selector("#viewer[data-loaded-job]"):
            break
        time.sleep(0.05)
    return {"series_id": int(item.get_attribute("data-series-id")), "states": states}


def _segments(bedside, job_id: int) -> list[dict]:
    job = httpx.get(f"{bedside['base']}/api/jobs/{job_id}", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    return job["result"]["segments"]


def test_a_sent_series_appears_without_a_reload_and_its_jobs_progress(bedside, sent):
    page = bedside["page"]
    assert page.locator("#series-empty").is_hidden()
    text = page.inner_text(f"[data-series-id='{sent['series_id']}']")
    assert "41" in text  # the instance count
    assert sent["states"] & {"queued", "running", "done"}
    assert page.locator("#job-progress").is_visible()


def test_the_preview_is_drawn_over_the_ct_in_the_segments_colours(bedside, sent):
    page = bedside["page"]
    job_id, mode = wait_for_3d_view(page, timeout_s=60)
    assert page.get_attribute("#result-banner", "data-mode") in ("preview", "full")
    if mode == "preview":
        assert "not for diagnosis" in page.inner_text("#result-banner").lower()
    page.wait_for_timeout(500)  # one more frame after the meshes load
    rgb = canvas_rgb(page)
    page.screenshot(path=str(bedside["tmp"] / "bedside.png"))
    seen = {s["name"]: colour_fraction(rgb, s["color"]) for s in _segments(bedside, job_id)}
    assert seen["body"] > 0.01, seen
    grey = np.abs(rgb.astype(int) - rgb.mean(2, keepdims=True)).max(2) < 6
    assert grey.mean() > 0.05  # the CT slices are there too, in grey
    assert not bedside["errors"]


def test_turning_a_segment_off_changes_the_picture_and_back_on_restores_it(bedside, sent):
    page = bedside["page"]
    job_id, _ = wait_for_3d_view(page, timeout_s=60)
    body = next(s for s in _segments(bedside, job_id) if s["name"] == "body")
    before = colour_fraction(canvas_rgb(page), body["color"])
    page.uncheck("[data-segment=body] input.segment-visible")
    page.wait_for_timeout(400)
    hidden = canvas_rgb(page)
    assert colour_fraction(hidden, body["color"]) < before / 4
    page.check("[data-segment=body] input.segment-visible")
    page.wait_for_timeout(400)
    assert colour_fraction(canvas_rgb(page), body["color"]) > before / 2


def test_the_full_result_replaces_the_preview_without_a_reload(bedside, sent):
    page = bedside["page"]
    page.evaluate("window.__noReload = true")
    job_id, mode = wait_for_3d_view(page, mode="full", timeout_s=180)
    assert page.get_attribute("#result-banner", "data-mode") == "full"
    assert page.evaluate("window.__noReload") is True
    assert colour_fraction(canvas_rgb(page), next(s["color"] for s in _segments(bedside, job_id)
                                                  if s["name"] == "body")) > 0.01


def test_a_flagged_segment_is_stored_with_the_result(bedside, sent):
    page = bedside["page"]
    job_id, _ = wait_for_3d_view(page, timeout_s=180)
    page.select_option("#feedback-flag select[name=segment]", "lung_left")
    page.fill("#feedback-flag input[name=reason]", "misses the base")
    page.click("#feedback-flag button[type=submit]")
    page.wait_for_selector("#feedback-list li")
    listed = httpx.get(f"{bedside['base']}/api/jobs/{job_id}/feedback",
                       headers={"Authorization": f"Bearer {TOKEN}"}).json()["feedback"]
    assert [(f["verdict"], f["segment"], f["reason"]) for f in listed] == [("flag", "lung_left", "misses the base")]


def test_a_visit_without_the_token_sees_only_the_login_form(bedside, sent):
    stranger = new_page(bedside["browser"])
    response = stranger.goto(f"{bedside['base']}/")
    assert response.status == 401
    assert stranger.locator("input[name=token]").is_visible()
    assert stranger.locator("#series-list").count() == 0
    assert "CRLM" not in stranger.content()
    api = stranger.evaluate("fetch('/api/series').then(r => r.status)")
    assert api == 401
    stranger.fill("input[name=token]", "not-the-token")
    stranger.click("button[type=submit]")
    assert "wrong token" in stranger.inner_text("#login-error").lower()
    assert stranger.locator("#series-list").count() == 0


def test_a_tablet_sized_screen_shows_the_list_and_the_3d_view(bedside, sent):
    tablet = new_page(bedside["browser"], viewport=(768, 1024))
    log_in(tablet, bedside["base"], TOKEN)
    wait_for_3d_view(tablet, timeout_s=60)
    tablet.screenshot(path=str(bedside["tmp"] / "tablet.png"))
    box = tablet.locator("#viewer canvas").bounding_box()
    assert box["width"] >= 600 and box["height"] >= 300
    assert tablet.locator("#series-list [data-series-id]").count() == 1


def test_nothing_about_the_patient_reaches_the_node_log(bedside, sent):
    log = bedside["node"].log_text()
    assert "CRLM-CT-1004" not in log and TOKEN not in log
