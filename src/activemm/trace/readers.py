"""Streaming readers for scheduler traces.

Formats (detected from the content; `fmt` overrides):
- "ftrace": tracefs text (`/sys/kernel/tracing/trace`, with or without the record-tgid and
  irq-flags columns) and `trace-cmd report` text (including its own sched_switch format);
- "perf": `perf script` text of `perf record -e 'sched:*' -e 'task:*'`;
- "tracedat": a binary trace.dat, read through `trace-cmd report` (Debian package trace-cmd);
- "perfdata": a perf.data of `perf record`, read through `perf script` (Debian package
  linux-perf), with each event's irq flags from perf's Python scripting;
- "perfetto": a Perfetto protobuf trace with ftrace sched events (`pip install perfetto`).
Any of these may be gzip, xz or zstd compressed; "-" is standard input. Lines are read one at a
time; events come out merged by timestamp through a bounded reorder window.
"""

from __future__ import annotations

import gzip
import heapq
import io
import lzma
import re
import shutil
import string
import subprocess
import sys
import tempfile
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import dropwhile, takewhile, zip_longest
from pathlib import Path
from typing import IO, cast

from activemm.errors import ActiveMmError
from activemm.trace.events import (
    HotplugStep,
    LostEvents,
    NewTask,
    Placement,
    Probe,
    ProcessExec,
    ProcessExit,
    ProcessFork,
    ProcessFree,
    SchedSwitch,
    TaskRename,
    TlbFlush,
    TraceEvent,
    state_letter,
    stopper_comm,
)
from activemm.trace.kallsyms import Symbols, SymbolsError
from activemm.trace.perfetto import looks_like_perfetto, perfetto_events

FORMATS = ("ftrace", "perf", "tracedat", "perfdata", "perfetto")
REORDER_WINDOW = 4096  # text traces: the kernel already merged the per-CPU buffers
PERFETTO_WINDOW = 65536  # Perfetto: per-CPU bundles, each spanning a while
# Events whose free text may span lines (trace_printk, trace_marker writes)
MULTILINE_EVENTS = frozenset({"bprint", "print", "bputs", "tracing_mark_write"})


class TraceError(ActiveMmError):
    """Unusable trace input: names the file and line."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {message}")


@dataclass
class ReadStats:
    """What the reader saw besides the events it yields."""

    lines: int = 0
    events: int = 0
    bad_lines: int = 0
    lost_markers: int = 0
    lost_events: int = 0
    unknown: Counter[str] = field(default_factory=Counter)
    # events the caller left out of the stream, by why (a capture whose ring buffer filled:
    # the events after where the first full CPU's trace ends, validate.full_buffer_cut)
    left_out: Counter[str] = field(default_factory=Counter)
    fmt: str = ""
    header_cpus: int = 0  # from "#P:N" (tracefs) or "cpus=N" (trace-cmd report)
    # pid -> the Placement of each sched_wakeup_new (where a new task is placed) and
    # sched_migrate_task: not events of the stream (nothing the model does), read only to
    # tell which of two tasks a pid names (Replayer.placements)
    placements: dict[int, list[Placement]] = field(default_factory=dict)


# tracefs/trace-cmd text up to the irq-flags column: "COMM-PID (TGID) [CPU] "
FTRACE_HEAD = r"\s*(?P<comm>.*?)-(?P<pid>\d+)\s+(?:\(\s*(?P<tgid>[\d-]+)\)\s+)?\[(?P<cpu>\d+)\]\s+"
FTRACE = re.compile(
    "^" + FTRACE_HEAD + r"(?:(?P<flags>\S{4,8})\s+)?(?P<ts>\d+\.\d+):\s+(?P<event>[^:\s]+):\s*"
    r"(?P<rest>.*)$"
)
# (the irq flags are perf script's own for no field: a perf.data read here has them put in
# after the CPU, as tracefs prints them, from perf's Python scripting)
PERF = re.compile(
    r"^\s*(?P<comm>.*?)\s+(?P<pid>-?\d+)(?:/(?P<tid>-?\d+))?\s+\[(?P<cpu>\d+)\]\s+"
    r"(?:(?P<flags>[.dX][.NnpLlBb][.hszHZ][.\da-f]\S{0,4})\s+)?"
    r"(?P<ts>\d+\.\d+):\s+(?:\d+\s+)?(?P<event>[\w-]+:[\w.-]+):\s*(?P<rest>.*)$"
)
# The common case of tracefs text, a sched_switch line, in two matches: the line up to the
# event's fields, then SWITCH_FIELDS from there (the general path matches FTRACE, then SWITCH on
# its fields; one pattern for both halves backtracks several times slower)
FTRACE_SWITCH = re.compile(
    FTRACE_HEAD + r"(?:(?P<flags>\S{4,8})\s+)?(?P<ts>\d+\.\d+):\s+sched_switch:\s*"
)
# (no "==>" and a number for prev_state: trace-cmd's raw fields, when it cannot use the event's
# print format, as in the older traces LISA tests with)
SWITCH_FIELDS = re.compile(
    r"prev_comm=(.*?) prev_pid=(-?\d+) prev_prio=-?\d+ prev_state=(\S+) "
    r"(?:==> )?next_comm=(.*?) next_pid=(-?\d+) next_prio=-?\d+"
)
# a tracefs/trace-cmd line whose timestamp is a bare count (trace_clock counter, x86-tsc)
COUNTER_CLOCK = re.compile(FTRACE_HEAD + r"(?:\S{4,8}\s+)?\d+:\s")
# perf script of a per-task recording: no [CPU] column (no PERF_SAMPLE_CPU in the samples)
PERF_NO_CPU = re.compile(r"^\s*.*?\s+-?\d+(?:/-?\d+)?\s+\d+\.\d+:\s+(?:\d+\s+)?[\w-]+:[\w.-]+:")
HEADER_CPUS = re.compile(r"(?:#P:|^cpus=)(\d+)")
# "[LOST EVENTS]" without a count: the kernel could not tell how many (the `trace` file read
# while tracing went on and the writer passed the reader)
LOST = re.compile(r"^\s*CPU:\s*(?P<cpu>\d+)\s+\[LOST (?:(?P<n>\d+) )?EVENTS\]")
# perf script --show-lost-events: a PERF_RECORD_LOST, the events the CPU's buffer had no room for
PERF_LOST = re.compile(
    r"^\s*.*?\s+-?\d+(?:/-?\d+)?\s+\[(?P<cpu>\d+)\]\s+(?:\S+\s+)?\d+\.\d+:\s+"
    r"PERF_RECORD_LOST lost (?P<n>\d+)"
)
SWITCH = re.compile(
    r"prev_comm=(?P<pc>.*) prev_pid=(?P<pp>-?\d+) prev_prio=-?\d+ prev_state=(?P<ps>\S+) "
    r"(?:==> )?next_comm=(?P<nc>.*) next_pid=(?P<np>-?\d+) next_prio=-?\d+"
)
# prev_state as kernels print it: R, R+ (preempted), or flags joined by "|" (S D T t X Z P I
# since 4.14; x K W N before; trace-cmd's sched_switch plugin also prints x and W), "+" when
# preempted; or a number in raw fields
STATE = re.compile(r"R\+?|[SDTtXZPIxKWN](?:\|[SDTtXZPIxKWN])*\+?|\d+")
SWITCH_TRACE_CMD = re.compile(
    r"(?P<pc>.*):(?P<pp>\d+) \[-?\d+\] (?P<ps>\S+) ==> (?P<nc>.*):(?P<np>\d+) \[-?\d+\]"
)
FORK = re.compile(r"comm=(?P<c>.*) pid=(?P<p>\d+) child_comm=(?P<cc>.*) child_pid=(?P<cp>\d+)")
NEWTASK = re.compile(r"pid=(?P<p>\d+) comm=(?P<c>.*) clone_flags=(?P<f>(?:0x)?[0-9a-fA-F]+)")
EXEC = re.compile(r"filename=(?P<f>.*) pid=(?P<p>\d+) old_pid=(?P<o>\d+)")
EXIT = re.compile(r"comm=(?P<c>.*) pid=(?P<p>\d+) prio=")
# later kernels (Debian's 6.17) print no pid: the renamed task is the one tracing (commit
# "tracing: Remove pid in task_rename tracing output")
RENAME = re.compile(
    r"(?:pid=(?P<p>\d+) )?oldcomm=(?P<o>.*) newcomm=(?P<n>.*?)(?: oom_score_adj=.*)?$"
)
# tlb_flush as the kernel prints it (`pages:N reason:NAME (CODE)`) and as trace-cmd report's
# tlb plugin (libtraceevent's plugin_tlb) does: `pages=N reason=NAME (CODE)`, with no NAME for
# "remote ipi send", which the plugin does not know
TLB = re.compile(
    r"pages[:=](?P<pages>-?\d+) reason[:=](?P<reason>.*?)\s*(?:\((?P<code>-?\d+)\))?\s*$"
)
# include/trace/events/tlb.h TLB_FLUSH_REASON, in the order of their values
TLB_REASONS = (
    "flush on task switch",
    "remote shootdown",
    "local shootdown",
    "local mm shootdown",  # "local MM shootdown" on 7.x, as the other names: read as these
    "remote ipi send",
    "remote wrong cpu",  # 6.14+: a flush IPI found the CPU on another mm (6.17 prints 0x5)
)
CPUHP = re.compile(r"cpu:\s*(?P<c>\d+)\s+target:\s*-?\d+\s+step:\s*\d+\s+\((?P<f>[^)]*)\)")
# Stack traces that tracing options attach to events: tracefs's `options/stacktrace` and
# `userstacktrace` (an entry printing "<stack trace>" then " => symbol" lines), trace-cmd
# report's "=> symbol (address)" lines, and perf script's callchain lines (`perf record -g`:
# indented "address symbol (dso)").
STACK_HEADER = re.compile(r"\d\.\d+:\s+<(?P<user>user )?stack trace>\s*$")
STACK_FRAME = re.compile(r"\s*=> |\s+[0-9a-f]{6,16} \S")
# the function tracer's lines in tracefs text ("TIME: do_idle <-cpu_startup_entry"; trace-cmd
# names the event instead: "TIME: function: do_idle <-- cpu_startup_entry")
FUNCTION_CALL = re.compile(r"\d\.\d+:\s+[\w.$]+(?:\+0x[0-9a-f]+/0x[0-9a-f]+)?\s+<-\S+\s*$")
PROBE = re.compile(r"^\((?P<loc>[^)]*)\)\s*(?P<args>.*)$")
BARE_ADDRESS = re.compile(r"[0-9a-f]{8,16}(?:\s*<-\s*[0-9a-f]{8,16})?")
UNNAMED_PROBE = "probe at a bare address"
PROBE_ARG = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def _probe_function(loc: str) -> tuple[str, int | None, bool, str | None]:
    """`switch_mm_irqs_off+0x4/0x470` or `alloc_bprm+0x8c/0x2d0 <- mm_alloc` -> the function
    probed (for a return probe, the one after `<-`; `.isra.0` style suffixes dropped), the
    probe's offset into it (None for a return probe or an offset that does not parse),
    whether it is a return probe, and a return probe's caller (`alloc_bprm`)."""
    if "<-" in loc:
        where, _, fn = loc.rpartition("<-")
        caller = where.strip().partition("+")[0].split(".")[0] or None
        return fn.strip().split(".")[0], None, True, caller
    fn, _, rest = loc.partition("+")
    try:
        offset: int | None = int(rest.split("/")[0], 16)
    except ValueError:
        offset = None
    return fn.split(".")[0], offset, False, None


def migrate_disable_depth(flags: str) -> int:
    """The migrate-disable column of tracefs' irq-flags (since 5.13): the last of five, or
    of PREEMPT_RT 6.1's seven; "." for none, else the depth in hex. Four flags: no column."""
    if len(flags) < 5 or flags[-1] not in string.hexdigits:
        return 0
    return int(flags[-1], 16)


def preempt_depth(flags: str) -> int | None:
    """The preempt-depth column of tracefs' five irq-flags (irqs-off, need-resched,
    hardirq/softirq, preempt-depth, migrate-disable): "." for 0, else the depth in hex.
    None for another layout (PREEMPT_RT 6.1's seven flags, the four before 5.13)."""
    if len(flags) != 5 or flags[3] not in "." + string.hexdigits:
        return None
    return 0 if flags[3] == "." else int(flags[3], 16)


def _tgid(field: str | None) -> int | None:
    """The record-tgid column (or perf's pid before the tid): None when absent or unknown
    ("-------")."""
    return int(field) if field and field.lstrip("-").isdigit() else None


Parser = Callable[[int, int, float, int, str, "int | None", str], TraceEvent | None]


def _switch(
    line: int, cpu: int, ts: float, pid: int, comm: str, tgid: int | None, rest: str
) -> TraceEvent | None:
    m = SWITCH.match(rest) or SWITCH_TRACE_CMD.match(rest.strip())
    if not m or not STATE.fullmatch(m["ps"]):
        return None
    return SchedSwitch(
        line,
        cpu,
        ts,
        pid,
        comm,
        tgid,
        sys.intern(m["pc"]),
        int(m["pp"]),
        sys.intern(_state(m["ps"])),
        sys.intern(m["nc"]),
        int(m["np"]),
    )


def _state(prev_state: str) -> str:
    """prev_state as the kernel prints it: a letter (R, S, ... R+), or a number in raw fields."""
    return state_letter(int(prev_state)) if prev_state.isdigit() else prev_state


def _fork(
    line: int, cpu: int, ts: float, pid: int, comm: str, tgid: int | None, rest: str
) -> TraceEvent | None:
    m = FORK.match(rest)
    return m and ProcessFork(line, cpu, ts, pid, comm, tgid, int(m["p"]), m["cc"], int(m["cp"]))


def _newtask(
    line: int, cpu: int, ts: float, pid: int, comm: str, tgid: int | None, rest: str
) -> TraceEvent | None:
    m = NEWTASK.match(rest)
    return m and NewTask(line, cpu, ts, pid, comm, tgid, int(m["p"]), m["c"], int(m["f"], 16))


def _exec(
    line: int, cpu: int, ts: float, pid: int, comm: str, tgid: int | None, rest: str
) -> TraceEvent | None:
    m = EXEC.match(rest)
    return m and ProcessExec(line, cpu, ts, pid, comm, tgid, m["f"], int(m["p"]), int(m["o"]))


def _exit(
    line: int, cpu: int, ts: float, pid: int, comm: str, tgid: int | None, rest: str
) -> TraceEvent | None:
    m = EXIT.match(rest)
    return m and ProcessExit(line, cpu, ts, pid, comm, tgid, int(m["p"]))


def _free(
    line: int, cpu: int, ts: float, pid: int, comm: str, tgid: int | None, rest: str
) -> TraceEvent | None:
    m = EXIT.match(rest)
    return m and ProcessFree(line, cpu, ts, pid, comm, tgid, int(m["p"]))


def _rename(
    line: int, cpu: int, ts: float, pid: int, comm: str, tgid: int | None, rest: str
) -> TraceEvent | None:
    m = RENAME.match(rest)
    return m and TaskRename(line, cpu, ts, pid, comm, tgid, int(m["p"] or pid), m["n"])


def _tlb(
    line: int, cpu: int, ts: float, pid: int, comm: str, tgid: int | None, rest: str
) -> TraceEvent | None:
    m = TLB.match(rest)
    if m is None:
        return None
    name, code = m["reason"].lower(), m["code"]
    if code is not None and 0 <= int(code) < len(TLB_REASONS):
        known = TLB_REASONS[int(code)]
        if name not in ("", known, hex(int(code))):  # (0x5: a code the kernel names not)
            return None  # a name that is not its code's: an edited or garbled line
        name = known
    elif code is None and name not in TLB_REASONS:
        return None
    # (a code past the known ones: a later kernel's reason, kept under its own name)
    reason = name if code is None else f"{name} ({code})"
    return TlbFlush(line, cpu, ts, pid, comm, tgid, int(m["pages"]), reason)


def _cpuhp(
    line: int, cpu: int, ts: float, pid: int, comm: str, tgid: int | None, rest: str
) -> TraceEvent | None:
    m = CPUHP.match(rest)
    fn = m and m["f"].split("+")[0].split(".")[0]
    return m and HotplugStep(line, cpu, ts, pid, comm, tgid, int(m["c"]), fn or "")


PLACEMENTS = ("sched_wakeup_new", "sched_migrate_task")
WAKEUP_NEW = re.compile(r".*\bpid=(?P<p>\d+) .*\btarget_cpu=(?P<to>\d+)")
MIGRATE = re.compile(r".*\bpid=(?P<p>\d+) .*\borig_cpu=(?P<fr>\d+) dest_cpu=(?P<to>\d+)")


def _placement(stats: ReadStats, line: int, event: str, rest: str, comm: str, cpu: int) -> None:
    """Keep where a sched_wakeup_new placed a new task, or whence and whither a
    sched_migrate_task moved a task, and whether the source CPU's stopper thread moved it
    (`comm` migration/N on CPU N: migration_cpu_stop(), which moves the task it preempted)
    (ReadStats.placements); a line without those fields is left alone (these events are
    not the stream's)."""
    m = (WAKEUP_NEW if event == "sched_wakeup_new" else MIGRATE).match(rest)
    if m is not None:
        fr = int(m["fr"]) if event == "sched_migrate_task" else -1
        stopper = fr == cpu and comm == stopper_comm(cpu)
        stats.placements.setdefault(int(m["p"]), []).append((line, fr, int(m["to"]), stopper))


PARSERS: dict[str, Parser] = {
    "sched_switch": _switch,
    "sched_process_fork": _fork,
    "task_newtask": _newtask,
    "sched_process_exec": _exec,
    "sched_process_exit": _exit,
    "sched_process_free": _free,
    "task_rename": _rename,
    "tlb_flush": _tlb,
    "cpuhp_enter": _cpuhp,
}
EXPECTED = {
    "sched_switch": "prev_comm=.. prev_pid=.. prev_prio=.. prev_state=.. [==>] next_comm=.. "
    "next_pid=.. next_prio=..",
    "sched_process_fork": "comm=.. pid=.. child_comm=.. child_pid=..",
    "task_newtask": "pid=.. comm=.. clone_flags=..",
    "sched_process_exec": "filename=.. pid=.. old_pid=..",
    "sched_process_exit": "comm=.. pid=.. prio=..",
    "sched_process_free": "comm=.. pid=.. prio=..",
    "task_rename": "[pid=..] oldcomm=.. newcomm=..",
    "tlb_flush": "pages:N reason:NAME (CODE), NAME one of " + ", ".join(TLB_REASONS),
    "cpuhp_enter": "cpu: N target: N step: N (function)",
}


def _magic_stream(raw: IO[bytes], path: str) -> tuple[IO[bytes], str]:
    """Wrap a byte stream in the decompressor its first bytes call for."""
    buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw)  # type: ignore[type-var]
    head = buffered.peek(8)[:8]
    if head.startswith(b"\x1f\x8b"):
        return cast(IO[bytes], gzip.GzipFile(fileobj=buffered)), "gzip"
    if head.startswith(b"\xfd7zXZ\x00"):
        return cast(IO[bytes], lzma.LZMAFile(buffered)), "xz"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        try:
            import zstandard
        except ImportError:  # pragma: no cover - a declared dependency
            raise TraceError(path, None, "zstd input needs the zstandard package") from None
        return cast(IO[bytes], zstandard.ZstdDecompressor().stream_reader(buffered)), "zstd"
    return cast(IO[bytes], buffered), "plain"


def _open_bytes(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")  # closed by the generator that reads it
    except FileNotFoundError:
        raise TraceError(path, None, "no such file") from None
    except OSError as e:
        raise TraceError(path, None, f"cannot open: {e.strerror}") from None


TRACE_DAT_MAGIC = b"\x17\x08\x44tracing"
PERF_DATA_MAGIC = b"PERFILE2"


def _events(
    path: str, fmt: str | None, stats: ReadStats, lenient: bool, symbols: Symbols | None = None
) -> Iterator[TraceEvent]:
    """Events of the input, decompressed, in file order: a trace.dat goes through
    `trace-cmd report`, a Perfetto trace through its protos, text line by line; kprobe
    locations printed as addresses named from `symbols` (a trace.dat: else its own)."""
    stream, _ = _magic_stream(_open_bytes(path), path)
    try:
        head = stream.read(64)
        if not head:
            raise TraceError(path, None, "empty (no bytes at all): not a trace")
        rest = io.BufferedReader(_Prefixed(head, stream))
        if head.startswith(TRACE_DAT_MAGIC):
            yield from parse_lines(
                _trace_dat_lines(path, rest, symbols), path, None, stats, lenient
            )
        elif head.startswith(PERF_DATA_MAGIC):
            yield from parse_lines(
                _perf_data_lines(path, rest, symbols), path, None, stats, lenient
            )
        elif fmt == "perfetto" or (fmt is None and looks_like_perfetto(head)):
            stats.fmt = "perfetto"
            yield from perfetto_events(rest, path, stats)
        else:
            text: Iterator[str] = io.TextIOWrapper(rest, encoding="utf-8", errors="replace")
            if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
                text = _systrace_lines(text)
            if symbols is not None:
                text = symbols.name_probes(text)
            yield from parse_lines(text, path, fmt, stats, lenient)
    except (EOFError, zlib.error, lzma.LZMAError, OSError) as e:
        at = stats.lines + 1 if stats.lines else None
        raise TraceError(path, at, f"truncated or corrupt input ({e})") from None
    except TraceError:
        raise
    except Exception as e:
        if type(e).__module__.startswith("zstd"):
            raise TraceError(path, stats.lines + 1, f"corrupt zstd input ({e})") from None
        raise
    finally:
        stream.close()


def _systrace_lines(lines: Iterator[str]) -> Iterator[str]:
    """An Android systrace/atrace HTML report: the ftrace text of its
    <script class="trace-data"> blocks (other blocks, JSON for instance, are left out).
    Every other line becomes blank, so line numbers still point into the file."""
    inside = keep = False
    for line in lines:
        low = line.lower()
        if not inside and "<script" in low and "trace-data" in low:
            inside, keep, first = True, False, True
            yield ""
            continue
        if inside and "</script>" in low:
            inside = False
            yield ""
            continue
        if inside and first and line.strip():
            first = False
            keep = line.lstrip().startswith("# tracer")
        yield line if inside and keep else ""


class _Prefixed(io.RawIOBase):
    """A byte stream with some already-read bytes put back in front."""

    def __init__(self, prefix: bytes, stream: IO[bytes]) -> None:
        self.prefix = prefix
        self.stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.prefix:
            n = min(len(b), len(self.prefix))
            b[:n] = self.prefix[:n]
            self.prefix = self.prefix[n:]
            return n
        data = self.stream.read(len(b))
        b[: len(data)] = data
        return len(data)


def _trace_dat_lines(path: str, stream: IO[bytes], symbols: Symbols | None) -> Iterator[str]:
    """A trace.dat as tracefs text, through trace-cmd report: its events printed by their
    kernel formats (-N: no plugin layouts; sched_switch's prev_state then says what tracefs
    says), each line given the irq-flags column of the latency layout (-l, read alongside:
    the same events in the same order, where it shortens comms to 8 characters), kprobe
    addresses named from the symbols the file keeps (`report -f`) or `symbols`."""
    exe = shutil.which("trace-cmd")
    if exe is None:
        raise TraceError(
            path,
            None,
            "a trace.dat needs trace-cmd to read it: apt-get install trace-cmd (Debian package "
            "trace-cmd)",
        )
    with tempfile.NamedTemporaryFile(suffix=".dat") as tmp:
        shutil.copyfileobj(stream, tmp)
        tmp.flush()
        if symbols is None:
            listed = subprocess.run(
                [exe, "report", "-i", tmp.name, "-f"], capture_output=True, text=True, check=False
            )
            try:
                symbols = Symbols.parse(listed.stdout.splitlines(), f"{path} (trace-cmd -f)")
            except SymbolsError:
                symbols = None  # recorded without them: probe lines stay addresses
        plain = _run_lines(path, "trace-cmd report", [exe, "report", "-N", "-i", tmp.name])
        latency = _run_lines(path, "trace-cmd report", [exe, "report", "-N", "-l", "-i", tmp.name])
        lines = _with_flags(path, plain, latency)
        yield from symbols.name_probes(lines) if symbols else lines


def _run_lines(path: str, what: str, argv: list[str]) -> Iterator[str]:
    """The lines a command (trace-cmd report, perf script) prints; its failure is the
    input's error, named `what`. (Its stderr
    goes to a file: a pipe nobody reads while stdout is read could fill and stall it.)"""
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=errors, text=True, errors="replace"
        )
        assert proc.stdout is not None
        done = False
        try:
            yield from proc.stdout
            done = True
        finally:
            proc.stdout.close()
            if not done:  # the reader stopped early
                proc.kill()
            code = proc.wait()
        if code != 0:
            errors.seek(0)
            err = errors.read().decode(errors="replace").strip()
            msg = err.splitlines()[-1] if err else f"exit {code}"
            raise TraceError(path, None, f"{what} failed: {msg}")


# trace-cmd report's default layout up to the timestamp, and its latency layout's
# `COMM-PID CPUFLAGS TIMESTAMP:` (CPU digits, then the flags, which start with d, X or .)
REPORT_HEAD = re.compile(r"^(?P<head>\s*.*?-\d+\s+\[\d+\])\s+(?P<ts>\d+\.\d+):")
LATENCY_HEAD = re.compile(r"^\s*.*?-\d+\s+\d+(?P<flags>[^\d\s]\S*)\s+(?P<ts>\d+\.\d+):")


def _with_flags(path: str, plain: Iterator[str], latency: Iterator[str]) -> Iterator[str]:
    """trace-cmd report's lines with the flags of its latency layout's same line put in
    the irq-flags column, as tracefs prints them."""
    for n, (line, lat) in enumerate(zip_longest(plain, latency), start=1):
        if line is None or lat is None:
            raise TraceError(
                path, n, "trace-cmd report printed more lines with -l than without, or fewer"
            )
        m = REPORT_HEAD.match(line)
        f = LATENCY_HEAD.match(lat) if m else None
        if m is None or f is None:
            yield line
            continue
        if f["ts"] != m["ts"]:
            raise TraceError(
                path, n, "trace-cmd report printed different events with -l than without"
            )
        yield f"{m['head']} {f['flags']} {line[m.end('head') :].lstrip()}"


# perf's Python scripting (tools/perf/util/scripting-engines/trace-event-python.c): for every
# sample, in perf script's order, its CPU, time in ns and the trace event's common_flags and
# common_preempt_count (preemption depth, migrate-disable depth << 4, PREEMPT_RT 6.1's too:
# its common_preempt_lazy_count is a field of its own). perf's depth counts one more than
# tracefs's for the same event (perf fills the entry with its own preempt_disable() held).
PERF_FLAGS_SCRIPT = """\
from perf_trace_context import common_flags, common_pc


def trace_unhandled(event_name, context, fields, perf_sample_dict):
    sample = perf_sample_dict["sample"]
    pc = common_pc(context)
    print(sample["cpu"], sample["time"], common_flags(context), pc & 15, pc >> 4)
"""
# perf script's fields, the ones its default shows for a tracepoint with the process id (the
# thread group) beside the thread's; times in ns, as the flags script prints them
PERF_SCRIPT_FIELDS = "comm,pid,tid,cpu,time,event,trace"
PERF_HEAD = re.compile(r"^(?P<head>.*?\[(?P<cpu>\d+)\])\s+(?P<ts>\d+\.\d+):")


def _perf_data_lines(path: str, stream: IO[bytes], symbols: Symbols | None) -> Iterator[str]:
    """A perf.data as perf script text, each line given the irq flags tracefs prints (perf
    script prints none: `-L` shows none for tracepoints since perf moved to libtraceevent's
    tep_print_event()), read alongside through perf's Python scripting; kprobe addresses
    named from `symbols` (perf.data keeps no kallsyms)."""
    exe = shutil.which("perf")
    if exe is None:
        raise TraceError(
            path, None, "a perf.data needs perf to read it: apt-get install linux-perf"
        )
    with tempfile.TemporaryDirectory() as tmp:
        data, script = Path(tmp) / "perf.data", Path(tmp) / "flags.py"
        with open(data, "wb") as out:
            shutil.copyfileobj(stream, out)
        script.write_text(PERF_FLAGS_SCRIPT)
        lost = perf_losses(path, exe, data).get("LOST_SAMPLES", 0)
        if lost:
            raise TraceError(
                path, None, f"perf lost {lost} samples (PERF_RECORD_LOST_SAMPLES, which perf "
                "script does not place in the trace): record again with larger buffers "
                "(perf record -m)"
            )  # fmt: skip
        common = [exe, "script", "-i", str(data), "--ns", "--show-lost-events"]
        plain = _run_lines(path, "perf script", [*common, "-F", PERF_SCRIPT_FIELDS])
        flags = _run_lines(
            path, "perf script -s", [exe, "script", "-i", str(data), "-s", str(script)]
        )
        lines = _with_perf_flags(path, plain, flags)
        yield from symbols.name_probes(lines) if symbols else lines


def perf_losses(path: str, exe: str, data: Path) -> dict[str, int]:
    """What the kernel could not give perf, by kind, as `perf report --stats` counts the
    records: LOST (events a full buffer had no room for, which perf script prints in place
    with --show-lost-events) and LOST_SAMPLES (which it prints nowhere)."""
    argv = [exe, "report", "--stats", "-i", str(data)]
    lines = list(_run_lines(path, "perf report --stats", argv))  # (read whole: it ends well)
    after = dropwhile(lambda line: "Aggregated stats:" not in line, lines)
    aggregated = takewhile(lambda line: " stats:" not in line, list(after)[1:])  # not per event
    found = (PERF_LOSS.match(line) for line in aggregated)
    return {m[1]: int(m[2]) for m in found if m}


PERF_LOSS = re.compile(r"^\s*(LOST|LOST_SAMPLES) events:\s*(\d+)")


def irq_flags(flags: int, preempt: int, migrate: int) -> str:
    """The irq-info column tracefs prints (kernel/trace/trace_output.c
    trace_print_lat_fmt()) for an event's common_flags (TRACE_FLAG_*) and depths."""
    irqs = "d" if flags & 0x01 else "X" if flags & 0x02 else "."
    resched = {0x24: "N", 0x04: "n", 0x20: "p"}.get(flags & 0x24, ".")
    nmi, hard, soft = flags & 0x40, flags & 0x08, flags & 0x10
    where = (
        "Z" if nmi and hard else "z" if nmi else "H" if hard and soft else "h" if hard
        else "s" if soft else "."
    )  # fmt: skip
    depth = f"{preempt:x}" if preempt else "."
    return f"{irqs}{resched}{where}{depth}{f'{migrate:x}' if migrate else '.'}"


def _with_perf_flags(path: str, plain: Iterator[str], flags: Iterator[str]) -> Iterator[str]:
    """perf script's lines, each sample's irq flags put in after its CPU; the two runs must
    print the same samples in the same order (checked by CPU and time)."""
    samples = 0
    for line in plain:
        m = PERF_HEAD.match(line) if "PERF_RECORD_LOST" not in line else None
        if m is None:
            yield line  # (a callchain line of perf record -g, a blank line, a loss)
            continue
        samples += 1
        got = next(flags, None)
        if got is None:
            raise TraceError(
                path, samples, "perf's Python scripting read fewer samples than perf script"
            )
        words = got.split()
        if len(words) != 5 or not all(w.lstrip("-").isdigit() for w in words):
            raise TraceError(
                path, samples, f"perf's Python scripting printed {got!r} for this sample, "
                "expected its CPU, time and flags (perf built without Python?)"
            )  # fmt: skip
        cpu, ns, value, preempt, migrate = (int(w) for w in words)
        sec, _, frac = m["ts"].partition(".")
        if int(sec) * 10**9 + int(frac.ljust(9, "0")[:9]) != ns or int(m["cpu"]) != cpu:
            raise TraceError(
                path, samples, "perf script and its Python scripting read different samples"
            )
        yield f"{m['head']} {irq_flags(value, preempt, migrate)} {line[m.end('head') :].lstrip()}"
    if next(flags, None) is not None:
        raise TraceError(
            path, samples, "perf's Python scripting read more samples than perf script"
        )


def _perf_task(
    pid: int,
    comm: str,
    cpu: int,
    running: dict[int, tuple[int, str]],
    dead: dict[int, tuple[int, str]],
) -> tuple[int, str]:
    """The task a perf sample ran in. perf records -1 for a task whose pid is gone
    (kernel/events/core.c perf_event_pid_type(): not pid_alive()): an exited task, from its
    release to its last context switch, whose own events (the switch, its switch_mm_irqs_off
    and CR3 load, an IPI it took) perf script prints as `:-1 -1`. That task is the CPU's
    current one: after its last switch (_perf_switched), that switch's prev; before, the
    task of the CPU's last sample that named one, or the one it last switched to."""
    if pid != -1:
        dead.pop(cpu, None)
        running[cpu] = (pid, comm)
        return pid, comm
    return dead.get(cpu) or running.get(cpu) or (pid, comm)


def _perf_switched(
    ev: SchedSwitch,
    unnamed: bool,
    running: dict[int, tuple[int, str]],
    dead: dict[int, tuple[int, str]],
) -> None:
    """A perf sched_switch read: the CPU runs its next task now; one printed `:-1 -1`
    (`unnamed`) is its prev's last, and so are the samples of that task until its CPU's next
    named one (_perf_task)."""
    if unnamed:
        ev.pid, ev.comm = dead[ev.cpu] = (ev.prev_pid, ev.prev_comm)
    running[ev.cpu] = (ev.next_pid, ev.next_comm)


def detect(line: str) -> str | None:
    if FTRACE.match(line):
        return "ftrace"
    if PERF.match(line):
        return "perf"
    return None


def _skip(line: str) -> bool:
    s = line.strip()
    return (
        not s
        or s.startswith("#")
        or s.startswith("cpus=")
        or s.startswith("version =")
        or (s.startswith("CPU ") and s.endswith("is empty"))
    )


def _malformed(path: str, n: int, raw: str, message: str) -> TraceError:
    """The error for line n, malformed as `message` says. A line without its newline is
    the last of a file cut short (tracefs, trace-cmd and perf end every line with one):
    the error says so, since the line was most likely whole before the file was cut."""
    if raw.endswith("\n"):
        return TraceError(path, n, message)
    return TraceError(path, n, f"the input ends inside this line (a truncated file?); {message}")


def parse_lines(
    lines: Iterator[str], path: str, fmt: str | None, stats: ReadStats, lenient: bool
) -> Iterator[TraceEvent]:
    """Parse lines into events in file order."""
    last_event = ""
    fast = FTRACE_SWITCH.match if fmt == "ftrace" else None
    # perf: per CPU, the task it runs (the last sched_switch's next), and the dead task whose
    # last switch this is (a sample names no task once its pid is unhashed: `:-1 -1`)
    running: dict[int, tuple[int, str]] = {}
    dead: dict[int, tuple[int, str]] = {}
    for n, raw in enumerate(lines, start=1):
        stats.lines = n
        # (the substring test first: a failing match backtracks over every '-' of the line)
        head = fast(raw) if fast and "sched_switch:" in raw else None
        f = head and SWITCH_FIELDS.match(raw, head.end())
        if f and STATE.fullmatch(f.group(3)):
            assert head
            comm, pid, tgid_s, cpu, flags, ts = head.groups()
            pc, pp, ps, nc, np_ = f.groups()
            stats.events += 1
            last_event = "sched_switch"
            yield SchedSwitch(
                n,
                int(cpu),
                float(ts),
                int(pid),
                comm,
                _tgid(tgid_s),
                pc,
                int(pp),
                _state(ps),
                nc,
                int(np_),
                migrate_disable_depth(flags) if flags else 0,
            )
            continue
        if _skip(raw):
            cpus = HEADER_CPUS.search(raw)
            if cpus:
                stats.header_cpus = max(stats.header_cpus, int(cpus[1]))
            continue
        line = raw.rstrip("\n")
        lost = LOST.match(line) or (PERF_LOST.match(line) if "PERF_RECORD_LOST" in line else None)
        if lost:
            stats.lost_markers += 1
            count = int(lost["n"] or 0)
            stats.lost_events += count
            yield LostEvents(n, int(lost["cpu"]), -1.0, -1, "", None, count)
            continue
        if fmt is None:
            fmt = detect(line)
            if fmt is None and COUNTER_CLOCK.match(line):
                raise TraceError(
                    path,
                    n,
                    "timestamps without a fraction of a second: recorded with a counter "
                    "trace_clock (counter, x86-tsc...); record with the default 'local' clock "
                    "(or 'global', 'mono', 'boot'), whose times are seconds",
                )
            if fmt is None and PERF_NO_CPU.match(line):
                raise TraceError(
                    path,
                    n,
                    "perf script text without the [CPU] column: the samples carry no CPU "
                    "(a per-task recording); record system-wide, 'perf record -a -e "
                    "sched:* -e task:*', or with the CPUs named, 'perf record -C LIST ...'",
                )
            if fmt is None:
                raise TraceError(
                    path,
                    n,
                    "not a scheduler trace: expected tracefs/trace-cmd text "
                    "('COMM-PID [CPU] TIME: EVENT: ...') or perf script text "
                    "('COMM PID [CPU] TIME: sched:EVENT: ...')",
                )
            stats.fmt = fmt
            fast = FTRACE_SWITCH.match if fmt == "ftrace" else None
        m = (FTRACE if fmt == "ftrace" else PERF).match(line)
        if m is None and last_event in MULTILINE_EVENTS:
            # trace_printk()/trace_marker text may hold newlines: the rest of its message
            stats.unknown[f"{last_event} (continued)"] += 1
            continue
        header = STACK_HEADER.search(line) if m is None else None
        if header is not None:
            stats.unknown["user_stack" if header["user"] else "kernel_stack"] += 1
            continue
        if m is None and STACK_FRAME.match(line):
            stats.unknown["stack trace frames"] += 1
            continue
        if m is None and fmt == "ftrace" and FUNCTION_CALL.search(line):
            stats.unknown["function"] += 1  # as trace-cmd names it
            continue
        if m is None:
            if lenient:
                stats.bad_lines += 1
                continue
            want = (
                "COMM-PID [CPU] TIME: EVENT: FIELDS"
                if fmt == "ftrace"
                else ("COMM PID [CPU] TIME: SUBSYSTEM:EVENT: FIELDS")
            )
            raise _malformed(path, n, raw, f"malformed line, expected {want}: {line[:80]!r}")
        event = m["event"].split(":")[-1]
        last_event = event
        rest = m["rest"]
        pid = int(m["tid"] or m["pid"]) if fmt == "perf" else int(m["pid"])
        tgid = _tgid(m["tgid"] if fmt == "ftrace" else (m["pid"] if m["tid"] else None))
        cpu, ts, comm = int(m["cpu"]), float(m["ts"]), sys.intern(m["comm"])
        unnamed = fmt == "perf" and pid == -1
        if fmt == "perf":
            pid, comm = _perf_task(pid, comm, cpu, running, dead)
        # a probe's fields open with its location, whatever the event is called: a tracepoint
        # probe (`t sched_switch ...` in dynamic_events) takes the tracepoint's own name
        parser = PARSERS.get(event) if not rest.startswith("(") else None
        ev: TraceEvent | None
        if parser is not None:
            ev = parser(n, cpu, ts, pid, comm, tgid, rest)
            if ev is None:
                if lenient:
                    stats.bad_lines += 1
                    continue
                want = f"malformed {event} fields, expected {EXPECTED[event]}: {rest[:80]!r}"
                raise _malformed(path, n, raw, want)
        else:
            pm = PROBE.match(rest)
            if pm is None or pm["loc"].startswith("0x"):
                # (a uprobe's location is a user address, `(0x401d70)`: no kernel function)
                stats.unknown[event] += 1
                if event in PLACEMENTS:
                    _placement(stats, n, event, rest, comm, cpu)
                continue
            if BARE_ADDRESS.fullmatch(pm["loc"]):
                # a kprobe printed through its format's `(%lx)` (trace-cmd report, perf
                # script): an address, no function name to recognise it by
                stats.unknown[UNNAMED_PROBE] += 1
                continue
            # (interned: a million probe lines repeat a few names and addresses, and the
            # validator keeps them all)
            args = {
                sys.intern(k): sys.intern(v.strip('"')) for k, v in PROBE_ARG.findall(pm["args"])
            }
            fn, offset, returned, caller = _probe_function(pm["loc"])
            fn = sys.intern(fn)
            ev = Probe(n, cpu, ts, pid, comm, tgid, fn, args, offset, returned, caller)
        if isinstance(ev, TlbFlush) and m["flags"]:
            # irq-info: 'h' (or 'H') in hardirq context (a flush IPI), in the hardirq/softirq
            # column: the third of five flags, the fourth of PREEMPT_RT's seven (which add
            # need-resched-lazy and preempt-lazy-depth); no other column uses the letter
            flags = m["flags"]
            ev.hardirq = "h" in flags or "H" in flags
        elif isinstance(ev, SchedSwitch) and m["flags"]:
            ev.migrate_disabled = migrate_disable_depth(m["flags"])
        elif isinstance(ev, Probe) and m["flags"]:
            ev.preempt_depth = preempt_depth(m["flags"])
        if fmt == "perf" and isinstance(ev, SchedSwitch):
            _perf_switched(ev, unnamed, running, dead)
        stats.events += 1
        yield ev


def reorder(
    events: Iterator[TraceEvent], window: int = REORDER_WINDOW, stats: ReadStats | None = None
) -> Iterator[TraceEvent]:
    """Merge by timestamp: events from different CPUs may be out of order by up to `window`
    events (per-CPU buffers concatenated, trace_pipe, Perfetto bundles). Ties keep file order.
    A lost-events marker keeps its place in the stream. With `stats`, a Perfetto input gets
    the wider PERFETTO_WINDOW.

    The window is two sorted queues: the run of events no earlier than every one before them
    (a text trace is nearly all one run), appended at O(1), and a heap of the late ones; the
    least of their two heads leaves when the window is full."""
    run: deque[tuple[float, int, TraceEvent]] = deque()
    late: list[tuple[float, int, TraceEvent]] = []

    def least() -> TraceEvent:
        if late and (not run or late[0] < run[0]):
            return heapq.heappop(late)[2]
        return run.popleft()[2]

    last_ts = float("-inf")
    for seq, ev in enumerate(events):
        ts = ev.ts if ev.ts >= 0 else last_ts
        if ts >= last_ts:
            last_ts = ts
            run.append((ts, seq, ev))
        else:
            heapq.heappush(late, (ts, seq, ev))
        limit = PERFETTO_WINDOW if stats is not None and stats.fmt == "perfetto" else window
        if len(run) + len(late) > limit:
            yield least()
    while run or late:
        yield least()


def read_trace(
    path: str | Path,
    fmt: str | None = None,
    lenient: bool = False,
    stats: ReadStats | None = None,
    window: int = REORDER_WINDOW,
    symbols: Symbols | None = None,
) -> Iterator[TraceEvent]:
    """Stream typed events from a trace file ("-" for standard input); `symbols` names the
    kprobe locations trace-cmd report and perf script print as addresses."""
    p = str(path)
    if fmt is not None and fmt not in FORMATS:
        raise TraceError(p, None, f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    stats = stats if stats is not None else ReadStats()
    text_fmt = None if fmt in (None, "tracedat", "perfdata") else fmt
    return reorder(_events(p, text_fmt, stats, lenient, symbols), window, stats)
