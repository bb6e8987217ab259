"""Time to the first 3D view at the bedside: DCMTK storescu sends the 275-slice 1 mm chest
(../shared/data/lidc_idri_0314_chest_1mm, JPEG-LS) to `isonode serve` while the bedside page is open in
Debian's chromium (headless, software WebGL); printed: the seconds from the last slice acknowledged to the
preview's meshes drawn on the page, and to the full result drawn, beside the node's own job times (so the
page's share, download and drawing, is visible).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.bedside_browser import chromium, log_in, new_page, wait_for_3d_view
from bench.peers import ENV, free_port, wait_for_echo

REPO = Path(__file__).resolve().parent.parent
CASE = (REPO / ".." / "shared" / "data" / "lidc_idri_0314_chest_1mm" / "ct_dicom").resolve()
TOKEN = "bench-bedside-token"
NODE_ENV = {**ENV, "ISONODE_WEB_TOKEN": TOKEN, "MALLOC_MMAP_THRESHOLD_": "4294967296",
            "MALLOC_TRIM_THRESHOLD_": "4294967296"}


def _job_done_at(base: str, mode: str) -> tuple[float, float]:
    """(when the job completed, its pipeline seconds), from the API."""
    jobs = httpx.get(f"{base}/api/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).json()["jobs"]
    job = next(j for j in jobs if j["mode"] == mode and j["state"] == "done")
    return job["updated_at"], job["result"]["seconds"]


def main() -> None:
    if not CASE.exists():
        print(f"skipped: {CASE} not found")
        return
    files = sorted(CASE.iterdir())
    with tempfile.TemporaryDirectory() as tmp:
        port, web_port = free_port(), free_port()
        log = open(Path(tmp) / "node.log", "wb")  # noqa: SIM115 - closed with the node below
        node = subprocess.Popen([sys.executable, "-m", "appliance.cli", "serve", "--port", str(port),
                                 "--web-port", str(web_port), "--data-dir", str(Path(tmp) / "data")],
                                cwd=REPO, env=NODE_ENV, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{web_port}"
        try:
            wait_for_echo(port, "ISONODE", node)
            with chromium() as browser:
                page = new_page(browser)
                log_in(page, base, TOKEN)
                t_send = time.time()
                subprocess.run(["storescu", "-R", "-xt", "-aec", "ISONODE", "-aet", "BENCHSCU", "127.0.0.1",
                                str(port), *map(str, files)], check=True, capture_output=True, env=ENV, timeout=600)
                t_last = time.time()
                wait_for_3d_view(page, mode="preview", timeout_s=300)
                t_preview = time.time()
                print("viewer timings (preview):", page.evaluate("JSON.stringify(window.isonode.viewer.timings)"))
                wait_for_3d_view(page, mode="full", timeout_s=600)
                t_full = time.time()
            preview_done, preview_s = _job_done_at(base, "preview")
            full_done, full_s = _job_done_at(base, "full")
        finally:
            node.terminate()
            node.wait(timeout=60)
            log.close()
    print(f"case: {CASE.name}, {len(files)} slices, sent in {t_last - t_send:.1f} s (storescu, JPEG-LS as is)")
    print(f"{'after the last slice':28s} {'job done':>9s} {'on the page':>12s} {'page share':>11s}  job pipeline")
    for mode, done, shown, job_s in (("preview", preview_done, t_preview, preview_s),
                                     ("full", full_done, t_full, full_s)):
        print(f"{mode + ' 3D view':28s} {done - t_last:8.2f}s {shown - t_last:11.2f}s {shown - done:10.2f}s"
              f"  {job_s:.2f} s")
    print("(page share: from the job's completion to its meshes drawn: event, CT and mesh download, NiiVue)")


if __name__ == "__main__":
    main()
