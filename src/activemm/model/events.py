"""What the model emits. Each event names what happened in kernel terms.

Events hold the model objects they are about; `to_dict()` renders them for JSON by name,
so a consumer never needs to reach into the model.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from activemm.model.state import Mm, Task


def _render(value: object) -> object:
    if isinstance(value, Mm | Task):
        return value.name
    return value


@dataclass(slots=True)
class Event:
    """Base class. `cpu` is the CPU whose code did the thing."""

    kind: ClassVar[str] = "event"
    cpu: int

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.kind}
        for f in fields(self):
            out[f.name] = _render(getattr(self, f.name))
        return out

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.to_dict().items() if k not in ("event", "cpu")]
        return f"{self.kind}(cpu={self.cpu}{', ' if parts else ''}{', '.join(parts)})"


@dataclass(slots=True)
class ContextSwitch(Event):
    kind: ClassVar[str] = "ContextSwitch"
    prev: Task
    next: Task
    case: str  # "kernel->kernel", "user->kernel", "kernel->user", "user->user"


@dataclass(slots=True)
class LazyEntered(Event):
    """enter_lazy_tlb(mm, task): the CPU keeps mm's page tables for a task without an mm."""

    kind: ClassVar[str] = "LazyEntered"
    mm: Mm
    task: Task


@dataclass(slots=True)
class MmSwitched(Event):
    """switch_mm_irqs_off()/activate_mm()/switch_mm() called (prev as the caller passed it)."""

    kind: ClassVar[str] = "MmSwitched"
    prev: Mm | None
    next: Mm
    task: Task | None
    via: str


@dataclass(slots=True)
class MmGrabbed(Event):
    """mm_count += 1 (`lazy`: through mmgrab_lazy_tlb or a lazy-user mmgrab)."""

    kind: ClassVar[str] = "MmGrabbed"
    mm: Mm
    lazy: bool
    mm_count: int


@dataclass(slots=True)
class MmDropped(Event):
    kind: ClassVar[str] = "MmDropped"
    mm: Mm
    lazy: bool
    mm_count: int


@dataclass(slots=True)
class LazyRefElided(Event):
    """mmgrab_lazy_tlb/mmdrop_lazy_tlb with MMU_LAZY_TLB_REFCOUNT=n: no count, only smp_mb()."""

    kind: ClassVar[str] = "LazyRefElided"
    mm: Mm
    op: str  # "grab" or "drop"


@dataclass(slots=True)
class MmUsersGot(Event):
    kind: ClassVar[str] = "MmUsersGot"
    mm: Mm
    mm_users: int


@dataclass(slots=True)
class MmUsersPut(Event):
    kind: ClassVar[str] = "MmUsersPut"
    mm: Mm
    mm_users: int


@dataclass(slots=True)
class MmAllocated(Event):
    kind: ClassVar[str] = "MmAllocated"
    mm: Mm
    via: str  # "dup_mm" or "mm_alloc"


@dataclass(slots=True)
class AddressSpaceTornDown(Event):
    """__mmput(): mm_users reached 0, exit_mmap() unmapped everything."""

    kind: ClassVar[str] = "AddressSpaceTornDown"
    mm: Mm


@dataclass(slots=True)
class MmFreed(Event):
    """__mmdrop(): mm_count reached 0, the struct is freed. `reason` says from where."""

    kind: ClassVar[str] = "MmFreed"
    mm: Mm
    reason: str


@dataclass(slots=True)
class MmDropDeferred(Event):
    """PREEMPT_RT mmdrop_sched(): mm_count reached 0 and call_rcu() queued
    __mmdrop_delayed() on this CPU; the struct is freed when the CPU runs its RCU callbacks."""

    kind: ClassVar[str] = "MmDropDeferred"
    mm: Mm


@dataclass(slots=True)
class ShootdownIpi(Event):
    """MMU_LAZY_TLB_SHOOTDOWN: an IPI sent to `to_cpu` to get it off `mm`."""

    kind: ClassVar[str] = "ShootdownIpi"
    to_cpu: int
    mm: Mm
    was_lazy: bool
    source: str  # "cleanup_lazy_tlbs" or "exit_flush_lazy_tlbs"


@dataclass(slots=True)
class TaskForked(Event):
    kind: ClassVar[str] = "TaskForked"
    parent: Task
    child: Task
    how: str


@dataclass(slots=True)
class TaskAdopted(Event):
    """Not a kernel event: a task that existed before observation began (trace replay)."""

    kind: ClassVar[str] = "TaskAdopted"
    task: Task
    mm: Mm | None


@dataclass(slots=True)
class TaskExeced(Event):
    kind: ClassVar[str] = "TaskExeced"
    task: Task
    old_mm: Mm | None
    new_mm: Mm


@dataclass(slots=True)
class TaskExited(Event):
    """do_exit() done: exit_mm() ran; the task is TASK_DEAD and waits for its final switch."""

    kind: ClassVar[str] = "TaskExited"
    task: Task


@dataclass(slots=True)
class TaskReaped(Event):
    """finish_task_switch() after the final switch of a TASK_DEAD task."""

    kind: ClassVar[str] = "TaskReaped"
    task: Task


@dataclass(slots=True)
class KthreadUseMm(Event):
    kind: ClassVar[str] = "KthreadUseMm"
    task: Task
    mm: Mm


@dataclass(slots=True)
class KthreadUnuseMm(Event):
    kind: ClassVar[str] = "KthreadUnuseMm"
    task: Task
    mm: Mm


@dataclass(slots=True)
class CpuOffline(Event):
    kind: ClassVar[str] = "CpuOffline"


@dataclass(slots=True)
class CpuOnline(Event):
    kind: ClassVar[str] = "CpuOnline"


@dataclass(slots=True)
class Cr3Loaded(Event):
    """x86: a CR3 write in switch_mm_irqs_off (the tlb_flush tracepoint, reason
    TLB_FLUSH_ON_TASK_SWITCH, fires at exactly these points)."""

    kind: ClassVar[str] = "Cr3Loaded"
    mm: Mm
    asid: int
    flush: bool


@dataclass(slots=True)
class TlbFlushed(Event):
    """A local flush of `mm`'s entries on `cpu` (flush_tlb_func)."""

    kind: ClassVar[str] = "TlbFlushed"
    mm: Mm
    tlb_gen: int


@dataclass(slots=True)
class FlushIpi(Event):
    kind: ClassVar[str] = "FlushIpi"
    to_cpu: int
    mm: Mm


@dataclass(slots=True)
class FlushSkippedLazy(Event):
    """x86 should_flush_tlb(): a lazy CPU is not IPIed; it catches up at its next switch."""

    kind: ClassVar[str] = "FlushSkippedLazy"
    to_cpu: int
    mm: Mm


@dataclass(slots=True)
class GlobalAsidAssigned(Event):
    """x86 INVLPGB (6.15+): use_global_asid() gave `mm` an ASID shared by every CPU; until
    each CPU running it has switched over, the mm is in ASID transition."""

    kind: ClassVar[str] = "GlobalAsidAssigned"
    mm: Mm
    asid: int


@dataclass(slots=True)
class BroadcastFlush(Event):
    """x86 INVLPGB (6.15+): broadcast_tlb_flush(): INVLPGB/TLBSYNC flush `mm`'s global ASID
    on every CPU at once, lazy ones included, with no IPI."""

    kind: ClassVar[str] = "BroadcastFlush"
    mm: Mm
    asid: int


@dataclass(slots=True)
class CpumaskTrimmed(Event):
    """x86 6.14+: a flush IPI found `cpu` no longer running `mm` and cleared its stale bit in
    mm_cpumask (the tlb_flush tracepoint's TLB_REMOTE_WRONG_CPU)."""

    kind: ClassVar[str] = "CpumaskTrimmed"
    mm: Mm


@dataclass(slots=True)
class LeftMm(Event):
    """The CPU's hardware moved to init_mm while the task's active_mm stayed (x86 leave_mm,
    or a flush IPI reaching a lazy CPU)."""

    kind: ClassVar[str] = "LeftMm"
    mm: Mm
    why: str


@dataclass(slots=True)
class PcbLoaded(Event):
    """alpha: PAL_swpctx loaded a PCB: registers, page-table base and ASN together."""

    kind: ClassVar[str] = "PcbLoaded"
    task: Task
    ptbr: Mm | None
    asn: int


@dataclass(slots=True)
class AsnRollover(Event):
    """alpha: the per-CPU ASN space wrapped: tbiap() flushes the TLB, a new version starts."""

    kind: ClassVar[str] = "AsnRollover"
    version: int


@dataclass(slots=True)
class BadAccess(Event):
    """The model touched something the kernel must not: reported by the sanitizer at once."""

    kind: ClassVar[str] = "BadAccess"
    mm: Mm
    what: str  # "use-after-free", "refcount underflow", "mmget on a dead mm", ...
    function: str
