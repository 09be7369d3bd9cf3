"""kernel/exit.c: exit_mm() and do_exit(), as far as the mm goes."""

from __future__ import annotations

from activemm.model import mm as mmh
from activemm.model.events import TaskExited
from activemm.model.kernel import Kernel
from activemm.model.state import Task


def exit_mm(k: Kernel, current: Task) -> None:
    """kernel/exit.c: exit_mm().

    The task becomes a lazy user of its own mm (mmgrab_lazy_tlb, mm = NULL, enter_lazy_tlb),
    then gives up its real reference with mmput(). If it was the last real user, __mmput()
    tears the address space down now, but the struct lives until this CPU lets go."""
    mm = current.mm
    exit_mm_release(k, current)
    if mm is None:
        return
    if k.bug("exit-mmput-before-lazy"):
        mmh.mmput(k, mm)
    mmh.mmgrab_lazy_tlb(k, mmh.lazy_mm_for(k, mm))
    current.mm = None
    current.active_mm = mmh.enter_kernel_context(k, mm, current)
    if not k.bug("exit-mmput-before-lazy"):
        mmh.mmput(k, mm)


def exit_mm_release(k: Kernel, tsk: Task) -> None:
    """kernel/fork.c: exit_mm_release() -> mm_release(): complete a vfork parent's wait."""
    tsk.vfork_parent = None


def do_exit(k: Kernel, current: Task) -> None:
    """kernel/exit.c: do_exit() up to the sched_process_exit tracepoint: PF_EXITING,
    exit_mm(). The task goes on running without an mm (it may even be preempted and run
    again) until do_task_dead() sets TASK_DEAD for its final __schedule()."""
    current.exiting = True
    exit_mm(k, current)
    k.emit(TaskExited(k.cpu, current))
