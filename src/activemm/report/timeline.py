"""Chrome / Perfetto trace-event JSON of a run: what ui.perfetto.dev and chrome://tracing open.

Per CPU two tracks: the running task, and its active_mm (lazy spans marked, "lazy: mm7
(borrowed from bash)"); counter tracks of each mm's mm_users and mm_count; instant events for
mm frees, zombie births, shootdown and flush IPIs, CR3 loads, x86 INVLPGB broadcast flushes
and global ASIDs. Times are trace time for a trace and one millisecond per step for a
scenario.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from activemm.model.events import (
    AddressSpaceTornDown,
    BroadcastFlush,
    Cr3Loaded,
    Event,
    FlushIpi,
    GlobalAsidAssigned,
    MmFreed,
    ShootdownIpi,
)
from activemm.model.kernel import Operation
from activemm.model.state import KernelState, Mm
from activemm.trace.replay import Clocked

PID = 1


def _mm(mm: Mm | None) -> str:
    return str(mm) if mm is not None else "none"


@dataclass
class Timeline(Clocked):
    """Collects trace events while a machine runs; `document()` gives the JSON object."""

    now: float = 0.0  # seconds
    step_clock: bool = False  # a scenario: one millisecond per operation
    events: list[dict[str, Any]] = field(default_factory=list)
    _open: dict[int, tuple[str, float, dict[str, Any]]] = field(default_factory=dict)
    _counts: dict[int, tuple[int, int]] = field(default_factory=dict)
    _named: set[int] = field(default_factory=set)
    _torn: list[Mm] = field(default_factory=list)
    _started: bool = False

    @property
    def us(self) -> float:
        return round(self.now * 1e6, 3)

    def _track(self, tid: int, name: str) -> None:
        if tid not in self._named:
            self._named.add(tid)
            self.events.append(
                {"ph": "M", "name": "thread_name", "pid": PID, "tid": tid, "args": {"name": name}}
            )
            self.events.append(
                {
                    "ph": "M",
                    "name": "thread_sort_index",
                    "pid": PID,
                    "tid": tid,
                    "args": {"sort_index": tid},
                }
            )

    def _span(self, tid: int, name: str, args: dict[str, Any]) -> None:
        """Close the open span of `tid` if it differs, open `name`."""
        cur = self._open.get(tid)
        if cur is not None and cur[0] == name:
            return
        if cur is not None:
            start = cur[1]
            self.events.append(
                {
                    "ph": "X",
                    "name": cur[0],
                    "pid": PID,
                    "tid": tid,
                    "ts": start,
                    "dur": max(self.us - start, 0.0),
                    "args": cur[2],
                }
            )
        self._open[tid] = (name, self.us, args)

    def _instant(self, tid: int, name: str, args: dict[str, Any]) -> None:
        self.events.append(
            {"ph": "i", "s": "t", "name": name, "pid": PID, "tid": tid, "ts": self.us, "args": args}
        )

    def begin(self, op: Operation, state: KernelState) -> None:
        self._torn = []
        if self.step_clock:
            self.now = op.index * 1e-3

    def event(self, ev: Event) -> None:
        tid = ev.cpu * 2
        if isinstance(ev, MmFreed):
            self._instant(tid + 1, f"free {ev.mm}", {"reason": ev.reason})
        elif isinstance(ev, AddressSpaceTornDown):
            self._torn.append(ev.mm)
        elif isinstance(ev, ShootdownIpi):
            self._instant(
                tid,
                f"shootdown IPI -> CPU {ev.to_cpu}",
                {"mm": str(ev.mm), "was_lazy": ev.was_lazy},
            )
        elif isinstance(ev, FlushIpi):
            self._instant(tid, f"flush IPI -> CPU {ev.to_cpu}", {"mm": str(ev.mm)})
        elif isinstance(ev, Cr3Loaded):
            self._instant(tid + 1, f"CR3 {ev.mm.name}", {"asid": ev.asid, "flush": ev.flush})
        elif isinstance(ev, BroadcastFlush):
            self._instant(tid, f"INVLPGB broadcast {ev.mm.name}", {"asid": ev.asid})
        elif isinstance(ev, GlobalAsidAssigned):
            self._instant(tid + 1, f"global ASID {ev.asid} for {ev.mm.name}", {"mm": str(ev.mm)})

    def end(self, op: Operation, state: KernelState) -> None:
        if not self._started and self.now > 0:
            # The first trace time: what was open since boot starts here, not at time 0.
            self._started = True
            self._open = {t: (n, self.us, a) for t, (n, _, a) in self._open.items()}
            for e in self.events:
                if "ts" in e and e["ts"] == 0:
                    e["ts"] = self.us
        for mm in self._torn:
            if not mm.freed:
                self._instant(0, f"zombie born: {mm}", {"mm_count": mm.mm_count})
        for rq in state.rqs:
            task_tid, mm_tid = rq.cpu * 2, rq.cpu * 2 + 1
            self._track(task_tid, f"CPU {rq.cpu} task")
            self._track(mm_tid, f"CPU {rq.cpu} active_mm")
            if not rq.online:
                self._span(task_tid, "offline", {})
                self._span(mm_tid, "offline", {})
                continue
            cur = rq.curr
            self._span(task_tid, cur.name, {"mm": _mm(cur.mm)})
            active = cur.active_mm
            if cur.mm is None and active is not None:
                label = f"lazy: {active.name} (borrowed from {active.owner})"
                if active.is_init_mm:
                    label = "lazy: init_mm"
            else:
                label = _mm(active)
            self._span(mm_tid, label, {"loaded_mm": _mm(rq.tlb.loaded_mm), "lazy": cur.mm is None})
        for mm in state.mms:
            if mm.is_init_mm:
                continue
            counts = (mm.mm_users, mm.mm_count) if not mm.freed else (0, 0)
            if self._counts.get(mm.id) != counts:
                self._counts[mm.id] = counts
                self.events.append(
                    {
                        "ph": "C",
                        "name": f"{mm} refs",
                        "pid": PID,
                        "ts": self.us,
                        "args": {"mm_users": counts[0], "mm_count": counts[1]},
                    }
                )

    def document(self) -> dict[str, Any]:
        """Close every open span and return the trace-event JSON object."""
        for tid in list(self._open):
            self._span(tid, "\x00end", {})
        self._open.clear()
        meta = {"ph": "M", "name": "process_name", "pid": PID, "args": {"name": "activemm"}}
        return {
            "traceEvents": [meta, *self.events],
            "displayTimeUnit": "ns",
            "otherData": {"source": "activemm"},
        }
