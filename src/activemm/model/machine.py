"""The public face of the model: one method per operation, checked against what the kernel
could ever do, then carried out by the kernel functions of the other modules.

    m = Machine("linux-6.17-x86_64")
    m.boot(2)
    m.schedule(0, "init"); m.exec("init")
    bash = m.fork("init", name="bash")
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from activemm.errors import OperationError
from activemm.model import cpu as hotplug
from activemm.model import exec as execm
from activemm.model import exit as exitm
from activemm.model import fork, kthread
from activemm.model import mm as mmh
from activemm.model.arch import arch_for
from activemm.model.config import DEFAULT_PRESET, KernelConfig, preset
from activemm.model.kernel import Kernel, Observer, Operation
from activemm.model.rcu import tree as rcu
from activemm.model.sched import core
from activemm.model.state import (
    MAX_ASID_AVAILABLE,
    CpuTlbState,
    Holder,
    KernelState,
    Mm,
    Rq,
    Task,
    TaskState,
    TlbContext,
)

TaskRef = Task | int | str
# Looked up here, at module level: inside the class body Python would mangle `__schedule`.
_schedule = core.__schedule
MmRef = Mm | int | str
POKING_MM = "poking_mm"  # the holder of x86 poking_init()'s mm_users reference
EFI_MM = "efi_mm"  # the holder of x86 efi_mm's static mm_users reference
BOOT_MMS = (POKING_MM, EFI_MM)  # their mms belong to text_poke and EFI calls alone


def _new_init_mm() -> Mm:
    """mm/init-mm.c: init_mm: mm_users = 2, mm_count = 1, never freed."""
    mm = Mm(id=0, owner="kernel", mm_users=2, mm_count=1, is_init_mm=True)
    mm.context.ctx_id = 1
    return mm


class Machine:
    """A machine running the modelled kernel. Operations raise OperationError when the kernel
    could never perform them; observers (the sanitizer, metrics...) see everything."""

    def __init__(
        self, config: KernelConfig | str = DEFAULT_PRESET, observers: Iterable[Observer] = ()
    ) -> None:
        self.config = preset(config) if isinstance(config, str) else config
        init_mm = _new_init_mm()
        self.state = KernelState(init_mm=init_mm, mms=[init_mm])
        self.observers: list[Observer] = list(observers)
        self.k = Kernel(self.state, self.config, arch_for(self.config.arch), self.observers)
        self.ops = 0
        self.booted = False
        # PREEMPT_RT: a CPU runs its RCU callbacks (those past their grace period) at each of
        # its switches (a client that knows when the kernel ran them, the validator, turns
        # this off and calls rcu_callbacks())
        self.rcu_at_switch = True

    @classmethod
    def from_state(
        cls, config: KernelConfig, state: KernelState, observers: Iterable[Observer] = ()
    ) -> Machine:
        """A booted machine continuing from `state` (a copy: see state.clone_state)."""
        m = cls.__new__(cls)
        m.config = config
        m.state = state
        m.observers = list(observers)
        m.k = Kernel(state, config, arch_for(config.arch), m.observers)
        m.ops = 0
        m.booted = True
        m.rcu_at_switch = True
        return m

    # -- plumbing -------------------------------------------------------------------------

    def add_observer(self, observer: Observer) -> None:
        self.observers.append(observer)

    def _begin(self, opname: str, on_cpu: int, **args: Any) -> Operation:
        if not self.booted and opname != "boot":
            raise OperationError(f"{opname}: the machine has not booted yet (boot first)")
        op = Operation(self.ops, opname, args)
        self.ops += 1
        for o in self.observers:
            o.begin(op, self.state)
        self.k.cpu = on_cpu
        return op

    def _end(self, op: Operation) -> None:
        for o in self.observers:
            o.end(op, self.state)

    def task(self, ref: TaskRef) -> Task:
        """A task by object, pid, comm or "comm[pid]"."""
        if isinstance(ref, Task):
            return ref
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            pid = int(ref)
            found = [t for t in self.state.tasks if t.pid == pid and not t.is_idle]
        else:
            found = [t for t in self.state.tasks if ref in (t.comm, t.name)]
            live = [t for t in found if t.state is not TaskState.GONE]
            found = live or found
        if not found:
            raise OperationError(f"no task {ref!r}")
        if len(found) > 1:
            names = ", ".join(t.name for t in found)
            raise OperationError(f"task {ref!r} is ambiguous ({names}); use comm[pid]")
        return found[0]

    def mm(self, ref: MmRef) -> Mm:
        """An mm by object, id, "mmN", "init_mm", or a task name (that task's mm)."""
        if isinstance(ref, Mm):
            return ref
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            idx = int(ref)
        elif ref == "init_mm":
            return self.state.init_mm
        elif ref.startswith("mm") and ref[2:].isdigit():
            idx = int(ref[2:])
        else:
            task = self.task(ref)
            if task.mm is None:
                raise OperationError(f"task {task.name} has no mm")
            return task.mm
        for mm in self.state.mms:
            if mm.id == idx:
                return mm
        raise OperationError(f"no mm {ref!r}")

    def rq(self, cpu: int) -> Rq:
        if not 0 <= cpu < len(self.state.rqs):
            raise OperationError(f"no CPU {cpu} (this machine has {len(self.state.rqs)})")
        return self.state.rqs[cpu]

    def _running(self, task: Task, what: str, resuming: bool = False) -> Rq:
        if task.exiting or task.state in (TaskState.DEAD, TaskState.GONE):
            raise OperationError(f"{what}: {task.name} has exited")
        if task.state is not TaskState.RUNNING or task.cpu is None:
            raise OperationError(
                f"{what}: {task.name} is not running; the kernel does this in the task's own "
                f"context, so schedule it on a CPU first"
            )
        if task.in_exec_mmap is not None and not resuming:
            raise OperationError(
                f"{what}: {task.name} was preempted inside exec_mmap(), before activate_mm(); "
                f"resume_exec() it first"
            )
        return self.state.rqs[task.cpu]

    # -- boot -----------------------------------------------------------------------------

    def boot(self, ncpus: int = 2, rest_init: bool = True) -> None:
        """start_kernel(): init_task becomes CPU 0's idle task, lazily on init_mm
        (sched_init); each secondary CPU's idle task takes init_mm in cpu_init(). With
        `rest_init`, PID 1 (init, a user_mode_thread that will kernel_execve) and PID 2
        (kthreadd) are created, runnable, with no mm; without (a replay adopts the tasks it
        meets), PIDs 1 and 2 stay reserved, so no adopted task is taken for init."""
        if self.booted:
            raise OperationError("boot: already booted")
        if not 1 <= ncpus <= 4096:
            raise OperationError(f"boot: ncpus must be between 1 and 4096, not {ncpus}")
        op = self._begin("boot", 0, ncpus=ncpus)
        state = self.state
        for cpu in range(ncpus):
            idle = Task(pid=0, comm=f"swapper/{cpu}", tgid=0, pf_kthread=True, is_idle=True)
            idle.state, idle.cpu = TaskState.RUNNING, cpu
            tlb = CpuTlbState(loaded_mm=state.init_mm)
            tlb.ctxs = [TlbContext() for _ in range(self.config.nr_dyn_asids)]
            tlb.ctxs[0] = TlbContext(state.init_mm.context.ctx_id, 0)
            tlb.last_asn = 1 << 8  # alpha: ASN_FIRST_VERSION
            idle.pcb.ptbr = state.init_mm
            state.rqs.append(Rq(cpu=cpu, curr=idle, idle=idle, tlb=tlb))
            state.tasks.append(idle)
        # x86 tlb.c: global_asid_available = MAX_ASID_AVAILABLE - TLB_NR_DYN_ASIDS - 1
        state.global_asids.available = MAX_ASID_AVAILABLE - self.config.nr_dyn_asids - 1
        self.booted = True
        self.k.cpu = 0
        boot_rq = state.rqs[0]
        core.sched_init(self.k, boot_rq)
        for rq in state.rqs[1:]:
            self.k.cpu = rq.cpu
            self.k.arch.cpu_init(self.k, rq)
        self.k.cpu = 0
        if rest_init:
            fork.copy_process(self.k, boot_rq.idle, "usermode", "init")
            fork.copy_process(self.k, boot_rq.idle, "kthread", "kthreadd")
        else:
            state.next_pid = 3
        self._end(op)

    # -- tasks ----------------------------------------------------------------------------

    def fork(self, parent: TaskRef, kind: str = "process", name: str | None = None) -> Task:
        """kernel/fork.c: copy_process() from a running parent. `kind` is one of FORK_KINDS."""
        p = self.task(parent)
        if kind not in fork.FORK_KINDS:
            raise OperationError(
                f"fork: unknown kind {kind!r}; expected one of {', '.join(fork.FORK_KINDS)}"
            )
        rq = self._running(p, "fork")
        if kind in ("kthread", "usermode") and p.mm is not None:
            raise OperationError(
                f"fork: a {kind} is created by a task without an mm (kthreadd, init before "
                f"exec); {p.name} has {p.mm}"
            )
        if kind in ("process", "thread", "vfork") and (p.mm is None or p.pf_kthread):
            raise OperationError(
                f"fork: {p.name} has no user mm to {'copy' if kind == 'process' else 'share'}; "
                f"a task without one creates kind='kthread' or kind='usermode' children"
            )
        op = self._begin("fork", rq.cpu, parent=p, kind=kind, name=name)
        child = fork.copy_process(self.k, p, kind, name or p.comm)
        op.args["child"] = child
        self._end(op)
        return child

    def failed_fork(
        self, parent: TaskRef, kind: str = "process", interrupted: bool = False
    ) -> None:
        """kernel/fork.c: a copy_process() that fails after copy_mm() (a cgroup's pids.max,
        a signal meanwhile): a process's new mm is born, its dup_mmap() flushes the parent's
        mm, and the error path puts it back at once; a thread's mmget() is undone. No task
        is created. `kind` is "process", "thread" or "vfork". `interrupted`: a process's
        dup_mmap() was killed waiting for the parent's mmap lock (a fatal signal pending):
        nothing copied, no flush, the new mm put back all the same."""
        p = self.task(parent)
        if kind not in ("process", "thread", "vfork"):
            raise OperationError(
                f"failed_fork: kind {kind!r} has no mm to copy or share; expected process, "
                f"thread or vfork"
            )
        rq = self._running(p, "failed_fork")
        if p.mm is None or p.pf_kthread:
            raise OperationError(f"failed_fork: {p.name} has no user mm to copy or share")
        op = self._begin("failed_fork", rq.cpu, parent=p, kind=kind, interrupted=interrupted)
        fork.copy_process_fails(self.k, p, kind, p.comm, interrupted)
        self._end(op)

    def exec(self, task: TaskRef, name: str | None = None, preempted: bool = False) -> Mm:
        """fs/exec.c: execve() of a running task: a new mm via exec_mmap().

        `preempted` (PREEMPT_RT only): the exec stops inside exec_mmap(), after it set
        tsk->mm = tsk->active_mm = new and before activate_mm(), where the task is preempted;
        it may then only be switched out and back in on this CPU (task_lock() has disabled
        migration) until resume_exec() finishes the exec."""
        t = self.task(task)
        rq = self._running(t, "exec")
        if t.pf_kthread:
            raise OperationError(
                f"exec: {t.name} is a kernel thread (PF_KTHREAD); kernel_execve() refuses "
                f"those (only user_mode_thread()s like init exec)"
            )
        if preempted and not self.config.PREEMPT_RT:
            raise OperationError(
                "exec: preempted inside exec_mmap() needs PREEMPT_RT (elsewhere task_lock() "
                "disables preemption until activate_mm() is done)"
            )
        op = self._begin("exec", rq.cpu, task=t, name=name, preempted=preempted)
        new = execm.begin_new_exec(self.k, t, name, preempted)
        self._end(op)
        return new

    def resume_exec(self, task: TaskRef, name: str | None = None) -> Mm:
        """fs/exec.c: the rest of an exec(preempted=True), its task running again:
        exec_mmap() from activate_mm() on, then the new name (the one the exec began with,
        unless `name` is given)."""
        t = self.task(task)
        if t.in_exec_mmap is None:
            raise OperationError(f"resume_exec: {t.name} is not inside a preempted exec_mmap()")
        rq = self._running(t, "resume_exec", resuming=True)
        op = self._begin("resume_exec", rq.cpu, task=t, name=name)
        new = execm.begin_new_exec_resume(self.k, t, name)
        self._end(op)
        return new

    def failed_exec(self, task: TaskRef) -> None:
        """fs/exec.c: an execve() that fails after alloc_bprm() (a missing file on 6.1, a file
        that is no program...): bprm_mm_init() allocates a new mm, free_bprm() puts it; the
        task keeps its mm and nothing else changes."""
        t = self.task(task)
        rq = self._running(t, "failed_exec")
        if t.pf_kthread:
            raise OperationError(f"failed_exec: {t.name} is a kernel thread (PF_KTHREAD)")
        op = self._begin("failed_exec", rq.cpu, task=t)
        execm.free_bprm(self.k, execm.bprm_mm_init(self.k, t, None))
        self._end(op)

    def exit(self, task: TaskRef) -> None:
        """kernel/exit.c: do_exit() of a running task: exit_mm(); the task stays current,
        TASK_DEAD, until its CPU schedules another task (its final switch)."""
        t = self.task(task)
        rq = self._running(t, "exit")
        if t.is_idle:
            raise OperationError(f"exit: {t.name} is an idle task; idle tasks never exit")
        if t.pid == 1:
            raise OperationError("exit: init (PID 1) exiting panics the kernel")
        op = self._begin("exit", rq.cpu, task=t)
        exitm.do_exit(self.k, t)
        self._end(op)

    def schedule(self, cpu: int, next: TaskRef, preempt: bool = False) -> None:
        """kernel/sched/core.c: __schedule() on `cpu` picking `next`: context_switch() and
        finish_task_switch(). A task not running anywhere may be picked on any CPU. An exited
        task switched out is reaped (its final switch) unless `preempt`: then it was
        preempted inside do_exit() and will run again. With PREEMPT_RT the CPU then runs its
        RCU callbacks whose grace period has ended (rcu/tree.py), unless `rcu_at_switch` is
        off."""
        rq = self.rq(cpu)
        n = self.task(next)
        if not rq.online:
            raise OperationError(f"schedule: CPU {cpu} is offline")
        if n is rq.curr:
            raise OperationError(f"schedule: {n.name} is already current on CPU {cpu}")
        if n.state in (TaskState.DEAD, TaskState.GONE):
            raise OperationError(f"schedule: {n.name} is dead and can never run again")
        if n.state is TaskState.RUNNING:
            raise OperationError(f"schedule: {n.name} is already running on CPU {n.cpu}")
        if n.is_idle and n is not rq.idle:
            raise OperationError(f"schedule: {n.name} is CPU {n.cpu}'s idle task")
        if n.in_exec_mmap is not None and n.cpu != cpu:
            raise OperationError(
                f"schedule: {n.name} was preempted inside exec_mmap() on CPU {n.cpu} with "
                f"task_lock() held, which disables migration on PREEMPT_RT"
            )
        op = self._begin("schedule", cpu, cpu=cpu, next=n, preempt=preempt)
        _schedule(self.k, rq, n, preempt)
        if self.config.PREEMPT_RT and self.rcu_at_switch:
            rcu.rcu_do_batch(self.k, cpu)
        self._end(op)

    def local_irq_disable(self, cpu: int) -> None:
        """kernel/sched/core.c: __schedule() on `cpu` has begun (local_irq_disable(), then
        the rq lock) and its switch is not done yet: interrupts stay off until the
        finish_task_switch() of the next schedule() there, so a flush IPI sent to this CPU
        meanwhile waits for it and finds the state the switch left. For a driver that sees
        a switch begin before it ends (a trace's sched_switch ahead of its
        finish_task_switch). It changes no count and runs nothing: not an operation for
        the observers."""
        self.rq(cpu).irqs_disabled = True

    def local_irq_enable(self, cpu: int) -> None:
        """Interrupts back on without a switch (kernel/smp.c: the IPIs that waited run now):
        for a driver whose begun switch did not happen after all. Nothing to do when the
        CPU's last schedule() turned them on already."""
        rq = self.rq(cpu)
        rq.irqs_disabled = False
        if not rq.call_single_queue:
            return
        op = self._begin("local_irq_enable", cpu, cpu=cpu)
        self.k.arch.flush_smp_call_function_queue(self.k, rq)
        self._end(op)

    def rcu_callbacks(self, cpu: int) -> None:
        """kernel/rcu/tree.c: rcu_do_batch() on `cpu` (on PREEMPT_RT from its rcuc/N thread):
        the RCU callbacks queued there run; in the model, PREEMPT_RT's __mmdrop_delayed()."""
        self.rq(cpu)
        op = self._begin("rcu_callbacks", cpu, cpu=cpu)
        rcu.rcu_do_batch(self.k, cpu)
        self._end(op)

    def rcu_gp_kthread(self, cpu: int, running: bool = True) -> None:
        """kernel/rcu/tree.c: rcu_gp_kthread(), RCU's grace-period kthread, switched in on
        `cpu` (`running`) or out of it, as a client that sees it, the validator, says. From
        the first call on, a PREEMPT_RT callback also waits for the runs of that kthread
        that start and end its grace period (rcu/tree.py), besides every CPU's quiescent
        state."""
        self.rq(cpu)
        op = self._begin("rcu_gp_kthread", cpu, cpu=cpu, running=running)
        rcu.rcu_gp_kthread(self.k, running)
        self._end(op)

    def revive(self, task: TaskRef) -> Task:
        """Not a kernel path: a task the replay took for dead (its switch out read "X", and
        schedule() was told it was the final one) runs again. That switch was not
        do_task_dead()'s: sched_switch reports a task's state, or its exit_state when the
        state has nothing to report (TASK_RUNNING: a task woken before its own schedule()
        call, such as a PREEMPT_RT sleeping-spinlock wait whose owner let go first), so an
        autoreaped thread past exit_notify() (EXIT_DEAD) reads "X" at any such switch. Its
        task_struct was never put; the switch did nothing else to the mm code (the task
        ran exit_mm() before, so it had no mm and let go of its active_mm like any task
        without one): it is runnable again, still exiting."""
        t = self.task(task)
        if not self.taken_for_dead(t):
            raise OperationError(f"revive: {t.name} is not an exited task taken for dead")
        op = self._begin("revive", 0, task=t)
        t.state = TaskState.RUNNABLE
        if all(other is not t for other in self.state.tasks):
            self.state.tasks.append(t)  # forget_dead() had let go of it
        self._end(op)
        return t

    @staticmethod
    def taken_for_dead(t: Task) -> bool:
        """Whether revive() can take `t` back: reaped at a switch out (gone), after its
        exit_mm() (exiting, no mm)."""
        return t.state is TaskState.GONE and t.exiting and t.mm is None

    def adopt(
        self, comm: str, kernel_thread: bool, mm_of: TaskRef | None = None, exited: bool = False
    ) -> Task:
        """Not a kernel path: a task that already existed when observation began (trace
        replay). A user task shares the mm of `mm_of` (a thread of the same group) or gets
        its own; a kernel thread has none, nor has a user task already past its exit_mm()
        (`exited`: exiting). The task is runnable."""
        other = self.task(mm_of) if mm_of is not None else None
        op = self._begin("adopt", 0, comm=comm, kernel_thread=kernel_thread)
        t = fork.adopt_task(self.k, comm, kernel_thread, other, exited)
        self._end(op)
        return t

    def adopt_lazy(
        self, cpu: int, mm: MmRef | None = None, owner: str = "gone", held_by: str | None = None
    ) -> Mm:
        """Not a kernel path: CPU `cpu`'s current task, which has no mm, was found lazily
        borrowing an mm when observation began (trace replay): `mm`, a live one or a zombie
        another CPU was found borrowing too, or with None an mm whose real users had all
        exited (a new zombie named after `owner`). With None and `held_by`, the mm still has
        a real user that observation never shows (a task asleep throughout): a new live mm
        whose one mm_users reference is the holder `held_by`."""
        rq = self.rq(cpu)
        current = rq.curr
        if current.mm is not None:
            raise OperationError(
                f"adopt_lazy: {current.name} on CPU {cpu} has its own mm; only a task without "
                f"one borrows"
            )
        m = self.mm(mm) if mm is not None else None
        if m is not None and m.freed:
            raise OperationError(f"adopt_lazy: {m} has been freed; nothing can borrow it")
        if held_by is not None and m is not None:
            raise OperationError(
                f"adopt_lazy: held_by names the holder of a new mm; {m} exists already"
            )
        if held_by is not None:
            self._new_holder(held_by)
        op = self._begin("adopt_lazy", cpu, cpu=cpu, mm=m)
        if m is None and held_by is not None:
            m = fork.mm_init(self.k, owner, None)
            self.state.holders.append(Holder(held_by, m, "mm_users"))
        borrowed = fork.adopt_lazy_mm(self.k, current, m, owner)
        self._end(op)
        return borrowed

    def forget_dead(self) -> None:
        """Not a kernel path: drop reaped tasks and freed mms nothing refers to from the
        state's lists, so a long replay keeps its memory bounded."""
        state = self.state
        state.tasks = [t for t in state.tasks if t.state is not TaskState.GONE]
        referenced = {id(m) for t in state.tasks for m in (t.mm, t.active_mm, t.pcb.ptbr)}
        referenced |= {id(rq.tlb.loaded_mm) for rq in state.rqs}
        referenced |= {id(h.mm) for h in state.holders}
        state.mms = [m for m in state.mms if not m.freed or id(m) in referenced]

    # -- kernel threads on user mms -------------------------------------------------------

    def kthread_use_mm(self, task: TaskRef, mm: MmRef) -> None:
        """kernel/kthread.c: kthread_use_mm() by a running kernel thread."""
        t, m = self.task(task), self.mm(mm)
        rq = self._running(t, "kthread_use_mm")
        if not t.pf_kthread or t.is_idle:
            raise OperationError(f"kthread_use_mm: {t.name} is not a kernel thread")
        if t.mm is not None:
            raise OperationError(f"kthread_use_mm: {t.name} already uses {t.mm}")
        if m.is_init_mm:
            raise OperationError("kthread_use_mm: init_mm is never anyone's real mm")
        op = self._begin("kthread_use_mm", rq.cpu, task=t, mm=m)
        kthread.kthread_use_mm(self.k, t, m)
        self._end(op)

    def kthread_unuse_mm(self, task: TaskRef) -> None:
        """kernel/kthread.c: kthread_unuse_mm()."""
        t = self.task(task)
        rq = self._running(t, "kthread_unuse_mm")
        if not t.uses_mm:
            raise OperationError(f"kthread_unuse_mm: {t.name} is not inside kthread_use_mm()")
        op = self._begin("kthread_unuse_mm", rq.cpu, task=t)
        kthread.kthread_unuse_mm(self.k, t)
        self._end(op)

    # -- references from outside the scheduler --------------------------------------------

    def _holder(self, name: str, kind: str) -> Holder:
        for h in self.state.holders:
            if h.name == name and h.kind == kind:
                return h
        raise OperationError(f"no {kind} reference held by {name!r}")

    def _new_holder(self, name: str) -> None:
        if any(h.name == name for h in self.state.holders):
            raise OperationError(f"holder {name!r} already holds a reference; pick a new name")

    def mmget_not_zero(self, mm: MmRef, holder: str, cpu: int = 0) -> bool:
        """include/linux/sched/mm.h: mmget_not_zero(), as get_task_mm() or a driver does.
        Returns False (and holds nothing) when the address space is already gone."""
        m = self.mm(mm)
        self._new_holder(holder)
        self.rq(cpu)
        op = self._begin("mmget_not_zero", cpu, mm=m, holder=holder)
        ok = mmh.mmget_not_zero(self.k, m)
        if ok:
            self.state.holders.append(Holder(holder, m, "mm_users"))
        op.args["result"] = ok
        self._end(op)
        return ok

    def mmput(self, holder: str, cpu: int = 0) -> None:
        """kernel/fork.c: mmput() of a reference taken with mmget_not_zero()."""
        h = self._holder(holder, "mm_users")
        self.rq(cpu)
        op = self._begin("mmput", cpu, holder=holder, mm=h.mm)
        self.state.holders.remove(h)
        mmh.mmput(self.k, h.mm)
        self._end(op)

    def mmgrab(self, mm: MmRef, holder: str, cpu: int = 0) -> None:
        """include/linux/sched/mm.h: mmgrab(): pin the struct (io_uring, oom, notifiers...)."""
        m = self.mm(mm)
        self._new_holder(holder)
        self.rq(cpu)
        op = self._begin("mmgrab", cpu, mm=m, holder=holder)
        self.state.holders.append(Holder(holder, m, "mm_count"))
        mmh.mmgrab(self.k, m)
        self._end(op)

    def mmdrop(self, holder: str, cpu: int = 0, sched: bool = False) -> None:
        """include/linux/sched/mm.h: mmdrop() of a reference taken with mmgrab(); with
        `sched`, mmdrop_sched(), as finish_task_switch() drops (on PREEMPT_RT a final drop
        frees the mm from an RCU callback)."""
        h = self._holder(holder, "mm_count")
        self.rq(cpu)
        op = self._begin("mmdrop", cpu, holder=holder, mm=h.mm)
        self.state.holders.remove(h)
        drop = mmh.mmdrop_sched if sched else mmh.mmdrop
        drop(self.k, h.mm, f"mmdrop by {holder}")
        self._end(op)

    # -- TLB ------------------------------------------------------------------------------

    def flush_tlb_mm_range(
        self, cpu: int, mm: MmRef, freed_tables: bool = False, trim: bool | None = None
    ) -> None:
        """flush_tlb_mm_range() from `cpu` (munmap, mprotect): a new TLB generation, and
        whatever IPIs the architecture sends. The arch's occasional mm_cpumask trim (x86
        6.14+: once a second per mm, by jiffies, see tick_do_update_jiffies64; powerpc
        radix: every 1073rd flush of a CPU) goes by the kernel's own clock, or, with `trim`
        True or False, as the caller says (the checker explores both)."""
        rq, m = self.rq(cpu), self.mm(mm)
        if not rq.online:
            raise OperationError(f"flush_tlb_mm_range: CPU {cpu} is offline")
        if m.freed or m.torn_down or m.is_init_mm:
            raise OperationError(f"flush_tlb_mm_range: {m} has no user address space to flush")
        args: dict[str, object] = {"cpu": cpu, "mm": m, "freed_tables": freed_tables}
        if trim is not None:
            args["trim"] = trim
        op = self._begin("flush_tlb_mm_range", cpu, **args)
        self.k.arch.flush_tlb_mm_range(self.k, m, freed_tables, trim)
        self._end(op)

    def tick_do_update_jiffies64(self, now: float) -> None:
        """kernel/time/tick-sched.c: tick_do_update_jiffies64(): jiffies brought up to the
        time `now` (seconds since boot, a trace's timestamps), HZ a second. Jiffies never go
        back; no operation is recorded (nothing but the x86 trim reads the clock)."""
        jiffies = int(now * self.config.HZ)
        if jiffies > self.state.jiffies:
            self.state.jiffies = jiffies

    def leave_mm(self, cpu: int) -> None:
        """x86 leave_mm(): an idle, lazy CPU drops its borrowed page tables for init_mm.
        Other architectures have no such hook; there it does nothing."""
        rq = self.rq(cpu)
        if rq.curr.mm is not None:
            raise OperationError(
                f"leave_mm: CPU {cpu} runs {rq.curr.name}, a user of {rq.curr.mm}; leave_mm "
                f"is for a lazy CPU (called from the idle loop)"
            )
        op = self._begin("leave_mm", cpu, cpu=cpu)
        self.k.arch.leave_mm(self.k)
        self._end(op)

    def text_poke(self, cpu: int) -> None:
        """arch/x86/kernel/alternative.c: __text_poke() on `cpu` (a static key or jump label
        flipped, a kprobe armed...): x86 loads its poking_mm for the write and goes back,
        leaving lazy mode first; current->active_mm does not change. poking_init()'s mm is
        allocated at the first text_poke rather than at boot, so that states without one
        are unchanged; a holder named "poking_mm" keeps its mm_users. Elsewhere the write
        switches no mm."""
        rq = self.rq(cpu)
        if not rq.online:
            raise OperationError(f"text_poke: CPU {cpu} is offline")
        op = self._begin("text_poke", cpu, cpu=cpu)
        self.k.arch.text_poke(self.k, self._boot_mm(POKING_MM, self.k.arch.poking_init))
        self._end(op)

    def efi_call(self, cpu: int) -> None:
        """An EFI runtime service call on `cpu` (drivers/firmware/efi/runtime-wrappers.c:
        efi_call_rts(), in the efi_rts_wq kworker: efivarfs reads and writes...): x86
        switches to efi_mm around the firmware's code, preemption off; before 6.15 it
        swaps current->active_mm for the call and does not leave lazy mode first
        (arch/x86/platform/efi/efi_64.c: efi_enter_mm()). efi_mm is static; the model makes
        it at the first call, like poking_mm, kept by a holder named "efi_mm". Elsewhere no
        mm is switched."""
        rq = self.rq(cpu)
        if not rq.online:
            raise OperationError(f"efi_call: CPU {cpu} is offline")
        op = self._begin("efi_call", cpu, cpu=cpu)
        self.k.arch.efi_call(self.k, self._boot_mm(EFI_MM, self.k.arch.efi_mm_init))
        self._end(op)

    def _boot_mm(self, name: str, init: Callable[[Kernel], Mm | None]) -> Mm | None:
        """An mm of the architecture's own, made at boot and never freed (x86's poking_mm,
        efi_mm): the model makes it at its first use, `init` being the arch hook, kept by a
        holder named `name` (its mm_users), so that states without one are unchanged. None
        where the architecture has none."""
        held = [h for h in self.state.holders if h.name == name]
        if held:
            return held[0].mm
        mm = init(self.k)
        if mm is not None:
            self.state.holders.append(Holder(name, mm, "mm_users"))
        return mm

    # -- hotplug --------------------------------------------------------------------------

    def cpu_down(self, cpu: int, control: int | None = None) -> None:
        """kernel/cpu.c: take `cpu` offline (its current task, if any, is migrated away).
        `control`: the online CPU the teardown's takedown_cpu() and finish_cpu() run on (by
        default the first other online CPU)."""
        rq = self.rq(cpu)
        if not rq.online:
            raise OperationError(f"cpu_down: CPU {cpu} is already offline")
        others = [r.cpu for r in self.state.rqs if r.online and r is not rq]
        if not others:
            raise OperationError("cpu_down: the last online CPU cannot go offline")
        if control is not None and control not in others:
            raise OperationError(
                f"cpu_down: the teardown runs on another online CPU; {control} is not one"
            )
        pinned = next((t for t in self.state.preempted_execs() if t.cpu == cpu), None)
        if pinned is not None:
            raise OperationError(
                f"cpu_down: {pinned.name} is preempted inside exec_mmap() on CPU {cpu} with "
                f"migration disabled; the hotplug waits for it (balance_push)"
            )
        op = self._begin("cpu_down", cpu, cpu=cpu)
        hotplug.cpu_down(self.k, rq, others[0] if control is None else control)
        self._end(op)

    def sched_cpu_wait_empty(self, cpu: int) -> None:
        """kernel/sched/core.c: sched_cpu_wait_empty(), the CPUHP_AP_SCHED_WAIT_EMPTY
        teardown step (6.13+), run on the outgoing `cpu` by its hotplug thread, current
        there: sched_force_init_mm() moves the mm that thread borrows lazily onto init_mm.
        cpu_down() runs it too, where its current task is the idle task; a trace runs it
        where the kernel did, in the hotplug thread, before the CPU's last switches."""
        rq = self.rq(cpu)
        if not rq.online:
            raise OperationError(f"sched_cpu_wait_empty: CPU {cpu} is offline")
        if self.config.version < (6, 13):
            raise OperationError(
                f"sched_cpu_wait_empty: {self.config.name} is older than 6.13, where "
                "idle_task_exit() switched a dying CPU to init_mm instead"
            )
        if rq.curr.mm is not None:
            raise OperationError(
                f"sched_cpu_wait_empty: CPU {cpu} runs {rq.curr.name}, a user task; the "
                "hotplug thread is a kernel thread"
            )
        op = self._begin("sched_cpu_wait_empty", cpu, cpu=cpu)
        core.sched_cpu_wait_empty(self.k, rq)
        self._end(op)

    def cpu_up(self, cpu: int) -> None:
        """kernel/cpu.c: bring `cpu` back online."""
        rq = self.rq(cpu)
        if rq.online:
            raise OperationError(f"cpu_up: CPU {cpu} is already online")
        op = self._begin("cpu_up", cpu, cpu=cpu)
        hotplug.cpu_up(self.k, rq)
        self._end(op)
