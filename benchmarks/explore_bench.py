"""Exhaustive exploration speed and the reduction factor of symmetry reduction, for a fixed set
of bounds, measured in the same run.

    python benchmarks/explore_bench.py --json

For each bound: states and seconds with symmetry reduction and without, states/s, the
reduction factor (states without / states with), and the reduced run again with --jobs worker
processes (default: one per CPU) and its speedup. The peer: SPIN (Debian package spin) on
peers/activemm.pml, a Promela model of the same rules for the first bound, compiled with gcc
and run to exhaustion in the same run (its time includes neither spin -a nor gcc).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from activemm import preset
from activemm.check.explore import explore
from activemm.check.ops import Limits

BOUNDS = {
    # name: (preset, cpus, limits, depth)
    "2cpu-1p-1t-1k-exhaustive": (
        "linux-6.17",
        2,
        Limits(
            processes=1,
            threads=1,
            kthreads=1,
            execs=1,
            holders=False,
            flushes=False,
            hotplug=False,
            max_tasks=5,
        ),
        0,
    ),
    "2cpu-2p-1t-1k-depth8-x86": (
        "linux-6.17-x86_64",
        2,
        Limits(
            processes=2,
            threads=1,
            kthreads=1,
            execs=2,
            max_holders=1,
            grabs=False,
            hotplug=False,
            max_tasks=7,
        ),
        8,
    ),
}


def spin_peer() -> dict[str, object]:
    """Time SPIN exhausting peers/activemm.pml (bound 2cpu-1p-1t-1k-exhaustive)."""
    if not (shutil.which("spin") and shutil.which("gcc")):
        return {"error": "spin or gcc missing (apt-get install spin gcc)"}
    model = Path(__file__).resolve().parent / "peers" / "activemm.pml"
    with tempfile.TemporaryDirectory() as d:
        shutil.copy(model, d)
        subprocess.run(["spin", "-a", "activemm.pml"], cwd=d, check=True, capture_output=True)
        subprocess.run(
            ["gcc", "-O2", "-DSAFETY", "-o", "pan", "pan.c"], cwd=d, check=True, capture_output=True
        )
        t0 = time.perf_counter()
        r = subprocess.run(
            ["./pan", "-m1000000"], cwd=d, capture_output=True, text=True, check=True
        )
        seconds = time.perf_counter() - t0
    stored = re.search(r"(\d+) states, stored", r.stdout)
    errors = re.search(r"errors: (\d+)", r.stdout)
    return {
        "bound": "2cpu-1p-1t-1k-exhaustive",
        "states": int(stored[1]) if stored else None,
        "errors": int(errors[1]) if errors else None,
        "seconds": round(seconds, 2),
        "note": "no symmetry reduction; partial-order reduction; no mm_cpumask/loaded_mm state",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--only", help="run one bound")
    ap.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes for the parallel run of each bound (default: one per CPU)",
    )
    a = ap.parse_args()
    results = {}
    for name, (p, cpus, limits, depth) in BOUNDS.items():
        if a.only and a.only != name:
            continue
        cfg = preset(p)
        reduced = explore(cfg, cpus, limits, depth=depth or 10_000)
        full = explore(cfg, cpus, limits, depth=depth or 10_000, symmetry=False)
        par = explore(cfg, cpus, limits, depth=depth or 10_000, jobs=a.jobs) if a.jobs > 1 else None
        results[name] = {
            "preset": p,
            "states": reduced.states,
            "transitions": reduced.transitions,
            "seconds": round(reduced.seconds, 2),
            "states_per_s": round(reduced.states / reduced.seconds),
            "exhausted": reduced.complete,
            "states_without_reduction": full.states,
            "seconds_without_reduction": round(full.seconds, 2),
            "reduction_factor": round(full.states / reduced.states, 2),
            "violations": len(reduced.violations) + len(full.violations),
        }
        if par is not None:
            results[name]["parallel"] = {
                "jobs": a.jobs,
                "states": par.states,
                "seconds": round(par.seconds, 2),
                "speedup": round(reduced.seconds / par.seconds, 2),
                "violations": len(par.violations),
            }
    out = {
        "bounds": results,
        "peers": {"spin": spin_peer()} if not a.only or a.only.startswith("2cpu-1p") else {},
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        ),
    }
    print(json.dumps(out) if a.json else json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
