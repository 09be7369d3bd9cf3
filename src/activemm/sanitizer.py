"""The sanitizer: an observer that checks the model the way KASAN and the refcount debug code
check a kernel.

A bad access (use-after-free, a counter going below zero) is reported the moment the model
makes it; every other invariant of ../shared/reference/kernel.md §11 is checked after each
operation. A failure raises `Violation`, whose text reads like a KASAN report: what broke,
in which operation, and the operations that led there.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from activemm.model.config import KernelConfig
from activemm.model.events import BadAccess, Event, MmFreed
from activemm.model.kernel import Observer, Operation
from activemm.model.state import CpuTlbState, KernelState, Mm, Task, TaskState

HISTORY = 8
# who may leave an x86 CPU that borrows an mm for a kernel thread not lazy (see _check_hardware)
UNLAZY_OK = ("efi_leave_mm", "flush_tlb_func")


@dataclass
class Violation(Exception):
    """An invariant broke. `kind` is short ("use-after-free", "refcount mismatch", ...)."""

    kind: str
    message: str
    operation: str
    history: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.kind}: {self.message} (in {self.operation})"

    def report(self) -> str:
        bar = "=" * 72
        lines = [bar, f"BUG: activemm-sanitizer: {self.kind}", self.message, ""]
        lines.append(f"in operation {self.operation}, after these events:")
        lines += [f"  {e}" for e in self.events] or ["  (none)"]
        lines.append("")
        lines.append("the operations that led here:")
        lines += [f"  {h}" for h in self.history] or ["  (none)"]
        lines.append(bar)
        return "\n".join(lines)


class Sanitizer(Observer):
    """Checks every operation of a Machine. Construct with the machine's config."""

    def __init__(self, config: KernelConfig, history: int = HISTORY, every: int = 1) -> None:
        """`every`: check the state invariants after every Nth operation (bad accesses are
        always reported at once); replaying long traces uses a larger N."""
        self.config = config
        self.every = max(1, every)
        self.history: deque[str] = deque(maxlen=history)
        self.events: list[Event] = []
        self.op: Operation | None = None
        self.freed_by: dict[int, str] = {}
        self.checks = 0

    # -- observer -------------------------------------------------------------------------

    def begin(self, op: Operation, state: KernelState) -> None:
        self.op = op
        self.events = []

    def event(self, ev: Event) -> None:
        self.events.append(ev)
        if isinstance(ev, MmFreed):
            where = self.op.describe() if self.op else "?"
            self.freed_by[ev.mm.id] = f"freed by __mmdrop on CPU {ev.cpu} ({ev.reason}) in {where}"
        elif isinstance(ev, BadAccess):
            extra = self.freed_by.get(ev.mm.id, "")
            msg = f"{ev.what} of {ev.mm} in {ev.function}() on CPU {ev.cpu}"
            self._fail(ev.what, msg + (f"; it was {extra}" if extra else ""))

    def end(self, op: Operation, state: KernelState) -> None:
        self.checks += 1
        if self.checks % self.every == 0:
            self.check_now(state)
        if self.history.maxlen:
            self.history.append(f"#{op.index} {op.describe()}")
        self.op = None

    def check_now(self, state: KernelState) -> None:
        """Check every state invariant now (Violation if one is broken)."""
        problem = check_state(state, self.config)
        if problem:
            kind, msg = problem
            self._fail(kind, msg)

    def _fail(self, kind: str, message: str) -> None:
        op = f"#{self.op.index} {self.op.describe()}" if self.op else "?"
        raise Violation(kind, message, op, list(self.history), [e.describe() for e in self.events])


def expected_counts(state: KernelState, config: KernelConfig) -> dict[int, tuple[int, int]]:
    """The references that exist, per mm id: (mm_users, mm_count) as the kernel's rules
    say they must be (reference §11, invariants 8, 9 and 13)."""
    users: dict[int, int] = {}
    count: dict[int, int] = {}

    def add(d: dict[int, int], mm: Mm | None, n: int = 1) -> None:
        if mm is not None:
            d[mm.id] = d.get(mm.id, 0) + n

    lazy_counted = config.lazy_refs_counted
    for t in state.live_tasks():
        if t.mm is not None:
            if t.uses_mm:
                add(count, t.mm)  # kthread_use_mm's mmgrab
            else:
                add(users, t.mm)
        if (window := t.in_exec_mmap) is not None:  # exec_mmap()'s locals, not yet put
            if window.old_mm is not None:
                add(users, window.old_mm)
            elif lazy_counted:
                add(count, window.active_mm)
    for rq in state.rqs:
        if lazy_counted:
            add(count, rq.prev_mm)
            if rq.online and rq.curr.mm is None:
                add(count, rq.curr.active_mm)  # the CPU's lazy slot
    for h in state.holders:
        add(users if h.kind == "mm_users" else count, h.mm)
    out: dict[int, tuple[int, int]] = {}
    for mm in state.mms:
        if mm.freed:
            continue
        u = users.get(mm.id, 0)
        base = 1 if mm.is_init_mm else int(mm.mm_users > 0)
        out[mm.id] = (2 if mm.is_init_mm else u, base + count.get(mm.id, 0))
    return out


def _task_mms(t: Task) -> list[tuple[str, Mm | None]]:
    """Every mm a task points to, named: its mm and active_mm, and inside exec_mmap()'s
    window the old mm and active_mm its locals still hold."""
    mms: list[tuple[str, Mm | None]] = [("mm", t.mm), ("active_mm", t.active_mm)]
    if (window := t.in_exec_mmap) is not None:
        mms += [("exec_mmap's old_mm", window.old_mm), ("exec_mmap's active_mm", window.active_mm)]
    return mms


def reachable(state: KernelState) -> set[int]:
    """Ids of mms something still points to."""
    seen: set[int] = {state.init_mm.id}
    for t in state.live_tasks():
        seen.update(mm.id for _, mm in _task_mms(t) if mm is not None)
    for rq in state.rqs:
        for mm in (rq.prev_mm, rq.tlb.loaded_mm):
            if mm is not None:
                seen.add(mm.id)
    seen.update(h.mm.id for h in state.holders)
    # PREEMPT_RT: an mm whose __mmdrop_delayed() is queued is its RCU callback's to free
    seen.update(mm.id for mm in state.mms if mm.rcu_cpu is not None)
    return seen


def check_state(state: KernelState, config: KernelConfig) -> tuple[str, str] | None:
    """Every invariant that must hold between operations; the first broken one, or None."""
    return (
        _check_tasks(state)
        or _check_use_after_free(state)
        or _check_counts(state, config)
        or _check_hardware(state, config)
        or (_check_global_asids(state) if config.invlpgb else None)
    )


def _check_global_asids(state: KernelState) -> tuple[str, str] | None:
    """x86 INVLPGB: a global ASID belongs to one live mm, is marked used and not freed, and
    goes back (mm_free_global_asid) when its mm is freed."""
    space = state.global_asids
    owner: dict[int, Mm] = {}
    for mm in state.mms:
        asid = mm.context.global_asid
        if not asid:
            continue
        if mm.freed:
            return "global ASID leak", f"{mm} was freed with global ASID {asid} still its own"
        if asid not in space.used or asid in space.freed:
            return "global ASID", f"{mm} has global ASID {asid}, which the allocator gave back"
        if (other := owner.setdefault(asid, mm)) is not mm:
            return "global ASID", f"{other} and {mm} share global ASID {asid}"
    return None


def _check_tasks(state: KernelState) -> tuple[str, str] | None:
    init_mm = state.init_mm
    for t in state.live_tasks():
        if t.mm is init_mm:
            return "init_mm as a real mm", f"{t.name} has init_mm as its mm"
        if t.mm is not None and t.active_mm is not t.mm:
            return "active_mm rule", f"{t.name} has mm {t.mm} but active_mm {t.active_mm}"
        if t.pf_kthread and t.mm is not None and not t.uses_mm:
            return "kthread with mm", f"kernel thread {t.name} has {t.mm} outside kthread_use_mm"
        if t.exiting and t.uses_mm:
            return (
                "exit inside kthread_use_mm",
                f"{t.name} exited while inside kthread_use_mm(); exit_mm() mmput() a "
                f"reference it never took",
            )
        running = t.state is TaskState.RUNNING
        if not running and t.mm is None and t.active_mm is not None and not t.is_idle:
            return (
                "stale active_mm",
                f"{t.name} is not running but still borrows {t.active_mm}",
            )
    for rq in state.rqs:
        if rq.online and rq.curr.active_mm is None:
            return "no active_mm", f"CPU {rq.cpu} runs {rq.curr.name} with active_mm NULL"
        if rq.prev_mm is not None:
            return "rq->prev_mm left", f"CPU {rq.cpu} has rq->prev_mm {rq.prev_mm} between ops"
    return None


def _gone(mm: Mm) -> str | None:
    """Why nothing may point to `mm` any more: freed, or (PREEMPT_RT, reference scenario
    13) its final mmdrop_sched() queued __mmdrop_delayed() on RCU."""
    if mm.freed:
        return "freed"
    if mm.rcu_cpu is not None:
        return "finally dropped (its __mmdrop queued on RCU)"
    return None


def _check_use_after_free(state: KernelState) -> tuple[str, str] | None:
    for t in state.live_tasks():
        for what, mm in _task_mms(t):
            if mm is not None and (why := _gone(mm)):
                return "use-after-free", f"{t.name}->{what} points to {why} {mm}"
    for rq in state.rqs:
        if rq.online and (why := _gone(rq.tlb.loaded_mm)):
            return (
                "use-after-free",
                f"CPU {rq.cpu} still runs on the page tables of {why} {rq.tlb.loaded_mm}",
            )
    for h in state.holders:
        if why := _gone(h.mm):
            return "use-after-free", f"{h.name} holds a {h.kind} reference on {why} {h.mm}"
    if state.init_mm.freed:
        return "init_mm freed", "init_mm was freed"
    return None


def _check_counts(state: KernelState, config: KernelConfig) -> tuple[str, str] | None:
    expected = expected_counts(state, config)
    live = reachable(state)
    for mm in state.mms:
        if mm.freed:
            continue
        if mm.mm_count < 0 or mm.mm_users < 0:
            return "refcount underflow", f"{mm} has mm_users={mm.mm_users} mm_count={mm.mm_count}"
        if mm.id not in live:
            return (
                "leak",
                f"{mm} is unreachable but not freed (mm_users={mm.mm_users}, "
                f"mm_count={mm.mm_count})",
            )
        if mm.is_init_mm and not config.lazy_refs_counted:
            continue
        users, count = expected[mm.id]
        if mm.mm_users != users:
            return (
                "refcount mismatch",
                f"{mm} has mm_users={mm.mm_users} but {users} real users exist",
            )
        if mm.mm_count != count:
            return (
                "refcount mismatch",
                f"{mm} has mm_count={mm.mm_count} but {count} references exist "
                f"(real users' share, lazy users, rq->prev_mm, kthread_use_mm, grabs)",
            )
        if mm.mm_users == 0 and not mm.is_init_mm and not mm.torn_down:
            return "missed __mmput", f"{mm} has no users but its address space was not torn down"
    return None


def _check_hardware(state: KernelState, config: KernelConfig) -> tuple[str, str] | None:
    """Reference §11 invariants 17-20 (x86) and 23 (alpha), and their generic form."""
    init_mm = state.init_mm
    # PREEMPT_RT: a task preempted inside exec_mmap() before activate_mm() left its CPU on
    # the page tables it had loaded (its old active_mm) under a task whose mm, and a kernel
    # thread's borrowed active_mm, are already the new one: only activate_mm(), or the
    # task's own switch back in, loads the new mm (several tasks' windows can be open on one
    # CPU, each having left its own old mm there)
    stale = [
        (t.cpu, t.in_exec_mmap.active_mm)
        for t in state.preempted_execs()
        if t.in_exec_mmap is not None
    ]
    for rq in state.rqs:
        if not rq.online:
            continue
        cur, tlb = rq.curr, rq.tlb
        loaded = tlb.loaded_mm
        left = any(cpu == rq.cpu and loaded is old for cpu, old in stale)
        # alpha: the hardware runs on the PCB loaded at the last swpctx, and switch_mm()
        # (ev5_switch_mm) writes only the PCB ASN: after kthread_use_mm()/kthread_unuse_mm()
        # the CPU keeps the old page tables until the next switch. So the two rules below are
        # x86/generic ones; what alpha must never do, run on freed page tables, is checked by
        # _check_use_after_free for every arch.
        hw_follows = config.arch != "alpha"
        if hw_follows and loaded is not cur.active_mm and loaded is not init_mm and not left:
            return (
                "hardware state",
                f"CPU {rq.cpu} runs on {loaded} but its task {cur.name} has active_mm "
                f"{cur.active_mm}",
            )
        if hw_follows and cur.mm is not None and loaded is not cur.mm and not left:
            return "hardware state", f"CPU {rq.cpu} runs user {cur.name} on {loaded}, not {cur.mm}"
        if hw_follows and not loaded.is_init_mm and rq.cpu not in loaded.mm_cpumask:
            return "mm_cpumask", f"CPU {rq.cpu} runs on {loaded} but is not in its mm_cpumask"
        if config.arch == "x86_64":
            # (before 6.15 an EFI call brings a lazy CPU back to its borrowed mm out of lazy
            # mode: efi_enter_mm() has no leave_mm() first, and nothing sets is_lazy again
            # before the thread's next switch; 6.15+ uses use_temporary_mm(), which does.
            # That state is the kernel's there, a bug anywhere else: text_poke's before the
            # 2020 Xen PV fix, the text-poke-no-leave-mm mutant. With INVLPGB, 6.17's
            # flush_tlb_func() reloads a lazy CPU's mm moving to a global ASID and so clears
            # is_lazy as well: the kernel's too, harmless there, as broadcast flushes reach it)
            unlazy_ok = tlb.unlazy_by in UNLAZY_OK and loaded is cur.active_mm
            # inside __schedule() (interrupts off) no user code runs: a flush IPI waiting on
            # the CPU's call_single_queue catches its TLB up at finish_task_switch()
            queued = max((q.tlb_gen for q in rq.call_single_queue if q.mm is loaded), default=0)
            problem = _check_x86(rq.cpu, cur.mm, loaded, tlb.is_lazy, tlb, unlazy_ok, queued)
            if problem:
                return problem
        if config.arch == "alpha" and cur.mm is None and cur.pcb.ptbr is not cur.active_mm:
            return (
                "alpha PCB",
                f"kernel thread {cur.name} on CPU {rq.cpu} borrows {cur.active_mm} but its "
                f"PCB ptbr is {cur.pcb.ptbr}",
            )
    return None


def _check_x86(
    cpu: int,
    mm: Mm | None,
    loaded: Mm,
    is_lazy: bool,
    tlb: CpuTlbState,
    unlazy_ok: bool,
    queued: int,
) -> tuple[str, str] | None:
    """x86 MMU state against what the CPU runs; `queued`: the TLB generation a flush IPI
    waiting on the CPU will catch it up to before it runs user code again (0: none)."""
    if is_lazy and (mm is not None or loaded.is_init_mm):
        return "x86 is_lazy", f"CPU {cpu} is_lazy but runs {'a user task' if mm else 'init_mm'}"
    if mm is None and not loaded.is_init_mm and not is_lazy and not unlazy_ok:
        return "x86 is_lazy", f"CPU {cpu} borrows {loaded} for a kernel thread but is not lazy"
    asid = tlb.loaded_mm_asid
    if asid >= len(tlb.ctxs):  # an INVLPGB global ASID: broadcast flushes keep it current
        if asid != loaded.context.global_asid:
            return (
                "x86 ASID",
                f"CPU {cpu} runs {loaded} on global ASID {asid}, which is not {loaded}'s",
            )
        return None
    ctx = tlb.ctxs[asid]
    if ctx.ctx_id != loaded.context.ctx_id:
        return "x86 ASID", f"CPU {cpu} ASID {tlb.loaded_mm_asid} does not hold {loaded}'s context"
    tlb_gen = max(ctx.tlb_gen, queued)
    if mm is not None and tlb_gen < loaded.context.tlb_gen:
        return (
            "stale TLB",
            f"CPU {cpu} runs user code of {loaded} with TLB generation {tlb_gen} < "
            f"{loaded.context.tlb_gen}: a flush was missed",
        )
    return None
