"""Headless Chromium for tests: Debian's ``chromium`` (installed here with apt-get when missing,
as the test set-up's one privileged step) driven by Playwright for Python through
``executable_path``; Playwright's own browser download is never used (no internet)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def ensure_chromium() -> str:
    """The path of Debian's chromium, installing the package first when it is missing."""
    if not Path(CHROMIUM).exists():
        apt = shutil.which("apt-get")
        if apt is None or os.geteuid() != 0:
            raise RuntimeError(f"{CHROMIUM} is missing; install it: apt-get install -y chromium")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([apt, "install", "-y", "-q", "chromium"], check=True, env=env,
                       stdout=subprocess.DEVNULL, timeout=900)  # fmt: skip
    return CHROMIUM


def figures_drawn(html: Path, screenshot: Path) -> dict[str, dict[str, Any]]:
    """Open ``html`` (a file: nothing is served, nothing fetched) in headless Chromium, save a
    full-page screenshot, and return for each ``svg[data-figure]``: its rendered width and
    height and how many shapes (rect, path, line, circle, polyline, text) it drew."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=ensure_chromium(), args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(html.resolve().as_uri())
            page.screenshot(path=str(screenshot), full_page=True)
            found: dict[str, dict[str, Any]] = page.evaluate(
                """() => Object.fromEntries([...document.querySelectorAll('svg[data-figure]')]
                    .map(s => { const b = s.getBoundingClientRect();
                      return [s.dataset.figure, {width: b.width, height: b.height,
                        shapes: s.querySelectorAll('rect,path,line,circle,polyline,text')
                          .length}]; }))"""
            )
        finally:
            browser.close()
    off_page = [u for u in requests if not u.startswith("file://")]
    if off_page:
        raise AssertionError(f"the report fetched {off_page[:3]}")
    return found
