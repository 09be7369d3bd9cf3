"""The timeline export is valid Chrome/Perfetto trace-event JSON and shows what happened."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from .helpers import ROOT

PHASES = {
    "X": ("name", "pid", "tid", "ts", "dur"),
    "i": ("name", "pid", "tid", "ts", "s"),
    "C": ("name", "pid", "ts", "args"),
    "M": ("name", "pid", "args"),
}


def timeline(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "tl.json"
    r = subprocess.run(
        [sys.executable, "-m", "activemm", "timeline", *args, "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def check_format(doc: dict[str, Any]) -> None:
    events = doc["traceEvents"]
    assert isinstance(events, list) and events
    spans: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for e in events:
        assert e["ph"] in PHASES, e
        for key in PHASES[e["ph"]]:
            assert key in e, (key, e)
        if "ts" in e:
            assert isinstance(e["ts"], int | float) and e["ts"] >= 0
        if e["ph"] == "X":
            assert isinstance(e["dur"], int | float) and e["dur"] >= 0
            spans[e["tid"]].append((e["ts"], e["ts"] + e["dur"]))
        if e["ph"] == "C":
            assert all(isinstance(v, int) for v in e["args"].values())
    for tid, s in spans.items():
        starts = [a for a, _ in s]
        assert starts == sorted(starts), f"track {tid} not monotonic"
        for (_, end), (start, _) in pairwise(s):
            assert end <= start + 1e-6, f"track {tid} spans overlap"


def test_scenario_timeline(tmp_path: Path) -> None:
    doc = timeline(tmp_path, str(ROOT / "examples/04_zombie_mm.toml"))
    check_format(doc)
    ev = doc["traceEvents"]
    names = {e["name"] for e in ev}
    assert "lazy: mm2 (borrowed from app)" in names  # kworker on CPU 0
    assert "zombie born: mm2 (app)" in names and "free mm2 (app)" in names
    counters = [e["args"] for e in ev if e["ph"] == "C" and e["name"] == "mm2 (app) refs"]
    # the hand-derived values of the scenario: 1/1, 1/2 (lazy), 0/2 (zombie), 0/1, freed
    assert {"mm_users": 1, "mm_count": 2} in counters and {"mm_users": 0, "mm_count": 1} in counters
    tracks = {e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {"CPU 0 task", "CPU 0 active_mm", "CPU 1 task", "CPU 1 active_mm"} <= tracks


def test_invlpgb_timeline_marks_the_global_asid_and_each_broadcast(tmp_path: Path) -> None:
    # the scenario's flushes of mm2 from step 13 on: the first goes by IPI and gives mm2 its
    # global ASID; the other four (three flush_tlb_mm_range steps, exit_mmap's) are broadcasts
    doc = timeline(tmp_path, str(ROOT / "examples/16_x86_invlpgb_global_asid.toml"))
    check_format(doc)
    names = [e["name"] for e in doc["traceEvents"] if e["ph"] == "i"]
    assert names.count("global ASID 6 for mm2") == 1
    assert names.count("INVLPGB broadcast mm2") == 4


@pytest.mark.parametrize("preset", ["linux-6.17-x86_64", "linux-6.17-powerpc-radix"])
def test_trace_timeline(tmp_path: Path, preset: str) -> None:
    doc = timeline(
        tmp_path,
        str(ROOT / "tests/data/tracefs_tgid.txt.gz"),
        "-p",
        preset,
        "--tasks",
        str(ROOT / "tests/data/tracefs_tgid.tasks"),
    )
    check_format(doc)
    names = [e["name"] for e in doc["traceEvents"] if e["ph"] == "i"]
    if preset.endswith("x86_64"):
        assert any(n.startswith("CR3 ") for n in names)
    else:
        assert any(n.startswith("shootdown IPI") for n in names)
