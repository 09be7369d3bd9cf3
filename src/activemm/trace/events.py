"""Typed trace events. Every event knows the line it came from, its CPU, its timestamp
(seconds) and the task that was current (pid, comm, tgid when the trace records it)."""

from __future__ import annotations

from dataclasses import dataclass, field

# Not an event of the stream (nothing the model does): where a sched_wakeup_new placed a
# task, or whence and whither a sched_migrate_task moved it, read aside to tell which of two
# tasks a pid names (ReadStats.placements, Replayer.placements): (line, from CPU or -1, to
# CPU, whether the source CPU's stopper thread moved it)
Placement = tuple[int, int, int, bool]


def stopper_comm(cpu: int) -> str:
    """The comm of `cpu`'s stopper thread (stop_machine.c: migration/N)."""
    return f"migration/{cpu}"


@dataclass(slots=True)
class TraceEvent:
    line: int
    cpu: int
    ts: float
    pid: int
    comm: str
    tgid: int | None


# sched_switch's prev_state as a number, as the kernel reports it since 4.14 (one TASK_REPORT
# bit, __trace_sched_switch_state(); TASK_REPORT_MAX marks preemption): Perfetto's protos and
# trace-cmd's raw fields carry it so. (Before 4.14 it was the raw task state: TASK_DEAD was
# 64, read here as P, and the preemption mark 1024-4096, read here as R+ all the same.)
STATE_LETTERS = [
    (0x01, "S"),
    (0x02, "D"),
    (0x04, "T"),
    (0x08, "t"),
    (0x10, "X"),
    (0x20, "Z"),
    (0x40, "P"),
    (0x80, "I"),
]


def state_letter(value: int) -> str:
    """The letter the kernel prints for a prev_state number (R, S, D, ... R+)."""
    if value == 0:
        return "R"
    for bit, letter in STATE_LETTERS:
        if value & bit:
            return letter
    return "R+"  # TASK_REPORT_MAX: preempted


@dataclass(slots=True)
class SchedSwitch(TraceEvent):
    prev_comm: str
    prev_pid: int
    prev_state: str
    next_comm: str
    next_pid: int
    # the prev task's migrate_disable() depth, from the irq-flags column when the trace has
    # it: on PREEMPT_RT a spinlock_t held (it disables migration, not preemption)
    migrate_disabled: int = 0


@dataclass(slots=True)
class ProcessFork(TraceEvent):
    parent_pid: int
    child_comm: str
    child_pid: int


@dataclass(slots=True)
class NewTask(TraceEvent):
    """task_newtask: fires in the parent, before the child runs; clone_flags tell what kind."""

    child_pid: int
    child_comm: str
    clone_flags: int


@dataclass(slots=True)
class ProcessExec(TraceEvent):
    filename: str
    exec_pid: int
    old_pid: int


@dataclass(slots=True)
class ProcessExit(TraceEvent):
    exit_pid: int


@dataclass(slots=True)
class ProcessFree(TraceEvent):
    free_pid: int


@dataclass(slots=True)
class HotplugStep(TraceEvent):
    """cpuhp_enter: a CPU hotplug state's callback about to run for `target_cpu` (`function`
    names it: finish_cpu is the one that drops a dead CPU's lazily borrowed mm)."""

    target_cpu: int
    function: str


@dataclass(slots=True)
class TaskRename(TraceEvent):
    rename_pid: int
    newcomm: str


@dataclass(slots=True)
class TlbFlush(TraceEvent):
    pages: int
    reason: str
    hardirq: bool = False  # from the irq-info flags, when the trace has them

    @property
    def cr3_load(self) -> bool:
        """Reason TLB_FLUSH_ON_TASK_SWITCH ("flush on task switch"): x86 emits it for every
        CR3 load in switch_mm_irqs_off()."""
        return "task switch" in self.reason

    @property
    def own_cr3_load(self) -> bool:
        """A CR3 load by the running task's own code, not a flush IPI's (in a hardirq, the
        lazy CPU's switch to init_mm in flush_tlb_func())."""
        return self.cr3_load and not self.hardirq

    @property
    def ipi_cr3_load(self) -> bool:
        """A CR3 load outside a context switch (the caller sets a switch's own apart) by a
        flush IPI's flush_tlb_func() on a lazy CPU, to init_mm: in a hardirq, or by the idle
        task, which runs the call-function queue itself while it polls (do_idle()'s
        flush_smp_call_function_queue(): the sender only set need-resched, no interrupt
        came), whatever the irq-info column says. The idle task's may be leave_mm() instead,
        from cpuidle_enter_state() before a state flagged CPUIDLE_FLAG_TLB_FLUSHED (intel_idle's
        C3 and deeper, ACPI C3: real hardware, never our guests): the same switch of a lazy
        CPU to init_mm, active_mm left alone."""
        return self.cr3_load and (self.hardirq or self.pid == 0)


@dataclass(slots=True)
class MmFlush(TraceEvent):
    """A flush_tlb_mm_range() from this CPU, as `trace.hints.tlb_hints()` reads it from the
    tlb_flush lines ("remote ipi send", then the "local mm shootdown" of the same flush; or
    that local part alone), in place of its first line. Of the running task's mm, or
    (`foreign`) of one the CPU did not have loaded, the mm the CPUs the IPIs reached were on
    (`receivers`): IPIs went out with no local part (another task's mm: uprobes, page
    migration, clear_refs), or the local part was a lazy CPU's switch to init_mm (the mm it
    borrowed; this CPU is a receiver then). `freed_tables`: a lazy CPU took the IPI (its
    CR3 load of init_mm); the kernel sends lazy CPUs one only when page tables were freed.
    `fork`: the flush was dup_mmap()'s flush_tlb_mm() of that task_newtask's parent."""

    pages: int
    freed_tables: bool = False
    fork: NewTask | None = None
    foreign: bool = False
    receivers: tuple[int, ...] = ()
    # the local part was this CPU's switch to init_mm, lazy on the flushed mm: a user task
    # flushing there is past its exit_mm(), in exit_mmap()
    lazy_local: bool = False
    # receivers whose handler's line came after a context switch of theirs that began after
    # the IPIs went out: inside __schedule(), interrupts off, they took the IPI only at that
    # switch's finish_task_switch(), on the state it left
    in_switch: tuple[int, ...] = ()


@dataclass(slots=True)
class TempMmLoads(TraceEvent):
    """CR3 loads in a row by the running task outside a context switch, nothing between
    (`trace.hints.tlb_hints()` puts one in place of the first): x86 text_poke()'s
    use_temporary_mm(poking_mm) and unuse_temporary_mm(), after leave_mm() on a lazy CPU (a
    third load); an EFI runtime call's efi_mm and back. (One load alone is exec's
    activate_mm() (ExecMmap), exit_mmap()'s switch of the exiting task's lazy CPU to
    init_mm (ExitMmapLoad), or, left a plain line, kthread_use_mm().)"""

    loads: int


@dataclass(slots=True)
class ExecMmap(TraceEvent):
    """exec_mmap() of the running task, as `trace.hints.tlb_hints()` reads it: its CR3 load
    outside a context switch (activate_mm() of the new mm), followed on that CPU by the
    task's own task_rename (begin_new_exec()'s __set_task_comm()), in place of the load's
    line. sched_process_exec comes only when load_elf_binary() returns, if it does (an exec
    can fail past the point of no return); in between the task can be preempted and migrate,
    on its new mm."""


@dataclass(slots=True)
class ExitMmapLoad(TraceEvent):
    """exit_mmap()'s final flush switching the exiting task's own lazy CPU to init_mm, as
    `trace.hints.tlb_hints()` reads it: one CR3 load by a task outside a context switch, then
    no rename, exec or fork of the task before its sched_process_exit, in place of the
    load's line. exit_mm() made the CPU lazy on the task's mm before: a task preempted after
    that (the exit window) is switched as one without an mm, which sched_process_exit says
    only later."""


@dataclass(slots=True)
class Probe(TraceEvent):
    """A kprobe line, recognised by the probed function (`switch_mm_irqs_off`, `__mmdrop`...),
    whatever the event is named and at whatever offset."""

    function: str
    args: dict[str, str] = field(default_factory=dict)
    # the probe's offset into the function: +0x0 on Debian's 6.1, +0x4 (past ENDBR) on 6.12;
    # None for a return probe
    offset: int | None = None
    returned: bool = False  # a return probe (`caller+off/size <- function`)
    caller: str | None = None  # a return probe's caller (`copy_process`, `alloc_bprm`...)
    # the preempt-depth column of the irq-flags (0 for "."), None without the five-flag
    # column of a non-RT kernel: finish_task_switch() runs at depth 1 (schedule()'s
    # preempt_disable()), a syscall or a file's release at 0
    preempt_depth: int | None = None


@dataclass(slots=True)
class LostEvents(TraceEvent):
    """`CPU:N [LOST M EVENTS]`: the CPU's buffer overflowed; its state is unknown from here.
    `count` is 0 for `CPU:N [LOST EVENTS]`, how many the kernel could not tell."""

    count: int

    @property
    def anomaly(self) -> str:
        """What a replay counts it as: `count` lost events, or one gap of unknown size."""
        return "lost events" if self.count else "lost-events gaps of unknown size"
