"""fs/exec.c: exec_mmap(), the point of no return of execve()."""

from __future__ import annotations

from activemm.model import fork
from activemm.model import mm as mmh
from activemm.model.events import TaskExeced
from activemm.model.exit import exit_mm_release
from activemm.model.kernel import Kernel
from activemm.model.state import ExecMmap, Mm, Task


def exec_mmap(
    k: Kernel, tsk: Task, mm: Mm, preempted: bool = False, comm: str | None = None
) -> None:
    """fs/exec.c: exec_mmap().

    Install the new mm as both mm and active_mm and activate_mm() it. The old mm loses a real
    user (mmput); a task that had no mm (PID 1's kernel_execve, a usermode helper) instead
    drops the lazy reference it held on its borrowed active_mm (mmdrop_lazy_tlb).

    `preempted`: the task is preempted right after `tsk->mm = mm`, before activate_mm(). On
    PREEMPT_RT task_lock() is a sleeping lock that leaves preemption on, and an arch that does
    not select ARCH_WANT_IRQS_OFF_ACTIVATE_MM (x86 on 6.1) enables interrupts before
    activate_mm(): real 6.1-rt kernels are seen switched out there. exec_mmap()'s locals keep
    their references (tsk.in_exec_mmap) and the CPU the page tables it had loaded, until
    exec_mmap_resume() runs the rest when the task runs again."""
    old_mm = tsk.mm
    exec_mm_release(k, tsk, old_mm)
    active_mm = tsk.active_mm
    tsk.active_mm = mm
    tsk.mm = mm
    tsk.in_exec_mmap = ExecMmap(old_mm, active_mm, comm)
    if not preempted:
        exec_mmap_resume(k, tsk)


def exec_mmap_resume(k: Kernel, tsk: Task) -> None:
    """fs/exec.c: exec_mmap() from activate_mm() on: activate_mm(active_mm, mm), then
    mmput(old_mm), or mmdrop_lazy_tlb(active_mm) for a task that had no mm. On x86
    switch_mm_irqs_off() compares `next` with the CPU's loaded_mm, not with `prev`: a task
    switched back in after a preemption in the window had its CR3 loaded with the new mm by
    that switch, and activate_mm() then loads nothing."""
    window = tsk.in_exec_mmap
    assert window is not None and tsk.mm is not None
    tsk.in_exec_mmap = None
    old_mm, active_mm, mm = window.old_mm, window.active_mm, tsk.mm
    k.arch.activate_mm(k, active_mm, mm)
    if old_mm is not None:
        mmh.mmput(k, old_mm)
    elif active_mm is not None and not k.bug("exec-keeps-lazy-ref"):
        mmh.mmdrop_lazy_tlb(k, active_mm, "exec_mmap")
    k.emit(TaskExeced(k.cpu, tsk, old_mm, mm))


def exec_mm_release(k: Kernel, tsk: Task, mm: Mm | None) -> None:
    """kernel/fork.c: exec_mm_release(): the vfork parent may run again."""
    exit_mm_release(k, tsk)


def bprm_mm_init(k: Kernel, current: Task, comm: str | None) -> Mm:
    """fs/exec.c: bprm_mm_init(): the new, empty mm (mm_alloc) the exec will install,
    allocated in alloc_bprm() before the exec can still fail (6.1: even before the file is
    opened)."""
    return fork.mm_alloc(k, comm or current.comm)


def free_bprm(k: Kernel, bprm_mm: Mm | None) -> None:
    """fs/exec.c: free_bprm(): an exec that failed before exec_mmap() (no such file, not a
    program...) puts bprm->mm: its only user, so __mmput() and __mmdrop() run right here, in
    the task that tried. No one else ever saw that mm."""
    if bprm_mm is not None and not k.bug("bprm-no-mmput"):
        mmh.mmput(k, bprm_mm)


def begin_new_exec(k: Kernel, current: Task, comm: str | None, preempted: bool = False) -> Mm:
    """fs/exec.c: bprm_mm_init() (mm_alloc) then begin_new_exec() (exec_mmap, __set_task_comm).
    `preempted`: stop inside exec_mmap() before activate_mm(); begin_new_exec_resume() goes on."""
    new = bprm_mm_init(k, current, comm)
    exec_mmap(k, current, new, preempted, comm)
    if comm and not preempted:
        current.comm = comm
    return new


def begin_new_exec_resume(k: Kernel, current: Task, comm: str | None) -> Mm:
    """fs/exec.c: the rest of begin_new_exec() for a task preempted inside exec_mmap():
    exec_mmap_resume(), then __set_task_comm() (with the name the exec began with, unless
    `comm` names another)."""
    assert current.in_exec_mmap is not None
    comm = comm or current.in_exec_mmap.comm
    exec_mmap_resume(k, current)
    if comm:
        current.comm = comm
    assert current.mm is not None
    return current.mm
