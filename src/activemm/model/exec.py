"""fs/exec.c: exec_mmap(), the point of no return of execve()."""

from __future__ import annotations

from activemm.model import fork
from activemm.model import mm as mmh
from activemm.model.events import TaskExeced
from activemm.model.exit import exit_mm_release
from activemm.model.kernel import Kernel
from activemm.model.state import Mm, Task


def exec_mmap(k: Kernel, tsk: Task, mm: Mm) -> None:
    """fs/exec.c: exec_mmap().

    Install the new mm as both mm and active_mm and activate_mm() it. The old mm loses a real
    user (mmput); a task that had no mm (PID 1's kernel_execve, a usermode helper) instead
    drops the lazy reference it held on its borrowed active_mm (mmdrop_lazy_tlb)."""
    old_mm = tsk.mm
    exec_mm_release(k, tsk, old_mm)
    active_mm = tsk.active_mm
    tsk.active_mm = mm
    tsk.mm = mm
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


def begin_new_exec(k: Kernel, current: Task, comm: str | None) -> Mm:
    """fs/exec.c: bprm_mm_init() (mm_alloc) then begin_new_exec() (exec_mmap, __set_task_comm)."""
    new = bprm_mm_init(k, current, comm)
    exec_mmap(k, current, new)
    if comm:
        current.comm = comm
    return new
