"""A benchmark's phases, each run in a process of its own so that its peak RSS is its own:
the script runs itself with `--phase KIND PATH ARGS...`, which prints one JSON object."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
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
