"""Replay speed and memory, against a floor and a peer parser measured in the same run.

    python benchmarks/replay_bench.py --events 1000000 --json

- floor: reading and splitting the same lines in Python, without the model;
- activemm: `read_trace` + replay under the presets given (default two), sanitizer off; and
  again with one forked process per preset (`replay --jobs`), each reading the file;
- peers: TRAPpy's text trace parser (`pip install trappy`) on the same file, when installed.
Each phase runs in its own process so that its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from phases import phase_floor, print_phase, run_phase

HERE = Path(__file__).resolve().parent


def phase_replay(path: str, presets: list[str]) -> dict[str, float]:
    from activemm import preset
    from activemm.trace import read_trace
    from activemm.trace.replay import peek_cpus, replay

    t0 = time.perf_counter()
    events = read_trace(path)
    ncpus, events = peek_cpus(events)
    n, _ = replay(events, [preset(p) for p in presets], ncpus, sanitize=False)
    return {"events": n, "seconds": time.perf_counter() - t0}


def phase_replay_jobs(path: str, presets: list[str]) -> dict[str, float]:
    """The same, one forked process per preset, each reading the file (replay --jobs)."""
    from activemm import preset
    from activemm.trace import read_trace
    from activemm.trace.parallel import replay_parallel
    from activemm.trace.readers import ReadStats
    from activemm.trace.replay import peek_cpus

    def reopen() -> tuple[object, ReadStats]:
        stats = ReadStats()
        return read_trace(path, stats=stats), stats

    t0 = time.perf_counter()
    ncpus, _ = peek_cpus(read_trace(path))
    configs = [preset(p) for p in presets]
    n, _, _ = replay_parallel(reopen, configs, ncpus, len(configs), sanitize=False)  # type: ignore[arg-type]
    return {"events": n, "seconds": time.perf_counter() - t0}


def phase_trappy(path: str) -> dict[str, float]:
    import warnings

    import trappy  # type: ignore[import-not-found]

    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    tr = trappy.FTrace(
        path,
        events=[
            "sched_switch",
            "sched_process_fork",
            "sched_process_exec",
            "sched_process_exit",
            "task_newtask",
        ],
        normalize_time=False,
    )
    n = sum(
        len(getattr(tr, e).data_frame)
        for e in (
            "sched_switch",
            "sched_process_fork",
            "sched_process_exec",
            "sched_process_exit",
            "task_newtask",
        )
    )
    return {"events": n, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--cpus", type=int, default=32)
    ap.add_argument("--preset", action="append", dest="presets")
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--no-peers",
        action="store_true",
        help="skip TRAPpy (it needs about 1.5 GB per million events)",
    )
    ap.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.phase:
        print_phase(
            {
                "floor": lambda path, _: phase_floor(path),
                "replay": phase_replay,
                "replay_jobs": phase_replay_jobs,
                "trappy": lambda path, _: phase_trappy(path),
            },
            a.phase,
        )
        return
    presets = a.presets or ["linux-6.17-x86_64", "linux-6.17-powerpc-radix"]
    sys.path.insert(0, str(HERE))
    from gen_trace import generate

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.txt")
        with open(path, "w") as f:
            # neither record-tgid nor irq-flags columns: TRAPpy, the peer, parses neither
            n = generate(f, a.events, a.cpus, tgid_column=False, flags_column=False)
        floor = run_phase(__file__, ["floor", path])
        rep = run_phase(__file__, ["replay", path, *presets])
        par = run_phase(__file__, ["replay_jobs", path, *presets])
        peers: dict[str, object] = {}
        try:
            if a.no_peers:
                raise subprocess.CalledProcessError(0, "skipped", stderr="skipped (--no-peers)")
            t = run_phase(__file__, ["trappy", path])
            peers["trappy"] = {
                "events_per_s": round(t["events"] / t["seconds"]),
                "peak_rss_mb": round(t["peak_rss_mb"], 1),
            }
        except subprocess.CalledProcessError as e:
            peers["trappy"] = {"error": (e.stderr or "").strip().splitlines()[-1:] or ["failed"]}
    eps = rep["events"] / rep["seconds"]
    feps = floor["events"] / floor["seconds"]
    out = {
        "events": n,
        "cpus": a.cpus,
        "presets": len(presets),
        "preset_names": presets,
        "events_per_s": round(eps),
        "floor_events_per_s": round(feps),
        "ratio_to_floor": round(eps / feps, 4),
        "peak_rss_mb": round(rep["peak_rss_mb"], 1),
        "jobs": {
            "processes": len(presets),
            "events_per_s": round(par["events"] / par["seconds"]),
            "ratio_to_floor": round(par["events"] / par["seconds"] / feps, 4),
        },
        "peers": peers,
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        ),
    }
    print(json.dumps(out) if a.json else json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
