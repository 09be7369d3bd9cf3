"""The HTML report, opened in a real headless browser (Debian's chromium and chromium-driver,
driven by selenium). Skipped where they are missing, except under CI, which installs them."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import ROOT

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
PRESETS = ["linux-6.17-x86_64", "linux-6.17-powerpc-radix", "linux-2.3.13"]

if not (CHROMIUM and DRIVER) and not os.environ.get("CI"):
    pytest.skip(
        "needs Debian chromium and chromium-driver (.ci/run installs them)", allow_module_level=True
    )


def make_report(tmp_path: Path) -> Path:
    out = tmp_path / "report.html"
    args = [
        sys.executable,
        "-m",
        "activemm",
        "report",
        str(ROOT / "tests/data/tracefs_tgid.txt.gz"),
        "--tasks",
        str(ROOT / "tests/data/tracefs_tgid.tasks"),
        "-o",
        str(out),
        "--png",
        str(tmp_path / "png"),
    ]
    for p in PRESETS:
        args += ["-p", p]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return out


def browser(tmp_path: Path):  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM or "chromium"
    for a in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1100,1400",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(DRIVER or "chromedriver"), options=opts)


def test_report_renders_in_a_headless_browser(tmp_path: Path) -> None:
    from matplotlib import image
    from selenium.webdriver.common.by import By

    report = make_report(tmp_path)
    assert "http://" not in report.read_text() and "https://" not in report.read_text()
    d = browser(tmp_path)
    try:
        d.get(report.as_uri())
        errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        header = d.find_element(By.CSS_SELECTOR, "#comparison tr").text
        for name in PRESETS:
            assert name in header
        imgs = d.find_elements(By.TAG_NAME, "img")
        assert len(imgs) == 5
        for img in imgs:
            assert d.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth > 100", img
            )
        shot = d.get_screenshot_as_png()
    finally:
        d.quit()
    pixels = image.imread(io.BytesIO(shot), format="png")
    assert pixels.shape[0] > 500 and pixels.std() > 0.05  # a page, not a blank screen
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [
        "lazy_time_per_cpu.png",
        "mm_count_atomics.png",
        "switch_cases.png",
        "timeline.png",
        "zombie_lifetimes.png",
    ]
