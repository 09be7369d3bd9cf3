"""kernel/sched/core.c: context_switch(), finish_task_switch() and the boot-time lazy setup."""

from __future__ import annotations

from activemm.model import mm as mmh
from activemm.model.events import ContextSwitch, TaskReaped
from activemm.model.kernel import Kernel
from activemm.model.rcu import tree as rcu
from activemm.model.state import Rq, Task, TaskState


def switch_case(prev: Task, next: Task) -> str:
    """Which of the four cases of context_switch() a switch is: "user" means mm != NULL."""
    a = "kernel" if prev.mm is None else "user"
    b = "kernel" if next.mm is None else "user"
    return f"{a}->{b}"


def __schedule(k: Kernel, rq: Rq, next: Task, preempt: bool = False) -> None:
    """kernel/sched/core.c: __schedule(): rq->curr = next, then context_switch().

    An exiting task that is not preempted is in its final switch: do_task_dead() set
    TASK_DEAD before calling __schedule()."""
    if k.config.PREEMPT_RT:  # (the only RCU callbacks the model queues are RT's)
        rcu.rcu_note_context_switch(k, rq.cpu)
    prev = rq.curr
    rq.curr = next
    next.state = TaskState.RUNNING
    next.cpu = rq.cpu
    if prev.exiting and not preempt:
        prev.state = TaskState.DEAD
    elif prev.state is TaskState.RUNNING:
        prev.state = TaskState.RUNNABLE
    context_switch(k, rq, prev, next)


def context_switch(k: Kernel, rq: Rq, prev: Task, next: Task) -> None:
    """kernel/sched/core.c: context_switch().

    The kernel's own table of the four cases:

        kernel -> kernel   lazy + transfer active
          user -> kernel   lazy + mmgrab_lazy_tlb() active

        kernel ->   user   switch + mmdrop_lazy_tlb() active
          user ->   user   switch

    "kernel" means mm == NULL: kernel threads, but also a dying task after exit_mm().
    The lazy reference belongs to the CPU: taken on user->kernel, handed on kernel->kernel,
    released (through rq->prev_mm, in finish_task_switch) on kernel->user."""
    k.emit(ContextSwitch(k.cpu, prev, next, switch_case(prev, next)))
    if k.config.per_task_lazy_refs:
        _switch_mm_per_task_refs(k, rq, prev, next)
    elif next.mm is None:  # to kernel
        active = prev.active_mm
        assert active is not None
        next.active_mm = mmh.enter_kernel_context(k, active, next)
        if prev.mm is not None:  # from user
            if not k.bug("no-lazy-grab"):
                mmh.mmgrab_lazy_tlb(k, next.active_mm)
        else:
            if k.bug("kernel-to-kernel-grab"):
                mmh.mmgrab_lazy_tlb(k, next.active_mm)
            prev.active_mm = None
    else:  # to user
        k.arch.switch_mm_irqs_off(k, prev.active_mm, next.mm, next, "switch_mm_irqs_off")
        if prev.mm is None:  # from kernel
            # will mmdrop_lazy_tlb() in finish_task_switch().
            rq.prev_mm = prev.active_mm
            prev.active_mm = None
    k.arch.switch_to(k, prev, next)
    finish_task_switch(k, rq, prev)


def _switch_mm_per_task_refs(k: Kernel, rq: Rq, prev: Task, next: Task) -> None:
    """The shape of context_switch() from 2.3.13 to 5.3 (2.4's schedule() reads the same):

        if (!mm) { next->active_mm = oldmm; mmgrab(oldmm); enter_lazy_tlb(oldmm, next); }
        else switch_mm(oldmm, mm, next);
        if (!prev->mm) { prev->active_mm = NULL; rq->prev_mm = oldmm; }

    Every lazy task holds its own mm_count reference: "mm_count is the number of lazy users
    plus one if there are any real users" (Linus, 1999)."""
    oldmm = prev.active_mm
    assert oldmm is not None
    if next.mm is None:
        next.active_mm = mmh.enter_kernel_context(k, oldmm, next)
        if not k.bug("no-lazy-grab"):
            mmh.mmgrab(k, next.active_mm, lazy=True)
    else:
        k.arch.switch_mm_irqs_off(k, oldmm, next.mm, next, "switch_mm")
    if prev.mm is None:
        prev.active_mm = None
        rq.prev_mm = oldmm


def finish_task_switch(k: Kernel, rq: Rq, prev: Task) -> None:
    """kernel/sched/core.c: finish_task_switch(): finish_lock_switch() turns interrupts
    back on (IPIs that waited for this switch run now), then drop rq->prev_mm
    (mmdrop_lazy_tlb_sched, possibly the final drop of a zombie mm, on this CPU) and put a
    TASK_DEAD prev."""
    mm = rq.prev_mm
    rq.prev_mm = None
    if rq.irqs_disabled:
        rq.irqs_disabled = False
        k.arch.flush_smp_call_function_queue(k, rq)
    if mm is not None and not k.bug("no-lazy-drop"):
        mmh.mmdrop_lazy_tlb_sched(k, mm, "finish_task_switch")
    if prev.state is TaskState.DEAD:
        prev.state = TaskState.GONE
        k.emit(TaskReaped(k.cpu, prev))


def sched_init(k: Kernel, rq: Rq) -> None:
    """kernel/sched/core.c: sched_init(): "The boot idle thread does lazy MMU switching as
    well": mmgrab_lazy_tlb(&init_mm); enter_lazy_tlb(&init_mm, current)."""
    init_mm = k.state.init_mm
    rq.idle.active_mm = init_mm
    mmh.mmgrab_lazy_tlb(k, init_mm)
    k.arch.enter_lazy_tlb(k, init_mm, rq.idle)


def sched_cpu_wait_empty(k: Kernel, rq: Rq) -> None:
    """kernel/sched/core.c: sched_cpu_wait_empty(), the CPUHP_AP_SCHED_WAIT_EMPTY teardown
    step (6.13+) on the outgoing CPU: balance_hotplug_wait() (the CPU runs only its
    per-CPU kernel threads by then), then sched_force_init_mm() for the hotplug thread."""
    sched_force_init_mm(k, rq)


def sched_force_init_mm(k: Kernel, rq: Rq) -> None:
    """kernel/sched/core.c: sched_force_init_mm() (6.13+), on the outgoing CPU before
    __cpu_disable(): move a lazily borrowed mm off this CPU, onto init_mm."""
    current = rq.curr
    mm = current.active_mm
    init_mm = k.state.init_mm
    if mm is None or mm is init_mm:
        return
    mmh.mmgrab_lazy_tlb(k, init_mm)
    current.active_mm = init_mm
    k.arch.switch_mm_irqs_off(k, mm, init_mm, current, "switch_mm_irqs_off")
    mmh.mmdrop_lazy_tlb(k, mm, "sched_force_init_mm")


def idle_task_exit(k: Kernel, rq: Rq) -> None:
    """kernel/sched/core.c: idle_task_exit() before 6.13: switch the hardware to init_mm but
    leave active_mm (and its reference) for finish_cpu() to clean up."""
    mm = rq.idle.active_mm
    if mm is not None and mm is not k.state.init_mm:
        k.arch.switch_mm_irqs_off(k, mm, k.state.init_mm, rq.idle, "switch_mm")
