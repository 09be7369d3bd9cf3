"""kernel/fork.c: creating tasks and mms, and the two teardown paths __mmput and __mmdrop."""

from __future__ import annotations

from activemm.errors import OperationError
from activemm.model import mm as mmh
from activemm.model.events import (
    AddressSpaceTornDown,
    BadAccess,
    MmAllocated,
    MmFreed,
    ShootdownIpi,
    TaskAdopted,
    TaskForked,
)
from activemm.model.kernel import Kernel
from activemm.model.state import Mm, Task, TaskState

# How a task is created, as the kernel spells it.
FORK_KINDS: dict[str, str] = {
    "process": "fork(): dup_mm() gives the child its own copy of the parent's mm",
    "thread": "clone(CLONE_VM | CLONE_THREAD): mmget() the parent's mm, same thread group",
    "vfork": "vfork(): CLONE_VM | CLONE_VFORK, shares the parent's mm until exec or exit",
    "kthread": "kernel_thread() from kthreadd: PF_KTHREAD, mm = active_mm = NULL",
    "usermode": "user_mode_thread(): no mm and not PF_KTHREAD until it kernel_execve()s",
}


def mm_init(k: Kernel, owner: str, tsk: Task | None) -> Mm:
    """kernel/fork.c: mm_init(): mm_users = mm_count = 1, empty mm_cpumask, init_new_context().

    `tsk` is the task the mm is for when that is not current (fork), else None (exec)."""
    mms = k.state.mms
    mm = Mm(id=k.state.next_mm_id, owner=owner)
    k.state.next_mm_id += 1
    if k.bug("users-share-not-counted"):
        mm.mm_count = 0
    mms.append(mm)
    k.arch.init_new_context(k, mm, tsk)
    return mm


def dup_mm(k: Kernel, tsk: Task, oldmm: Mm, interrupted: bool = False) -> Mm:
    """kernel/fork.c: dup_mm(): a new mm_struct, mm_init(), dup_mmap() copies the mappings.
    `interrupted`: dup_mmap()'s mmap_write_lock_killable(oldmm) found a fatal signal pending
    and returned -EINTR before copying anything (no flush of oldmm); dup_mm()'s caller then
    puts the new mm back."""
    k.touch(oldmm, "dup_mm")
    mm = mm_init(k, tsk.comm, tsk)
    k.emit(MmAllocated(k.cpu, mm, "dup_mm"))
    if not interrupted:
        dup_mmap(k, mm, oldmm)
    return mm


def dup_mmap(k: Kernel, mm: Mm, oldmm: Mm) -> None:
    """kernel/fork.c: dup_mmap(): copy the VMAs (copy_page_range() write-protects the
    parent's private pages for copy-on-write), then flush_tlb_mm(oldmm): on x86 a full flush
    with freed_tables, so every CPU in the parent's mm_cpumask is IPIed, lazy ones too."""
    k.arch.flush_tlb_mm_range(k, oldmm, True)


def mm_alloc(k: Kernel, owner: str) -> Mm:
    """kernel/fork.c: mm_alloc(): a fresh, empty mm for exec (bprm->mm)."""
    mm = mm_init(k, owner, None)
    k.emit(MmAllocated(k.cpu, mm, "mm_alloc"))
    return mm


def copy_mm(k: Kernel, clone_vm: bool, tsk: Task, current: Task, interrupted: bool = False) -> None:
    """kernel/fork.c: copy_mm().

    A child of a task without an mm ("Are we cloning a kernel thread?") gets mm = active_mm =
    NULL and borrows on its first run; CLONE_VM shares the mm (mmget); else dup_mm()."""
    tsk.mm = None
    tsk.active_mm = None
    oldmm = current.mm
    if oldmm is None:
        return
    if clone_vm:
        mmh.mmget(k, oldmm)
        mm = oldmm
    else:
        mm = dup_mm(k, tsk, oldmm, interrupted)
    tsk.mm = tsk.active_mm = mm


def copy_process(k: Kernel, current: Task, how: str, comm: str) -> Task:
    """kernel/fork.c: copy_process(), the parts that matter here: a new task_struct and
    copy_mm(). `how` is one of FORK_KINDS."""
    state = k.state
    pid = state.next_pid
    state.next_pid += 1
    tgid = current.tgid if how == "thread" else pid
    tsk = Task(pid=pid, comm=comm, tgid=tgid, pf_kthread=how == "kthread")
    tsk.pcb.ptbr = current.pcb.ptbr  # alpha: thread_info (with the PCB) is copied
    tsk.pcb.asn = current.pcb.asn
    copy_mm(k, how in ("thread", "vfork"), tsk, current)
    if how == "vfork":
        tsk.vfork_parent = current
    tsk.state = TaskState.RUNNABLE
    state.tasks.append(tsk)
    k.emit(TaskForked(k.cpu, current, tsk, how))
    return tsk


def copy_process_fails(
    k: Kernel, current: Task, how: str, comm: str, interrupted: bool = False
) -> None:
    """kernel/fork.c: copy_process() failing past copy_mm(): cgroup_can_fork() refusing the
    child (a `pids.max` reached), a signal arriving meanwhile (-ERESTARTNOINTR), alloc_pid()
    failing... Its error path, bad_fork_cleanup_mm, mmput()s the child's mm. After fork()
    that is dup_mm()'s copy (dup_mmap() has flushed the parent's mm already), whose only user
    it was: __mmput() and __mmdrop() run here, in the parent; after CLONE_VM only mm_users
    goes back. The task_struct was never visible: no pid, no tracepoint. `interrupted`: the
    copy itself failed, dup_mmap() killed in mmap_write_lock_killable(oldmm) (a fatal signal
    pending) before it copied or flushed anything, and dup_mm()'s error path (free_pt)
    mmput()s the new mm: the same teardown, without the parent's flush."""
    tsk = Task(pid=0, comm=comm, tgid=0, pf_kthread=how == "kthread")
    copy_mm(k, how in ("thread", "vfork"), tsk, current, interrupted)
    if tsk.mm is not None and not k.bug("fork-cleanup-no-mmput"):
        mmh.mmput(k, tsk.mm)


def __mmput(k: Kernel, mm: Mm) -> None:
    """kernel/fork.c: __mmput(): exit_mmap() tears the address space down (its final TLB
    flush is the arch's business), then mmdrop() drops the users' share of mm_count."""
    mm.torn_down = True
    k.emit(AddressSpaceTornDown(k.cpu, mm))
    k.arch.exit_mmap(k, mm)
    if not k.bug("mmput-no-drop"):
        mmh.mmdrop(k, mm, "__mmput")


def __mmdrop(k: Kernel, mm: Mm, where: str) -> None:
    """kernel/fork.c: __mmdrop(): BUG_ON(mm == &init_mm); cleanup_lazy_tlbs(); free."""
    if mm.is_init_mm:
        k.emit(BadAccess(k.cpu, mm, "__mmdrop of init_mm", "__mmdrop"))
        return
    cleanup_lazy_tlbs(k, mm)
    mm.freed = True
    k.arch.destroy_context(k, mm)
    k.emit(MmFreed(k.cpu, mm, where))


def cleanup_lazy_tlbs(k: Kernel, mm: Mm) -> None:
    """kernel/fork.c: cleanup_lazy_tlbs(): with MMU_LAZY_TLB_SHOOTDOWN, IPI every CPU in
    mm_cpumask(mm) (the local one included) so that lazy users switch to init_mm."""
    if not k.config.MMU_LAZY_TLB_SHOOTDOWN or k.bug("no-shootdown"):
        return
    cpus = sorted(c for c in mm.mm_cpumask if k.state.rqs[c].online)
    if k.bug("shootdown-skips-cpu") and cpus:
        cpus = cpus[:-1]
    for cpu in cpus:
        do_shoot_lazy_tlb(k, cpu, mm)


def do_shoot_lazy_tlb(k: Kernel, cpu: int, mm: Mm) -> None:
    """kernel/fork.c: do_shoot_lazy_tlb(), run in IPI context on `cpu`: if current is lazily
    using mm, set its active_mm to init_mm and switch_mm() there (no reference taken)."""
    sender = k.cpu
    current = k.state.rqs[cpu].curr
    was_lazy = current.active_mm is mm
    k.emit(ShootdownIpi(sender, cpu, mm, was_lazy, "cleanup_lazy_tlbs"))
    if not was_lazy:
        return
    k.cpu = cpu
    current.active_mm = k.state.init_mm
    k.arch.switch_mm_irqs_off(k, mm, k.state.init_mm, current, "switch_mm")
    k.cpu = sender


def adopt_task(
    k: Kernel, comm: str, kernel_thread: bool, mm_of: Task | None, exited: bool = False
) -> Task:
    """Not a kernel function: bring in a task that existed before observation began (a trace
    starts mid-flight). A kernel thread has no mm; a user task gets the mm of `mm_of` (another
    thread of its group: mmget) or a fresh one (mm_init), as if forked long ago; one already
    in do_exit() past exit_mm() (`exited`) has none any more, and is exiting."""
    state = k.state
    pid = state.next_pid
    state.next_pid += 1
    tsk = Task(pid=pid, comm=comm, tgid=pid, pf_kthread=kernel_thread, exiting=exited)
    if not kernel_thread and not exited:
        if mm_of is not None and mm_of.mm is not None and not mm_of.pf_kthread:
            mmh.mmget(k, mm_of.mm)
            tsk.mm = tsk.active_mm = mm_of.mm
            tsk.tgid = mm_of.tgid
        else:
            tsk.mm = tsk.active_mm = mm_init(k, comm, tsk)
            k.arch.adopt_mm(k, tsk.mm)  # forked long ago
    state.tasks.append(tsk)
    k.emit(TaskAdopted(k.cpu, tsk, tsk.mm))
    return tsk


def adopt_lazy_mm(k: Kernel, current: Task, mm: Mm | None, owner: str) -> Mm:
    """Not a kernel function: the CPU's current task (one without an mm) was found lazily
    borrowing an mm when observation began. `mm` is a live mm the model knows, or None for
    one whose real users all exited before (a zombie: mm_users 0, torn down, pinned only by
    this CPU's lazy reference). The CPU's old borrowed reference is handed back."""
    old = current.active_mm
    if mm is None:
        if not k.config.lazy_refs_counted:
            raise OperationError(
                "adopt_lazy: without counted lazy references (MMU_LAZY_TLB_SHOOTDOWN) a lazy "
                "user cannot keep an mm alive after its last real user"
            )
        mm = mm_init(k, owner, None)
        mm.mm_users = 0
        mm.torn_down = True
    else:
        mmh.mmgrab_lazy_tlb(k, mm)
    current.active_mm = mm
    k.arch.adopt_loaded_mm(k, mm, current)
    if old is not None:
        mmh.mmdrop_lazy_tlb(k, old, "adopt_lazy")
    return mm
