"""A benchmark's phases, each run in a process of its own so that its peak RSS is its own:
the script runs itself with `--phase KIND PATH ARGS...`, which prints one JSON object."""

from __future__ import annotations

import gzip
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable

Phase = Callable[[str, list[str]], dict[str, float]]


def run_phase(script: str, args: list[str]) -> dict[str, float]:
    """Run `script --phase ARGS` in a new process: what that phase measured."""
    r = subprocess.run(
        [sys.executable, script, "--phase", *args], capture_output=True, text=True, check=True
    )
    measured: dict[str, float] = json.loads(r.stdout)
    return measured


def print_phase(phases: dict[str, Phase], args: list[str]) -> None:
    """In the phase's process: run phase ARGS[0] on ARGS[1] (ARGS[2:] its arguments) and print
    what it measured, with this process's peak RSS."""
    kind, path, *rest = args
    res = phases[kind](path, rest)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(res))


def phase_floor(path: str) -> dict[str, float]:
    """The floor a trace reader is measured against: reading the trace (gzipped when its name
    ends in .gz) and splitting each line in Python, nothing else."""
    t0 = time.perf_counter()
    n = 0
    with gzip.open(path, "rt") if path.endswith(".gz") else open(path) as f:
        for line in f:
            if line[0] != "#":
                line.split()
                n += 1
    return {"events": n, "seconds": time.perf_counter() - t0}
