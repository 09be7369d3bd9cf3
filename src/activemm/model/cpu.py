"""kernel/cpu.c: CPU hotplug, the steps that touch active_mm."""

from __future__ import annotations

from activemm.model import mm as mmh
from activemm.model.events import CpuOffline, CpuOnline
from activemm.model.kernel import Kernel
from activemm.model.rcu import tree as rcu
from activemm.model.sched import core
from activemm.model.state import Rq, TaskState


def cpu_down(k: Kernel, rq: Rq, control_cpu: int) -> None:
    """kernel/cpu.c: _cpu_down(), the mm steps in order:

    1. the outgoing CPU ends up running only per-CPU kernel threads (here: its idle task;
       the current task is migrated away, an ordinary context switch);
    2. 6.13+: sched_cpu_wait_empty() -> sched_force_init_mm() moves a lazy mm to init_mm
       (in the hotplug thread; the model's current task here is the idle task);
    3. take_cpu_down() -> __cpu_disable() (powerpc clears the CPU from every mm_cpumask);
    4. before 6.13: idle_task_exit() switches the hardware to init_mm;
    5. takedown_cpu(), on the control CPU, ends with rcutree_migrate_callbacks() (the dead
       CPU's RCU callbacks, PREEMPT_RT's queued __mmdrop among them, move there);
    6. finish_cpu(), on the control CPU, drops the idle task's active_mm."""
    k.cpu = rq.cpu
    if rq.curr is not rq.idle:
        core.__schedule(k, rq, rq.idle)
    new_scheme = k.config.version >= (6, 13)
    if new_scheme:
        core.sched_cpu_wait_empty(k, rq)
    k.arch.cpu_disable(k, rq.cpu)
    if not new_scheme:
        core.idle_task_exit(k, rq)
    rq.online = False
    k.emit(CpuOffline(rq.cpu))
    k.cpu = control_cpu
    rcu.rcutree_migrate_callbacks(k, rq.cpu)
    finish_cpu(k, rq)


def finish_cpu(k: Kernel, rq: Rq) -> None:
    """kernel/cpu.c: finish_cpu(): 6.13+: WARN_ON(mm != &init_mm); idle->active_mm = NULL;
    mmdrop_lazy_tlb(mm). Before: if (mm != &init_mm) idle->active_mm = &init_mm;
    mmdrop_lazy_tlb(mm)."""
    idle = rq.idle
    mm = idle.active_mm
    assert mm is not None
    if k.config.version >= (6, 13):
        idle.active_mm = None
    elif mm is not k.state.init_mm:
        idle.active_mm = k.state.init_mm
    mmh.mmdrop_lazy_tlb(k, mm, "finish_cpu")


def cpu_up(k: Kernel, rq: Rq) -> None:
    """kernel/cpu.c: _cpu_up() -> the new CPU's start_secondary() -> cpu_init(): take a
    reference on init_mm, make it the idle task's active_mm, reset the TLB state."""
    k.cpu = rq.cpu
    rq.online = True
    rq.curr = rq.idle
    rq.idle.state = TaskState.RUNNING
    rq.idle.cpu = rq.cpu
    k.arch.cpu_init(k, rq)
    k.emit(CpuOnline(rq.cpu))


def secondary_init_mm_ref(k: Kernel, rq: Rq, *, plain_mmgrab: bool) -> None:
    """The start_secondary()/cpu_init() lines every arch shares: a reference on init_mm
    (plain mmgrab on x86 and alpha, mmgrab_lazy_tlb on powerpc) and active_mm = &init_mm."""
    init_mm = k.state.init_mm
    if plain_mmgrab:
        mmh.mmgrab(k, init_mm, lazy=True)
    else:
        mmh.mmgrab_lazy_tlb(k, init_mm)
    rq.idle.active_mm = init_mm
