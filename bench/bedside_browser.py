"""The bedside page in Debian's chromium, driven by Playwright (never a browser Playwright downloads):
shared by the browser tests and the time-to-first-3D-view benchmark, so both measure the same page."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

CHROMIUM = "/usr/bin/chromium"
# Software WebGL2 (SwiftShader) with no GPU; no calls home, which the closed network would refuse.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--enable-unsafe-swiftshader"]
VIEWER_READY = "#viewer[data-loaded-job]"


@contextmanager
def chromium() -> Iterator[Any]:
    """Headless chromium (playwright.sync_api.Browser); one per thread, pages come from `new_page`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Any, viewport: tuple[int, int] = (1280, 800)) -> Any:
    """A page in a fresh context: no cookies, as a new device would come."""
    return browser.new_context(viewport={"width": viewport[0], "height": viewport[1]}).new_page()


def log_in(page: Any, base_url: str, token: str, timeout_s: float = 60.0) -> None:
    """Open the page, meet the login form, sign in, and wait for the series list."""
    page.goto(f"{base_url}/")
    page.fill("input[name=token]", token)
    with page.expect_navigation(timeout=timeout_s * 1000):
        page.click("button[type=submit]")
    page.wait_for_selector("#series-list", state="attached", timeout=timeout_s * 1000)


def wait_for_3d_view(page: Any, *, mode: str | None = None, timeout_s: float = 120.0) -> tuple[int, str]:
    """Until the page has drawn a job's meshes (in `mode`, if given); returns (job id, mode)."""
    selector = VIEWER_READY + (f'[data-loaded-mode="{mode}"]' if mode else "")
    el = page.wait_for_selector(selector, timeout=timeout_s * 1000)
    return int(el.get_attribute("data-loaded-job")), el.get_attribute("data-loaded-mode")


def canvas_rgb(page: Any) -> np.ndarray:
    """What the 3D view shows now, as an (h, w, 3) uint8 array."""
    from PIL import Image

    png = page.locator("#viewer canvas").first.screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def colour_fraction(rgb: np.ndarray, colour: Sequence[int], tolerance: float = 0.025) -> float:
    """The share of pixels whose chromaticity (r, g, b over their sum: shading only scales it) is within
    `tolerance` of `colour`'s: how much of the picture a segment of that colour covers. Grey CT is
    (1/3, 1/3, 1/3) and never counts for a coloured segment."""
    px = rgb.reshape(-1, 3).astype(np.float64)
    total = px.sum(1)
    lit = total > 60
    chroma = px[lit] / total[lit, None]
    target = np.asarray(colour, np.float64) / max(sum(colour), 1)
    near = np.abs(chroma - target).max(1) < tolerance
    return float(near.sum()) / len(px)
