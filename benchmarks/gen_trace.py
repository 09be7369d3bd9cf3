"""A generator of large synthetic scheduler traces in real tracefs text format (record-tgid and
irq-flags columns): many CPUs, per-CPU kernel threads, processes with threads, fork/exec/exit
churn. The simulated machine is consistent (a task runs on one CPU at a time, exits are
followed by a final switch), so a replay needs few resynchronisations.

    python benchmarks/gen_trace.py --events 1000000 --cpus 32 -o big.txt
"""

from __future__ import annotations

import argparse
import random
import sys
from typing import TextIO


def generate(
    out: TextIO,
    events: int,
    cpus: int,
    seed: int = 1,
    tgid_column: bool = True,
    flags_column: bool = True,
) -> int:
    rnd = random.Random(seed)
    out.write(
        f"# tracer: nop\n#\n# entries-in-buffer/entries-written: {events}/{events}   #P:{cpus}\n#\n"
    )
    comm: dict[int, str] = {}
    tgid: dict[int, int] = {}
    for c in range(cpus):
        for i, name in enumerate((f"kworker/{c}:1", f"ksoftirqd/{c}", f"migration/{c}")):
            pid = 10 + c * 3 + i
            comm[pid], tgid[pid] = name, pid
    kthreads = list(comm)
    next_pid = 10 + cpus * 3 + 100
    user: list[int] = []
    for _ in range(cpus * 2):
        comm[next_pid], tgid[next_pid] = "app", next_pid
        user.append(next_pid)
        next_pid += 1
    curr = [0] * cpus
    running: set[int] = set()
    exiting: set[int] = set()
    ts = 1000.0
    n = 0

    def line(cpu: int, flags: str, body: str) -> None:
        nonlocal n, ts
        pid = curr[cpu]
        c = comm.get(pid, f"swapper/{cpu}") if pid else "<idle>"
        g = "-------" if pid == 0 else f"{tgid[pid]:>7}"
        ts += rnd.uniform(0.5e-6, 4e-6)
        group = f"({g}) " if tgid_column else ""
        fl = f"{flags} " if flags_column else ""
        out.write(f"{c:>16}-{pid:<7} {group}[{cpu:03d}] {fl} {ts:12.6f}: {body}\n")
        n += 1

    def name(pid: int, cpu: int) -> str:
        return comm[pid] if pid else f"swapper/{cpu}"

    while n < events:
        cpu = rnd.randrange(cpus)
        me = curr[cpu]
        r = rnd.random()
        if me in user and me not in exiting and r < 0.04 and len(user) < cpus * 8:
            child = next_pid
            next_pid += 1
            thread = rnd.random() < 0.4
            flags = 0x3D0F00 if thread else 0x1200000
            line(
                cpu,
                ".....",
                f"task_newtask: pid={child} comm={comm[me]} clone_flags={flags:x} oom_score_adj=0",
            )
            line(
                cpu,
                ".....",
                f"sched_process_fork: comm={comm[me]} pid={me} "
                f"child_comm={comm[me]} child_pid={child}",
            )
            comm[child], tgid[child] = comm[me], tgid[me] if thread else child
            user.append(child)
        elif me in user and me not in exiting and r < 0.06 and tgid[me] == me:
            new = rnd.choice(("sh", "ls", "cat", "make", "cc1"))
            line(
                cpu,
                ".....",
                f"task_rename: pid={me} oldcomm={comm[me]} newcomm={new} oom_score_adj=0",
            )
            comm[me] = new
            line(cpu, ".....", f"sched_process_exec: filename=/usr/bin/{new} pid={me} old_pid={me}")
        elif me in user and me not in exiting and r < 0.09 and len(user) > cpus:
            line(cpu, ".....", f"sched_process_exit: comm={comm[me]} pid={me} prio=120")
            exiting.add(me)
        else:
            idle = [p for p in user + kthreads if p not in running and p != me]
            nxt = rnd.choice(idle) if idle and rnd.random() < 0.8 else 0
            if nxt == me:
                continue
            state = "Z" if me in exiting else rnd.choice("SSRD")
            line(
                cpu,
                "d..2.",
                f"sched_switch: prev_comm={name(me, cpu)} prev_pid={me} "
                f"prev_prio=120 prev_state={state} ==> next_comm={name(nxt, cpu)} "
                f"next_pid={nxt} next_prio=120",
            )
            running.discard(me)
            if nxt:
                running.add(nxt)
            curr[cpu] = nxt
            if me in exiting:
                exiting.discard(me)
                user.remove(me)
                line(cpu, "..s1.", f"sched_process_free: comm={comm[me]} pid={me} prio=120")
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--cpus", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-tgid", action="store_true", help="omit the record-tgid column")
    ap.add_argument("--no-flags", action="store_true", help="omit the irq-flags column")
    ap.add_argument("-o", "--output", default="-")
    a = ap.parse_args()
    out = sys.stdout if a.output == "-" else open(a.output, "w")  # noqa: SIM115
    with out:
        generate(
            out, a.events, a.cpus, a.seed, tgid_column=not a.no_tgid, flags_column=not a.no_flags
        )


if __name__ == "__main__":
    main()
