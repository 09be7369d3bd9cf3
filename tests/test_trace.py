"""Trace readers and replay, on real traces recorded on the development VM (see
tests/data/record.sh). Expected counts come from plain text counting of the files, not from
the code under test."""

from __future__ import annotations

import gzip
import json
import lzma
import os
import random
import re
import stat
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activemm import PRESETS
from activemm.model.state import TaskState
from activemm.trace import LostEvents, SchedSwitch, TraceError, read_trace
from activemm.trace import replay as replay_module
from activemm.trace.events import Probe
from activemm.trace.readers import ReadStats
from activemm.trace.replay import (
    ExitedPicks,
    TaskInfo,
    exited_picks,
    load_task_snapshot,
    peek_cpus,
    read_ahead,
    replay,
)

from .helpers import ROOT, cli, read_lines, replay_lines

DATA = ROOT / "tests" / "data"
TRACES = ["tracefs_tgid", "tracefs_plain", "perf_script", "trace_cmd_report"]


def text(name: str) -> str:
    return gzip.decompress((DATA / f"{name}.txt.gz").read_bytes()).decode()


def event_lines(name: str, event: str) -> list[str]:
    return [ln for ln in text(name).splitlines() if f" {event}:" in ln or f":{event}:" in ln]


@pytest.mark.parametrize("name", TRACES)
def test_readers_find_every_event_line(name: str) -> None:
    st_ = ReadStats()
    events = list(read_trace(DATA / f"{name}.txt.gz", stats=st_))
    kinds = Counter(type(e).__name__ for e in events)
    assert kinds["SchedSwitch"] == len(event_lines(name, "sched_switch"))
    assert kinds["ProcessExec"] == len(event_lines(name, "sched_process_exec"))
    assert kinds["NewTask"] == len(event_lines(name, "task_newtask"))
    assert st_.fmt == ("perf" if name == "perf_script" else "ftrace")
    # merged by timestamp
    ts = [e.ts for e in events]
    assert ts == sorted(ts)


def test_switch_fields_match_the_line() -> None:
    line = event_lines("tracefs_tgid", "sched_switch")[0]
    ev = next(e for e in read_trace(DATA / "tracefs_tgid.txt.gz") if isinstance(e, SchedSwitch))
    assert f"prev_pid={ev.prev_pid} " in line and f"next_pid={ev.next_pid} " in line
    assert f"[{ev.cpu:03d}]" in line and f"{ev.ts:.6f}" in line


def _write(tmp: Path, lines: list[str]) -> Path:
    p = tmp / "t.txt"
    p.write_text("\n".join(lines) + "\n")
    return p


SAMPLE = [
    "# tracer: nop",
    "     memfd:sealed-91-1084  [000]  3913.296564: sched_switch:         memfd:sealed-91:1084 "
    "[120] S ==> swapper/0:0 [120]",
    " Web Content-77   (  70) [001] d..2.  1.000100: sched_switch: prev_comm=Web Content "
    "prev_pid=77 prev_prio=120 prev_state=S ==> next_comm=swapper/1 next_pid=0 next_prio=120",
    "CPU:1 [LOST 12 EVENTS]",
    "CPU:0 [LOST EVENTS]",
    "  kworker/0:1-17    [000]  1.000050: sched_switch: prev_comm=kworker/0:1 prev_pid=17 "
    "prev_prio=120 prev_state=I ==> next_comm=bash next_pid=30 next_prio=120",
    "  bash-30  [000] .....  1.000200: sched_wakeup: comm=x pid=1 prio=120 target_cpu=000",
    "  bash-30  [000] d..2.  1.000300: mmswitch: (switch_mm_irqs_off+0x4/0x470) prev=0x1 "
    'next=0x2 tsk=0x3 t_pid=30 t_comm="bash"',
    "  bash-30  [000] .....  1.000400: mmalloc: (alloc_bprm+0x8c/0x2d0 <- mm_alloc) ret=0x5",
]


def test_preempt_rt_irq_flags_have_seven_columns(tmp_path: Path) -> None:
    """Debian's PREEMPT_RT kernels print seven irq-info flags (need-resched-lazy and
    preempt-lazy-depth added: "d...2.."), the hardirq/softirq one fourth, not third; lines
    as a 6.1-rt guest wrote them (tests/data/captures/linux-6.1-rt-smp2-everything)."""
    lines = [
        "            init-1       (      1) [001] d...2..     4.608385: sched_switch: "
        "prev_comm=init prev_pid=1 prev_prio=120 prev_state=R+ ==> next_comm=ktimers/1 "
        "next_pid=28 next_prio=98",
        "          <idle>-0       (-------) [000] d.h.1..     4.700000: tlb_flush: pages:-1 "
        "reason:flush on task switch (0)",
        "            true-319     (    319) [001] d....11     9.432387: tlb_flush: pages:-1 "
        "reason:flush on task switch (0)",
        "     kworker/0:1-17      (     17) [000] d..2.   4.800000: tlb_flush: pages:-1 "
        "reason:flush on task switch (0)",
        "          <idle>-0       (-------) [000] d.h2.   4.800100: tlb_flush: pages:-1 "
        "reason:flush on task switch (0)",
    ]
    evs = list(read_trace(_write(tmp_path, lines), window=0))
    sw = [e for e in evs if isinstance(e, SchedSwitch)]
    assert [(e.prev_pid, e.next_pid, e.next_comm) for e in sw] == [(1, 28, "ktimers/1")]
    flushes = [e for e in evs if type(e).__name__ == "TlbFlush"]
    # seven columns: in a hardirq (h fourth), not (1 and 1: the preempt depths); and the
    # five of a non-RT kernel: not (2: the preempt depth), in a hardirq (h third)
    assert [f.hardirq for f in flushes] == [True, False, False, True]  # type: ignore[attr-defined]


def test_sched_switch_reads_the_migrate_disable_column(tmp_path: Path) -> None:
    """The last irq-info flag is migrate_disable()'s depth (since 5.13; "." for none, hex
    otherwise), last of five or of 6.1-rt's seven; a four-flag kernel has no such column.
    The first line is 6.1-rt's, a task preempted holding task_lock() (a spinlock_t: migration
    off), from tests/data/captures/linux-6.1-rt-smp3-program17."""
    tail = "prev_prio=120 prev_state=R+ ==> next_comm=migration/0 next_pid=20 next_prio=0"
    lines = [
        f"             cat-285     (    285) [000] d...211     9.336276: sched_switch: "
        f"prev_comm=init prev_pid=285 {tail}",
        f"            init-1       (      1) [001] d...2..     9.4: sched_switch: "
        f"prev_comm=init prev_pid=1 {tail}",
        f"            init-1       (      1) [001] d..2a     9.5: sched_switch: "
        f"prev_comm=init prev_pid=1 {tail}",
        f"            init-1       (      1) [001] d..2     9.6: sched_switch: "
        f"prev_comm=init prev_pid=1 {tail}",
        f"            init-1       (      1) [001]     9.7: sched_switch: "
        f"prev_comm=init prev_pid=1 {tail}",
    ]
    evs = list(read_trace(_write(tmp_path, lines), window=0))
    assert [e.migrate_disabled for e in evs if isinstance(e, SchedSwitch)] == [1, 0, 10, 0, 0]


def test_probe_lines_read_the_preempt_depth_column(tmp_path: Path) -> None:
    """A kprobe line's preempt depth is the fourth of a non-RT kernel's five irq-info flags
    ("." for 0): __mmdrop in finish_task_switch() at 1 (from
    tests/data/captures/linux-6.12-smp2-program20), in a syscall at 0; 6.1-rt's seven flags
    and a four-flag kernel give none."""
    body = "mmdrop: (__mmdrop+0x4/0x190) mm=0xffff888004863180"
    lines = [
        f"         program-586     (    586) [002] ...1.     6.008931: {body}",
        f"         program-201     (    201) [000] .....     6.009040: {body}",
        f"         program-201     (    201) [000] d..a.     6.009041: {body}",
        f"          rcuc/0-19      (     19) [000] b....12     6.05: {body}",
        f"         program-201     (    201) [000] ...1     6.1: {body}",
    ]
    evs = [e for e in read_trace(_write(tmp_path, lines), window=0) if isinstance(e, Probe)]
    assert [e.preempt_depth for e in evs] == [1, 0, 10, None, None]


def test_trace_cmd_plugin_format_comm_with_colons_spaces_lost_probes(tmp_path: Path) -> None:
    st_ = ReadStats()
    evs = list(read_trace(_write(tmp_path, SAMPLE), stats=st_, window=0))
    sw = [e for e in evs if isinstance(e, SchedSwitch)]
    assert (sw[0].prev_comm, sw[0].prev_pid, sw[0].next_pid) == ("memfd:sealed-91", 1084, 0)
    assert (sw[1].prev_comm, sw[1].tgid) == ("Web Content", 70)
    lost = [(e.cpu, e.count) for e in evs if isinstance(e, LostEvents)]
    assert lost == [(1, 12), (0, 0)]  # "[LOST EVENTS]": the kernel could not count them
    probes = [e for e in evs if type(e).__name__ == "Probe"]
    assert [p.function for p in probes] == ["switch_mm_irqs_off", "mm_alloc"]  # type: ignore[attr-defined]
    assert probes[0].args["t_comm"] == "bash"  # type: ignore[attr-defined]
    assert st_.unknown["sched_wakeup"] == 1 and st_.lost_events == 12 and st_.lost_markers == 2
    _, rs = replay(iter(evs), [PRESETS["linux-6.17"]], 2)
    anomalies = rs["linux-6.17"].stats.anomalies
    assert anomalies["lost events"] == 12 and anomalies["lost-events gaps of unknown size"] == 1


def test_reorder_merges_cpus_by_timestamp(tmp_path: Path) -> None:
    evs = list(read_trace(_write(tmp_path, SAMPLE)))
    ts = [e.ts for e in evs if e.ts >= 0]
    assert ts == sorted(ts)


COMM = st.text(alphabet=st.sampled_from("abcxyz019 -/:_.<>()"), min_size=1, max_size=15).filter(
    lambda c: c.strip() == c and "==>" not in c and "=" not in c
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(COMM, st.integers(0, 4_000_000), COMM, st.integers(0, 4_000_000)),
        min_size=1,
        max_size=6,
    ),
    st.booleans(),
    st.booleans(),
    st.sampled_from(["R", "S", "D", "R+", "X", "Z", "I"]),
    st.integers(0, 255),
)
def test_sched_switch_lines_read_back_the_fields_written(
    switches: list[tuple[str, int, str, int]], tgid: bool, flags: bool, state: str, cpu: int
) -> None:
    """A sched_switch line in tracefs format, with or without the record-tgid and irq-flags
    columns, comms with spaces, dashes and brackets: every field comes back as written."""
    from activemm.trace.readers import parse_lines

    lines = []
    for i, (pc, pp, nc, np_) in enumerate(switches):
        tg = f"({pp:>7}) " if tgid else ""
        fl = "d..2. " if flags else ""
        lines.append(
            f"{pc:>16}-{pp:<7} {tg}[{cpu:03d}] {fl}{1000 + i}.000001: sched_switch: "
            f"prev_comm={pc} prev_pid={pp} prev_prio=120 prev_state={state} ==> "
            f"next_comm={nc} next_pid={np_} next_prio=120\n"
        )
    got = list(parse_lines(iter(lines), "t", None, ReadStats(), lenient=False))
    assert [
        (e.comm, e.pid, e.cpu, e.prev_comm, e.prev_pid, e.prev_state, e.next_comm, e.next_pid)
        for e in got
        if isinstance(e, SchedSwitch)
    ] == [(pc, pp, cpu, pc, pp, state, nc, np_) for pc, pp, nc, np_ in switches]
    assert [e.tgid for e in got] == [pp if tgid else None for _, pp, _, _ in switches]
    assert [e.line for e in got] == list(range(1, len(switches) + 1))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 40), max_size=60), st.integers(1, 8))
def test_reorder_is_a_stable_merge_within_its_window(stamps: list[int], window: int) -> None:
    """reorder() yields what a priority queue of `window` + 1 events keyed by (time, arrival)
    yields, popping the least whenever it overflows: a timestamp sort when the input is no
    more out of order than the window, ties in file order."""
    from activemm.trace.readers import reorder

    events = [LostEvents(i, 0, float(ts), 0, "", None, 0) for i, ts in enumerate(stamps)]
    pending: list[tuple[float, int]] = []
    want: list[int] = []
    for ev in events:
        pending.append((ev.ts, ev.line))
        if len(pending) > window:
            pending.sort()
            want.append(pending.pop(0)[1])
    want += [line for _, line in sorted(pending)]
    assert [e.line for e in reorder(iter(events), window)] == want
    if window >= len(stamps):
        assert want == [i for _, i in sorted((ts, i) for i, ts in enumerate(stamps))]


STACKS = {
    # tracefs with options/stacktrace and userstacktrace (kernel/trace/trace_output.c)
    "tracefs_tgid": lambda prefix: [
        f"{prefix}: <stack trace>",
        " => __schedule+0x2f5/0x8b0",
        " => schedule+0x68/0xf0",
        f"{prefix}: <user stack trace>",
        " => <00007f1e2c0a1b2c>",
    ],
    # trace-cmd report of a kernel_stack entry's frames
    "trace_cmd_report": lambda prefix: [
        "=> __schedule (ffffffff81c0f1e5)",
        "=> schedule (ffffffff81c0f6a8)",
    ],
    # perf script of `perf record -g`: a callchain, then a blank line
    "perf_script": lambda prefix: [
        "\tffffffff81c0f1e5 __schedule+0x2f5 ([kernel.kallsyms])",
        "\t    7f1e2c0a1b2c [unknown] (/usr/lib/x86_64-linux-gnu/libc.so.6)",
        "",
    ],
}


@pytest.mark.parametrize("name", list(STACKS))
def test_stack_traces_after_events_are_counted_and_skipped(name: str, tmp_path: Path) -> None:
    """Stack traces that tracing options print after each event (tracefs's stacktrace
    options, trace-cmd's kernel_stack frames, perf script's callchains) leave the events
    read exactly as without them; their lines are counted, not errors."""
    plain = [ln for ln in text(name).splitlines()]
    with_stacks: list[str] = []
    added: Counter[str] = Counter()
    for ln in plain:
        with_stacks.append(ln)
        if ln.strip() and not ln.lstrip().startswith(("#", "cpus=", "version", "CPU")):
            extra = STACKS[name](ln.split(": ", 1)[0])
            with_stacks += extra
            for x in extra:
                kind = (
                    "user_stack"
                    if "<user stack trace>" in x
                    else "kernel_stack"
                    if "<stack trace>" in x
                    else "stack trace frames"
                )
                added[kind] += bool(x)

    def read(lines: list[str]) -> tuple[list[tuple[object, ...]], ReadStats]:
        stats = ReadStats()
        path = _write(tmp_path, lines)
        events = [(type(e).__name__, e.cpu, e.ts, e.pid) for e in read_trace(path, stats=stats)]
        return events, stats

    want, before = read(plain)
    got, after = read(with_stacks)
    assert got == want and len(want) > 100
    for kind, n in added.items():
        assert after.unknown[kind] - before.unknown[kind] == n


@pytest.mark.parametrize("name", ["tracefs_plain", "tracefs_tgid"])
def test_function_tracer_lines_are_counted_and_skipped(name: str, tmp_path: Path) -> None:
    """A trace recorded with the function tracer on (`trace-cmd record -p function -e
    sched`, or tracefs's current_tracer) holds a line per kernel function call between the
    events, `TIME: func <-caller` with no event name: the events read exactly as without
    them, the calls are counted as unknown "function" events, as trace-cmd report names
    them, and `activemm replay` prints the same numbers."""
    plain = text(name).splitlines()
    traced: list[str] = []
    calls = 0
    for ln in plain:
        traced.append(ln)
        if ": sched_switch: " in ln:
            prefix = ln.split(": ", 1)[0]
            traced += [
                f"{prefix}: finish_task_switch.isra.0 <-__schedule",
                f"{prefix}: do_idle <-cpu_startup_entry",
            ]
            calls += 2

    def read(lines: list[str], stem: str) -> tuple[list[tuple[object, ...]], ReadStats, Path]:
        stats = ReadStats()
        path = tmp_path / f"{stem}.txt"
        path.write_text("\n".join(lines) + "\n")
        events = [(type(e).__name__, e.cpu, e.ts, e.pid) for e in read_trace(path, stats=stats)]
        return events, stats, path

    want, _, plain_path = read(plain, "plain")
    got, stats, traced_path = read(traced, "traced")
    assert got == want and calls > 100
    assert stats.unknown["function"] == calls and stats.bad_lines == 0

    def replay(path: Path) -> dict[str, object]:
        out = subprocess.run(
            [sys.executable, "-m", "activemm", "replay", str(path), "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return {k: v for k, v in json.loads(out).items() if k in ("events", "configs")}

    assert replay(traced_path) == replay(plain_path)


@pytest.mark.parametrize("codec", ["gzip", "xz", "zstd", "stdin"])
def test_compressed_and_stdin_inputs_read_the_same(codec: str, tmp_path: Path) -> None:
    raw = text("trace_cmd_report").encode()
    want = [(type(e).__name__, e.line) for e in read_trace(DATA / "trace_cmd_report.txt.gz")]
    if codec == "stdin":
        r = subprocess.run(
            [sys.executable, "-m", "activemm", "replay", "-", "--json", "-p", "linux-6.17"],
            input=raw,
            capture_output=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["events"] == len(want)
        return
    data = {
        "gzip": gzip.compress,
        "xz": lzma.compress,
        "zstd": zstandard.ZstdCompressor().compress,
    }[codec](raw)
    p = tmp_path / f"t.{codec}"
    p.write_bytes(data)
    assert [(type(e).__name__, e.line) for e in read_trace(p)] == want


def test_bad_inputs_name_file_and_line(tmp_path: Path) -> None:
    truncated = tmp_path / "cut.gz"
    truncated.write_bytes((DATA / "tracefs_tgid.txt.gz").read_bytes()[:4000])
    with pytest.raises(TraceError, match=r"cut.gz:\d+: truncated or corrupt"):
        list(read_trace(truncated))
    junk = _write(tmp_path, ["hello world", "not a trace"])
    with pytest.raises(TraceError, match=r"t.txt:1: not a scheduler trace"):
        list(read_trace(junk))
    bad = _write(tmp_path, [SAMPLE[4], "  bash-30  [000]  1.1: sched_switch: prev_comm=bash"])
    with pytest.raises(TraceError, match=r"t.txt:2: malformed sched_switch fields"):
        list(read_trace(bad))
    st_ = ReadStats()
    assert len(list(read_trace(bad, lenient=True, stats=st_))) == 1 and st_.bad_lines == 1
    # a text trace cut inside its last line (a copy stopped midway): the line was whole
    whole = gzip.decompress((DATA / "tracefs_tgid.txt.gz").read_bytes())
    cut = tmp_path / "cut.txt"
    cut.write_bytes(whole[: whole.index(b"sched_switch:", 20_000) + 40])
    lines = cut.read_bytes().count(b"\n") + 1
    with pytest.raises(TraceError, match=rf"cut.txt:{lines}: the input ends inside this line"):
        list(read_trace(cut))
    bad.write_text(bad.read_text().rstrip("\n"))  # (or one without its last newline)
    with pytest.raises(TraceError, match=r"t.txt:2: the input ends inside this line"):
        list(read_trace(bad))
    with pytest.raises(TraceError, match="no such file"):
        list(read_trace(tmp_path / "missing.txt"))


def test_trace_cmd_reports_tlb_flush_through_its_plugin(tmp_path: Path) -> None:
    """trace-cmd report prints tlb_flush through libtraceevent's plugin_tlb (Debian's
    trace-cmd depends on libtraceevent1-plugin): `pages=N reason=NAME (CODE)`, and no NAME
    for code 4, "remote ipi send", which the plugin's enum lacks. Each line reads as the
    kernel's own `pages:N reason:NAME (CODE)` does, whatever the kernel's capitals; a name
    that is not its code's, or no known name without a code, is refused with its line."""
    from activemm.trace.events import TlbFlush

    head = "            bash-30829 [000]  3924.6979{:02d}: tlb_flush:            "
    kernel = [
        "pages:-1 reason:flush on task switch (0)",
        "pages:2 reason:remote ipi send (4)",
        "pages:1 reason:local mm shootdown (3)",
        "pages:-1 reason:remote shootdown (1)",
    ]
    plugin = [
        "pages=-1 reason=flush on task switch (0)",
        "pages=2 reason= (4)",
        "pages=1 reason=local mm shootdown (3)",
        "pages=-1 reason=remote shootdown (1)",
    ]

    def flushes(bodies: list[str]) -> list[tuple[int, str, bool]]:
        f = tmp_path / "t.txt"
        f.write_text("".join(head.format(i) + b + "\n" for i, b in enumerate(bodies)))
        out = [e for e in read_trace(f) if isinstance(e, TlbFlush)]
        assert len(out) == len(bodies)
        return [(e.pages, e.reason, e.cr3_load) for e in out]

    assert flushes(plugin) == flushes(kernel)
    assert [r for _, r, _ in flushes(plugin)] == [b.split("reason:")[1] for b in kernel]
    # Linux 7.2 capitalises (seen on Debian's 7.2.13): "local MM shootdown", "remote IPI
    # send"; 6.14's reason 5, TLB_REMOTE_WRONG_CPU, prints as 0x5 on 6.17 (no name in the
    # tracepoint's table), "remote wrong CPU" on 7.2
    newer = [
        "pages:-1 reason:flush on task switch (0)",
        "pages:2 reason:remote IPI send (4)",
        "pages:1 reason:local MM shootdown (3)",
        "pages:-1 reason:remote shootdown (1)",
    ]
    assert flushes(newer) == flushes(kernel)
    wrong_cpu = ["pages:0 reason:0x5 (5)", "pages:0 reason:remote wrong CPU (5)"]
    assert [r for _, r, _ in flushes(wrong_cpu)] == ["remote wrong cpu (5)"] * 2
    for bad in ("pages:-1 reason:flush on task swtch (0)", "pages=1 reason=local shootdown (3)",
                "pages:1 reason:flush"):  # fmt: skip
        with pytest.raises(TraceError, match=r"t\.txt:2: malformed tlb_flush fields"):
            flushes([kernel[0], bad])


def test_a_prev_state_no_kernel_prints_is_refused(tmp_path: Path) -> None:
    """prev_state is R, R+ or state letters joined by "|" (S D T t X Z P I since 4.14; x K W
    N on older kernels and in trace-cmd's sched_switch plugin), with "+" when preempted, or
    a number in raw fields: each of those reads as it was printed, in either sched_switch
    layout. Any other letter is a garbled line, refused with its number, not read as a
    sleep."""

    def line(i: int, state: str) -> str:
        return (
            f"  a-5 [000] d..2. 1.{i:04d}: sched_switch: prev_comm=a prev_pid=5 prev_prio=120 "
            f"prev_state={state} ==> next_comm=b next_pid=6 next_prio=120\n"
        )

    good = ["R", "R+", "S", "D|K", "S|W", "x", "I", "P", "t", "D+", "64"]
    f = tmp_path / "t.txt"
    f.write_text("".join(line(i, st) for i, st in enumerate(good)))
    states = [e.prev_state for e in read_trace(f) if isinstance(e, SchedSwitch)]
    assert states[:-1] == good[:-1] and states[-1] != "64"  # (a raw 64 is a letter)
    for bad in ("Q", "S|", "R|S", "s"):
        f.write_text(line(0, "S") + line(1, bad))
        with pytest.raises(TraceError, match=r"t\.txt:2: malformed sched_switch fields"):
            list(read_trace(f))
    # trace-cmd report's own layout (its sched_switch plugin)
    plugin = "  a-5 [000] 1.{:04d}: sched_switch: a:5 [120] {} ==> b:6 [120]\n"
    f.write_text(plugin.format(0, "W") + plugin.format(1, "R+"))
    assert [e.prev_state for e in read_trace(f) if isinstance(e, SchedSwitch)] == ["W", "R+"]
    f.write_text(plugin.format(0, "W") + plugin.format(1, "Q"))
    with pytest.raises(TraceError, match=r"t\.txt:2: malformed sched_switch fields"):
        list(read_trace(f))


# What trace-cmd 3.1 prints for a trace.dat: report -f (the symbols the file keeps),
# report -N (kernel formats), report -N -l (the latency layout: CPU and irq flags in one
# column, comms cut to 8 characters); addresses as the 6.12 capture of a test had them
REPORT_F = """ffffffff81000000 _text
ffffffff810ada50 __pfx_switch_mm_irqs_off
ffffffff810ada60 switch_mm_irqs_off
ffffffff810adf60 __pfx_leave_mm
ffffffff810c5040 mm_init
ffffffff810c73a0 copy_process
ffffffff810ca000 dup_mm
"""
REPORT_N = """cpus=2
     rcu_preempt-18    [001]     4.316264: sched_switch:  prev_comm=rcu_preempt prev_pid=18 \
prev_prio=120 prev_state=I ==> next_comm=init next_pid=155 next_prio=120
     rcu_preempt-18    [001]     4.316413: mmswitch:      (ffffffff810ada64) prev=0x0 next=0x1
          <idle>-0     [000]     4.316500: tlb_flush:     pages:-1 reason:remote shootdown (1)
            init-1     [000]     4.317095: mminit:        \
(ffffffff810c5040 <- ffffffff810c73df) ret=0xffff88800406f380
            init-1     [000]     4.317869: tlb_flush:     pages:-1 reason:local mm shootdown (3)
"""
REPORT_L = """cpus=2
rcu_pree-18      1d..2.     4.316264: sched_switch:  prev_comm=rcu_preempt prev_pid=18 \
prev_prio=120 prev_state=I ==> next_comm=init next_pid=155 next_prio=120
rcu_pree-18      1d..2.     4.316413: mmswitch:      (ffffffff810ada64) prev=0x0 next=0x1
  <idle>-0       0d.h1.     4.316500: tlb_flush:     pages:-1 reason:remote shootdown (1)
    init-1       0.....     4.317095: mminit:        \
(ffffffff810c5040 <- ffffffff810c73df) ret=0xffff88800406f380
    init-1       0d..1.     4.317869: tlb_flush:     pages:-1 reason:local mm shootdown (3)
"""


def _fake_trace_cmd(tmp_path: Path, report_l: str = REPORT_L) -> Path:
    """A trace-cmd on PATH that prints REPORT_F, REPORT_N or `report_l` as asked."""
    fake = tmp_path / "bin" / "trace-cmd"
    fake.parent.mkdir(exist_ok=True)
    for name, body in (("f", REPORT_F), ("n", REPORT_N), ("l", report_l)):
        (tmp_path / f"report-{name}.txt").write_text(body)
    fake.write_text(
        '#!/bin/sh\n[ "$1" = report ] || exit 1\n'
        f'case "$*" in *" -f"*) cat {tmp_path}/report-f.txt;;'
        f' *" -l "*) cat {tmp_path}/report-l.txt;;'
        f' *" -N "*) cat {tmp_path}/report-n.txt;; *) exit 1;; esac\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return fake


def test_trace_dat_goes_through_trace_cmd(tmp_path: Path) -> None:
    """A trace.dat is read through trace-cmd report: its events by their kernel formats, the
    irq flags of the latency layout's same line (a flush IPI's tlb_flush is in a hardirq),
    comms whole, and kprobe addresses named from the symbols the file keeps, a return probe's
    `(function <- return address)` the other way round from tracefs's `(caller <- function)`.
    Without trace-cmd: the package to install."""
    from activemm.trace.events import TlbFlush

    dat = tmp_path / "trace.dat"
    dat.write_bytes(b"\x17\x08\x44tracing6\x00 binary")
    fake = _fake_trace_cmd(tmp_path)
    env_path = os.environ["PATH"]
    try:
        os.environ["PATH"] = f"{fake.parent}:{env_path}"
        events = list(read_trace(dat))
        switch, mmswitch, ipi, mminit, local = events
        assert isinstance(switch, SchedSwitch) and switch.comm == "rcu_preempt"
        assert switch.prev_state == "I" and switch.next_pid == 155
        assert isinstance(mmswitch, Probe) and mmswitch.function == "switch_mm_irqs_off"
        assert mmswitch.offset == 4 and not mmswitch.returned and mmswitch.args["next"] == "0x1"
        assert isinstance(mminit, Probe) and mminit.function == "mm_init" and mminit.returned
        assert mminit.caller == "copy_process" and mminit.args["ret"] == "0xffff88800406f380"
        assert isinstance(ipi, TlbFlush) and ipi.hardirq
        assert isinstance(local, TlbFlush) and not local.hardirq
        # the two layouts disagreeing is an error naming the line, not events made up
        _fake_trace_cmd(tmp_path, REPORT_L.replace("4.316500", "4.316501"))
        with pytest.raises(TraceError, match=r"trace.dat:4: trace-cmd report printed different"):
            list(read_trace(dat))
        _fake_trace_cmd(tmp_path, REPORT_L.rsplit("\n", 2)[0] + "\n")
        with pytest.raises(TraceError, match=r"trace.dat:6: trace-cmd report printed more lines"):
            list(read_trace(dat))
        # trace-cmd failing: its last word, not a traceback or half a trace taken as whole
        fake.write_text("#!/bin/sh\necho 'trace-cmd: trace.dat: not a trace file' >&2\nexit 1\n")
        with pytest.raises(TraceError, match=r"report failed: trace-cmd: trace.dat: not a trace"):
            list(read_trace(dat))
        os.environ["PATH"] = str(tmp_path / "empty")
        with pytest.raises(TraceError, match="apt-get install trace-cmd"):
            list(read_trace(dat))
    finally:
        os.environ["PATH"] = env_path


# perf script's text of a perf.data (-F comm,pid,tid,cpu,time,event,trace --ns): an exited
# task's last switch, its CR3 load and an IPI it takes before it, as perf prints them once
# the task's pid is gone (`:-1`, tid -1); and what perf's Python scripting prints for each
# sample: CPU, time in ns, common_flags, preemption depth, migrate-disable depth
PERF_SCRIPT = """\
         program   167/169   [000]     6.050894554: sched:sched_process_exit: comm=program \
pid=169 prio=120
             :-1   167/-1    [000]     6.050990000:            tlb:tlb_flush: pages:-1 \
reason:remote shootdown (1)
             :-1   167/-1    [000]     6.051016015:       sched:sched_switch: prev_comm=program \
prev_pid=169 prev_prio=120 prev_state=X ==> next_comm=worker next_pid=175 next_prio=120
             :-1   167/-1    [000]     6.051041253:            tlb:tlb_flush: pages:-1 \
reason:flush on task switch (0)
          worker   165/175   [000]     6.051057246:            tlb:tlb_flush: pages:1 \
reason:local mm shootdown (3)
          worker   165/175   [001]     6.051060000: PERF_RECORD_LOST lost 17
"""
PERF_FLAGS = """\
0 6050894554 1 2 0
0 6050990000 9 1 0
0 6051016015 1 3 1
0 6051041253 1 3 0
0 6051057246 4 0 0
"""


# `perf report --stats`: the whole recording's records by kind, then each event's
PERF_STATS = """
Aggregated stats:
           TOTAL events:      41689
            LOST events:          1  ( 0.0%)
          SAMPLE events:      39568  (94.9%)
sched:sched_switch stats:
          SAMPLE events:       2853
    LOST_SAMPLES events:          4
"""


def _fake_perf(tmp_path: Path, flags: str = PERF_FLAGS, stats: str = PERF_STATS) -> Path:
    """A perf on PATH whose `perf script` prints PERF_SCRIPT, and with -s, `flags`; whose
    `perf report --stats` prints `stats`."""
    fake = tmp_path / "bin" / "perf"
    fake.parent.mkdir(exist_ok=True)
    (tmp_path / "script.txt").write_text(PERF_SCRIPT)
    (tmp_path / "flags.txt").write_text(flags)
    (tmp_path / "stats.txt").write_text(stats)
    fake.write_text(
        f'#!/bin/sh\n[ "$1" = report ] && {{ cat {tmp_path}/stats.txt; exit 0; }}\n'
        '[ "$1" = script ] || exit 1\n'
        f'case "$*" in *" -s "*) cat {tmp_path}/flags.txt;; *) cat {tmp_path}/script.txt;; esac\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return fake


def test_perf_data_goes_through_perf_script_with_its_irq_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A perf.data is read through perf script, each sample given the irq flags perf's
    Python scripting reads from it (perf script prints none): a flush IPI's tlb_flush is in
    a hardirq, the task's own is not; a switch's migrate-disable depth comes along. The
    samples an exited task runs once its pid is gone (`:-1 -1`: the IPI it took, its last
    switch and that switch's CR3 load) are that task's, the CPU's current one. A loss perf
    places (PERF_RECORD_LOST) is a lost-events mark on its CPU; one it does not
    (LOST_SAMPLES, counted in the aggregated stats only) refuses the file. The two reads
    disagreeing is an error naming the sample; without perf, the package to install."""
    from activemm.trace.events import LostEvents, ProcessExit, TlbFlush

    data = tmp_path / "perf.data"
    data.write_bytes(b"PERFILE2" + bytes(56))
    fake = _fake_perf(tmp_path)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    events = list(read_trace(data))
    exit_, ipi, switch, load, local, lost = events
    assert isinstance(lost, LostEvents) and (lost.cpu, lost.count) == (1, 17)
    assert isinstance(exit_, ProcessExit) and exit_.pid == 169 and exit_.tgid == 167
    assert isinstance(ipi, TlbFlush) and ipi.hardirq and (ipi.pid, ipi.comm) == (169, "program")
    assert isinstance(switch, SchedSwitch) and (switch.pid, switch.comm) == (169, "program")
    assert switch.prev_pid == 169 and switch.migrate_disabled == 1
    assert isinstance(load, TlbFlush) and load.cr3_load and not load.hardirq
    assert (load.pid, load.comm) == (169, "program")  # the switch's own CR3 load
    assert isinstance(local, TlbFlush) and local.pid == 175 and not local.hardirq
    _fake_perf(tmp_path, stats=PERF_STATS.replace("TOTAL", "LOST_SAMPLES"))
    with pytest.raises(TraceError, match=r"perf.data: perf lost 41689 samples .*\(perf record -m"):
        list(read_trace(data))
    # disagreeing reads: an error naming the sample, not flags put on the wrong line
    _fake_perf(tmp_path, PERF_FLAGS.replace("6051016015", "6051016016"))
    with pytest.raises(TraceError, match=r"perf.data:3: perf script and its Python script"):
        list(read_trace(data))
    _fake_perf(tmp_path, PERF_FLAGS.rsplit("\n", 2)[0] + "\n")
    with pytest.raises(TraceError, match=r"perf.data:5: perf's Python scripting read fewer"):
        list(read_trace(data))
    # perf built without Python: its own message
    fake.write_text(
        '#!/bin/sh\ncase "$*" in *" -s "*) echo "Error: Couldn\'t find script" >&2; exit 255;;'
        f" *) cat {tmp_path}/script.txt;; esac\n"
    )
    with pytest.raises(TraceError, match=r"perf script -s failed: Error: Couldn't find"):
        list(read_trace(data))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(TraceError, match="apt-get install linux-perf"):
        list(read_trace(data))


def test_irq_flags_print_as_tracefs_prints_them() -> None:
    """kernel/trace/trace_output.c trace_print_lat_fmt(): irqs off (d), need-resched (N with
    the preempt-resched bit, n without, p that alone), hardirq h, softirq s, both H, NMI z
    (Z with hardirq), then the preemption and migrate-disable depths in hex."""
    from activemm.trace.readers import irq_flags

    assert irq_flags(0x00, 0, 0) == "....."
    assert irq_flags(0x01 | 0x08, 1, 0) == "d.h1."
    assert irq_flags(0x01 | 0x04 | 0x20 | 0x08 | 0x10, 2, 1) == "dNH21"
    assert irq_flags(0x04, 0, 0) == ".n..." and irq_flags(0x20, 0, 0) == ".p..."
    assert irq_flags(0x40 | 0x08, 0xF, 0) == "..Zf." and irq_flags(0x40, 0, 0) == "..z.."
    assert irq_flags(0x02, 0, 3) == "X...3"


def _independent_cases(name: str) -> Counter[str]:
    """Count context-switch cases straight from the text and the task snapshot: a task is
    "kernel" (mm == NULL) if it is pid 0, a kernel thread in the snapshot, or past its own
    sched_process_exit line (exit_mm() ran; it may still be preempted and run again);
    everything else in this workload is a user task."""
    snap = load_task_snapshot(DATA / f"{name}.tasks")
    exited: set[int] = set()
    cases: Counter[str] = Counter()
    for ln in text(name).splitlines():
        if " task_newtask: " in ln:
            exited.discard(int(ln.split(" task_newtask: pid=")[1].split()[0]))
        elif " sched_process_exit: " in ln:
            exited.add(int(ln.split(" pid=")[1].split()[0]))
        elif " sched_switch: " in ln:
            f = dict(kv.split("=", 1) for kv in ln.split("sched_switch: ")[1].split() if "=" in kv)
            pp, np_ = int(f["prev_pid"]), int(f["next_pid"])
            pk = pp == 0 or (pp in snap and snap[pp].kthread) or pp in exited
            nk = np_ == 0 or (np_ in snap and snap[np_].kthread) or np_ in exited
            cases[f"{'kernel' if pk else 'user'}->{'kernel' if nk else 'user'}"] += 1
    return cases


def test_replay_counts_switch_cases_like_an_independent_count() -> None:
    name = "tracefs_tgid"
    snap = load_task_snapshot(DATA / f"{name}.tasks")
    events = read_trace(DATA / f"{name}.txt.gz")
    ncpus, events = peek_cpus(events)
    _, rs = replay(events, [PRESETS["linux-6.17-x86_64"]], ncpus, snap, sanitize_every=1)
    got = rs["linux-6.17-x86_64"].metrics.switches
    want = _independent_cases(name)
    for case in ("kernel->kernel", "user->kernel", "kernel->user", "user->user"):
        assert got[case] == want[case], case


@pytest.mark.parametrize("name", TRACES)
def test_replay_every_trace_under_every_preset(name: str) -> None:
    events = list(read_trace(DATA / f"{name}.txt.gz"))
    ncpus = max(e.cpu for e in events) + 1
    _, rs = replay(iter(events), list(PRESETS.values()), ncpus, sanitize_every=1)
    switches = len(event_lines(name, "sched_switch"))
    for r in rs.values():
        counted = sum(
            r.metrics.switches[c]
            for c in ("kernel->kernel", "user->kernel", "kernel->user", "user->user")
        )
        assert counted + r.stats.anomalies["switch to the current task"] == switches
    # refcount mode: lazy references are counted; shootdown: none, IPIs instead
    assert rs["linux-6.17-powerpc-radix"].metrics.lazy_local == 0
    assert rs["linux-6.17-x86_64"].metrics.lazy_local > 0
    # the 1999 rules take a reference for every switch into a task without an mm
    old, new = rs["linux-2.3.13"].metrics, rs["linux-6.17"].metrics
    assert old.lazy_local + old.lazy_remote > new.lazy_local + new.lazy_remote


def test_replay_with_invlpgb_global_asids() -> None:
    """INVLPGB never changes a switch. Under the preset (a global ASID for an mm running on
    more than three CPUs) this 2-CPU trace gets none, and every figure is the plain 6.17
    one; with the threshold at 0 the mms running on a CPU at a fork's or an exit's IPI flush
    get one, their later flushes are broadcast, and fewer flush IPIs remain."""
    snap = load_task_snapshot(DATA / "tracefs_tgid.tasks")
    inv = PRESETS["linux-6.17-x86_64-invlpgb"]
    out = {}
    for key, cfg in (
        ("plain", PRESETS["linux-6.17-x86_64"]),
        ("invlpgb", inv),
        ("low", inv.with_knobs({"global_asid_threshold": 0})),
    ):
        ncpus, events = peek_cpus(read_trace(DATA / "tracefs_tgid.txt.gz"))
        _, rs = replay(events, [cfg], ncpus, snap, sanitize_every=1)
        out[key] = rs[cfg.label].metrics.summary()
    plain, invlpgb, low = out["plain"], out["invlpgb"], out["low"]
    assert ncpus == 2 and "broadcast_flushes" not in plain
    assert invlpgb.pop("broadcast_flushes") == 0 and invlpgb.pop("global_asids") == 0
    assert invlpgb == plain
    assert low["switches"] == plain["switches"]
    assert low["global_asids"] > 0 and low["broadcast_flushes"] > 0
    assert low["flush_ipis"] < plain["flush_ipis"]


def test_replay_set_changes_the_presets_it_applies_to() -> None:
    """`--set nr_dyn_asids=1`: one ASID slot per CPU, so every CR3 load flushes (a load is of
    an mm other than the one in the slot, or a reload of a stale one), while the loads are
    the same; the powerpc column, to which it does not apply, is untouched. A setting that
    applies to none of the presets is a one-line error."""
    trace, snap = str(DATA / "tracefs_tgid.txt.gz"), str(DATA / "tracefs_tgid.tasks")
    presets = ["-p", "linux-6.17-x86_64", "-p", "linux-6.17-powerpc-radix"]
    runs = {}
    for key, extra in (("base", []), ("one", ["--set", "nr_dyn_asids=1"])):
        r = cli("replay", trace, "--tasks", snap, "--json", *presets, *extra)
        assert r.returncode == 0, r.stderr
        runs[key] = json.loads(r.stdout)["configs"]
    base, one = runs["base"]["linux-6.17-x86_64"], runs["one"]["linux-6.17-x86_64"]
    assert one.pop("settings") == {"nr_dyn_asids": 1} and "settings" not in base
    assert one["cr3_loads"] == base["cr3_loads"] == one["cr3_flushes"] > base["cr3_flushes"]
    assert one["switches"] == base["switches"]
    assert runs["one"]["linux-6.17-powerpc-radix"] == runs["base"]["linux-6.17-powerpc-radix"]
    bad = cli("replay", trace, *presets, "--set", "global_asid_threshold=0")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "applies to none of the presets compared" in bad.stderr


def test_replay_columns_of_one_preset_under_two_settings() -> None:
    """`-p PRESET:NAME=N` is a column of its own beside the plain preset: each is what a
    replay of that configuration alone gives (its own run with --set), the loads saved are
    counted against the same no-lazy baseline, and its own setting wins over --set's.
    Mistakes are one-line errors: a setting that does not apply to the preset, the same
    configuration twice, a malformed setting."""
    trace, snap = str(DATA / "tracefs_tgid.txt.gz"), str(DATA / "tracefs_tgid.tasks")

    def configs(*args: str) -> dict[str, Any]:
        r = cli("replay", trace, "--tasks", snap, "--json", *args)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["configs"]

    x86, one = "linux-6.17-x86_64", "linux-6.17-x86_64:nr_dyn_asids=1"
    both = configs("-p", x86, "-p", one)
    assert list(both) == [x86, one]
    alone = configs("-p", x86, "--set", "nr_dyn_asids=1")[x86]
    assert both[one] == alone
    assert both[x86] == configs("-p", x86)[x86]
    assert both[one]["cr3_flushes"] == both[one]["cr3_loads"] > both[x86]["cr3_flushes"]
    won = configs("-p", x86 + ":nr_dyn_asids=12", "--set", "nr_dyn_asids=1")
    assert won[x86 + ":nr_dyn_asids=12"]["settings"] == {"nr_dyn_asids": 12}
    for args, says in (
        (["-p", "alpha:nr_dyn_asids=2"], "nr_dyn_asids does not apply to alpha"),
        (["-p", x86, "-p", x86 + ":nr_dyn_asids=6"], "the same configuration as another -p"),
        (["-p", x86 + ":nr_dyn_asids"], "expected NAME=N"),
    ):
        r = cli("replay", trace, *args)
        assert r.returncode == 2 and says in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32), st.floats(0.0, 0.3))
def test_replay_survives_damaged_traces(seed: int, drop: float) -> None:
    """Lines dropped and shuffled locally (lost events, racy timestamps): the replay
    resynchronises, the sanitizer stays quiet, nothing crashes."""
    rnd = random.Random(seed)
    lines = [ln for ln in text("tracefs_tgid").splitlines() if not ln.startswith("#")]
    kept = [ln for ln in lines if rnd.random() >= drop]
    for i in range(0, len(kept) - 3, 7):
        j = i + rnd.randrange(3)
        kept[i], kept[j] = kept[j], kept[i]
    from activemm.trace.readers import parse_lines

    st_ = ReadStats()
    events = parse_lines(iter(kept), "damaged", None, st_, lenient=True)
    _, rs = replay(
        events,
        [PRESETS["linux-6.17-x86_64"], PRESETS["linux-6.17-shootdown"]],
        2,
        sanitize_every=1,
    )
    assert all(r.m.booted for r in rs.values())


def test_replay_counts_the_frees_preempt_rt_leaves_to_rcu() -> None:
    """A trace of Debian's 6.12 PREEMPT_RT kernel replayed under the plain and the RT preset:
    the switches and zombies are the same, the RT preset leaves the final lazy drops to RCU
    callbacks, at least as many as the kernel's rcuc/N threads freed in the trace (counted in
    the text; callbacks still waiting when it ended come on top), and the plain one reports
    no such row."""
    capture = DATA / "captures" / "linux-6.12-rt-smp2-everything"
    with gzip.open(capture / "trace.txt.gz", "rt") as f:
        rcuc = sum("(__mmdrop+" in line and line.lstrip().startswith("rcuc/") for line in f)
    presets = ["-p", "linux-6.12-x86_64", "-p", "linux-6.12-x86_64-rt"]
    r = subprocess.run(
        [sys.executable, "-m", "activemm", "replay", str(capture), "--json", *presets],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    plain, rt = json.loads(r.stdout)["configs"].values()
    assert "rcu_deferred_frees" not in plain
    assert rcuc > 100 and rcuc <= rt["rcu_deferred_frees"] <= rcuc + 8
    assert plain["switches"] == rt["switches"]
    assert plain["zombies"]["count"] == rt["zombies"]["count"]
    # deferred frees outlive the finish_task_switch() that would have freed them
    assert rt["zombies"]["median_lifetime_us"] > plain["zombies"]["median_lifetime_us"]


def test_replay_cli_json_and_atomic_output(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "activemm",
            "replay",
            str(DATA / "perf_script.txt.gz"),
            "-p",
            "linux-6.17-x86_64",
            "-p",
            "linux-6.17-shootdown",
            "--json",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert json.loads(out.read_text()) == d
    cfg = d["configs"]["linux-6.17-shootdown"]
    for key in (
        "switches",
        "switch_mm",
        "cr3_loads",
        "lazy_mm_count_ops",
        "shootdown_ipis",
        "zombies",
        "cost_cycles",
    ):
        assert key in cfg
    assert {"trace", "events", "anomalies", "configs"} <= set(d)
    bad = tmp_path / "bad.txt"
    bad.write_text("garbage\n")
    out2 = tmp_path / "never.json"
    r = subprocess.run(
        [sys.executable, "-m", "activemm", "replay", str(bad), "-o", str(out2)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "bad.txt:1:" in r.stderr and "Traceback" not in r.stderr
    assert not out2.exists()


def test_replay_table_on_an_80_column_terminal_keeps_rows_whole() -> None:
    """Four presets on 80 columns: the preset names may fold, but each row is one line with
    its label and every configuration's number, as --json has them (a folded label read as a
    row of its own: "switches" beside the kernel->kernel count)."""
    import io

    from rich.console import Console

    from activemm.report.compare import table

    presets = ["linux-6.1-x86_64", "alpha", "linux-6.17-shootdown", "linux-2.3.13"]
    args = [str(DATA / "tracefs_tgid.txt.gz"), "--tasks", str(DATA / "tracefs_tgid.tasks")]
    r = cli("replay", *args, "--json", *(a for p in presets for a in ("-p", p)))
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    out = io.StringIO()
    Console(file=out, width=80).print(table(result))
    lines = out.getvalue().splitlines()
    assert all(len(ln) <= 80 for ln in lines)
    cells = {}
    for ln in lines:
        parts = [p.strip() for p in ln.split("│")[1:-1]]
        if len(parts) == 5 and parts[0]:
            cells[parts[0]] = parts[1:]
    cfgs = [result["configs"][p] for p in presets]
    assert cells["switches kernel->kernel"] == [
        f"{c['switches']['kernel->kernel']:,}" for c in cfgs
    ]
    assert cells["lazy mm_count atomics, cross-CPU"] == [
        f"{c['lazy_mm_count_ops']['remote']:,}" for c in cfgs
    ]
    assert cells["estimated cost (cycles)*"] == [f"{c['cost_cycles']:,}" for c in cfgs]
    assert cells["max lifetime (µs)"] == [
        "-"
        if c["zombies"]["max_lifetime_us"] is None
        else f"{c['zombies']['max_lifetime_us']:,.1f}"
        for c in cfgs
    ]


def _to_perfetto(name: str, compact: bool) -> bytes:
    """Convert a text trace into a Perfetto trace: one bundle per run of events on one CPU,
    sched_switch either as ordinary events or in the compact_sched encoding."""
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

    events = list(read_trace(DATA / f"{name}.txt.gz"))
    trace = pb.Trace()
    bundle = None
    last_ts: dict[int, int] = {}
    for e in events:
        if bundle is None or bundle.cpu != e.cpu:
            bundle = trace.packet.add().ftrace_events
            bundle.cpu = e.cpu
            last_ts[e.cpu] = 0
        ns = round(e.ts * 1e9)
        if isinstance(e, SchedSwitch) and compact:
            cs = bundle.compact_sched
            cs.switch_timestamp.append(ns - last_ts[e.cpu])
            last_ts[e.cpu] = ns
            cs.switch_prev_state.append(
                {"R": 0, "S": 1, "D": 2, "Z": 32, "X": 16}.get(e.prev_state[0], 0)
                if e.prev_state != "R+"
                else 256
            )
            cs.switch_next_pid.append(e.next_pid)
            cs.switch_next_prio.append(120)
            cs.intern_table.append(e.next_comm)
            cs.switch_next_comm_index.append(len(cs.intern_table) - 1)
            continue
        ev = bundle.event.add()
        ev.timestamp, ev.pid = ns, e.pid
        if isinstance(e, SchedSwitch):
            s = ev.sched_switch
            s.prev_comm, s.prev_pid, s.next_comm, s.next_pid = (
                e.prev_comm,
                e.prev_pid,
                e.next_comm,
                e.next_pid,
            )
            s.prev_state = {"R": 0, "S": 1, "D": 2, "Z": 32, "X": 16}.get(e.prev_state[0], 0)
    return trace.SerializeToString()


@pytest.mark.parametrize("compact", [False, True])
def test_perfetto_trace_reads_like_the_text_it_came_from(tmp_path: Path, compact: bool) -> None:
    p = tmp_path / "t.pftrace"
    p.write_bytes(_to_perfetto("tracefs_plain", compact))
    st_ = ReadStats()
    got = [(e.cpu, e.next_pid) for e in read_trace(p, stats=st_) if isinstance(e, SchedSwitch)]
    want = [
        (e.cpu, e.next_pid)
        for e in read_trace(DATA / "tracefs_plain.txt.gz")
        if isinstance(e, SchedSwitch)
    ]
    assert st_.fmt == "perfetto" and len(got) == len(event_lines("tracefs_plain", "sched_switch"))
    assert sorted(got) == sorted(want)
    # and it replays
    _, rs = replay(read_trace(p), [PRESETS["linux-6.17-x86_64"]], 2)
    assert sum(rs["linux-6.17-x86_64"].metrics.switches.values()) > 0
    cut = tmp_path / "cut.pftrace"
    cut.write_bytes(p.read_bytes()[:-7])
    with pytest.raises(TraceError, match="truncated"):
        list(read_trace(cut))


@pytest.mark.parametrize(
    ("files", "args", "message"),
    [
        (
            {"tasks.txt": "12 (bash) S 1\n"},
            ["--tasks", "{tasks.txt}"],
            "tasks.txt:1: expected a /proc/PID/task/TID/stat line",
        ),
        ({"costs.toml": "ipi = -5\n"}, ["--costs", "{costs.toml}"], "costs.toml: 'ipi' is not"),
        ({"costs.toml": "bogus = 1\n"}, ["--costs", "{costs.toml}"], "costs.toml: 'bogus' is not"),
        ({}, ["--format", "ctf"], "unknown format 'ctf'"),
        ({}, ["--preset", "linux-9"], "unknown preset 'linux-9'"),
    ],
)
def test_replay_refuses_bad_options_in_one_line(
    tmp_path: Path, files: dict[str, str], args: list[str], message: str
) -> None:
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    for name in files:
        args = [a.replace("{" + name + "}", str(tmp_path / name)) for a in args]
    r = subprocess.run(
        [sys.executable, "-m", "activemm", "replay", str(DATA / "perf_script.txt.gz"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr


def test_a_trace_with_counter_clock_timestamps_is_refused_with_the_reason(tmp_path: Path) -> None:
    """trace_clock counter or x86-tsc print a bare count where seconds were expected (the
    kernel prints seconds only for clocks in nanoseconds): the error says so and what to
    record with, instead of calling the file no scheduler trace."""
    line = (
        "            bash-1234  [000] d..2. 123456789012: sched_switch: prev_comm=bash "
        "prev_pid=1234 prev_prio=120 prev_state=S ==> next_comm=swapper/0 next_pid=0 "
        "next_prio=120"
    )
    r = cli("replay", str(_write(tmp_path, ["# tracer: nop", line])))
    assert r.returncode == 2
    assert r.stderr.startswith(f"activemm: error: {tmp_path / 't.txt'}:2: timestamps without")
    assert "'local' clock" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_perf_script_without_a_cpu_column_is_refused_with_the_reason(tmp_path: Path) -> None:
    """perf record of one command (not system-wide) samples no CPU, and perf script then
    prints no [CPU] column: a switch cannot be placed on a CPU, so the trace is refused, one
    line saying how to record it, instead of calling the file no scheduler trace. The same
    lines with the column read (the committed perf script text, its column taken out)."""
    with_cpu = text("perf_script").splitlines()
    without = [re.sub(r"^(\s*\S+\s+\d+)\s+\[\d+\]", r"\1", ln) for ln in with_cpu]
    assert without != with_cpu
    r = cli("replay", str(_write(tmp_path, without)))
    assert r.returncode == 2
    assert r.stderr.startswith(f"activemm: error: {tmp_path / 't.txt'}:1: perf script text")
    assert "perf record -a" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert cli("replay", str(_write(tmp_path, with_cpu))).returncode == 0


@pytest.mark.parametrize("codec", ["plain", "gzip"])
def test_a_file_with_no_bytes_is_refused(codec: str, tmp_path: Path) -> None:
    """Zero bytes (plain, or a gzip of nothing) is no trace, unlike a header with no events:
    exit status 2 and one line naming the file, for `replay` as for `timeline`."""
    f = tmp_path / "nothing.txt"
    f.write_bytes(b"" if codec == "plain" else gzip.compress(b""))
    for cmd in (["replay", str(f)], ["timeline", str(f), "-o", str(tmp_path / "t.json")]):
        r = subprocess.run(
            [sys.executable, "-m", "activemm", *cmd], capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip() == f"activemm: error: {f}: empty (no bytes at all): not a trace"
    assert not (tmp_path / "t.json").exists()


def test_an_empty_trace_replays_to_zero_events(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("# tracer: nop\n#\n")
    r = subprocess.run(
        [sys.executable, "-m", "activemm", "replay", str(empty), "--json", "-p", "linux-6.17"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["events"] == 0


def test_printk_messages_spanning_lines_are_read_past(tmp_path: Path) -> None:
    """trace_printk() text may hold newlines (TRAPpy's own test traces have such bprint
    lines); the continuation is part of that event, not a malformed line."""
    trace = tmp_path / "printk.txt"
    trace.write_text(
        "cpus=2\n"
        "  ls-4734  [001] 106439.675571: bprint:  select_task_rq_fair: fig: cpu=0\n"
        " gid=4\n"
        "  ls-4734  [001] 106439.675591: sched_switch:  ls:4734 [120] R ==> migration/1:18 [0]\n"
    )
    stats = ReadStats()
    events = list(read_trace(str(trace), stats=stats))
    assert [type(e).__name__ for e in events] == ["SchedSwitch"]
    assert stats.unknown["bprint (continued)"] == 1
    bad = tmp_path / "bad.txt"
    bad.write_text(trace.read_text().replace("bprint", "sched_wakeup"))
    with pytest.raises(TraceError, match=r"bad.txt:3: malformed line"):
        list(read_trace(str(bad)))


def test_android_systrace_html_is_read_for_its_ftrace_text(tmp_path: Path) -> None:
    """systrace/atrace reports (public traces from many-CPU phones) wrap ftrace text in HTML."""
    html = tmp_path / "trace.html"
    html.write_text(
        "<!DOCTYPE html>\n<html><head><title>systrace</title></head><body>\n"
        '<script class="trace-data" type="application/text">\n'
        '{"traceEvents": []}\n'
        "</script>\n"
        '<script class="trace-data" type="application/text">\n'
        "# tracer: nop\n"
        "#\n"
        "  <idle>-0     (-----) [007] d..2  100.000100: sched_switch: prev_comm=swapper/7 "
        "prev_pid=0 prev_prio=120 prev_state=R ==> next_comm=surfaceflinger next_pid=600 "
        "next_prio=112\n"
        "</script>\n</body></html>\n"
    )
    stats = ReadStats()
    events = list(read_trace(str(html), stats=stats))
    assert len(events) == 1 and isinstance(events[0], SchedSwitch)
    assert events[0].cpu == 7 and events[0].next_pid == 600 and events[0].line == 9


def test_raw_sched_switch_fields_of_older_traces_are_read() -> None:
    """trace-cmd prints raw fields when it cannot use an event's print format: no "==>",
    prev_state the number the kernel reports (one TASK_REPORT bit; 0 running; a bit above
    them all, TASK_REPORT_MAX or an older kernel's TASK_STATE_MAX, preempted). The file holds
    the first lines of a public trace, ARM-software/lisa tests/lisa/traces/trace.txt
    (trace-cmd report text of a 6-CPU Juno board, kernel 4.x)."""
    trace = DATA / "lisa_trace_head.txt"
    stats = ReadStats()
    events = [e for e in read_trace(str(trace), stats=stats) if isinstance(e, SchedSwitch)]
    assert stats.header_cpus == 6 and stats.unknown == {"sched_wakeup": 1}
    assert [(e.prev_pid, e.prev_state, e.next_comm, e.next_pid) for e in events] == [
        (1701, "P", "swapper/1", 0),  # 64: TASK_PARKED's bit since 4.14 (TASK_DEAD before)
        (0, "R", "sh", 1642),
        (1642, "R+", "kworker/u12:1", 46),
        (46, "S", "sh", 1642),
        (0, "R", "sshd", 1639),
        (1639, "D", "swapper/1", 0),
    ]
    r = _replay_json(str(trace), "-p", "linux-6.17-x86_64")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    switches = out["configs"]["linux-6.17-x86_64"]["switches"]
    lines = trace.read_text().count("sched_switch:")
    assert sum(v for k, v in switches.items() if k != "user->user same mm") == lines


def test_task_rename_with_and_without_its_pid(tmp_path: Path) -> None:
    """include/trace/events/task.h: task_rename printed pid=, oldcomm=, newcomm= until a
    later kernel dropped the pid ("tracing: Remove pid in task_rename tracing output": the
    task renamed is the one tracing). Lines of Debian's 6.12 and 6.17 kernels: the renamed
    task is the pid printed, else the line's own; a line naming neither comm is still
    refused."""
    head = "           {c}-{p}     (    {p}) [001] .....     4.3574{n}: task_rename: "
    trace = tmp_path / "t.txt"
    trace.write_text(
        head.format(c="cat", p=147, n=38) + "oldcomm=init newcomm=exe oom_score_adj=0\n"
        + head.format(c="sh", p=150, n=39) + "pid=151 oldcomm=sh newcomm=ls oom_score_adj=0\n"
    )  # fmt: skip
    renames = [(e.pid, e.rename_pid, e.newcomm) for e in read_trace(str(trace))]
    assert renames == [(147, 147, "exe"), (150, 151, "ls")]
    trace.write_text(head.format(c="cat", p=147, n=38) + "pid=147 newcomm=exe\n")
    with pytest.raises(TraceError, match=r"t\.txt:1: malformed task_rename fields"):
        list(read_trace(str(trace)))


def test_a_tracepoint_probe_named_like_its_tracepoint_is_a_probe(tmp_path: Path) -> None:
    """A tracepoint probe (`t sched_switch $arg*` in dynamic_events, kernel 6.10+) is an event
    called sched_switch whose fields open with its location: a probe, not a malformed switch
    (the example of the kernel's Documentation/trace/fprobetrace.rst)."""
    trace = tmp_path / "tprobe.txt"
    trace.write_text(
        "# tracer: nop\n"
        "               sh-70      [000] d..2.  3912.083993: sched_switch: prev_comm=sh "
        "prev_pid=70 prev_prio=120 prev_state=S ==> next_comm=swapper/0 next_pid=0 "
        "next_prio=120\n"
        "               sh-70      [000] d..3.  3912.083995: sched_switch: "
        "(__probestub_sched_switch+0x4/0x10) preempt=0 prev=0xffff88800664e100 "
        "next=0xffffffff828229c0 prev_state=1\n"
    )
    events = list(read_trace(str(trace)))
    assert [type(e).__name__ for e in events] == ["SchedSwitch", "Probe"]
    probe = events[1]
    assert isinstance(probe, Probe) and probe.function == "__probestub_sched_switch"
    assert probe.args["prev_state"] == "1"


def test_uprobe_hits_are_unknown_events_not_kernel_probes(tmp_path: Path) -> None:
    """A uprobe's (and uretprobe's) location is a user address, as tests/data/programs/
    unseen10.c's hits show: counted as an unknown event of its name, not a kernel probe."""
    trace = tmp_path / "uprobes.txt"
    trace.write_text(
        "# tracer: nop\n"
        "         program-248     (    248) [000] DNZff    11.950873: probed: (0x401d70)\n"
        "         program-248     (    248) [000] d..1.    11.950990: back: "
        "(0x401136 <- 0x401d70) arg1=0x5\n"
    )
    stats = ReadStats()
    assert list(read_trace(str(trace), stats=stats)) == []
    assert stats.unknown == {"probed": 1, "back": 1}


def _replay_json(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "activemm", "replay", *args, "--json"],
        input=stdin,
        capture_output=True,
        timeout=180,
    )


def test_replay_jobs_share_the_configurations_and_change_nothing(tmp_path: Path) -> None:
    """--jobs: each forked worker reads the trace and replays its share of the
    configurations; the comparison is the very same object. Standard input cannot be read
    twice: it is replayed in one process. A bad line found by a worker is the same one-line
    error."""
    trace = str(DATA / "tracefs_tgid.txt.gz")
    one = _replay_json(trace, "--tasks", str(DATA / "tracefs_tgid.tasks"))
    two = _replay_json(trace, "--tasks", str(DATA / "tracefs_tgid.tasks"), "-j", "2")
    assert one.returncode == two.returncode == 0, two.stderr
    first, second = json.loads(one.stdout), json.loads(two.stdout)
    assert first.pop("jobs") == 1 and second.pop("jobs") == 2  # a small file: one by default
    assert first == second
    assert first["events"] > 1000
    plain = gzip.decompress((DATA / "tracefs_tgid.txt.gz").read_bytes())
    piped = _replay_json("-", "--tasks", str(DATA / "tracefs_tgid.tasks"), "-j", "2", stdin=plain)
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["configs"] == first["configs"]
    assert json.loads(piped.stdout)["jobs"] == 1
    big = DATA / "captures" / "linux-6.1-smp4-parallel" / "trace.txt.gz"
    lines = gzip.decompress(big.read_bytes()).decode().splitlines()
    bad = tmp_path / "bad.txt"
    k = len(lines) - 10  # past the first 5,000 events this process reads to count CPUs
    bad.write_text(
        "\n".join([*lines[:k], "    garbage-1 [000] 1.0: sched_switch: nonsense", *lines[k:]])
    )
    r = _replay_json(str(bad), "-j", "2")
    err = r.stderr.decode().strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "bad.txt" in err[0], r.stderr


def test_replay_shares_the_work_by_default_on_big_trace_files(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without -j, a trace file over AUTO_JOBS_BYTES is replayed by one process per CPU (at
    most one per configuration), a smaller one in this process; the JSON says how many."""
    from typer.testing import CliRunner

    from activemm import cli as cli_module

    monkeypatch.setattr(cli_module, "AUTO_JOBS_BYTES", 1000)
    trace = str(DATA / "tracefs_tgid.txt.gz")
    r = CliRunner().invoke(cli_module.app, ["replay", trace, "--json", "-p", "linux-6.17"])
    assert r.exit_code == 0, r.output
    # linux-6.17 and the no-lazy baseline: two configurations
    assert json.loads(r.stdout)["jobs"] == min(os.cpu_count() or 1, 2)
    monkeypatch.setattr(cli_module, "AUTO_JOBS_BYTES", 1 << 40)
    r = CliRunner().invoke(cli_module.app, ["replay", trace, "--json", "-p", "linux-6.17"])
    assert r.exit_code == 0 and json.loads(r.stdout)["jobs"] == 1


# a tracefs sched_switch line to fill in (hand-made timelines)
SWITCH_LINE = (
    "{c}-{p} [{cpu:03d}] {ts}: sched_switch: prev_comm={c} prev_pid={p} prev_prio=120 "
    "prev_state={s} ==> next_comm={nc} next_pid={np} next_prio=120"
)


def test_exec_from_a_thread_whose_leader_runs_on_under_the_threads_pid() -> None:
    """de_thread() on a kernel that can preempt the dying leader after exit_notify() (RT,
    preempt=full): thread 11 of group 10 execs; after exchange_tids() it switches out as pid
    10 while the leader, preempted in do_exit(), is switched in again and out for the last
    time as pid 11. The replay gives the leader the thread's old pid when the thread first
    shows up under the leader's (no task is made up for pid 11), and the exec keeps the
    thread."""
    sw = SWITCH_LINE
    lines = [
        sw.format(c="swapper/0", p=0, cpu=0, ts="1.000000", s="R", nc="app", np=10),
        "app-10 [000] 1.000100: task_newtask: pid=11 comm=app clone_flags=3d0f00 oom_score_adj=0",
        sw.format(c="swapper/1", p=0, cpu=1, ts="1.000200", s="R", nc="app", np=11),
        "app-10 [000] 1.000300: sched_process_exit: comm=app pid=10 prio=120",
        sw.format(c="app", p=10, cpu=0, ts="1.000400", s="R+", nc="swapper/0", np=0),
        sw.format(c="app", p=10, cpu=1, ts="1.000500", s="R+", nc="swapper/1", np=0),
        sw.format(c="swapper/0", p=0, cpu=0, ts="1.000600", s="R", nc="app", np=11),
        sw.format(c="app", p=11, cpu=0, ts="1.000700", s="X", nc="swapper/0", np=0),
        sw.format(c="swapper/1", p=0, cpu=1, ts="1.000800", s="R", nc="app", np=10),
        "true-10 [001] 1.000900: sched_process_exec: filename=/bin/true pid=10 old_pid=11",
        sw.format(c="true", p=10, cpu=1, ts="1.001000", s="S", nc="swapper/1", np=0),
    ]
    r = replay_lines(lines, "linux-6.1-x86_64-rt", 2)
    anomalies = r.stats.anomalies
    assert anomalies["de_thread: old leader runs on under the thread's pid"] == 1
    assert not any(k.startswith(("resynchronised", "pid reused", "refused")) for k in anomalies)
    exec_d, leader = r.tasks[10], r.tasks[11]
    assert exec_d.mm is not None and not exec_d.exiting and exec_d.mm.mm_users == 1
    assert leader.state is TaskState.GONE and leader is not exec_d
    assert sum(1 for t in r.m.state.tasks if t.comm in ("app", "true")) == 2  # none made up


def test_exec_from_a_thread_whose_leader_switches_out_last_under_the_threads_pid() -> None:
    """de_thread(): thread 12 of group 10 execs; exchange_tids() gives it pid 10 and the
    dying leader pid 12, so when the leader's final switch comes after the exchange, the
    trace shows it as `prev_pid=12 prev_state=X` on the leader's CPU while the thread still
    runs on its own. The replay follows the exchange: the thread keeps running, execs as
    pid 10, and nothing is resynchronised."""
    sw = SWITCH_LINE
    lines = [
        sw.format(c="swapper/0", p=0, cpu=0, ts="1.000000", s="R", nc="app", np=10),
        "app-10 [000] 1.000100: task_newtask: pid=11 comm=app clone_flags=3d0f00 oom_score_adj=0",
        "app-10 [000] 1.000200: task_newtask: pid=12 comm=app clone_flags=3d0f00 oom_score_adj=0",
        sw.format(c="swapper/1", p=0, cpu=1, ts="1.000300", s="R", nc="app", np=11),
        sw.format(c="swapper/2", p=0, cpu=2, ts="1.000400", s="R", nc="app", np=12),
        "app-11 [001] 1.000500: sched_process_exit: comm=app pid=11 prio=120",
        sw.format(c="app", p=11, cpu=1, ts="1.000600", s="X", nc="swapper/1", np=0),
        "app-10 [000] 1.000700: sched_process_exit: comm=app pid=10 prio=120",
        sw.format(c="app", p=12, cpu=0, ts="1.000800", s="X", nc="swapper/0", np=0),
        "true-10 [002] 1.000900: sched_process_exec: filename=/bin/true pid=10 old_pid=12",
        sw.format(c="true", p=10, cpu=2, ts="1.001000", s="S", nc="swapper/2", np=0),
    ]
    r = replay_lines(lines, "linux-6.17-x86_64", 3)
    anomalies = r.stats.anomalies
    assert anomalies["de_thread: old leader's last switch under the thread's pid"] == 1
    assert "resynchronised CPU" not in anomalies and "dead task seen running" not in anomalies
    exec_d = r.tasks[10]
    assert exec_d.mm is not None and not exec_d.exiting and exec_d.mm.mm_users == 1
    assert r.m.state.rqs[2].curr.is_idle and exec_d.cpu == 2  # it ran on CPU 2 throughout
    # the group's old mm: its three users gone (two exits, one exec), only a lazy CPU's
    # borrowed reference may remain
    old = r.tasks[12].mm or r.tasks[12].active_mm
    assert old is None or old.mm_users == 0


def _made_up(anomalies: Counter[str]) -> list[str]:
    """The anomalies of a replay that had to make the model agree by force: a CPU
    resynchronised, a task adopted for a pid it did not fork, an operation refused, a dead
    task or one running elsewhere switched in, a switch to the current task."""
    made = ("resynchronised", "pid reused", "refused", "dead task", "task running", "switch to")
    return [k for k in anomalies if k.startswith(made)]


def test_a_pid_taken_again_before_its_exited_tasks_final_switch_names_both_tasks() -> None:
    """A process's pid is free once its parent reaped it (release_task()), which can come
    before the exited task's final switch: exit_notify() made it a zombie, and its CPU then
    stalled (a vCPU the host did not run) or it was preempted. A fork, here clone3() with
    set_tid as `unseen49.c` does (its clone_flags carry no exit signal), takes the pid at
    once (pid_max lowered makes it happen by itself), and the new task runs on another CPU
    while the old one is still current on its own. Both go by the pid: the new one is a
    new task with a new mm, and the old one switches out for the last time under it,
    leaving its mm, whose last real user it was, to the idle task that borrows it (a zombie
    mm). The old task's sched_process_free, an RCU callback, comes after all that and is
    not the new task's."""
    sw = SWITCH_LINE
    lines = [
        sw.format(c="swapper/0", p=0, cpu=0, ts="1.000000", s="R", nc="app", np=10),
        "app-10 [000] 1.000100: task_newtask: pid=11 comm=app clone_flags=1200011 oom_score_adj=0",
        sw.format(c="swapper/1", p=0, cpu=1, ts="1.000200", s="R", nc="app", np=11),
        "app-11 [001] 1.000300: sched_process_exit: comm=app pid=11 prio=120",
        # CPU 1 stalls; app reaps pid 11 and clone3()s a new child at it
        "app-10 [000] 1.000400: task_newtask: pid=11 comm=app clone_flags=0 oom_score_adj=0",
        sw.format(c="app", p=10, cpu=0, ts="1.000500", s="S", nc="app", np=11),
        sw.format(c="app", p=11, cpu=1, ts="1.000600", s="Z", nc="swapper/1", np=0),
        "rcu_preempt-16 [000] 1.000700: sched_process_free: comm=app pid=11 prio=120",
    ]
    r = replay_lines(lines, "linux-6.1-x86_64", 2)
    anomalies = r.stats.anomalies
    assert anomalies["pid taken again before its exited task's final switch"] == 1
    assert not _made_up(anomalies), anomalies
    parent, new = r.tasks[10], r.tasks[11]
    assert r.m.state.rqs[0].curr is new and not new.exiting
    assert new.mm is not None and new.mm is not parent.mm and new.mm.mm_users == 1
    old = [t for t in r.m.state.tasks if t.comm == "app" and t not in (parent, new)]
    assert len(old) == 1 and old[0].state is TaskState.GONE  # made once, reaped at its switch
    idle1 = r.m.state.rqs[1].curr
    assert idle1.is_idle and idle1.active_mm is not None and idle1.active_mm.mm_users == 0
    zombie = idle1.active_mm
    assert zombie not in (parent.mm, new.mm) and not zombie.freed and zombie.mm_count == 1


def _exited_11_preempted() -> list[str]:
    """app (pid 10) on CPU 0 forks pid 11, which runs, exits and is preempted past its exit
    ("R+"), back to app: the start of the tests of a pid taken again below."""
    sw = SWITCH_LINE
    return [
        sw.format(c="swapper/0", p=0, cpu=0, ts="1.000000", s="R", nc="app", np=10),
        "app-10 [000] 1.000100: task_newtask: pid=11 comm=app clone_flags=1200011 oom_score_adj=0",
        sw.format(c="app", p=10, cpu=0, ts="1.000200", s="S", nc="app", np=11),
        "app-11 [000] 1.000300: sched_process_exit: comm=app pid=11 prio=120",
        sw.format(c="app", p=11, cpu=0, ts="1.000400", s="R+", nc="app", np=10),
    ]


def test_a_pid_taken_again_while_its_exited_task_is_preempted_names_the_one_on_its_cpu() -> None:
    """PREEMPT_RT preempts a task past exit_notify() ("R+"), and its parent may reap it
    meanwhile: `unseen49.c` on 6.1-rt gave app (pid 10) vforking a new child at its dead
    child's pid 11 (clone_flags 4100) while the old 11 waited, preempted, on CPU 0; app's
    vfork wait ("D") switched to the old 11, whose final switch went straight to the new one
    ("11 X ==> 11"). The switch in on the CPU where the old task was preempted is the old
    task's, and the one after its final switch the new task's; the new one borrows app's mm
    (vfork: CLONE_VM) and app's mm keeps its users."""
    sw = SWITCH_LINE
    lines = [
        *_exited_11_preempted(),
        # app reaps 11 and vforks a new child, which takes the pid
        "app-10 [000] 1.000500: task_newtask: pid=11 comm=app clone_flags=4100 oom_score_adj=0",
        sw.format(c="app", p=10, cpu=0, ts="1.000600", s="D", nc="app", np=11),
        sw.format(c="app", p=11, cpu=0, ts="1.000700", s="X", nc="app", np=11),
    ]
    r = replay_lines(lines, "linux-6.1-x86_64-rt", 2)
    anomalies = r.stats.anomalies
    assert anomalies["pid taken again before its exited task's final switch"] == 1
    assert not _made_up(anomalies), anomalies
    parent, new = r.tasks[10], r.tasks[11]
    assert r.m.state.rqs[0].curr is new and not new.exiting
    assert new.mm is parent.mm and parent.mm is not None and parent.mm.mm_users == 2
    old = [t for t in r.m.state.tasks if t.comm == "app" and t not in (parent, new)]
    assert len(old) == 1 and old[0].state is TaskState.GONE and old[0].mm is None
    assert old[0].active_mm is None  # its own mm, borrowed through exit, handed back
    assert all(m.freed for m in r.m.state.mms if m not in (parent.mm,) and not m.is_init_mm)


def _two_tasks_of_pid_11() -> list[str]:
    """The exited pid 11 preempted on CPU 0, moved to CPU 2 (sched_migrate_task) while a new
    task at its pid is placed on CPU 1 (sched_wakeup_new): see the test below."""
    sw = SWITCH_LINE
    return [
        *_exited_11_preempted(),
        "app-10 [000] 1.000500: task_newtask: pid=11 comm=app clone_flags=100 oom_score_adj=0",
        "app-10 [000] 1.000510: sched_wakeup_new: comm=app pid=11 prio=120 target_cpu=001",
        "<idle>-0 [002] 1.000600: sched_migrate_task: comm=app pid=11 prio=120 orig_cpu=0 "
        "dest_cpu=2",
        sw.format(c="swapper/2", p=0, cpu=2, ts="1.000700", s="R", nc="app", np=11),
        sw.format(c="app", p=11, cpu=2, ts="1.000800", s="X", nc="swapper/2", np=0),
        sw.format(c="swapper/1", p=0, cpu=1, ts="1.000900", s="R", nc="app", np=11),
    ]


def test_of_two_tasks_of_one_pid_the_one_switched_in_is_the_one_on_that_runqueue() -> None:
    """Two tasks go by pid 11: the exited one, preempted on CPU 0 before its final switch,
    and the new one a clone(CLONE_VM) of app made at its pid. sched_wakeup_new places the
    new one on CPU 1, and sched_migrate_task moves "pid 11" from CPU 0 to CPU 2: the exited
    one (`unseen49.c` on 6.12 with 4 CPUs, preempt=full). The switch in on CPU 2 is the
    exited task's, its final switch follows, and the one on CPU 1 is the new task. The
    reader keeps those two events aside (ReadStats.placements): they change nothing in the
    model. Without them the replay takes the task on the CPU where the exited one last ran,
    and gets CPU 2 wrong."""
    lines = _two_tasks_of_pid_11()
    r = replay_lines(lines, "linux-6.12-x86_64", 3)
    anomalies = r.stats.anomalies
    assert anomalies["pid taken again before its exited task's final switch"] == 1
    assert not _made_up(anomalies), anomalies
    parent, new = r.tasks[10], r.tasks[11]
    assert r.m.state.rqs[1].curr is new and new.mm is parent.mm and not new.exiting
    old = [t for t in r.m.state.tasks if t.comm == "app" and t not in (parent, new)]
    assert len(old) == 1 and old[0].state is TaskState.GONE and old[0].cpu == 2
    assert r.m.state.rqs[2].curr.is_idle
    assert parent.mm is not None and parent.mm.mm_users == 2  # app and its CLONE_VM child


def _new_11_woken_on_cpu0(clone_flags: str = "0") -> list[str]:
    """After _exited_11_preempted(): app reaps 11 and forks a new task at the pid (with
    `clone_flags`, hex), woken on CPU 0 where the exited one waits, preempted: both wait on
    one runqueue."""
    return [
        *_exited_11_preempted(),
        f"app-10 [000] 1.000500: task_newtask: pid=11 comm=app clone_flags={clone_flags} "
        "oom_score_adj=0",
        "app-10 [000] 1.000510: sched_wakeup_new: comm=app pid=11 prio=120 target_cpu=000",
    ]


def test_of_two_tasks_of_one_pid_on_one_runqueue_the_one_that_sleeps_next_is_the_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both tasks of pid 11 wait on CPU 0: the exited one, preempted past its exit, and a
    new one clone3()d at its pid and woken there. No tracepoint names the one switched in
    (on 6.12 with 6 CPUs the kernel mostly ran the new one first); what it does before it
    switches out again does: it sleeps ("S"), which an exited task does not, so it is the
    new one, and the exited one makes its final switch after it (exited_picks, which a
    validation reads ahead of its replay, and a replay reads LOOKAHEAD events ahead of
    itself for). Without them the replay takes the exited one."""
    sw = SWITCH_LINE
    lines = [
        *_new_11_woken_on_cpu0(),
        sw.format(c="app", p=10, cpu=0, ts="1.000600", s="S", nc="app", np=11),
        sw.format(c="app", p=11, cpu=0, ts="1.000700", s="S", nc="app", np=11),
        sw.format(c="app", p=11, cpu=0, ts="1.000800", s="X", nc="swapper/0", np=0),
    ]
    stats = ReadStats()
    events = read_lines(lines, stats)
    picks = exited_picks(events)
    assert (picks.get(9), picks.get(10)) == (False, True)  # the two last switches to 11
    config = PRESETS["linux-6.12-x86_64"]
    _, rs = replay(events, [config], 1, placements=stats.placements, picks=picks)
    r = rs[config.label]
    assert not _made_up(r.stats.anomalies), r.stats.anomalies
    assert not r.stats.anomalies["exit inferred from prev_state"]
    parent, new = r.tasks[10], r.tasks[11]
    assert new.mm is not None and new.state is TaskState.RUNNABLE and not new.exiting
    old = [t for t in r.m.state.tasks if t.comm == "app" and t not in (parent, new)]
    assert len(old) == 1 and old[0].state is TaskState.GONE  # its final switch, after
    _, blind = replay(events, [config], 1, placements=stats.placements, picks={})
    b = blind[config.label]  # the exited one taken first: the new one "exits" at line 11
    assert b.stats.anomalies["exit inferred from prev_state"] == 1
    assert b.tasks[11].state is TaskState.GONE
    # a replay given no picks reads ahead for them: the sleep (line 10) one event past the
    # switch in (line 9) is as far as it needs to see
    for ahead, exited_first in ((1, False), (0, True)):
        monkeypatch.setattr(replay_module, "LOOKAHEAD", ahead)
        _, rs = replay(iter(events), [config], 1, placements=stats.placements)
        r = rs[config.label]
        assert (r.stats.anomalies["exit inferred from prev_state"] == 1) is exited_first


def _switch_from_11_to_11() -> list[str]:
    """After _new_11_woken_on_cpu0(): app sleeps, an 11 runs and is preempted ("R+")
    straight to the other 11, which makes its final switch ("X") back to it, and that one
    sleeps ("S")."""
    sw = SWITCH_LINE
    return [
        *_new_11_woken_on_cpu0(),
        sw.format(c="app", p=10, cpu=0, ts="1.000600", s="S", nc="app", np=11),
        sw.format(c="app", p=11, cpu=0, ts="1.000700", s="R+", nc="app", np=11),
        sw.format(c="app", p=11, cpu=0, ts="1.000800", s="X", nc="app", np=11),
        sw.format(c="app", p=11, cpu=0, ts="1.000900", s="S", nc="swapper/0", np=0),
    ]


def test_a_switch_from_a_pid_to_itself_switches_in_the_other_task_of_the_two() -> None:
    """The new task of pid 11 runs first and is preempted ("R+") with nothing to tell it
    apart; the kernel switches straight to the other 11, the exited one, whose final switch
    ("X") goes back to the new one, which then sleeps. __schedule() never switches a task to
    itself, so the first switch in was the new task's (`unseen49.c` on 6.12-cloud, 3 CPUs,
    preempt=full: a vfork child preempted in its exec). Without that the replay takes the
    exited one first, and the new one "exits" at the final switch."""
    lines = _switch_from_11_to_11()
    stats = ReadStats()
    events = read_lines(lines, stats)
    picks = exited_picks(events)
    assert (picks.get(9), picks.get(10), picks.get(11)) == (False, True, False)
    config = PRESETS["linux-6.12-x86_64"]
    _, rs = replay(events, [config], 1, placements=stats.placements, picks=picks)
    r = rs[config.label]
    assert not _made_up(r.stats.anomalies), r.stats.anomalies
    assert not r.stats.anomalies["exit inferred from prev_state"]
    new = r.tasks[11]
    assert new.mm is not None and new.state is TaskState.RUNNABLE and not new.exiting
    old = [t for t in r.m.state.tasks if t.comm == "app" and t not in (r.tasks[10], new)]
    assert len(old) == 1 and old[0].state is TaskState.GONE
    picks.pop(9)  # what the switch to itself settles: without it, the exited one first
    _, blind = replay(events, [config], 1, placements=stats.placements, picks=picks)
    assert blind[config.label].stats.anomalies["exit inferred from prev_state"] == 1


def test_a_replay_reading_ahead_keeps_the_picks_of_the_lines_it_has_not_passed() -> None:
    """read_ahead() gives each event out once `n` more have been fed to the picker, in
    order, and settles before it does; forget() lets go of the picks of lines passed, not
    of those ahead. The swap of the test above: its three picks, read two events ahead."""
    lines = _switch_from_11_to_11()
    events = read_lines(lines, ReadStats())
    picker = ExitedPicks()
    seen: dict[int, bool | None] = {}
    given = []
    for e in read_ahead(iter(events), picker, 2):
        given.append(e)
        seen[e.line] = picker.picks.get(e.line)
        picker.forget(e.line)
        assert all(line >= e.line for line in picker.picks)
    assert given == events
    # the switch in at 9 is settled at 10 (the switch to itself) once 11 says "X": two ahead
    assert (seen[9], seen[10], seen[11]) == (False, True, False)
    assert (seen[9], seen[10], seen[11]) == tuple(exited_picks(events)[n] for n in (9, 10, 11))


def test_reading_ahead_leaves_a_task_still_running_to_what_it_does_next() -> None:
    """app vforks at pid 11 and waits; an 11 is switched in on CPU 0 and app runs again on
    CPU 1 while it runs: by the vfork rule that 11 would be the child, but it then makes
    its final switch ("X"), which says more (the exited one). Reading the whole trace first
    (exited_picks) sees the final switch before the rule; a replay reading ahead, however
    few events, leaves the rule to wait while the task runs and picks the same."""
    sw = SWITCH_LINE
    lines = [
        *_new_11_woken_on_cpu0("4100"),
        sw.format(c="app", p=10, cpu=0, ts="1.000600", s="D", nc="app", np=11),
        sw.format(c="swapper/1", p=0, cpu=1, ts="1.000700", s="R", nc="app", np=10),
        sw.format(c="app", p=11, cpu=0, ts="1.000800", s="X", nc="swapper/0", np=0),
    ]
    events = read_lines(lines, ReadStats())
    assert exited_picks(events).get(9) is True
    for ahead in (0, 1, 2):
        picker = ExitedPicks()
        for _ in read_ahead(iter(events), picker, ahead):
            pass
        assert picker.picks.get(9) is True, ahead


def test_a_task_that_reaches_its_sched_process_exit_was_the_live_one_when_switched_in() -> None:
    """The task switched in for pid 11 reaches sched_process_exit and is preempted past it:
    the exited task of the pid passed its own already, so this one is the new task, even
    though its next switch out says nothing ("R+")."""
    sw = SWITCH_LINE
    lines = [
        *_new_11_woken_on_cpu0(),
        sw.format(c="app", p=10, cpu=0, ts="1.000600", s="S", nc="app", np=11),
        "app-11 [000] 1.000700: sched_process_exit: comm=app pid=11 prio=120",
        sw.format(c="app", p=11, cpu=0, ts="1.000800", s="R+", nc="app", np=10),
    ]
    picks = exited_picks(read_lines(lines, ReadStats()))
    assert picks.get(9) is False
    assert picks.get(4) is False  # the first 11's switch in, its exit after it too


def test_a_vfork_parent_that_runs_again_says_its_child_ran_in_between() -> None:
    """app vforks a new task at pid 11 while the exited 11 waits, preempted, on CPU 0, and
    waits for it ("D"); the 11 switched in is preempted ("R+") with nothing to tell which
    it was, and app runs again. A vfork() parent runs again only once its child has
    exec'd or exited (mm_release() completes vfork_done), so the child had run: that one
    switch in of pid 11 was the child's (`unseen49.c`, 6.12 with 3 CPUs, preempt=full: the
    last picks these recordings missed with markers). The exited one makes its final
    switch after, straight to the child, which exits."""
    sw = SWITCH_LINE
    lines = [
        *_new_11_woken_on_cpu0("4100"),
        sw.format(c="app", p=10, cpu=0, ts="1.000600", s="D", nc="app", np=11),
        sw.format(c="app", p=11, cpu=0, ts="1.000700", s="R+", nc="app", np=10),
        sw.format(c="app", p=10, cpu=0, ts="1.000800", s="S", nc="app", np=11),
        sw.format(c="app", p=11, cpu=0, ts="1.000900", s="X", nc="app", np=11),
        "app-11 [000] 1.001000: sched_process_exit: comm=app pid=11 prio=120",
        sw.format(c="app", p=11, cpu=0, ts="1.001100", s="X", nc="swapper/0", np=0),
    ]
    stats = ReadStats()
    events = read_lines(lines, stats)
    picks = exited_picks(events)
    assert [picks.get(n) for n in (9, 11, 12)] == [False, True, False]
    config = PRESETS["linux-6.12-x86_64"]
    _, rs = replay(events, [config], 1, placements=stats.placements, picks=picks)
    r = rs[config.label]
    assert not _made_up(r.stats.anomalies), r.stats.anomalies
    assert not r.stats.anomalies["exit inferred from prev_state"]
    app = r.tasks[10]
    assert app.mm is not None and app.mm.mm_users == 1  # the child's exit gave it back
    others = [t for t in r.m.state.tasks if t.comm == "app" and t is not app]
    assert len(others) == 2 and all(t.state is TaskState.GONE for t in others)
    # at that switch in (line 9): the child, on app's mm (vfork: CLONE_VM), not the
    # exited task with none, which the replay takes without the vfork's say
    upto = [e for e in events if e.line <= 9]
    _, rs = replay(upto, [config], 1, placements=stats.placements, picks=picks)
    assert rs[config.label].m.state.rqs[0].curr.mm is rs[config.label].tasks[10].mm
    picks.pop(9)
    _, blind = replay(upto, [config], 1, placements=stats.placements, picks=picks)
    assert blind[config.label].m.state.rqs[0].curr.mm is None


def test_of_two_tasks_of_one_pid_on_one_runqueue_its_stopper_moves_the_one_it_preempted() -> None:
    """Both tasks of pid 11 wait on CPU 0; the new one runs (its own flush says it lives)
    and CPU 0's stopper thread preempts it and moves it to CPU 1 (migration_cpu_stop(): an
    affinity change). The 11 switched in on CPU 0 after is the exited one, making its final
    switch, and the one on CPU 1 the new one. Load balancing would have moved the one that
    waited (the rule without the stopper): the new one would "exit" on CPU 0."""
    sw = SWITCH_LINE
    lines = [
        *_new_11_woken_on_cpu0(),
        sw.format(c="app", p=10, cpu=0, ts="1.000600", s="S", nc="app", np=11),
        "app-11 [000] 1.000650: tlb_flush: pages:1 reason:local mm shootdown (3)",
        sw.format(c="app", p=11, cpu=0, ts="1.000700", s="R+", nc="migration/0", np=12),
        "migration/0-12 [000] 1.000710: sched_migrate_task: comm=app pid=11 prio=120 "
        "orig_cpu=0 dest_cpu=1",
        sw.format(c="migration/0", p=12, cpu=0, ts="1.000720", s="S", nc="app", np=11),
        sw.format(c="app", p=11, cpu=0, ts="1.000730", s="X", nc="swapper/0", np=0),
        sw.format(c="swapper/1", p=0, cpu=1, ts="1.000740", s="R", nc="app", np=11),
        sw.format(c="app", p=11, cpu=1, ts="1.000800", s="S", nc="swapper/1", np=0),
    ]
    stats = ReadStats()
    events = read_lines(lines, stats)
    assert [p[3] for p in stats.placements[11]] == [False, True]  # wakeup_new, the stopper's
    config = PRESETS["linux-6.12-x86_64"]
    _, rs = replay(events, [config], 2, placements=stats.placements, picks=exited_picks(events))
    r = rs[config.label]
    assert not _made_up(r.stats.anomalies), r.stats.anomalies
    assert not r.stats.anomalies["exit inferred from prev_state"]
    new = r.tasks[11]
    assert new.cpu == 1 and new.mm is not None and new.state is TaskState.RUNNABLE
    old = [t for t in r.m.state.tasks if t.comm == "app" and t not in (r.tasks[10], new)]
    assert len(old) == 1 and old[0].state is TaskState.GONE
    unmarked = {pid: [(*p[:3], False) for p in ps] for pid, ps in stats.placements.items()}
    _, blind = replay(events, [config], 2, placements=unmarked, picks=exited_picks(events))
    assert blind[config.label].stats.anomalies["exit inferred from prev_state"] == 1


def test_a_fork_made_ahead_while_its_pid_still_lives_takes_it_at_its_task_newtask() -> None:
    """A clone3() with set_tid copies the mm (dup_mmap(), whose flush the replay forks at)
    before it takes its pid, and the task at that pid may not even have exited yet: on
    6.1-rt with 4 CPUs (`unseen49.c` seed 316) pid 11 still ran when its successor's
    dup_mmap() flushed, exited and was reaped before the successor's task_newtask. The
    child is made aside at the flush and goes by pid 11 from its task_newtask (the replay
    took the fork for a duplicate of the live task and dropped it: the next 5,000 switches
    of that recording went wrong)."""
    sw = SWITCH_LINE
    lines = [
        sw.format(c="swapper/0", p=0, cpu=0, ts="1.000000", s="R", nc="app", np=10),
        sw.format(c="swapper/1", p=0, cpu=1, ts="1.000010", s="R", nc="app", np=11),
        "app-10 [000] 1.000100: tlb_flush: pages:-1 reason:local mm shootdown (3)",
        "app-11 [001] 1.000200: sched_process_exit: comm=app pid=11 prio=120",
        sw.format(c="app", p=11, cpu=1, ts="1.000300", s="X", nc="swapper/1", np=0),
        "<idle>-0 [001] 1.000400: sched_process_free: comm=app pid=11 prio=120",
        "app-10 [000] 1.000500: task_newtask: pid=11 comm=app clone_flags=1200000 oom_score_adj=0",
        sw.format(c="app", p=10, cpu=0, ts="1.000600", s="S", nc="app", np=11),
    ]
    r = replay_lines(lines, "linux-6.1-x86_64", 2)
    anomalies = r.stats.anomalies
    assert r.stats.tlb["forks at their dup_mmap flush"] == 1
    assert anomalies["fork made ahead while the task at its pid still ran"] == 1
    assert not _made_up(anomalies), anomalies
    app, child = r.tasks[10], r.tasks[11]
    assert r.m.state.rqs[0].curr is child and child.state is TaskState.RUNNING
    assert child.mm is not None and child.mm is not app.mm and child.mm.mm_users == 1
    gone = [t for t in r.m.state.tasks if t.comm == "app" and t not in (app, child)]
    assert len(gone) == 1 and gone[0].state is TaskState.GONE  # the old 11, reaped


def test_a_fork_made_ahead_leaves_the_pid_to_an_exiting_task_until_its_task_newtask() -> None:
    """The same when the task at the pid is exiting already (exit_mmap()'s switch of its
    lazy CPU to init_mm, a CR3 load of its own, ran its exit) but has not switched out for
    the last time: the child made at its parent's dup_mmap() flush does not take the pid
    there, and the exiting task, preempted and back, is the one its switches name; the
    child goes by the pid from its task_newtask, after the old task was reaped (on 6.1-rt
    with 4 CPUs, `unseen49.c` seed 316, the child took the pid at the flush and a later
    switch in of the exiting task named the child)."""
    sw = SWITCH_LINE
    lines = [
        sw.format(c="swapper/0", p=0, cpu=0, ts="1.000000", s="R", nc="app", np=10),
        sw.format(c="swapper/1", p=0, cpu=1, ts="1.000010", s="R", nc="app", np=11),
        "app-11 [001] 1.000100: tlb_flush: pages:-1 reason:flush on task switch (0)",
        "app-10 [000] 1.000150: tlb_flush: pages:-1 reason:local mm shootdown (3)",
        sw.format(c="app", p=11, cpu=1, ts="1.000200", s="R+", nc="swapper/1", np=0),
        sw.format(c="swapper/1", p=0, cpu=1, ts="1.000250", s="R", nc="app", np=11),
        "app-11 [001] 1.000300: sched_process_exit: comm=app pid=11 prio=120",
        sw.format(c="app", p=11, cpu=1, ts="1.000350", s="X", nc="swapper/1", np=0),
        "<idle>-0 [001] 1.000400: sched_process_free: comm=app pid=11 prio=120",
        "app-10 [000] 1.000500: task_newtask: pid=11 comm=app clone_flags=1200000 oom_score_adj=0",
        sw.format(c="app", p=10, cpu=0, ts="1.000600", s="S", nc="app", np=11),
    ]
    stats = ReadStats()
    events = read_lines(lines, stats)
    config = PRESETS["linux-6.1-x86_64"]
    _, rs = replay(events, [config], 2, placements=stats.placements, picks=exited_picks(events))
    r = rs[config.label]
    anomalies = r.stats.anomalies
    assert r.stats.tlb["forks at their dup_mmap flush"] == 1
    assert not anomalies["pid taken again before its exited task's final switch"]
    assert not anomalies["exit inferred from prev_state"]
    assert not _made_up(anomalies), anomalies
    app, child = r.tasks[10], r.tasks[11]
    assert r.m.state.rqs[0].curr is child and child.state is TaskState.RUNNING
    assert child.mm is not None and child.mm is not app.mm and child.mm.mm_users == 1
    gone = [t for t in r.m.state.tasks if t.comm == "app" and t not in (app, child)]
    assert len(gone) == 1 and gone[0].state is TaskState.GONE and gone[0].mm is None


def test_a_task_from_before_the_trace_is_of_the_group_its_snapshot_names() -> None:
    """tracefs prints the record-tgid column from the pid's last recorded group when the
    trace is read (trace_find_tgid()): thread 41 of app (40), running on CPU 1 when the
    trace began, exits, and a thread of other (60) takes pid 41 again, so every line of
    either shows "(60)" (seen on `unseen49.c`'s traces). The snapshot says 41 is app's
    thread: it is adopted on app's mm, which its exit gives back and CPU 1 borrows after
    its final switch (the column alone would have made it other's thread, on other's
    mm)."""
    sw = "{c}-{p} ({g}) [{cpu:03d}] {ts}: sched_switch: prev_comm={c} prev_pid={p} " + (
        "prev_prio=120 prev_state={s} ==> next_comm={nc} next_pid={np} next_prio=120"
    )
    lines = [
        sw.format(c="other", p=60, g=60, cpu=0, ts="1.000000", s="R", nc="app", np=40),
        "app-41 (60) [001] 1.000100: sched_process_exit: comm=app pid=41 prio=120",
        sw.format(c="app", p=41, g=60, cpu=1, ts="1.000200", s="X", nc="swapper/1", np=0),
        "<idle>-0 (0) [001] 1.000300: sched_process_free: comm=app pid=41 prio=120",
        sw.format(c="app", p=40, g=40, cpu=0, ts="1.000400", s="S", nc="other", np=60),
        "other-60 (60) [000] 1.000500: task_newtask: pid=41 comm=other clone_flags=3d0f00 "
        "oom_score_adj=0",
    ]
    snapshot = {
        40: TaskInfo(40, "app", False),
        41: TaskInfo(40, "app", False),
        60: TaskInfo(60, "other", False),
    }
    _, replayers = replay(read_lines(lines), [PRESETS["linux-6.1-x86_64"]], 2, snapshot)
    r = replayers["linux-6.1-x86_64"]
    # (a task running when the trace began: its CPU taken up where the trace finds it)
    assert set(r.stats.anomalies) == {"resynchronised CPU"}, r.stats.anomalies
    app, other, thread = r.tasks[40], r.tasks[60], r.tasks[41]
    assert app.mm is not None and other.mm is not None and app.mm is not other.mm
    assert app.mm.mm_users == 1  # 41's use of app's mm, given back by its exit
    # the mm 41 ran on, borrowed by CPU 1's idle task after the exit's final switch
    assert r.m.state.rqs[1].curr.active_mm is app.mm
    assert other.mm.mm_users == 2 and thread.mm is other.mm  # other and its new thread 41


def test_a_parallel_replay_tells_two_tasks_of_one_pid_apart_as_one_process_does(
    tmp_path: Path,
) -> None:
    """--jobs: each worker's reader keeps the placements (sched_wakeup_new,
    sched_migrate_task) of its own reading, and its replay reads them: the trace above,
    replayed in two workers, gives the very same comparison as in one process, with nothing
    made up (without them a worker switched the wrong task of pid 11 in on CPU 2)."""
    trace = tmp_path / "pid11.txt"
    trace.write_text("\n".join(_two_tasks_of_pid_11()) + "\n")
    one = _replay_json(str(trace), "--cpus", "3", "-j", "1")
    two = _replay_json(str(trace), "--cpus", "3", "-j", "2")
    assert one.returncode == two.returncode == 0, two.stderr
    first, second = json.loads(one.stdout), json.loads(two.stdout)
    assert first.pop("jobs") == 1 and second.pop("jobs") == 2
    assert first == second
    assert first["anomalies"]["pid taken again before its exited task's final switch"] == 1
    assert not _made_up(Counter(first["anomalies"])), first["anomalies"]


def test_a_fork_made_at_its_dup_mmap_flush_gets_its_pid_only_at_its_task_newtask() -> None:
    """The replay forks at dup_mmap()'s flush, ahead of task_newtask (hints: the flush
    reaches the CPUs lazy on the parent's mm then), but the kernel hands the child its pid
    only after copy_mm() (alloc_pid(); a clone3() with set_tid waits there for that pid to be
    free, as `unseen49.c` does). Meanwhile another process's thread took the pid and died
    (6.1 with 4 CPUs, `unseen49.c` seed 5): that thread is its own task with its process's
    mm, and the fork's child goes by the pid from its task_newtask on, with its own mm."""
    sw = SWITCH_LINE
    lines = [
        sw.format(c="swapper/0", p=0, cpu=0, ts="1.000000", s="R", nc="app", np=10),
        sw.format(c="swapper/1", p=0, cpu=1, ts="1.000010", s="R", nc="other", np=20),
        "app-10 [000] 1.000100: tlb_flush: pages:-1 reason:local mm shootdown (3)",
        "other-20 [001] 1.000200: task_newtask: pid=11 comm=other clone_flags=3d0f00 "
        "oom_score_adj=0",
        sw.format(c="other", p=20, cpu=1, ts="1.000300", s="S", nc="other", np=11),
        "other-11 [001] 1.000400: sched_process_exit: comm=other pid=11 prio=120",
        sw.format(c="other", p=11, cpu=1, ts="1.000500", s="X", nc="other", np=20),
        "app-10 [000] 1.000600: task_newtask: pid=11 comm=app clone_flags=1200000 oom_score_adj=0",
        sw.format(c="app", p=10, cpu=0, ts="1.000700", s="S", nc="app", np=11),
    ]
    r = replay_lines(lines, "linux-6.1-x86_64", 2)
    anomalies = r.stats.anomalies
    assert r.stats.tlb["forks at their dup_mmap flush"] == 1
    assert anomalies["pid taken while a fork made ahead waited for it"] == 1
    assert not _made_up(anomalies), anomalies
    app, other, child = r.tasks[10], r.tasks[20], r.tasks[11]
    assert r.m.state.rqs[0].curr is child and r.m.state.rqs[1].curr is other
    assert child.comm == "app" and child.mm is not None and child.mm not in (app.mm, other.mm)
    thread = [t for t in r.m.state.tasks if t.comm == "other" and t is not other]
    assert len(thread) == 1 and thread[0].state is TaskState.GONE  # other's thread, reaped
    assert other.mm is not None and other.mm.mm_users == 1  # the thread's use given back


def test_an_exited_thread_switched_out_as_dead_that_runs_again_is_the_same_task() -> None:
    """A thread past exit_notify() (autoreaped: EXIT_DEAD) that calls schedule() already
    woken (TASK_RUNNING: on PREEMPT_RT, a sleeping-spinlock wait whose owner let go first)
    is switched out reading its exit_state, "X", as at its final switch, which comes
    later. Seen running again, it is the same task, with no mm since its exit_mm(): it
    borrows its CPU's mm lazily like any task without one, and no task is made up for it."""
    sw = SWITCH_LINE
    lines = [
        sw.format(c="swapper/0", p=0, cpu=0, ts="1.000000", s="R", nc="app", np=10),
        "app-10 [000] 1.000100: task_newtask: pid=11 comm=app clone_flags=3d0f00 oom_score_adj=0",
        sw.format(c="swapper/1", p=0, cpu=1, ts="1.000200", s="R", nc="app", np=11),
        "app-11 [001] 1.000300: sched_process_exit: comm=app pid=11 prio=120",
        sw.format(c="app", p=11, cpu=1, ts="1.000400", s="X", nc="swapper/1", np=0),
        sw.format(c="swapper/1", p=0, cpu=1, ts="1.000500", s="R", nc="app", np=11),
    ]
    final = [
        sw.format(c="app", p=11, cpu=1, ts="1.000600", s="X", nc="swapper/1", np=0),
        "rcuc/1-27 [001] 1.000700: sched_process_free: comm=app pid=11 prio=120",
    ]
    r = replay_lines(lines, "linux-6.1-x86_64-rt", 2)
    leader, thread = r.tasks[10], r.tasks[11]
    assert r.stats.anomalies["exited task switched out as dead (X) ran again"] == 1
    assert not any(
        k.startswith(("resynchronised", "pid reused", "refused", "dead task"))
        for k in r.stats.anomalies
    )
    assert thread.state is TaskState.RUNNING and thread.exiting and thread.mm is None
    assert thread.active_mm is leader.mm  # borrowed: swapper/1 handed it on
    assert leader.mm is not None and leader.mm.mm_users == 1
    assert leader.mm.mm_count == 2  # one for the real users, one for CPU 1's lazy use
    assert sum(1 for t in r.m.state.tasks if t.comm == "app") == 2  # none made up
    r = replay_lines(lines + final, "linux-6.1-x86_64-rt", 2)
    assert 11 not in r.tasks and r.tasks[10].mm is not None and r.tasks[10].mm.mm_count == 2
    assert r.m.state.rqs[1].curr.is_idle
