"""The state the kernel keeps for active_mm, as plain dataclasses with the kernel's field names.

`Task` is `struct task_struct` (the fields that matter here), `Mm` is `struct mm_struct`,
`Rq` is the per-CPU runqueue with `rq->prev_mm`, and `CpuTlbState` is the per-CPU MMU state
(x86 `cpu_tlbstate` and `cpu_tlbstate_shared.is_lazy`; alpha `cpu_data[].last_asn`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class TaskState(StrEnum):
    """Where a task is in its life, as far as the mm code cares."""

    RUNNABLE = "runnable"  # on a runqueue or sleeping: not current anywhere
    RUNNING = "running"  # rq->curr of some CPU
    DEAD = "dead"  # TASK_DEAD: inside its final __schedule() (never seen between operations)
    GONE = "gone"  # final switch done; finish_task_switch() put the task_struct


@dataclass(slots=True, eq=False)
class MmContext:
    """The arch part of `mm->context` that the models use."""

    ctx_id: int = 0  # x86: unique id from a global counter (init_new_context)
    tlb_gen: int = 0  # x86: bumped by every flush_tlb_mm_range (inc_mm_tlb_gen)
    asn: dict[int, int] = field(default_factory=dict)  # alpha: per-CPU ASN|version, 0 = none
    global_asid: int = 0  # x86 INVLPGB: the ASID every CPU uses for this mm, 0 = none
    asid_transition: bool = False  # x86 INVLPGB: some CPU may still run it on a dynamic ASID
    # x86 6.14+: the jiffies after which a flush may trim mm_cpumask (should_trim_cpumask)
    next_trim_cpumask: int = 0


@dataclass(slots=True, eq=False)
class Mm:
    """`struct mm_struct`: an address space and its two counters."""

    id: int
    owner: str  # comm of the task it was created for (for people, not for the kernel)
    mm_users: int = 1
    mm_count: int = 1
    is_init_mm: bool = False
    torn_down: bool = False  # __mmput() ran: mappings and user page tables are gone
    freed: bool = False  # __mmdrop() ran: the struct itself is gone
    mm_cpumask: set[int] = field(default_factory=set)
    context: MmContext = field(default_factory=MmContext)
    # PREEMPT_RT: mmdrop_sched() took mm_count to 0 and call_rcu()ed __mmdrop_delayed() on
    # this CPU; the struct is freed when that CPU runs its RCU callbacks (rcu_do_batch)
    rcu_cpu: int | None = None
    # ... and the CPUs that must pass a quiescent state (a context switch) before that
    # callback may run: a grace period
    rcu_wait: frozenset[int] = frozenset()
    # ... and how many more times RCU's grace-period kthread must run (be switched in)
    # before it: counted only when a client says when it runs (KernelState.rcu_gp_tracked)
    rcu_gp_runs: int = 0

    @property
    def name(self) -> str:
        return "init_mm" if self.is_init_mm else f"mm{self.id}"

    @property
    def status(self) -> str:
        """live (has real users), zombie (only lazy users / grabs left), rcu-queued
        (PREEMPT_RT: its final mmdrop_sched() queued __mmdrop on RCU) or freed."""
        if self.freed:
            return "freed"
        if self.rcu_cpu is not None:
            return "rcu-queued"
        if self.mm_users > 0 or self.is_init_mm:
            return "live"
        return "zombie"

    def __str__(self) -> str:
        return self.name if self.is_init_mm else f"{self.name} ({self.owner})"


@dataclass(slots=True, eq=False)
class Pcb:
    """alpha: the hardware process control block in thread_info (the part PALcode loads)."""

    ptbr: Mm | None = None  # page-table base: stands for pfn(mm->pgd)
    asn: int = 0


@dataclass(slots=True, eq=False)
class ExecMmap:
    """fs/exec.c: exec_mmap()'s locals while its task is preempted between
    `tsk->mm = tsk->active_mm = mm` and activate_mm() (PREEMPT_RT: task_lock() is a sleeping
    lock, and x86 enables interrupts before activate_mm()). They hold the references exec_mmap()
    has yet to put: a real user of `old_mm`, or, for a task that had no mm, the lazy reference
    on the `active_mm` it borrowed. The CPU still runs on whatever it had loaded."""

    old_mm: Mm | None
    active_mm: Mm | None
    comm: str | None = None  # begin_new_exec()'s name for __set_task_comm() after it


@dataclass(slots=True, eq=False)
class Task:
    """`struct task_struct`, the mm-relevant fields."""

    pid: int
    comm: str
    tgid: int
    pf_kthread: bool = False  # PF_KTHREAD
    mm: Mm | None = None
    active_mm: Mm | None = None
    state: TaskState = TaskState.RUNNABLE
    cpu: int | None = None  # the CPU it runs on (or last ran on)
    is_idle: bool = False
    uses_mm: bool = False  # a kernel thread between kthread_use_mm() and kthread_unuse_mm()
    exiting: bool = False  # PF_EXITING: in do_exit() past exit_mm(), until its final switch
    vfork_parent: Task | None = None  # CLONE_VFORK: released at exec_mm_release / exit
    pcb: Pcb = field(default_factory=Pcb)
    in_exec_mmap: ExecMmap | None = None  # preempted inside exec_mmap() (PREEMPT_RT)

    @property
    def name(self) -> str:
        return self.comm if self.pid == 0 else f"{self.comm}[{self.pid}]"

    def __str__(self) -> str:
        return self.name


@dataclass(slots=True, eq=False, frozen=True)
class TlbContext:
    """x86 `cpu_tlbstate.ctxs[asid]`: which mm an ASID slot holds and how far it is flushed.
    Immutable: a slot is updated by storing a new one, so copies of the state share them."""

    ctx_id: int = 0
    tlb_gen: int = 0


@dataclass(slots=True, eq=False)
class CpuTlbState:
    """Per-CPU MMU state: what the hardware really runs on, which may differ from active_mm."""

    loaded_mm: Mm
    loaded_mm_asid: int = 0
    next_asid: int = 1
    is_lazy: bool = False
    ctxs: list[TlbContext] = field(default_factory=list)
    last_asn: int = 0  # alpha: cpu_data[cpu].last_asn (ASN | version)
    need_new_asn: bool = False  # alpha
    trim_clock: int = 0  # powerpc radix: mm_cpumask_trim_clock (tick_and_test_trim_clock)
    # not kernel state: the kernel path that left this CPU's kernel thread on its borrowed
    # mm out of lazy mode, until its next switch (x86 efi_leave_mm() before 6.15; with
    # INVLPGB, flush_tlb_func()'s reload of a global ASID), for the sanitizer, which takes
    # that state for a bug anywhere else
    unlazy_by: str = ""


@dataclass(slots=True, eq=False)
class QueuedFlush:
    """A flush_tlb_func() call (x86: the mm and the tlb_gen of its flush_tlb_info) sent to a
    CPU with interrupts off, waiting on that CPU's call_single_queue (kernel/smp.c)."""

    mm: Mm
    tlb_gen: int


@dataclass(slots=True, eq=False)
class Rq:
    """`struct rq`: one per CPU."""

    cpu: int
    curr: Task
    idle: Task
    tlb: CpuTlbState
    prev_mm: Mm | None = None
    online: bool = True
    # Interrupts off from __schedule()'s local_irq_disable() to finish_task_switch()'s
    # finish_lock_switch(): only ever set between the two halves of a switch that a driver
    # splits (Machine.local_irq_disable; a trace's sched_switch seen before its
    # finish_task_switch). IPIs sent meanwhile wait on call_single_queue (per-CPU in
    # kernel/smp.c; kept here with the rest of the CPU's state).
    irqs_disabled: bool = False
    call_single_queue: list[QueuedFlush] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class Holder:
    """A reference taken from outside the scheduler: a /proc reader, io_uring, vhost, oom..."""

    name: str
    mm: Mm
    kind: str  # "mm_users" (mmget_not_zero / get_task_mm) or "mm_count" (mmgrab)


# x86 MAX_ASID_AVAILABLE: (1 << CR3_AVAIL_PCID_BITS) - 2, 11 bits with page table isolation
# configured (Debian's kernels), which takes one PCID bit for the user half
MAX_ASID_AVAILABLE = (1 << 11) - 2


@dataclass(slots=True, eq=False)
class GlobalAsidSpace:
    """arch/x86/mm/tlb.c (6.15+, CONFIG_BROADCAST_TLB_FLUSH): the global ASID allocator,
    `global_asid_used`, `global_asid_freed`, `last_global_asid`, `global_asid_available`.
    A freed global ASID is reused only after the wrap-around's flush (reset_global_asid_space)."""

    used: set[int] = field(default_factory=set)
    freed: set[int] = field(default_factory=set)
    last: int = MAX_ASID_AVAILABLE
    available: int = 0  # Machine.boot(): MAX_ASID_AVAILABLE - TLB_NR_DYN_ASIDS - 1


@dataclass(slots=True, eq=False)
class KernelState:
    """Everything the model knows. Freed mms and reaped tasks stay listed, marked as such."""

    init_mm: Mm
    rqs: list[Rq] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)
    mms: list[Mm] = field(default_factory=list)
    holders: list[Holder] = field(default_factory=list)
    # PREEMPT_RT: the RCU callbacks call_rcu() queued (every CPU's rcu_data cblist, oldest
    # first; each mm's rcu_cpu says whose list), the mms mmdrop_sched() took to 0
    rcu_callbacks: list[Mm] = field(default_factory=list)
    next_pid: int = 1
    next_ctx_id: int = 1
    next_mm_id: int = 1
    global_asids: GlobalAsidSpace = field(default_factory=GlobalAsidSpace)
    # kernel/time: jiffies, moved on only by a driver that has a clock (a trace replay:
    # Machine.tick_do_update_jiffies64); scenarios and the checker keep it at 0
    jiffies: int = 0
    # PREEMPT_RT: a client tells the model when RCU's grace-period kthread runs
    # (Machine.rcu_gp_kthread: a trace replay); then a callback also waits for it
    rcu_gp_tracked: bool = False
    rcu_gp_running: bool = False  # ... and that kthread is on a CPU now

    def live_tasks(self) -> list[Task]:
        return [t for t in self.tasks if t.state is not TaskState.GONE]

    def running(self) -> list[Task]:
        return [rq.curr for rq in self.rqs]

    def preempted_execs(self) -> list[Task]:
        """The tasks preempted inside exec_mmap() (PREEMPT_RT): task_lock() disabled their
        migration, so each stays its CPU's until resume_exec(); one CPU can hold several."""
        return [t for t in self.live_tasks() if t.in_exec_mmap is not None]


def clone_state(state: KernelState, prune: bool = False) -> KernelState:
    """A deep copy of the state, fast: the explorer copies a state for every transition.
    Kept next to the dataclasses so that a new field is copied too. `prune` leaves out reaped
    tasks and freed mms that nothing refers to any more."""
    mms: dict[int, Mm] = {}

    def cm(mm: Mm | None) -> Mm | None:
        if mm is None:
            return None
        new = mms.get(id(mm))
        if new is None:
            c = mm.context
            new = Mm(
                mm.id,
                mm.owner,
                mm.mm_users,
                mm.mm_count,
                mm.is_init_mm,
                mm.torn_down,
                mm.freed,
                set(mm.mm_cpumask),
                MmContext(
                    c.ctx_id,
                    c.tlb_gen,
                    dict(c.asn),
                    c.global_asid,
                    c.asid_transition,
                    c.next_trim_cpumask,
                ),
                mm.rcu_cpu,
                mm.rcu_wait,
                mm.rcu_gp_runs,
            )
            mms[id(mm)] = new
        return new

    tasks: dict[int, Task] = {}

    def ct(t: Task) -> Task:
        new = tasks.get(id(t))
        if new is None:
            pcb, mm, active, window = t.pcb, t.mm, t.active_mm, t.in_exec_mmap
            new = Task(
                t.pid,
                t.comm,
                t.tgid,
                t.pf_kthread,
                mm_copy := None if mm is None else cm(mm),
                None if active is None else (mm_copy if active is mm else cm(active)),
                t.state,
                t.cpu,
                t.is_idle,
                t.uses_mm,
                t.exiting,
                None,  # vfork_parent: linked below, once every task has its copy
                Pcb(cm(pcb.ptbr) if pcb.ptbr is not None else None, pcb.asn),
                window and ExecMmap(cm(window.old_mm), cm(window.active_mm), window.comm),
            )
            tasks[id(t)] = new
        return new

    init_mm = cm(state.init_mm)
    assert init_mm is not None
    old_tasks = [t for t in state.tasks if not prune or t.state is not TaskState.GONE]
    new_tasks = [ct(t) for t in old_tasks]
    for old in old_tasks:
        if old.vfork_parent is not None:
            ct(old).vfork_parent = ct(old.vfork_parent)
    rqs = []
    for rq in state.rqs:
        tlb = rq.tlb
        loaded = cm(tlb.loaded_mm)
        assert loaded is not None
        rqs.append(
            Rq(
                rq.cpu,
                ct(rq.curr),
                ct(rq.idle),
                CpuTlbState(
                    loaded,
                    tlb.loaded_mm_asid,
                    tlb.next_asid,
                    tlb.is_lazy,
                    list(tlb.ctxs),
                    tlb.last_asn,
                    tlb.need_new_asn,
                    tlb.trim_clock,
                    tlb.unlazy_by,
                ),
                cm(rq.prev_mm),
                rq.online,
                rq.irqs_disabled,
                [QueuedFlush(m, q.tlb_gen) for q in rq.call_single_queue if (m := cm(q.mm))],
            )
        )
    holders = []
    for h in state.holders:
        mm = cm(h.mm)
        assert mm is not None
        holders.append(Holder(h.name, mm, h.kind))
    # A freed mm still referenced (a use-after-free the sanitizer reports) is kept.
    kept = [mm for mm in state.mms if not (prune and mm.freed and id(mm) not in mms)]
    new_mms = [m for m in map(cm, kept) if m is not None]
    ga = state.global_asids
    return KernelState(
        init_mm,
        rqs,
        new_tasks,
        new_mms,
        holders,
        [m for m in map(cm, state.rcu_callbacks) if m is not None],
        state.next_pid,
        state.next_ctx_id,
        state.next_mm_id,
        GlobalAsidSpace(set(ga.used), set(ga.freed), ga.last, ga.available),
        state.jiffies,
        state.rcu_gp_tracked,
        state.rcu_gp_running,
    )
