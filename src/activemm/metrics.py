"""What the lazy-TLB scheme costs and saves, counted from model events only.

The cost table is an estimate in CPU cycles, for comparing configurations, not a measurement;
override any entry with a TOML file (`activemm replay --costs FILE`).
"""

from __future__ import annotations

import statistics
import tomllib
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from activemm.errors import ActiveMmError
from activemm.model.events import (
    AddressSpaceTornDown,
    BroadcastFlush,
    ContextSwitch,
    Cr3Loaded,
    Event,
    FlushIpi,
    GlobalAsidAssigned,
    LeftMm,
    MmDropDeferred,
    MmDropped,
    MmFreed,
    MmGrabbed,
    MmSwitched,
    PcbLoaded,
    ShootdownIpi,
)
from activemm.model.kernel import Observer, Operation
from activemm.model.state import KernelState, Mm, Task

# Rough cycle costs on a current x86 server part (an estimate, see docs/replay.md).
DEFAULT_COSTS: dict[str, int] = {
    "atomic_local": 20,  # lock-prefixed add on a cache line this CPU owns
    "atomic_remote": 150,  # the same on a line last written by another CPU (a transfer)
    "cr3_load": 150,  # mov to CR3 keeping TLB entries (PCID)
    "cr3_load_flush": 600,  # mov to CR3 dropping the ASID's TLB entries, plus refills
    "ipi": 2500,  # sending and handling one IPI, both sides
    # x86 INVLPGB + TLBSYNC of a global ASID: no figure measured here; priced as one IPI so
    # that the estimate does not favour it
    "broadcast_flush": 2500,
}


def load_costs(path: str | Path | None) -> dict[str, int]:
    costs = dict(DEFAULT_COSTS)
    if path is None:
        return costs
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ActiveMmError(f"{path}: cannot read the cost table: {e}") from None
    for k, v in data.items():
        if k not in costs or not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ActiveMmError(
                f"{path}: {k!r} is not a cost entry (known: {', '.join(costs)}), or not a "
                f"non-negative integer"
            )
        costs[k] = v
    return costs


@dataclass
class Zombie:
    """An mm whose address space is torn down while something still holds the struct."""

    mm: str
    born: float


@dataclass
class Metrics(Observer):
    """An observer counting the costs and savings of lazy TLB for one configuration."""

    arch: str
    costs: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_COSTS))
    preempt_rt: bool = False  # PREEMPT_RT: final lazy drops are freed from RCU callbacks
    invlpgb: bool = False  # x86 INVLPGB: global ASIDs and broadcast flushes
    paused: bool = False  # resynchronising the model with a trace: do not count
    now: float = 0.0  # trace time of the current operation
    switches: Counter[str] = field(default_factory=Counter)
    switch_mm: int = 0
    cr3_loads: int = 0
    cr3_flushes: int = 0
    left_mm: int = 0  # x86: CPUs moved to init_mm outside a switch (a flush IPI while lazy)
    lazy_local: int = 0
    lazy_remote: int = 0
    other_atomics: int = 0
    shootdown_ipis: int = 0
    flush_ipis: int = 0
    broadcast_flushes: int = 0  # x86 INVLPGB
    global_asids: int = 0  # x86 INVLPGB: mms given one
    zombies: dict[int, Zombie] = field(default_factory=dict)  # the ones still alive
    zombie_count: int = 0
    lifetimes: array[float] = field(default_factory=lambda: array("d"))  # seconds, freed ones
    held_by: Counter[str] = field(default_factory=Counter)  # who held each freed zombie last
    rcu_deferred: int = 0  # PREEMPT_RT: frees mmdrop_sched() left to an RCU callback
    _deferred_by: dict[int, str] = field(default_factory=dict)  # mm id -> its last lazy user
    _writer: dict[int, int] = field(default_factory=dict)
    _last_prev: dict[int, Task] = field(default_factory=dict)
    _torn: list[Mm] = field(default_factory=list)
    _in_switch: set[int] = field(default_factory=set)  # CPUs inside context_switch()
    lazy_time: dict[int, float] = field(default_factory=dict)  # seconds per CPU
    _lazy_since: dict[int, float | None] = field(default_factory=dict)
    _ptbr: dict[int, int] = field(default_factory=dict)  # alpha: page tables last loaded

    @contextmanager
    def unmetered(self) -> Iterator[None]:
        """Model operations that stand for what the trace does not show (resynchronising,
        adopting, reviving a task): not counted."""
        self.paused = True
        try:
            yield
        finally:
            self.paused = False

    def begin(self, op: Operation, state: KernelState) -> None:
        self._torn = []
        self._in_switch.clear()

    def event(self, ev: Event) -> None:
        handler = _HANDLERS.get(type(ev))
        if handler is not None:
            handler(self, ev, not self.paused)

    def _switch(self, ev: ContextSwitch, count: bool) -> None:
        self._last_prev[ev.cpu] = ev.prev
        self._in_switch.add(ev.cpu)
        since = self._lazy_since.get(ev.cpu)
        if since is not None:
            self.lazy_time[ev.cpu] = self.lazy_time.get(ev.cpu, 0.0) + self.now - since
        self._lazy_since[ev.cpu] = self.now if ev.next.mm is None else None
        if count:
            self.switches[ev.case] += 1
            if ev.case == "user->user" and ev.prev.mm is ev.next.mm:
                self.switches["user->user same mm"] += 1

    def _atomic(self, ev: MmGrabbed | MmDropped, count: bool) -> None:
        remote = self._writer.get(ev.mm.id, ev.cpu) != ev.cpu  # last writer of the cache line
        self._writer[ev.mm.id] = ev.cpu
        if not count:
            return
        if ev.lazy and remote:
            self.lazy_remote += 1
        elif ev.lazy:
            self.lazy_local += 1
        else:
            self.other_atomics += 1

    def _switch_mm(self, ev: MmSwitched, count: bool) -> None:
        if ev.cpu in self._in_switch:  # the one switch_mm of this context_switch()
            self._in_switch.discard(ev.cpu)
            self.switch_mm += count
        if count and self.arch not in ("x86_64", "alpha") and ev.prev is not ev.next:
            self.cr3_loads += 1

    def _pcb(self, ev: PcbLoaded, count: bool) -> None:
        ptbr = ev.ptbr.id if ev.ptbr is not None else -1
        if self._ptbr.get(ev.cpu) != ptbr:
            self._ptbr[ev.cpu] = ptbr
            self.cr3_loads += count

    def _cr3(self, ev: Cr3Loaded, count: bool) -> None:
        if count:
            self.cr3_loads += 1
            self.cr3_flushes += ev.flush

    def _left_mm(self, ev: LeftMm, count: bool) -> None:
        self.left_mm += count

    def _shootdown(self, ev: ShootdownIpi, count: bool) -> None:
        if count and ev.to_cpu != ev.cpu:
            self.shootdown_ipis += 1

    def _flush_ipi(self, ev: FlushIpi, count: bool) -> None:
        self.flush_ipis += count

    def _broadcast(self, ev: BroadcastFlush, count: bool) -> None:
        self.broadcast_flushes += count

    def _global_asid(self, ev: GlobalAsidAssigned, count: bool) -> None:
        self.global_asids += count

    def _torn_down(self, ev: AddressSpaceTornDown, count: bool) -> None:
        self._torn.append(ev.mm)

    def _freed(self, ev: MmFreed, count: bool) -> None:
        # Only live objects stay in these dicts, so a long replay keeps its memory bounded.
        self._writer.pop(ev.mm.id, None)
        z = self.zombies.pop(ev.mm.id, None)
        if z is not None:
            self.lifetimes.append(self.now - z.born)
            prev = self._last_prev.get(ev.cpu)
            holder = prev.comm if ev.reason == "finish_task_switch" and prev else ev.reason
            self.held_by[self._deferred_by.pop(ev.mm.id, holder)] += 1

    def _deferred(self, ev: MmDropDeferred, count: bool) -> None:
        prev = self._last_prev.get(ev.cpu)
        if prev is not None and ev.mm.id in self.zombies:
            self._deferred_by[ev.mm.id] = prev.comm  # the lazy user, as in finish_task_switch
        self.rcu_deferred += count

    def end(self, op: Operation, state: KernelState) -> None:
        # An mm torn down but not freed by the end of the operation lives on for its lazy
        # users (or grabs): a zombie.
        for mm in self._torn:
            if not mm.freed:
                self.zombies[mm.id] = Zombie(str(mm), self.now)
                self.zombie_count += 1

    def cost_cycles(self) -> int:
        c = self.costs
        return (
            self.lazy_local * c["atomic_local"]
            + self.lazy_remote * c["atomic_remote"]
            + (self.cr3_loads - self.cr3_flushes) * c["cr3_load"]
            + self.cr3_flushes * c["cr3_load_flush"]
            + (self.shootdown_ipis + self.flush_ipis) * c["ipi"]
            + self.broadcast_flushes * c["broadcast_flush"]
        )

    def zombie_lifetimes(self) -> list[float]:
        return list(self.lifetimes)

    def summary(self) -> dict[str, Any]:
        lives = self.lifetimes
        cases = (
            "kernel->kernel",
            "user->kernel",
            "kernel->user",
            "user->user",
            "user->user same mm",
        )
        out: dict[str, Any] = {
            "switches": {case: self.switches.get(case, 0) for case in cases},
            "switch_mm": self.switch_mm,
            "cr3_loads": self.cr3_loads,
            "cr3_flushes": self.cr3_flushes,
            "lazy_mm_count_ops": {"local": self.lazy_local, "remote": self.lazy_remote},
            "shootdown_ipis": self.shootdown_ipis,
            "flush_ipis": self.flush_ipis,
            "zombies": {
                "count": self.zombie_count,
                "freed": len(lives),
                "alive_at_end": len(self.zombies),
                "median_lifetime_us": round(statistics.median(lives) * 1e6, 1) if lives else None,
                "max_lifetime_us": round(max(lives) * 1e6, 1) if lives else None,
                "held_by": dict(self.held_by.most_common(5)),
            },
            "cost_cycles": self.cost_cycles(),
        }
        if self.preempt_rt:  # frees mmdrop_sched() left to an RCU callback
            out["rcu_deferred_frees"] = self.rcu_deferred
        if self.invlpgb:
            out["broadcast_flushes"] = self.broadcast_flushes
            out["global_asids"] = self.global_asids
        return out


# Which handler each event type goes to (events nobody counts are skipped in one lookup).
_HANDLERS: dict[type, Callable[[Metrics, Any, bool], None]] = {
    ContextSwitch: Metrics._switch,
    MmGrabbed: Metrics._atomic,
    MmDropped: Metrics._atomic,
    MmSwitched: Metrics._switch_mm,
    PcbLoaded: Metrics._pcb,
    Cr3Loaded: Metrics._cr3,
    LeftMm: Metrics._left_mm,
    ShootdownIpi: Metrics._shootdown,
    FlushIpi: Metrics._flush_ipi,
    BroadcastFlush: Metrics._broadcast,
    GlobalAsidAssigned: Metrics._global_asid,
    AddressSpaceTornDown: Metrics._torn_down,
    MmFreed: Metrics._freed,
    MmDropDeferred: Metrics._deferred,
}
