"""Regenerate the screenshots in docs/img from the project itself:

    python docs/screenshots.py

report.png: the HTML report in headless Chromium; timeline.png: the report's per-CPU active_mm
timeline; explain.svg and run.svg: the terminal views, recorded by rich."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
IMG = ROOT / "docs" / "img"
TRACE = ROOT / "tests" / "data" / "tracefs_tgid.txt.gz"
TASKS = ROOT / "tests" / "data" / "tracefs_tgid.tasks"


def terminal_views() -> None:
    from activemm import preset
    from activemm import scenario as scen
    from activemm.report.explain import explain_step, snapshot
    from activemm.report.steps import step_view

    sc = scen.load(ROOT / "examples" / "04_zombie_mm.toml")
    cfg = preset("linux-6.17-x86_64")
    before: dict[tuple[str, str], object] = {}
    explain = Console(record=True, width=90)
    run = Console(record=True, width=90)
    for r in scen.run(sc, cfg):
        after = snapshot(r.state)
        if r.index == 13:
            explain.print(
                explain_step(r.index, "schedule", r.operation, r.note, r.events, before, after)
            )
        if r.index == 9:
            run.print(step_view(r, cfg))
        before = after
    explain.save_svg(str(IMG / "explain.svg"), title="activemm explain examples/04_zombie_mm.toml")
    run.save_svg(str(IMG / "run.svg"), title="activemm run examples/04_zombie_mm.toml")


def report_views() -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "report.html"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "activemm",
                "report",
                str(TRACE),
                "--tasks",
                str(TASKS),
                "-o",
                str(out),
                "--png",
                str(Path(d) / "png"),
            ],
            check=True,
        )
        (IMG / "timeline.png").write_bytes((Path(d) / "png" / "timeline.png").read_bytes())
        opts = webdriver.ChromeOptions()
        opts.binary_location = "/usr/bin/chromium"
        for a in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--window-size=1100,1300",
            f"--user-data-dir={d}/profile",
        ):
            opts.add_argument(a)
        drv = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
        try:
            drv.get(out.as_uri())
            drv.save_screenshot(str(IMG / "report.png"))
        finally:
            drv.quit()


if __name__ == "__main__":
    IMG.mkdir(parents=True, exist_ok=True)
    terminal_views()
    report_views()
    print("written:", ", ".join(sorted(p.name for p in IMG.iterdir())))
