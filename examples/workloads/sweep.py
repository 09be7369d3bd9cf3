"""Capture one workload on both kernels and several CPU counts, and validate each capture.

    python examples/workloads/sweep.py OUT --program examples/workloads/mixed.c --smp 2,4
    python examples/workloads/sweep.py OUT --run 'ls -R /proc > /dev/null' --kernels 6.12
    python examples/workloads/sweep.py OUT --program tests/data/programs/unseen18.c --module brd
    python examples/workloads/sweep.py OUT -w all --smp 3,6 --kernel-args preempt=full

This is how the model is checked against workloads it was not written for: the same
workload recorded on Debian's 6.1 and 6.12 with different CPU counts (vCPU timing changes
which races happen), each capture validated with the marker probes and with tracepoints
only. OUT/KERNEL-smpN holds each capture, OUT/KERNEL-smpN.INPUTS.json its validation;
a table sums them up. Exit status 1 when a switch or an __mmdrop missed with markers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

GROUPS = ("context_switches", "mmdrop", "outside_schedule")


def activemm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "activemm", *args], capture_output=True, text=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out", type=Path, help="a new directory for the captures")
    ap.add_argument("--program", help="a C source or static executable (capture --program)")
    ap.add_argument("--run", help="a busybox sh command line (capture --run)")
    ap.add_argument(
        "-w", "--workload", help="built-in workloads (capture -w), e.g. all or vhost,zombie"
    )
    ap.add_argument("--module", action="append", default=[], help="capture --module (repeat)")
    ap.add_argument("--smp", default="2,4", help="CPU counts, comma-separated (default 2,4)")
    ap.add_argument(
        "--kernels",
        default="6.1,6.12",
        help="kernel releases, comma-separated (default both; 6.1-rt and 6.12-rt are their "
        "PREEMPT_RT flavours)",
    )
    ap.add_argument("--timeout", default="900", help="capture --timeout (seconds)")
    ap.add_argument(
        "--kernel-args", default="", help="capture --kernel-args, e.g. preempt=full (default none)"
    )
    a = ap.parse_args()
    if a.program is None and a.run is None and a.workload is None:
        ap.error("give --program, --run or -w (the workload to sweep)")
    if a.out.exists():
        ap.error(f"{a.out} exists: give a new directory")
    a.out.mkdir(parents=True)
    console = Console(stderr=True)
    table = Table(title=f"sweep of {a.program or a.run or a.workload!r}")
    for col in ("capture", "inputs", "switches", "__mmdrop", "outside", "causes"):
        table.add_column(col)
    failed = False
    for release in a.kernels.split(","):
        for smp in a.smp.split(","):
            name = f"{release}-smp{smp}"
            args = ["capture", "-o", str(a.out / name), "--kernel-release", release, "--smp", smp]
            args += ["--timeout", a.timeout]
            args += ["--program", a.program] if a.program else []
            args += ["--run", a.run] if a.run else []
            args += ["-w", a.workload] if a.workload else []
            args += ["--kernel-args", a.kernel_args] if a.kernel_args else []
            for m in a.module:
                args += ["--module", m]
            console.print(f"capturing {name} ...")
            cap = activemm(*args)
            if cap.returncode != 0:
                last = (cap.stderr.strip().splitlines() or [""])[-1]  # capture's one-line error
                table.add_row(name, "-", "capture failed: " + last[:160], "", "", "")
                failed = True
                continue
            for inputs in ("markers", "sched"):
                v = activemm("validate", str(a.out / name), "--inputs", inputs, "--json")
                (a.out / f"{name}.{inputs}.json").write_text(v.stdout)
                if v.returncode == 2:
                    table.add_row(name, inputs, "validate failed: " + v.stderr.strip()[-120:])
                    failed = True
                    continue
                d = json.loads(v.stdout)
                cells = [f"{d[g]['matched']}/{d[g]['total']}" for g in GROUPS]
                causes = "; ".join(f"{n} {c[:50]}" for c, n in d.get("mismatch_causes", {}).items())
                table.add_row(name, inputs, *cells, causes)
                if inputs == "markers" and any(
                    d[g]["matched"] != d[g]["total"] for g in ("context_switches", "mmdrop")
                ):
                    failed = True
    Console().print(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
