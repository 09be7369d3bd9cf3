"""Perfetto protobuf traces (`.perfetto-trace`, `.pftrace`) holding ftrace sched events, read
through the `perfetto` package's generated protos (`pip install perfetto`).

A trace is a stream of length-delimited `TracePacket`s (field 1 of `Trace`); they are read one
at a time. Sched switches come as ordinary ftrace events or in the `compact_sched` encoding
Perfetto uses by default (delta timestamps, next pid and interned comms; the previous task is
whatever the CPU switched to last).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

from activemm.trace.events import (
    NewTask,
    ProcessExec,
    ProcessExit,
    ProcessFork,
    ProcessFree,
    SchedSwitch,
    TaskRename,
    TraceEvent,
    state_letter,
)


def _varint(stream: IO[bytes]) -> int | None:
    shift = result = 0
    while True:
        b = stream.read(1)
        if not b:
            if shift:
                raise EOFError("truncated varint")
            return None
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def looks_like_perfetto(head: bytes) -> bool:
    """A Trace starts with field 1 (0x0a); text traces never hold control bytes."""
    if not head or head[0] != 0x0A:
        return False
    return any(b < 0x09 or 0x0E <= b < 0x20 for b in head[1:64])


def perfetto_events(stream: IO[bytes], path: str, stats: Any) -> Iterator[TraceEvent]:
    from activemm.trace.readers import TraceError

    try:
        from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
    except ImportError:
        raise TraceError(
            path, None, "a Perfetto trace needs the perfetto package: pip install perfetto"
        ) from None
    packet_no = 0
    last_next: dict[int, tuple[int, str]] = {}
    while True:
        tag = _varint(stream)
        if tag is None:
            return
        packet_no += 1
        stats.lines = packet_no
        wire = tag & 7
        if wire == 2:
            size = _varint(stream)
            data = stream.read(size or 0)
            if size is None or len(data) != size:
                raise TraceError(path, packet_no, "truncated Perfetto packet")
        elif wire == 0:
            _varint(stream)
            continue
        else:
            raise TraceError(path, packet_no, f"not a Perfetto trace (wire type {wire})")
        if tag >> 3 != 1:
            continue
        try:
            packet = pb.TracePacket.FromString(data)
        except Exception as e:  # protobuf's DecodeError
            raise TraceError(path, packet_no, f"corrupt Perfetto packet ({e})") from None
        if not packet.HasField("ftrace_events"):
            continue
        yield from _bundle(packet.ftrace_events, packet_no, last_next, stats)


def _bundle(
    bundle: Any, n: int, last_next: dict[int, tuple[int, str]], stats: Any
) -> Iterator[TraceEvent]:
    cpu = bundle.cpu
    out: list[TraceEvent] = []
    if bundle.HasField("compact_sched"):
        cs = bundle.compact_sched
        ts = 0
        for i, delta in enumerate(cs.switch_timestamp):
            ts += delta
            prev_pid, prev_comm = last_next.get(cpu, (-1, ""))
            next_pid = cs.switch_next_pid[i]
            next_comm = cs.intern_table[cs.switch_next_comm_index[i]]
            out.append(
                SchedSwitch(
                    n,
                    cpu,
                    ts / 1e9,
                    prev_pid,
                    prev_comm,
                    None,
                    prev_comm,
                    prev_pid,
                    state_letter(cs.switch_prev_state[i]),
                    next_comm,
                    next_pid,
                )
            )
            last_next[cpu] = (next_pid, next_comm)
    for e in bundle.event:
        kind = e.WhichOneof("event")
        t, pid = e.timestamp / 1e9, e.pid
        ev: TraceEvent | None = None
        if kind == "sched_switch":
            s = e.sched_switch
            ev = SchedSwitch(
                n,
                cpu,
                t,
                pid,
                s.prev_comm,
                None,
                s.prev_comm,
                s.prev_pid,
                state_letter(s.prev_state),
                s.next_comm,
                s.next_pid,
            )
            last_next[cpu] = (s.next_pid, s.next_comm)
        elif kind == "sched_process_fork":
            f = e.sched_process_fork
            ev = ProcessFork(
                n, cpu, t, pid, f.parent_comm, None, f.parent_pid, f.child_comm, f.child_pid
            )
        elif kind == "task_newtask":
            k = e.task_newtask
            ev = NewTask(n, cpu, t, pid, "", None, k.pid, k.comm, k.clone_flags)
        elif kind == "sched_process_exec":
            x = e.sched_process_exec
            ev = ProcessExec(n, cpu, t, pid, "", None, x.filename, x.pid, x.old_pid)
        elif kind == "sched_process_exit":
            ev = ProcessExit(
                n, cpu, t, pid, e.sched_process_exit.comm, None, e.sched_process_exit.pid
            )
        elif kind == "sched_process_free":
            ev = ProcessFree(
                n, cpu, t, pid, e.sched_process_free.comm, None, e.sched_process_free.pid
            )
        elif kind == "task_rename":
            r = e.task_rename
            ev = TaskRename(n, cpu, t, pid, r.oldcomm, None, r.pid, r.newcomm)
        elif kind is not None:
            stats.unknown[kind] += 1
        if ev is not None:
            out.append(ev)
    out.sort(key=lambda x: x.ts)
    stats.events += len(out)
    yield from out
