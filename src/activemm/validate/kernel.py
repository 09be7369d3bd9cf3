"""What the real kernel did, read off the kprobe lines of a capture (docs/validate.md).

Probe lines are recognised by the probed function, whatever the event is named and at
whatever offset. Arguments keep the reference's names: `prev`, `next`, `tsk`, `t_pid`,
`t_mm`... (switch_mm_irqs_off, enter_lazy_tlb), `prev_pid`, `prev_mm`, `prev_active_mm`
(finish_task_switch), `mm` (__mmdrop, exit_mmap, kthread_use_mm), `ret` (mm_init)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from activemm.model.config import KernelConfig
from activemm.trace.events import HotplugStep, Probe, SchedSwitch, TraceEvent
from activemm.trace.replay import PF_KTHREAD, TaskInfo

PF_EXITING = 0x4  # include/linux/sched.h: set by exit_signals(), before exit_mm()

# init_mm is the one mm_struct that is not slab-allocated: it lives in the kernel image.
KERNEL_IMAGE = 0xFFFFFFFF80000000

SWITCH_MM = "switch_mm_irqs_off"
ENTER_LAZY = "enter_lazy_tlb"
FINISH = "finish_task_switch"
MMDROP = "__mmdrop"
EXIT_MMAP = "exit_mmap"
KSM_REMOVE = "remove_rmap_item_from_tree"
# binder_free_proc() drops its alloc->mm at the end of this (drivers/android/binder_alloc.c)
BINDER_RELEASE = "binder_alloc_deferred_release"
KSMD = "ksmd"  # the kernel thread that scans KSM's mm_slots (mm/ksm.c: ksm_scan_thread)
NEW_MM = ("mm_init", "dup_mmap", "mm_alloc")
MMPUT = "mmput"  # its return probe follows the end of the __mmput() it ran


def mmput_ended(p: Probe, into: str | None) -> bool:
    """Whether return probe `p`, in a task whose exit_mmap() has returned into `into` (its
    caller) and whose __mmput() has not ended yet, marks that end: mmput() returning, when
    exit_mmap() returned into __mmput() (called by mmput(), or by mmput_async_fn(), which
    has no such marker: the caller keeps that apart, see Validator) or into mmput() itself
    (PREEMPT_RT builds inline __mmput() there; into mmput_async_fn() likewise)."""
    return p.returned and p.function == MMPUT and into in ("__mmput", MMPUT)


# The arguments the validator reads off each core probe (the reference's names); a line
# without them is a cut or hand-edited trace, not a kernel that did something else.
REQUIRED_ARGS = {
    SWITCH_MM: ("prev", "next", "tsk"),
    ENTER_LAZY: ("mm", "tsk"),
    FINISH: ("prev_active_mm",),
    MMDROP: ("mm",),
    EXIT_MMAP: ("mm",),
}


def missing_args(p: Probe) -> list[str]:
    """The arguments a core probe line needs and lacks (REQUIRED_ARGS for entry probes,
    `ret` for mm_init's return probe)."""
    if p.returned:
        needed: tuple[str, ...] = ("ret",) if p.function == "mm_init" else ()
    else:
        needed = REQUIRED_ARGS.get(p.function, ())
    return [name for name in needed if name not in p.args]


# The arguments the validator reads as kernel pointers (`:x64`: 0x0 for NULL; a fetch that
# faulted prints `(fault)`) and as numbers, on any probe line it follows; another value
# there is a cut or edited line, which would otherwise read as NULL.
POINTER_ARGS = frozenset(
    {"prev", "next", "tsk", "mm", "oldmm", "t_mm", "t_active_mm", "prev_mm", "prev_active_mm"}
)
NUMBER_ARGS = frozenset({"t_pid", "t_flags", "prev_pid", "prev_flags"})
_POINTER = re.compile(r"0x[0-9a-fA-F]+|\(fault\)")


def malformed_args(p: Probe) -> list[str]:
    """The `name=value` pairs of a probe line whose value cannot be what the reference's
    fetch type prints: a pointer that is not hex, a number that is not one (mm_init's
    return value, `ret`, is a pointer too)."""
    bad = []
    for name, value in p.args.items():
        pointer = name in POINTER_ARGS or (name == "ret" and p.function in NEW_MM)
        if (pointer and not _POINTER.fullmatch(value)) or (
            name in NUMBER_ARGS and value != "(fault)" and _int(value) is None
        ):
            bad.append(f"{name}={value}")
    return bad


def address(value: str | None) -> int:
    """A pointer argument as printed by `:x64` (0x0 for NULL; `(fault)` reads as NULL)."""
    if not value:
        return 0
    try:
        return int(value, 16)
    except ValueError:
        return 0


def born(p: Probe) -> int:
    """The new mm a birth probe names (NEW_MM: mm_init's return value, or the `mm` argument
    of dup_mmap() and mm_alloc() on kernels traced without mm_init)."""
    return address(p.args.get("ret") or p.args.get("mm"))


def births_read(p: Probe, use_mm_init: bool) -> bool:
    """A birth probe of the kind this trace is read for: mm_init's return where the trace
    has it (it names every new mm), else dup_mmap() and mm_alloc()."""
    return p.function in NEW_MM and (p.function == "mm_init") == use_mm_init


def recover_births(events: list[TraceEvent]) -> tuple[list[TraceEvent], int]:
    """mm_init's return probe names every new mm, but a return probe can miss a hit (no
    instance left, or a hit inside another probe's handler) while the probes around it
    fire: exec's mm_alloc() returning an mm, or a fork's dup_mmap() entered with one, that
    no mm_init return of the same task named just before. Such a birth is put back, as the
    mm_init return it stands for (a fork's when dup_mmap() shows it), right before that line.
    Returns the events and how many births were put back (a trace without mm_init probes
    is returned as it is)."""
    if not any(isinstance(e, Probe) and e.function == "mm_init" for e in events):
        return events, 0
    out: list[TraceEvent] = []
    last: dict[int, int] = {}  # pid -> the mm its latest mm_init return named
    recovered = 0
    for e in events:
        if isinstance(e, Probe) and e.function in NEW_MM:
            addr = born(e)
            if e.function == "mm_init":
                last[e.pid] = addr
            elif addr and last.get(e.pid) != addr:
                fork = e.function == "dup_mmap"
                out.append(
                    replace(
                        e,
                        function="mm_init",
                        args={"ret": f"{addr:#x}"},
                        offset=None,
                        returned=True,
                        caller="copy_process" if fork else "mm_alloc",
                    )
                )
                last[e.pid] = addr
                recovered += 1
        out.append(e)
    return out, recovered


def born_in_fork(p: Probe) -> bool:
    """A birth in copy_process() (a fork's dup_mm()), not an exec's (alloc_bprm)."""
    return p.function == "dup_mmap" or p.caller in ("copy_process", "dup_mm")


def is_init_mm(addr: int) -> bool:
    return addr >= KERNEL_IMAGE


def hexaddr(addr: int | None) -> str | None:
    return None if addr is None else f"{addr:#x}"


@dataclass
class Hook:
    """The mm hook one context switch called: switch_mm_irqs_off(prev, next, tsk) or
    enter_lazy_tlb(mm, tsk). `prev` is the CPU's active_mm either way."""

    function: str
    prev: int
    next: int
    line: int


@dataclass
class SwitchGroup:
    """One context switch as the kernel recorded it: sched_switch, then on the same CPU the
    hook, then finish_task_switch (whose probe shows prev->active_mm after the switch)."""

    switch: SchedSwitch
    hook: Hook | None = None
    finish: Probe | None = None
    # the model's switch, run at the switch's last tracepoint (before its probes end);
    # None when the model refused it
    model: Any = None
    ran: bool = False  # the model has run it

    @property
    def prev_active_after(self) -> int | None:
        return address(self.finish.args.get("prev_active_mm")) if self.finish else None


def first_switches(events: Iterable[object]) -> dict[int, SwitchGroup]:
    """CPU -> its first complete context switch (sched_switch, hook, finish_task_switch), read
    ahead: it shows the state the CPU was in when the trace began."""
    pending: dict[int, SwitchGroup] = {}
    out: dict[int, SwitchGroup] = {}
    for e in events:
        if isinstance(e, SchedSwitch):
            if e.cpu not in out and e.cpu not in pending:
                pending[e.cpu] = SwitchGroup(e)
        elif isinstance(e, Probe) and e.cpu in pending:
            group = pending[e.cpu]
            if e.function in (SWITCH_MM, ENTER_LAZY) and in_switch(e, group):
                group.hook = hook_of(e)
            elif e.function == FINISH:
                group.finish = e
                out[e.cpu] = pending.pop(e.cpu)
    return out


def first_lazy_borrows(firsts: dict[int, SwitchGroup]) -> dict[int, int]:
    """CPU -> the mm it was lazily borrowing when the trace began: the hook's `prev` of the
    CPU's first complete switch (`first_switches`), when the task switched out had no mm
    (finish's prev_mm)."""
    out: dict[int, int] = {}
    for cpu, group in firsts.items():
        hook, finish = group.hook, group.finish
        if hook is None or finish is None or address(finish.args.get("prev_mm")) != 0:
            continue
        if hook.prev:
            out[cpu] = hook.prev
    return out


def binds_only(p: Probe) -> bool:
    """A probe line the validator reads only to bind an address or to score what the kernel
    did, never for when a path ran: a context switch's own hook (it names the next task, the
    line is still prev's) and finish_task_switch, __mmdrop, the birth probes. Every other
    probe it follows is a marker."""
    if p.function in (FINISH, MMDROP, *NEW_MM):
        return True
    return (
        p.function in (SWITCH_MM, ENTER_LAZY)
        and address(p.args.get("tsk")) != 0
        and _int(p.args.get("t_pid")) != p.pid
    )


def hook_of(p: Probe) -> Hook:
    if p.function == SWITCH_MM:
        return Hook(SWITCH_MM, address(p.args.get("prev")), address(p.args.get("next")), p.line)
    return Hook(ENTER_LAZY, address(p.args.get("mm")), 0, p.line)


def in_switch(p: Probe, group: SwitchGroup | None) -> bool:
    """Is this switch_mm_irqs_off / enter_lazy_tlb the hook of the pending context switch?
    The hook's task argument is the switch's next task."""
    if group is None or group.hook is not None:
        return False
    return address(p.args.get("tsk")) != 0 and _int(p.args.get("t_pid")) == group.switch.next_pid


def switch_in_flight(p: Probe, switched: bool) -> bool:
    """Is this switch_mm_irqs_off / enter_lazy_tlb, on a CPU with no sched_switch traced yet
    (`switched` False), the hook of a context switch that began before tracing did? A hook
    of context_switch() names the next task, while the line is still prev's; every other
    caller passes current (exit_mm, kthread_use_mm, idle_task_exit, cpu_init) or no task."""
    if switched or address(p.args.get("tsk")) == 0:
        return False
    return _int(p.args.get("t_pid")) != p.pid


def rcu_callbacks_of(comm: str) -> int | None:
    """The CPU whose RCU callbacks a kernel thread named `comm` invokes: rcuc/N, CPU N's own
    (PREEMPT_RT runs RCU's core there, not in a softirq), or rcuop/N when N's callbacks are
    offloaded (rcu_nocbs=; that thread runs on any CPU). None for any other task.
    PREEMPT_RT's mmdrop_sched() frees an mm from such a callback."""
    kind, _, cpu = comm.partition("/")
    if kind not in ("rcuc", "rcuop") or not cpu.isdigit():
        return None
    return int(cpu)


RCU_GP_KTHREADS = ("rcu_preempt", "rcu_sched")  # rcu_gp_kthread(), as PREEMPT_RCU or not


def is_rcu_gp_kthread(comm: str) -> bool:
    """Whether a kernel thread named `comm` is RCU's grace-period kthread, which starts and
    ends every (normal) grace period: rcu_preempt on PREEMPT_RCU kernels (PREEMPT_RT,
    PREEMPT_DYNAMIC), rcu_sched otherwise."""
    return comm in RCU_GP_KTHREADS


def exit_traced_first(config: KernelConfig) -> bool:
    """Whether the kernel fires sched_process_exit before exit_mm() (6.16, "exit: move and
    extend sched_process_exit() tracepoint", which also added its group_dead field): then
    the tracepoint marks exit_mm() itself (only perf_event_exit_task() lies between), and
    __mmput() follows it; before, exit_mm() and __mmput() came first and the tracepoint
    after them, with a window where a preempted task no longer had its mm."""
    return config.version >= (6, 16)


def efi_temporary_mm(config: KernelConfig) -> bool:
    """Whether x86 EFI runtime calls run use_temporary_mm(&efi_mm) (6.15, "x86/efi: Make
    efi_enter/leave_mm() use the use_/unuse_temporary_mm() machinery"): the same hooks and
    CR3 loads as a text_poke(), to efi_mm instead of the poking mm; before, switch_mm() with
    no task (efi_calls())."""
    return config.version >= (6, 15)


def is_kthread(p: Probe) -> bool:
    """The task a hook names (`t_flags`) is a kernel thread (PF_KTHREAD): its enter_lazy_tlb
    outside a switch is kthread_unuse_mm(), not exit_mm()."""
    return bool((_int(p.args.get("t_flags")) or 0) & PF_KTHREAD)


def _int(value: str | None) -> int | None:
    try:
        return int(value, 0) if value is not None else None
    except ValueError:
        return None


@dataclass
class Outside:
    """An mm hook the kernel ran outside a context switch."""

    kind: str  # "activate_mm" | "enter_lazy_tlb" | "flush_to_init_mm" | "switch_mm"
    cpu: int
    pid: int
    mm: int  # activate_mm: next; enter_lazy_tlb: mm; flush: init_mm
    prev: int
    line: int
    epoch: int  # switches on this CPU that loaded a user mm so far (its lazy episode)
    # model side: a fork's dup_mmap() flush the model ran later than the kernel (a failed
    # fork's at its exit_mmap marker; with tracepoints only, a fork's at the flush's local
    # part) on a CPU not lazy at the kernel's
    late_fork: bool = False
    via: str = ""  # model side: the model operation that made it

    def key(self) -> tuple[object, ...]:
        if self.kind == "flush_to_init_mm":
            return (self.kind, self.cpu, self.epoch)
        if self.kind in HOTPLUG:
            # the model takes a CPU down when it comes back (the cpu_init marker): which
            # task was current on the dying CPU, and idle_task_exit's `prev`, it cannot know
            return (self.kind, self.cpu, self.mm)
        return (self.kind, self.pid, self.prev, self.mm)


def efi_calls(events: Iterable[object]) -> dict[int, str]:
    """The switch_mm_irqs_off hooks of x86 EFI runtime calls before 6.15, line ->
    "efi_enter_mm" or "efi_leave_mm". efi_enter_mm() runs switch_mm(current->active_mm,
    &efi_mm, NULL): no task, a `next` in the kernel image (efi_mm is static, like init_mm),
    and `prev` that active_mm (NULL on 6.12, which passes switch_mm_irqs_off() no `prev`);
    efi_leave_mm() switches back, the next hook on that CPU in the same task: no task, to
    that active_mm again, from efi_mm (or NULL). A flush to init_mm is followed by no such
    hook (exec's activate_mm(), the other hook without a task, goes to a new mm). The
    CPU's active_mm is what its last context switch's hook (or exec's, or
    kthread_use_mm's) left. (6.15+ runs use_temporary_mm(), a "temporary_mm".)"""
    found: dict[int, str] = {}
    active: dict[int, int] = {}  # CPU -> its task's active_mm, from the hooks
    entered: dict[int, Probe] = {}  # CPU -> an EFI call's efi_enter_mm awaiting the leave
    for ev in events:
        if not isinstance(ev, Probe) or ev.function not in (SWITCH_MM, ENTER_LAZY):
            continue
        if ev.function == ENTER_LAZY:
            active[ev.cpu] = address(ev.args.get("mm"))
            entered.pop(ev.cpu, None)
            continue
        enter = entered.pop(ev.cpu, None)
        tsk, prev, nxt = (address(ev.args.get(a)) for a in ("tsk", "prev", "next"))
        if tsk == 0 and enter is not None and enter.pid == ev.pid:
            was = address(enter.args.get("prev")) or active.get(ev.cpu, 0)
            if nxt == was and prev in (0, address(enter.args.get("next"))):
                found[enter.line], found[ev.line] = "efi_enter_mm", "efi_leave_mm"
                continue
        if tsk == 0 and is_init_mm(nxt) and prev in (0, active.get(ev.cpu, prev)):
            entered[ev.cpu] = ev  # efi_enter_mm(), or a switch to init_mm
        elif not is_init_mm(nxt) and (tsk == 0 or _int(ev.args.get("t_pid")) != ev.pid):
            active[ev.cpu] = nxt  # a context switch's hook, exec's activate_mm()
        elif tsk != 0 and address(ev.args.get("prev")) != 0:
            active[ev.cpu] = nxt  # kthread_use_mm()
    return found


def outside_kind(p: Probe, efi: dict[int, str] | None = None) -> str:
    """Which kernel path ran a hook outside a context switch. `efi`: efi_calls()."""
    if efi and p.line in efi:
        return efi[p.line]
    idle = _int(p.args.get("t_pid")) == 0 and address(p.args.get("tsk")) != 0
    if p.function == ENTER_LAZY:
        if _int(p.args.get("t_pid")) != p.pid:
            # the hook of a context switch whose sched_switch did not fire (a CPU on its way
            # offline no longer traces it): exit_mm(), kthread_unuse_mm() and cpu_init() pass
            # current. Its idle task borrows init_mm when the task before it had borrowed
            # that (a migration/N thread that ran after the idle task)
            return "untraced_switch"
        if idle and is_init_mm(address(p.args.get("mm"))):
            return "cpu_init"  # a CPU coming online: its idle task starts lazily on init_mm
        return "enter_lazy_tlb"  # exit_mm() or kthread_unuse_mm()
    if address(p.args.get("tsk")) == 0:
        return "flush_to_init_mm" if is_init_mm(address(p.args.get("next"))) else "activate_mm"
    if idle and is_init_mm(address(p.args.get("next"))):
        return "idle_task_exit"  # a CPU going offline hands its lazy mm back (CPU hotplug)
    if is_init_mm(address(p.args.get("next"))) and address(p.args.get("prev")) != 0:
        # 6.13+: the outgoing CPU's hotplug thread (cpuhp/N) in sched_cpu_wait_empty()
        # moves the mm it borrows onto init_mm (kthread_use_mm() never takes init_mm)
        return "sched_force_init_mm"
    if address(p.args.get("prev")) == 0:
        return "temporary_mm"  # use_temporary_mm(): text_poke's poking_mm (6.15+: efi_mm)
    return "switch_mm"  # kthread_use_mm()


HOTPLUG = ("cpu_init", "idle_task_exit", "untraced_switch")

# kernel/cpu.c: the bring-up steps of a CPU coming online (cpuhp_enter names the callback):
# CPUHP_BRINGUP_CPU's bringup_cpu() (6.1), or with parallel bring-up CPUHP_BP_KICK_AP's
# cpuhp_kick_ap_alive() and the BRINGUP step's cpuhp_bringup_ap() (6.5+). Their teardowns
# are other functions (finish_cpu), so a CPU going down never shows them.
BRINGUP_STEPS = frozenset({"bringup_cpu", "cpuhp_kick_ap_alive", "cpuhp_bringup_ap"})


def first_bringups(events: Iterable[TraceEvent]) -> set[int]:
    """The CPUs a bring-up step (cpuhp_enter) is run for before any event of theirs: offline
    when the trace began (booted with maxcpus=, or taken down before), they come up in it."""
    seen: set[int] = set()
    unborn: set[int] = set()
    for e in events:
        if isinstance(e, HotplugStep) and e.function in BRINGUP_STEPS and e.target_cpu not in seen:
            unborn.add(e.target_cpu)
        seen.add(e.cpu)
    return unborn


def khugepaged_keeps(p: Probe) -> bool:
    """__khugepaged_exit(mm) finds khugepaged's scan cursor on this very mm (`slot_mm`): the
    reference __khugepaged_enter() took stays until a later pass (collect_mm_slot)."""
    mm = address(p.args.get("mm"))
    return address(p.args.get("slot")) != 0 and address(p.args.get("slot_mm")) == mm


# include/linux/sched/coredump.h: KSM may merge identical pages (an mm_slot holds the mm)
MMF_VM_MERGEABLE = 16


def ksm_keeps(p: Probe) -> bool:
    """exit_mmap(mm)'s marker with the mm's flags (read when the capture had KSM's markers):
    MMF_VM_MERGEABLE still set there, after __mmput's ksm_exit(), means __ksm_exit() left
    the mm's slot for ksmd (it had rmap_items, or ksmd's cursor rested on it) and the
    reference __ksm_enter() mmgrab()bed outlives __mmput. Cleared: freed there, or ksmd
    had already taken the slot out."""
    return bool(address(p.args.get("flags")) >> MMF_VM_MERGEABLE & 1)


# include/linux/sched/coredump.h (include/linux/mm_types.h since 6.15): processes of their
# own share the mm (copy_oom_score_adj() sets it for clone(CLONE_VM) without CLONE_THREAD or
# CLONE_VFORK); 26 since MMF_OOM_VICTIM went, 27 before (6.1's, 6.12's and 6.18's traces
# show it at 26)
MMF_MULTIPROCESS = 26
# where find_lock_task_mm() returns to in a write of /proc/PID/oom_score_adj or oom_adj
# (__set_oom_adj, a compiler clone on Debian's kernels; its callers, were it inlined)
OOM_ADJ_CALLERS = ("__set_oom_adj", "oom_score_adj_write", "oom_adj_write")


def sets_oom_adj(p: Probe) -> bool:
    """find_lock_task_mm()'s return (with the task's mm and that mm's flags) in a write of
    /proc/PID/oom_score_adj or oom_adj: a task with an mm found, and that mm has
    MMF_MULTIPROCESS, so __set_oom_adj() mmgrab()s it until the write is done."""
    return (
        p.caller in OOM_ADJ_CALLERS
        and address(p.args.get("mm")) != 0
        and bool(address(p.args.get("mm_flags")) >> MMF_MULTIPROCESS & 1)
    )


@dataclass
class Drop:
    """One __mmdrop (or, model side, MmFreed): the mm and the point it happened at."""

    addr: int | None
    point: tuple[object, ...]
    line: int
    cpu: int
    name: str = ""
    # model side: where the kernel's life of the address that the freed mm stood for ended
    # (its __mmdrop, or the address's next mm_init), when the model freed it only after
    # that (None: `line` is inside that life)
    life_line: int | None = None

    @property
    def in_life(self) -> int:
        """A line inside the life of the address this free ends."""
        return self.line if self.life_line is None else self.life_line


@dataclass
class PreTrace:
    """What the probes say about tasks from before the trace: the first mm each task is seen
    owning, while that address has not yet been handed out again inside the trace."""

    first_mm: dict[int, int] = field(default_factory=dict)
    flags: dict[int, int] = field(default_factory=dict)  # pid -> task_struct.flags first seen
    # user tasks first seen with no mm and PF_EXITING: in do_exit() past exit_mm() already
    exited: set[int] = field(default_factory=set)
    comm: dict[int, str] = field(default_factory=dict)
    # x86 poking_mm, allocated at boot: `next` of use_temporary_mm() hooks (a hook with a
    # task, outside a switch, and a NULL `prev`, that loads another mm than the CPU's last
    # other hook had: not the way back) into the heap
    poking_mm: int | None = None
    # x86 efi_mm (6.15+, whose EFI runtime calls use_temporary_mm() too): their `next` in
    # the kernel image (efi_mm is static)
    efi_mm: int | None = None

    @classmethod
    def scan(cls, events: Iterable[object]) -> PreTrace:
        out = cls()
        births: set[int] = set()
        # CPU -> the mm its last other hook loaded (a context switch's, a flush's...): a
        # use_temporary_mm() loads another, its way back (unuse_temporary_mm()) that one
        loaded: dict[int, int] = {}
        uses: Counter[int] = Counter()  # the temporary mms the uses loaded
        first: int | None = None  # the first temporary hook's `next`
        for ev in events:
            if not isinstance(ev, Probe):
                continue
            if ev.function in NEW_MM:
                births.add(born(ev))
                continue
            if ev.function == SWITCH_MM:
                nxt = address(ev.args.get("next"))
                if outside_kind(ev) != "temporary_mm":
                    loaded[ev.cpu] = nxt
                else:
                    first = nxt if first is None else first
                    if loaded.get(ev.cpu, nxt) != nxt:
                        uses[nxt] += 1  # (a CPU whose loaded mm is not known yet: not counted)
            for who in ("t_", "prev_"):
                pid = _int(ev.args.get(who + "pid"))
                if not pid:
                    continue
                mm = address(ev.args.get(who + "mm"))
                if mm and mm not in births and pid not in out.first_mm:
                    out.first_mm[pid] = mm
                flags = _int(ev.args.get(who + "flags"))
                if flags is not None and pid not in out.flags:
                    out.flags[pid] = flags
                    out.comm[pid] = ev.args.get(who + "comm", "")
                    exiting = flags & (PF_KTHREAD | PF_EXITING) == PF_EXITING
                    if exiting and not mm and pid not in out.first_mm:
                        out.exited.add(pid)
        # the most used of each kind; with none counted (every pair on a CPU no other hook
        # had loaded an mm on yet), the first temporary hook's, taken for a use
        heap = [mm for mm, _ in uses.most_common() if not is_init_mm(mm)]
        image = [mm for mm, _ in uses.most_common() if is_init_mm(mm)]
        out.poking_mm = heap[0] if heap else None if uses else first
        out.efi_mm = image[0] if image else None
        return out

    def tasks(self, snapshot: dict[int, TaskInfo] | None) -> dict[int, TaskInfo]:
        """The task snapshot, completed from the probes: a kernel thread is PF_KTHREAD in
        task_struct.flags, and tasks seen on one mm before any fork in the trace are threads
        of one group (a snapshot without /proc/TGID/ paths cannot say so)."""
        out = dict(snapshot or {})
        sharing: dict[int, list[int]] = {}
        for pid, addr in self.first_mm.items():
            sharing.setdefault(addr, []).append(pid)
        for pid, flags in self.flags.items():
            known = out.get(pid)
            tgid = known.tgid if known is not None else pid
            first = self.first_mm.get(pid)
            if first is not None and tgid == pid:
                tgid = min(sharing[first])
            comm = known.comm if known is not None else self.comm.get(pid, "")
            out[pid] = TaskInfo(tgid, comm, bool(flags & PF_KTHREAD), pid in self.exited)
        return out

    def owners(self, addr: int) -> list[int]:
        return [pid for pid, a in self.first_mm.items() if a == addr]
