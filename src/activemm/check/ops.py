"""The operations a Machine can perform in its current state, as (name, arguments) pairs.

This is the transition relation the property-based tests sample and the explorer enumerates:
an operation is enabled exactly when the kernel could perform it (the task runs, the CPU is
online...), within limits that keep the systems small.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from activemm.model import Machine
from activemm.model.machine import BOOT_MMS
from activemm.model.state import Rq, Task, TaskState

Op = tuple[str, tuple[tuple[str, Any], ...]]


@dataclass(frozen=True)
class Limits:
    """How big a system may grow, and which kinds of operation are explored."""

    max_tasks: int = 8  # live tasks besides the idle tasks
    max_holders: int = 2
    processes: int | None = None  # fork kind="process" budget (None: limited by max_tasks)
    threads: int | None = None
    kthreads: int | None = None
    holders: bool = True
    flushes: bool = True
    hotplug: bool = True
    exec: bool = True
    execs: int | None = None  # exec budget (None: unlimited)
    grabs: bool = True  # mmgrab/mmdrop holders besides mmget_not_zero/mmput
    kthread_use_mm: bool = True
    text_poke: bool = False  # x86 text_poke (poking_mm) on any online CPU
    efi: bool = False  # x86 EFI runtime calls (efi_mm) by any kernel thread running
    # error paths: a fork failing after copy_mm(), an exec failing after alloc_bprm() (no
    # task is created, no budget is spent: they change only reference counts and TLB state)
    failures: bool = False
    # PREEMPT_RT: an exec preempted inside exec_mmap() before activate_mm() (resumed when
    # its task, which cannot migrate meanwhile, runs again)
    exec_preemption: bool = False
    # flushes at which the arch's occasional mm_cpumask trim is due (x86 6.14+, powerpc radix)
    trim: bool = False


def op(name: str, **args: Any) -> Op:
    return (name, tuple(args.items()))


def describe(o: Op) -> str:
    return f"{o[0]}({', '.join(f'{k}={v}' for k, v in o[1])})"


def apply(machine: Machine, o: Op) -> None:
    getattr(machine, o[0])(**dict(o[1]))


def enabled(
    machine: Machine, limits: Limits = Limits(), forks: dict[str, int] | None = None
) -> list[Op]:
    """Every operation enabled in the machine's state. `forks` counts forks done so far by
    kind (and execs under "exec"), for the budgets of `limits`."""
    state = machine.state
    limits = limits or Limits()
    forks = forks or {}
    ops: list[Op] = []
    # x86's poking_mm and efi_mm belong to text_poke and EFI calls alone: no task, thread or
    # holder ever takes them
    poking = {id(h.mm) for h in state.holders if h.name in BOOT_MMS}
    live = [t for t in state.tasks if not t.is_idle and t.state is not TaskState.GONE]
    room = len(live) < limits.max_tasks
    budget = {
        "process": limits.processes,
        "thread": limits.threads,
        "vfork": limits.threads,
        "kthread": limits.kthreads,
        "exec": limits.execs,
    }

    def within(kind: str) -> bool:
        b = budget.get(kind)
        return b is None or forks.get(kind, 0) < b

    def can_fork(kind: str) -> bool:
        return room and within(kind)

    can_exec = limits.exec and within("exec")
    preemptible_exec = limits.exec_preemption and machine.config.PREEMPT_RT

    def execs(t: Task) -> list[Op]:
        out = [op("exec", task=t.name)] if can_exec else []
        if can_exec and preemptible_exec:
            out.append(op("exec", task=t.name, preempted=True))
        if limits.failures:
            out.append(op("failed_exec", task=t.name))
        return out

    def may_run(t: Task, rq: Rq) -> bool:
        """Can rq's CPU switch to t? Not to another CPU's idle task, nor to a task
        preempted inside exec_mmap() on another CPU (task_lock() disabled its migration)."""
        if t.state is not TaskState.RUNNABLE or (t.is_idle and t is not rq.idle):
            return False
        return t.in_exec_mmap is None or t.cpu == rq.cpu

    online = [rq for rq in state.rqs if rq.online]
    for rq in online:
        for t in state.tasks:
            if t is not rq.curr and may_run(t, rq):
                ops.append(op("schedule", cpu=rq.cpu, next=t.name))
    for rq in online:
        t = rq.curr
        if t.is_idle:
            continue
        if t.exiting:
            # still in do_exit(): only its switch out remains (final, or preempted)
            for other in state.tasks:
                if may_run(other, rq):
                    ops.append(op("schedule", cpu=rq.cpu, next=other.name, preempt=True))
            continue
        if t.in_exec_mmap is not None:
            # preempted inside exec_mmap() and running again: only the rest of that exec
            ops.append(op("resume_exec", task=t.name))
            continue
        if t.mm is not None and not t.pf_kthread:
            for kind in ("process", "thread"):
                if can_fork(kind):
                    ops.append(op("fork", parent=t.name, kind=kind))
                if limits.failures:
                    ops.append(op("failed_fork", parent=t.name, kind=kind))
            ops += execs(t)
            if t.pid != 1:
                ops.append(op("exit", task=t.name))
        elif t.uses_mm:
            ops.append(op("kthread_unuse_mm", task=t.name))
        else:
            if t.pf_kthread:
                if can_fork("kthread"):
                    ops.append(op("fork", parent=t.name, kind="kthread"))
                for mm in state.mms if limits.kthread_use_mm else ():
                    usable = not mm.is_init_mm and not mm.freed and mm.mm_users > 0
                    if usable and id(mm) not in poking:
                        ops.append(op("kthread_use_mm", task=t.name, mm=mm.name))
            else:  # a user-mode thread before its first exec (init trying /sbin/init...)
                ops += execs(t)
            if t.pid != 1:
                ops.append(op("exit", task=t.name))
    if limits.holders:
        # poking_init()'s reference to x86's poking_mm is never given back, nor efi_mm's
        external = [h for h in state.holders if h.name not in BOOT_MMS]
        held = {h.name for h in external}
        for h in external:
            ops.append(op("mmput" if h.kind == "mm_users" else "mmdrop", holder=h.name))
        if len(held) < limits.max_holders:
            name = next(f"h{i}" for i in range(limits.max_holders + 1) if f"h{i}" not in held)
            for mm in state.mms:
                if mm.is_init_mm or mm.freed or mm.mm_users == 0 or id(mm) in poking:
                    continue
                ops.append(op("mmget_not_zero", mm=mm.name, holder=name))
                if limits.grabs:
                    ops.append(op("mmgrab", mm=mm.name, holder=name))
    if limits.flushes:
        # The arch's occasional mm_cpumask trim is the environment's choice here, not a
        # clock's: a plain flush says it is not due (trim=False, so that powerpc's per-CPU
        # flush counter, which the canonical state leaves out, never ticks), and with --trim
        # a flush at which it is due is offered too.
        clocked = machine.config.cpumask_trim
        trims = limits.trim and clocked
        no_trim = {"trim": False} if clocked else {}
        # munmap/mprotect flush from the process's own context, on a CPU running the mm;
        # leave_mm() is called from the idle loop.
        for rq in online:
            user_mm = rq.curr.mm
            if user_mm is not None and not rq.curr.pf_kthread:
                for freed in (False, True):
                    ops.append(
                        op(
                            "flush_tlb_mm_range",
                            cpu=rq.cpu,
                            mm=user_mm.name,
                            freed_tables=freed,
                            **no_trim,
                        )
                    )
                if trims:
                    ops.append(op("flush_tlb_mm_range", cpu=rq.cpu, mm=user_mm.name, trim=True))
            if rq.curr.is_idle and machine.config.arch == "x86_64":
                ops.append(op("leave_mm", cpu=rq.cpu))
    if limits.text_poke and machine.config.arch == "x86_64":
        for rq in online:
            ops.append(op("text_poke", cpu=rq.cpu))
    if limits.efi and machine.config.arch == "x86_64":
        for rq in online:  # (efi_rts_wq's kworker: a kernel thread)
            if rq.curr.pf_kthread and rq.curr.mm is None and not rq.curr.is_idle:
                ops.append(op("efi_call", cpu=rq.cpu))
    if limits.hotplug:
        pinned = {t.cpu for t in state.preempted_execs()}  # (migration disabled)
        for rq in state.rqs:
            if rq.online and len(online) > 1 and rq.cpu not in pinned:
                ops.append(op("cpu_down", cpu=rq.cpu))
            elif not rq.online:
                ops.append(op("cpu_up", cpu=rq.cpu))
    return ops
