"""include/linux/sched/mm.h: the mm_count and mm_users primitives.

`mm_count` pins the struct (and its pgd); `mm_users` pins the address space. All real users
together hold one `mm_count` reference, dropped by `__mmput()`.
"""

from __future__ import annotations

from activemm.model import fork
from activemm.model.events import (
    BadAccess,
    LazyRefElided,
    MmDropDeferred,
    MmDropped,
    MmGrabbed,
    MmUsersGot,
    MmUsersPut,
)
from activemm.model.kernel import Kernel
from activemm.model.state import Mm, Task


def mmgrab(k: Kernel, mm: Mm, *, lazy: bool = False) -> None:
    """include/linux/sched/mm.h: mmgrab(): atomic_inc(&mm->mm_count)."""
    k.touch(mm, "mmgrab")
    mm.mm_count += 1
    k.emit(MmGrabbed(k.cpu, mm, lazy, mm.mm_count))


def _dec_and_test(k: Kernel, mm: Mm, lazy: bool, function: str) -> bool:
    """atomic_dec_and_test(&mm->mm_count) in mmdrop() and mmdrop_sched(): True for the final
    drop (an underflow, or a drop on a freed mm, is reported and is not one)."""
    k.touch(mm, function)
    if mm.freed:
        return False
    mm.mm_count -= 1
    k.emit(MmDropped(k.cpu, mm, lazy, mm.mm_count))
    if mm.mm_count < 0:
        k.emit(BadAccess(k.cpu, mm, "mm_count underflow", function))
    return mm.mm_count == 0


def mmdrop(k: Kernel, mm: Mm, where: str, *, lazy: bool = False) -> None:
    """include/linux/sched/mm.h: mmdrop(): if (atomic_dec_and_test(&mm->mm_count)) __mmdrop(mm).

    `where` names the kernel path, reported if this is the final drop."""
    if _dec_and_test(k, mm, lazy, "mmdrop"):
        fork.__mmdrop(k, mm, where)


def mmgrab_lazy_tlb(k: Kernel, mm: Mm) -> None:
    """include/linux/sched/mm.h: mmgrab_lazy_tlb(): mmgrab() iff MMU_LAZY_TLB_REFCOUNT.

    Before 6.4 the helper did not exist and callers used plain mmgrab(): same effect."""
    if k.config.lazy_refs_counted:
        mmgrab(k, mm, lazy=True)
    else:
        k.touch(mm, "mmgrab_lazy_tlb")
        k.emit(LazyRefElided(k.cpu, mm, "grab"))


def mmdrop_lazy_tlb(k: Kernel, mm: Mm, where: str) -> None:
    """include/linux/sched/mm.h: mmdrop_lazy_tlb(): mmdrop() iff MMU_LAZY_TLB_REFCOUNT, else
    smp_mb() only (the barrier membarrier relies on)."""
    if k.config.lazy_refs_counted:
        mmdrop(k, mm, where, lazy=True)
    else:
        k.emit(LazyRefElided(k.cpu, mm, "drop"))


def mmdrop_sched(k: Kernel, mm: Mm, where: str, *, lazy: bool = False) -> None:
    """include/linux/sched/mm.h: mmdrop_sched(): mmdrop() without PREEMPT_RT; with it,
    atomic_dec_and_test(&mm->mm_count) and then call_rcu(&mm->delayed_drop,
    __mmdrop_delayed): the final __mmdrop() runs from this CPU's RCU callbacks, after a
    grace period, not in the scheduler (6.0+)."""
    if not k.config.PREEMPT_RT:
        mmdrop(k, mm, where, lazy=lazy)
    elif _dec_and_test(k, mm, lazy, "mmdrop_sched"):
        mm.rcu_cpu = k.cpu  # call_rcu(): queued on this CPU's callback list
        # a grace period: every online CPU passes a quiescent state, but an idle one is in
        # an extended quiescent state already (ct_idle_enter(); this one, if it has just
        # switched to its idle task, enters it next)
        mm.rcu_wait = frozenset(
            rq.cpu for rq in k.state.rqs if rq.online and rq.curr is not rq.idle
        )
        # and its grace period, which RCU's grace-period kthread starts in one run and ends in
        # a later one (rcu/tree.py: rcu_gp_kthread), when a client says when it runs
        if k.state.rcu_gp_tracked:
            mm.rcu_gp_runs = 1 if k.state.rcu_gp_running else 2
        k.state.rcu_callbacks.append(mm)
        k.emit(MmDropDeferred(k.cpu, mm))


def __mmdrop_delayed(k: Kernel, mm: Mm) -> None:
    """include/linux/sched/mm.h: __mmdrop_delayed(), the RCU callback mmdrop_sched() queued
    on PREEMPT_RT: __mmdrop(mm)."""
    k.state.rcu_callbacks.remove(mm)
    mm.rcu_cpu = None
    mm.rcu_wait = frozenset()
    mm.rcu_gp_runs = 0
    fork.__mmdrop(k, mm, "__mmdrop_delayed")


def mmdrop_lazy_tlb_sched(k: Kernel, mm: Mm, where: str) -> None:
    """include/linux/sched/mm.h: mmdrop_lazy_tlb_sched(): mmdrop_sched() iff
    MMU_LAZY_TLB_REFCOUNT, else smp_mb() only. (6.1, before the lazy helpers,
    finish_task_switch() calls mmdrop_sched() itself: the same.)"""
    if k.config.lazy_refs_counted:
        mmdrop_sched(k, mm, where, lazy=True)
    else:
        k.emit(LazyRefElided(k.cpu, mm, "drop"))


def mmget(k: Kernel, mm: Mm) -> None:
    """include/linux/sched/mm.h: mmget(): atomic_inc(&mm->mm_users); only on a live mm."""
    k.touch(mm, "mmget")
    if mm.mm_users <= 0:
        k.emit(BadAccess(k.cpu, mm, "mmget on an mm with mm_users == 0", "mmget"))
    mm.mm_users += 1
    k.emit(MmUsersGot(k.cpu, mm, mm.mm_users))


def mmget_not_zero(k: Kernel, mm: Mm) -> bool:
    """include/linux/sched/mm.h: mmget_not_zero(): atomic_inc_not_zero(&mm->mm_users)."""
    k.touch(mm, "mmget_not_zero")
    if mm.mm_users <= 0:
        return False
    mm.mm_users += 1
    k.emit(MmUsersGot(k.cpu, mm, mm.mm_users))
    return True


def mmput(k: Kernel, mm: Mm) -> None:
    """kernel/fork.c: mmput(): if (atomic_dec_and_test(&mm->mm_users)) __mmput(mm)."""
    k.touch(mm, "mmput")
    if mm.freed:
        return
    mm.mm_users -= 1
    k.emit(MmUsersPut(k.cpu, mm, mm.mm_users))
    if mm.mm_users == 0:
        fork.__mmput(k, mm)
    elif mm.mm_users < 0:
        k.emit(BadAccess(k.cpu, mm, "mm_users underflow", "mmput"))


def lazy_mm_for(k: Kernel, mm: Mm) -> Mm:
    """Not a kernel function: the mm a task without an mm will run on when it leaves `mm`.
    With lazy TLB that is `mm` itself; in the no-lazy ablation it is init_mm."""
    return mm if k.config.lazy_tlb else k.state.init_mm


def enter_kernel_context(k: Kernel, mm: Mm, task: Task) -> Mm:
    """Not a kernel function: the one place the no-lazy ablation differs from the kernel.

    Lazy TLB (the kernel): enter_lazy_tlb(mm, task) and keep running on mm.
    No-lazy ablation: switch_mm(mm, &init_mm) and run on init_mm. Returns the mm in use."""
    if k.config.lazy_tlb:
        k.arch.enter_lazy_tlb(k, mm, task)
        return mm
    init_mm = k.state.init_mm
    if mm is not init_mm:
        k.arch.switch_mm_irqs_off(k, mm, init_mm, task, "switch_mm")
    else:
        k.arch.enter_lazy_tlb(k, mm, task)
    return init_mm
