"""`activemm validate` speed and memory on a capture, against a floor measured in the same run.

    python benchmarks/validate_bench.py [CAPTURE_DIR] [--inputs markers|sched] [--json]

(default: the largest committed capture, tests/data/captures/). Unlike replay, which streams,
validate keeps every event of the trace (it looks ahead: exit windows, the probes' lives of
an address), so its peak RSS grows with the trace: that is what this measures.
- floor: reading the gzipped trace and splitting its lines in Python, without the model;
- read: `read_trace` into the list validate keeps;
- validate: the whole `validate()` (reading, every replay pass, scoring).
Each phase runs in its own process so that its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from phases import phase_floor, print_phase, run_phase

CAPTURES = Path(__file__).resolve().parents[1] / "tests" / "data" / "captures"


def phase_read(path: str) -> dict[str, float]:
    from activemm.trace.readers import ReadStats, read_trace

    t0 = time.perf_counter()
    events = list(read_trace(path, stats=ReadStats()))
    return {"events": len(events), "seconds": time.perf_counter() - t0}


def phase_validate(capture: str, inputs: str) -> dict[str, float]:
    from activemm.validate import validate

    t0 = time.perf_counter()
    r = validate(Path(capture), inputs=inputs)
    return {
        "switches": r.context_switches.total,
        "matched": r.context_switches.matched,
        "seconds": time.perf_counter() - t0,
    }


def largest_capture() -> Path:
    return max(
        (d for d in CAPTURES.iterdir() if (d / "trace.txt.gz").is_file()),
        key=lambda d: (d / "trace.txt.gz").stat().st_size,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("capture", nargs="?", help="a capture directory (default: the largest)")
    ap.add_argument("--inputs", default="markers", choices=["markers", "sched"])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.phase:
        print_phase(
            {
                "floor": lambda path, _: phase_floor(path),
                "read": lambda path, _: phase_read(path),
                "validate": lambda path, rest: phase_validate(path, *rest),
            },
            a.phase,
        )
        return
    capture = Path(a.capture) if a.capture else largest_capture()
    trace = str(capture / "trace.txt.gz")
    if not os.path.isfile(trace):
        sys.exit(f"validate_bench: {trace}: no such file (expected a capture directory)")
    floor = run_phase(__file__, ["floor", trace])
    read = run_phase(__file__, ["read", trace])
    val = run_phase(__file__, ["validate", str(capture), a.inputs])
    n = floor["events"]
    feps = n / floor["seconds"]
    out = {
        "capture": capture.name,
        "inputs": a.inputs,
        "lines": n,
        "events_kept": read["events"],
        "switches": val["switches"],
        "matched": val["matched"],
        "floor_lines_per_s": round(feps),
        "read_lines_per_s": round(n / read["seconds"]),
        "validate_lines_per_s": round(n / val["seconds"]),
        "ratio_to_floor": round(n / val["seconds"] / feps, 4),
        "read_peak_rss_mb": round(read["peak_rss_mb"], 1),
        "validate_peak_rss_mb": round(val["peak_rss_mb"], 1),
        "floor_peak_rss_mb": round(floor["peak_rss_mb"], 1),
        "validate_bytes_per_event": round(
            (val["peak_rss_mb"] - floor["peak_rss_mb"]) * 2**20 / max(1, read["events"])
        ),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        ),
    }
    print(json.dumps(out) if a.json else json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
