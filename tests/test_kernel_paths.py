"""One test per kernel path; every expected count is derived by hand in the comment above it,
from the kernel code quoted in ../shared/reference/kernel.md."""

from __future__ import annotations

from dataclasses import replace

import pytest

from activemm import Machine, Violation, preset
from activemm.errors import ConfigError, OperationError
from activemm.model.config import KernelConfig
from activemm.model.events import Cr3Loaded, Event, MmSwitched
from activemm.model.kernel import Observer
from activemm.model.state import TaskState

from .helpers import lazy_kworker, machine, watch_frees, with_user


def test_boot_puts_every_cpu_lazily_on_init_mm() -> None:
    # init_mm starts at mm_count 1; sched_init() grabs it for CPU 0, cpu_init() for CPU 1,
    # cpu_init() for CPU 2: 1 + 3 = 4. mm_users is the static 2. Nobody has it as ->mm.
    m = machine(cpus=3)
    init_mm = m.state.init_mm
    assert (init_mm.mm_users, init_mm.mm_count) == (2, 4)
    for rq in m.state.rqs:
        assert rq.curr is rq.idle and rq.curr.mm is None and rq.curr.active_mm is init_mm
    assert all(t.mm is None for t in m.state.tasks)


def test_shootdown_boot_takes_no_init_mm_references() -> None:
    # MMU_LAZY_TLB_SHOOTDOWN: mmgrab_lazy_tlb() is only a barrier, so init_mm stays at 1.
    m = machine("linux-6.17-shootdown", cpus=3)
    assert m.state.init_mm.mm_count == 1


def test_fork_process_thread_and_kthread() -> None:
    m = machine()
    with_user(m)
    app = m.task("app")
    # dup_mm -> mm_init: a fresh mm with mm_users = mm_count = 1.
    assert app.mm is not None and app.mm is not m.task("init").mm
    assert (app.mm.mm_users, app.mm.mm_count) == (1, 1)
    assert app.active_mm is app.mm
    m.schedule(1, "app")
    t = m.fork("app", kind="thread", name="t")
    # CLONE_VM: mmget(oldmm): users 2, count unchanged 1.
    assert t.mm is app.mm and (app.mm.mm_users, app.mm.mm_count) == (2, 1)
    assert t.tgid == app.tgid
    m.schedule(0, "kthreadd")
    k = m.fork("kthreadd", kind="kthread", name="kw")
    # copy_mm() of a task without an mm: both NULL until first scheduled.
    assert k.mm is None and k.active_mm is None and k.pf_kthread


def test_user_to_kernel_grabs_and_kernel_to_user_drops() -> None:
    m = machine()
    mm2 = with_user(m)
    m.schedule(1, "kthreadd")
    m.fork("kthreadd", kind="kthread", name="kw")
    m.schedule(0, "app")
    # user -> kernel: mmgrab_lazy_tlb(mm2): 1 -> 2, kw borrows mm2.
    m.schedule(0, "kw")
    assert mm2.mm_count == 2 and m.task("kw").active_mm is mm2
    # kernel -> kernel: handed on, no change, kw's active_mm cleared.
    m.schedule(0, "swapper/0")
    assert mm2.mm_count == 2 and m.task("kw").active_mm is None
    # kernel -> user: rq->prev_mm = mm2, dropped in finish_task_switch: 2 -> 1.
    m.schedule(0, "app")
    assert mm2.mm_count == 1 and m.rq(0).prev_mm is None


def test_per_task_refs_before_5_4_grab_on_every_kernel_switch() -> None:
    # linux-2.3.13: kernel -> kernel grabs for next (+1) and drops prev's (-1): net 0, but two
    # atomic operations where 6.17 has none.
    m = machine("linux-2.3.13")
    with_user(m)
    lazy_kworker(m)
    grabs: list[str] = []

    class Count:
        def begin(self, *a: object) -> None: ...
        def end(self, *a: object) -> None: ...
        def event(self, ev: object) -> None:
            grabs.append(type(ev).__name__)

    m.add_observer(Count())  # type: ignore[arg-type]
    m.schedule(0, "swapper/0")
    assert grabs.count("MmGrabbed") == 1 and grabs.count("MmDropped") == 1
    assert m.task("app").mm is not None and m.task("app").mm.mm_count == 2


def test_exit_mm_becomes_lazy_then_mmput() -> None:
    m = machine()
    mm2 = with_user(m)
    m.schedule(1, "app")
    m.exit("app")
    # exit_mm: mmgrab_lazy_tlb (1 -> 2), mm = NULL, mmput: users 1 -> 0 -> __mmput ->
    # mmdrop (2 -> 1). The struct lives: CPU 1 lazily holds it. The task still runs
    # (PF_EXITING) until do_task_dead()'s final __schedule().
    app = m.task("app")
    assert app.exiting and app.state is TaskState.RUNNING
    assert app.mm is None and app.active_mm is mm2
    assert (mm2.mm_users, mm2.mm_count, mm2.torn_down, mm2.freed) == (0, 1, True, False)
    # Final switch, kernel -> user: prev_mm = mm2 dropped: 1 -> 0, freed on CPU 1.
    m.schedule(1, "swapper/1")  # kernel -> kernel first: the ref moves to swapper/1
    assert mm2.mm_count == 1 and app.state is TaskState.GONE
    m.schedule(0, "swapper/0")
    m.schedule(1, "init")
    assert mm2.freed


def test_exec_mmput_old_mm_and_drops_lazy_ref_without_one() -> None:
    m = machine()
    m.schedule(0, "init")
    init_mm = m.state.init_mm
    # boot: 3; init borrowed CPU 0's reference; exec from no mm: mmdrop_lazy_tlb(init_mm): 2.
    m.exec("init")
    assert init_mm.mm_count == 2
    mm1 = m.task("init").mm
    assert mm1 is not None
    child = m.fork("init", kind="vfork", name="c")
    m.schedule(1, child)
    m.exec(child, name="ls")
    # exec with an old mm: mmput(mm1): users 2 -> 1, nothing dropped from mm_count.
    assert (mm1.mm_users, mm1.mm_count) == (1, 1)
    assert m.task("ls").mm is not mm1


def test_a_failed_exec_frees_the_mm_it_allocated_and_changes_nothing_else() -> None:
    """free_bprm(): bprm_mm_init()'s mm has one user and one mm_count; mmput() runs
    __mmput() and __mmdrop() in the task itself, which keeps its own mm."""
    m = machine()
    mm2 = with_user(m)
    m.schedule(1, "app")
    freed = watch_frees(m)
    before = [(mm.name, mm.mm_users, mm.mm_count) for mm in m.state.mms]
    m.failed_exec("app")
    app = m.task("app")
    assert app.mm is mm2 and app.active_mm is mm2
    assert freed == [("mm3", "__mmput")]
    assert [(mm.name, mm.mm_users, mm.mm_count) for mm in m.state.mms[:-1]] == before
    with pytest.raises(OperationError, match="kernel thread"):
        m.schedule(0, "kthreadd")
        m.failed_exec("kthreadd")


def test_a_fork_refused_after_copy_mm_frees_its_copy_in_the_parent() -> None:
    """copy_process() failing past copy_mm() (a pids cgroup limit): bad_fork_cleanup_mm
    mmput()s dup_mm()'s copy, its only user, so __mmput() and __mmdrop() run in the parent;
    dup_mmap() had flushed the parent's mm (x86: a new tlb_gen). No task appears. A refused
    thread only takes back its mmget()."""
    m = machine("linux-6.17-x86_64")
    mm2 = with_user(m)
    m.schedule(1, "app")
    freed = watch_frees(m)
    tasks = [t.name for t in m.state.tasks]
    counts = (mm2.mm_users, mm2.mm_count)
    gen = mm2.context.tlb_gen
    m.failed_fork("app")
    assert freed == [("mm3", "__mmput")]
    assert [t.name for t in m.state.tasks] == tasks
    assert (mm2.mm_users, mm2.mm_count) == counts
    assert mm2.context.tlb_gen == gen + 1
    m.failed_fork("app", kind="thread")
    assert freed == [("mm3", "__mmput")] and (mm2.mm_users, mm2.mm_count) == counts
    with pytest.raises(OperationError, match="no mm to copy"):
        m.failed_fork("app", kind="kthread")
    m.schedule(0, "kthreadd")
    with pytest.raises(OperationError, match="no user mm"):
        m.failed_fork("kthreadd")


def test_a_fork_killed_waiting_for_the_parents_mmap_lock_flushes_nothing() -> None:
    """dup_mmap() takes the parent's mmap lock with mmap_write_lock_killable(): a fatal
    signal pending there (the process being killed while it forks) returns -EINTR before
    anything is copied, and the flush_tlb_mm(oldmm) at its end never runs. The new mm is
    put back all the same (dup_mm()'s free_pt: __mmput and __mmdrop in the parent), but the
    parent's mm gets no new tlb_gen and a CPU lazy on it gets no IPI, where an ordinary
    failed fork's flush moves that CPU to init_mm (x86, freed_tables: lazy CPUs are IPIed)."""
    for interrupted in (False, True):
        m = machine("linux-6.12-x86_64")
        mm2 = with_user(m)
        m.schedule(1, "app")
        m.schedule(1, "kthreadd")  # CPU 1 lazy on mm2
        m.schedule(0, "app")  # the parent forks on CPU 0
        freed = watch_frees(m)
        gen = mm2.context.tlb_gen
        m.failed_fork("app", interrupted=interrupted)
        assert freed == [("mm3", "__mmput")]
        assert mm2.context.tlb_gen == gen + (0 if interrupted else 1)
        # (x86: the IPI switches the lazy CPU's loaded mm to init_mm and takes it out of
        # mm2's mm_cpumask; its kernel thread's active_mm stays mm2)
        assert m.state.rqs[1].curr.active_mm is mm2
        assert (1 in mm2.mm_cpumask) == interrupted, mm2.mm_cpumask


def test_kthread_use_mm_reference_flow() -> None:
    m = machine()
    mm2 = with_user(m)
    m.schedule(1, "kthreadd")
    m.fork("kthreadd", kind="kthread", name="io")
    m.schedule(1, "io")
    init_mm = m.state.init_mm
    before = init_mm.mm_count
    # use: mmgrab(mm2) 1 -> 2; mmdrop_lazy_tlb(init_mm) -1.
    m.kthread_use_mm("io", "mm2")
    assert mm2.mm_count == 2 and init_mm.mm_count == before - 1
    # unuse: mmgrab_lazy_tlb(mm2) 3, mmdrop(mm2) 2: the use ref became a lazy ref.
    m.kthread_unuse_mm("io")
    assert mm2.mm_count == 2 and m.task("io").active_mm is mm2


def test_kthread_use_mm_same_mm_under_shootdown() -> None:
    # Reference scenario 10: use of M while M == active_mm. SHOOTDOWN: mmgrab(M) +1 and
    # mmdrop_lazy_tlb(M) is only a barrier: 1 -> 2; unuse: grab elided, mmdrop -1: 1.
    m = machine("linux-6.17-shootdown")
    mm2 = with_user(m)
    m.schedule(1, "kthreadd")
    m.fork("kthreadd", kind="kthread", name="io")
    m.schedule(1, "app")
    m.schedule(1, "io")  # io lazily on mm2, uncounted
    assert mm2.mm_count == 1
    m.kthread_use_mm("io", "mm2")
    assert mm2.mm_count == 2
    m.kthread_unuse_mm("io")
    assert mm2.mm_count == 1


def test_kthread_exiting_inside_use_mm_is_flagged() -> None:
    # Reference scenario 9: exit_mm() mmput()s a users reference kthread_use_mm never took.
    m = machine()
    with_user(m)
    m.schedule(1, "kthreadd")
    m.fork("kthreadd", kind="kthread", name="io")
    m.schedule(1, "io")
    m.kthread_use_mm("io", "mm2")
    with pytest.raises(Violation) as e:
        m.exit("io")
    assert e.value.kind in ("refcount mismatch", "missed __mmput", "exit inside kthread_use_mm")


def test_shootdown_frees_at_last_mmput_and_moves_lazy_users() -> None:
    # Reference scenario 1 under SHOOTDOWN: counts stay 1; the final mmdrop at __mmput runs
    # cleanup_lazy_tlbs, which IPIs CPU 0 (in mm_cpumask) and switches kw to init_mm.
    m = machine("linux-6.17-shootdown")
    mm2 = with_user(m)
    lazy_kworker(m)
    assert mm2.mm_count == 1
    m.schedule(1, "app")
    m.exit("app")
    assert mm2.freed
    assert m.task("kw").active_mm is m.state.init_mm
    assert m.task("app").active_mm is m.state.init_mm  # the local CPU was in the mask too


def test_no_lazy_ablation_never_borrows_user_mms() -> None:
    m = machine("no-lazy")
    mm2 = with_user(m)
    lazy_kworker(m)
    assert m.task("kw").active_mm is m.state.init_mm and mm2.mm_count == 1
    assert m.rq(0).tlb.loaded_mm is m.state.init_mm
    m.schedule(1, "app")
    m.exit("app")  # no lazy user anywhere: freed at once
    assert mm2.freed


def test_cpu_hotplug_round_trip() -> None:
    m = machine()
    with_user(m)
    m.schedule(1, "app")
    m.schedule(1, "swapper/1")
    mm2 = m.task("app").mm
    assert mm2 is not None and mm2.mm_count == 2
    init_before = m.state.init_mm.mm_count
    m.cpu_down(1)
    # sched_force_init_mm: +1 init_mm, -1 mm2; finish_cpu: -1 init_mm, active_mm = NULL.
    assert mm2.mm_count == 1 and m.rq(1).idle.active_mm is None
    assert m.state.init_mm.mm_count == init_before
    m.cpu_up(1)
    assert m.rq(1).idle.active_mm is m.state.init_mm
    assert m.state.init_mm.mm_count == init_before + 1


def test_the_hotplug_thread_moves_its_borrowed_mm_to_init_mm_before_the_cpu_dies() -> None:
    """kernel/sched/core.c sched_cpu_wait_empty() -> sched_force_init_mm() (6.13+), run by
    the outgoing CPU's hotplug thread: a kernel thread lazily borrowing mm2 there switches
    to init_mm (mmgrab_lazy_tlb(&init_mm), switch_mm_irqs_off(mm2, &init_mm, current),
    mmdrop_lazy_tlb(mm2)); the CPU stays online, and its cpu_down() later finds nothing left
    to move. Refused before 6.13 (idle_task_exit() did it) and for a user task."""
    m = machine()
    mm2 = with_user(m)
    lazy_kworker(m)  # kw on CPU 0 borrows mm2
    seen: list[Event] = []

    class Watch(Observer):
        def event(self, ev: Event) -> None:
            seen.append(ev)

    m.add_observer(Watch())
    count, init_before = mm2.mm_count, m.state.init_mm.mm_count
    m.sched_cpu_wait_empty(0)
    kw = m.task("kw")
    assert kw.active_mm is m.state.init_mm and m.rq(0).online
    assert mm2.mm_count == count - 1 and m.state.init_mm.mm_count == init_before + 1
    switched = [e for e in seen if isinstance(e, MmSwitched)]
    assert [(e.prev, e.next, e.task) for e in switched] == [(mm2, m.state.init_mm, kw)]
    m.cpu_down(0, control=1)
    assert mm2.mm_count == count - 1 and m.rq(0).idle.active_mm is None
    with pytest.raises(OperationError, match=r"older than 6\.13"):
        machine("linux-6.12-x86_64").sched_cpu_wait_empty(0)
    m2 = machine()
    with_user(m2)  # init, a user task, runs on CPU 0
    with pytest.raises(OperationError, match="a user task"):
        m2.sched_cpu_wait_empty(0)


def test_cpu_down_migrates_a_running_user_task() -> None:
    m = machine()
    with_user(m)
    m.schedule(1, "app")
    m.cpu_down(1)
    assert m.task("app").state is TaskState.RUNNABLE
    m.schedule(0, "app")


def test_holders_mmget_not_zero_fails_on_torn_down_mm() -> None:
    m = machine()
    with_user(m)
    m.schedule(1, "app")
    m.mmgrab("mm2", "pin")
    m.exit("app")
    assert m.mmget_not_zero("mm2", "late") is False
    assert not any(h.name == "late" for h in m.state.holders)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m.schedule(0, "nobody"), "no task"),
        (lambda m: m.schedule(5, "init"), "no CPU 5"),
        (lambda m: m.exec("kthreadd"), "not running"),
        (lambda m: m.exit("swapper/0"), "idle"),
        (lambda m: m.fork("init", kind="process"), "not running"),
        (lambda m: m.kthread_unuse_mm("swapper/0"), "not inside kthread_use_mm"),
        (lambda m: m.fork("swapper/0", kind="bogus"), "unknown kind"),
        (lambda m: m.mmput("nobody"), "no mm_users reference"),
    ],
)
def test_impossible_operations_are_refused(call: object, message: str) -> None:
    m = machine()
    with pytest.raises(OperationError, match=message):
        call(m)  # type: ignore[operator]


def test_scheduling_a_dead_task_and_exec_after_exit_are_refused() -> None:
    m = machine()
    with_user(m)
    m.schedule(1, "app")
    m.exit("app")
    with pytest.raises(OperationError, match="exited"):
        m.exec("app")
    m.schedule(1, "swapper/1")
    with pytest.raises(OperationError, match="dead"):
        m.schedule(1, "app")


def test_kthread_use_mm_on_a_user_task_is_refused() -> None:
    m = machine()
    with_user(m)
    with pytest.raises(OperationError, match="not a kernel thread"):
        m.kthread_use_mm("init", "mm2")


def test_config_refuses_impossible_and_unsafe_combinations() -> None:
    with pytest.raises(ConfigError, match="depends on"):
        KernelConfig(MMU_LAZY_TLB_REFCOUNT=True, MMU_LAZY_TLB_SHOOTDOWN=True)
    with pytest.raises(ConfigError, match="unsafe"):
        KernelConfig(MMU_LAZY_TLB_REFCOUNT=False, MMU_LAZY_TLB_SHOOTDOWN=False)
    unsafe = KernelConfig(
        MMU_LAZY_TLB_REFCOUNT=False, MMU_LAZY_TLB_SHOOTDOWN=False, allow_unsafe=True
    )
    # The unsafe variant, studied: the zombie's lazy user outlives the free.
    m = machine(unsafe)
    with_user(m)
    lazy_kworker(m)
    m.schedule(1, "app")
    with pytest.raises(Violation, match="use-after-free"):
        m.exit("app")


def test_an_exiting_task_can_be_preempted_and_run_again() -> None:
    # Seen in real traces: sched_process_exit, then a switch out with prev_state=R+ (preempted
    # inside do_exit after exit_mm), then the task runs again and makes its final switch (Z).
    m = machine()
    mm2 = with_user(m)
    m.schedule(1, "app")
    m.exit("app")
    m.schedule(1, "swapper/1", preempt=True)  # kernel -> kernel: the lazy ref goes to idle
    app = m.task("app")
    assert app.state is TaskState.RUNNABLE and app.active_mm is None and mm2.mm_count == 1
    m.schedule(0, "app")  # it runs again, borrowing CPU 0's mm (user -> kernel)
    assert app.active_mm is m.task("init").mm
    with pytest.raises(OperationError, match="has exited"):
        m.exec("app")
    m.schedule(0, "init")  # the final switch: reaped
    assert app.state is TaskState.GONE


def test_revive_takes_back_a_switch_wrongly_read_as_final() -> None:
    """Machine.revive() (trace replay: a task past exit_notify() that calls schedule()
    woken already reads "X" like a dead one): the task runs again as the exiting task it
    was, borrowing lazily; only such a task can be revived."""
    m = machine("linux-6.1-x86_64-rt")
    mm2 = with_user(m)
    with pytest.raises(OperationError, match="not an exited task"):
        m.revive("init")  # alive
    m.schedule(1, "app")
    m.exit("app")
    m.schedule(1, "swapper/1")  # taken for the final switch
    app = m.task("app")
    assert app.state is TaskState.GONE
    m.forget_dead()
    assert app not in m.state.tasks
    m.revive(app)
    assert app.state is TaskState.RUNNABLE and app.exiting and app in m.state.tasks
    m.schedule(1, app)  # kernel -> kernel: it borrows what swapper/1 had, app's old mm
    assert app.active_mm is mm2 and mm2.mm_users == 0 and mm2.mm_count == 1
    with pytest.raises(OperationError, match="not an exited task"):
        m.revive(app)  # running
    m.schedule(1, "swapper/1")
    assert app.state is TaskState.GONE and not mm2.freed


def test_adopt_lazy_a_zombie_from_before_the_trace_is_freed_by_the_next_user_switch() -> None:
    """A CPU found borrowing an mm whose users exited before observation: the mm lives on
    that CPU's lazy reference alone (mm_users 0, mm_count 1) and is freed in the
    finish_task_switch() of the CPU's next switch to a user task, as the seed note says."""
    m = machine("linux-6.1-x86_64")
    app_mm = with_user(m)
    zombie = m.adopt_lazy(1)
    assert (zombie.mm_users, zombie.mm_count, zombie.torn_down) == (0, 1, True)
    assert m.rq(1).curr.active_mm is zombie
    m.schedule(1, "app")
    assert zombie.freed and m.task("app").active_mm is app_mm


def test_adopt_lazy_a_live_mm_takes_a_lazy_reference() -> None:
    m = machine("linux-6.12-x86_64")
    app_mm = with_user(m)
    before = app_mm.mm_count
    m.adopt_lazy(1, app_mm)
    assert app_mm.mm_count == before + 1 and m.rq(1).curr.active_mm is app_mm
    with pytest.raises(OperationError, match="has its own mm"):
        m.adopt_lazy(0, app_mm)  # init runs on CPU 0 with its own mm
    holders = list(m.state.holders)
    with pytest.raises(OperationError, match="holder of a new mm"):
        m.adopt_lazy(1, app_mm, held_by="sleeper")  # an existing mm has its users already
    assert m.state.holders == holders


def test_adopt_lazy_a_zombie_is_impossible_without_counted_lazy_references() -> None:
    m = machine("linux-6.17-shootdown")
    with pytest.raises(OperationError, match="cannot keep an mm alive"):
        m.adopt_lazy(1)


@pytest.mark.parametrize("rt", [False, True], ids=["6.1", "6.1-rt"])
def test_preempt_rt_frees_the_zombie_from_an_rcu_callback(rt: bool) -> None:
    """The seed's zombie, last dropped in finish_task_switch(): mmdrop_sched() frees it
    there, or on PREEMPT_RT call_rcu()s __mmdrop_delayed() on that CPU (reference scenario
    13), which frees it from the CPU's RCU callbacks, at its next switch in the model; in
    between nothing may point to it (the sanitizer checks every state)."""
    m = machine("linux-6.1-x86_64-rt" if rt else "linux-6.1-x86_64")
    mm2 = with_user(m)
    lazy_kworker(m)  # kw borrows mm2 on CPU 0: 1 (users' share) + 1 (CPU 0's lazy) = 2
    m.schedule(1, "app")
    m.exit("app")  # exit_mm: + 1 (CPU 1's lazy), __mmput: - the users' share: 2
    m.schedule(1, "kthreadd")  # kernel -> kernel: CPU 1's lazy reference is handed on
    m.schedule(1, "init")  # kernel -> user: finish_task_switch drops it: 1
    m.fork("init", name="app2")
    freed = watch_frees(m)
    m.schedule(0, "app2")  # CPU 0's lazy reference, the last: 0
    assert mm2.mm_count == 0
    if not rt:
        assert mm2.freed and freed == [(mm2.name, "finish_task_switch")]
        return
    # call_rcu() on CPU 0: unreachable, not freed until a grace period has passed (both CPUs
    # switched since) and CPU 0 runs its callbacks
    assert not mm2.freed and mm2.rcu_cpu == 0 and not freed and mm2.status == "rcu-queued"
    assert all(rq.curr.active_mm is not mm2 and rq.tlb.loaded_mm is not mm2 for rq in m.state.rqs)
    m.schedule(0, "kw")  # CPU 0's quiescent state; CPU 1 has not passed one yet
    assert not mm2.freed and mm2.rcu_wait == {1}
    m.schedule(1, "kthreadd")  # the grace period ends; the callback is CPU 0's to run
    assert not mm2.freed and not mm2.rcu_wait
    m.schedule(0, "app2")  # CPU 0's next switch: its callbacks run
    assert mm2.freed and mm2.rcu_cpu is None and freed == [(mm2.name, "__mmdrop_delayed")]


def test_preempt_rt_an_idle_cpu_holds_no_grace_period_up() -> None:
    """An idle CPU is in an extended quiescent state (ct_idle_enter()): RCU waits for no
    quiescent state of it. An mm call_rcu()ed while CPU 1 idles is freed once the busy CPUs
    have switched, though CPU 1 never does (a nohz_full capture's idle CPUs held the model's
    grace periods up to the trace's end when they counted)."""
    m = machine("linux-6.12-x86_64-rt", cpus=3)
    mm2 = with_user(m, "a")
    m.fork("init", name="b")
    m.schedule(2, "a")
    m.exit("a")
    freed = watch_frees(m)
    assert m.state.rqs[1].curr is m.state.rqs[1].idle
    m.schedule(2, "b")  # dead a -> b: the last reference, call_rcu() on CPU 2
    assert mm2.rcu_cpu == 2 and mm2.rcu_wait == {0, 2} and not freed
    m.schedule(0, "kthreadd")  # CPU 0's quiescent state
    assert mm2.rcu_wait == {2} and not freed
    m.schedule(2, m.state.rqs[2].idle.name)  # CPU 2's: the grace period is over, and its
    # callbacks run
    assert freed == [(mm2.name, "__mmdrop_delayed")] and mm2.freed
    assert m.state.rqs[1].curr is m.state.rqs[1].idle  # (CPU 1 never switched)


@pytest.mark.parametrize("gp_running", [False, True], ids=["gp-asleep", "gp-on-a-cpu"])
def test_preempt_rt_a_callback_waits_for_the_grace_period_kthread(gp_running: bool) -> None:
    """kernel/rcu/tree.c: a grace period is started (rcu_gp_init()) and ended
    (rcu_gp_cleanup()) by RCU's grace-period kthread, in two of its runs, and call_rcu()
    gives a callback the next one to start. Once a client says when that kthread runs (the
    validator, from rcu_preempt's switches), every CPU's quiescent state is not enough: the
    kthread must have been switched in twice since the call_rcu(), or once when it was on a
    CPU at the call_rcu() (its cleanup of the grace period before may go straight on to the
    callback's). Worked by hand: a exits on CPU 2, b's switch drops a's mm to 0 there."""
    m = machine("linux-6.12-x86_64-rt", cpus=3)
    mm2 = with_user(m, "a")
    m.fork("init", name="b")
    m.schedule(2, "a")
    m.exit("a")
    m.rcu_at_switch = False  # as the validator: callbacks run when told
    m.rcu_gp_kthread(1)  # seen once: from now on callbacks wait for it
    if not gp_running:
        m.rcu_gp_kthread(1, running=False)
    freed = watch_frees(m)
    m.schedule(2, "b")  # call_rcu() on CPU 2
    assert mm2.rcu_cpu == 2 and mm2.rcu_gp_runs == (1 if gp_running else 2)
    m.schedule(0, "kthreadd")
    m.schedule(2, m.state.rqs[2].idle.name)  # every busy CPU switched: the old rule's end
    assert not mm2.rcu_wait & {0, 2}
    m.rcu_callbacks(2)
    assert not freed  # the grace period has not even started (or ended)
    m.rcu_gp_kthread(1, running=False)
    m.rcu_gp_kthread(1)
    m.rcu_callbacks(2)
    if not gp_running:
        assert not freed and mm2.rcu_gp_runs == 1  # started in that run, not ended
        m.rcu_gp_kthread(1, running=False)
        m.rcu_gp_kthread(1)
        m.rcu_callbacks(2)
    assert freed == [(mm2.name, "__mmdrop_delayed")] and mm2.freed


def test_preempt_rt_callbacks_queued_before_the_grace_period_kthread_was_seen() -> None:
    """A trace can begin while rcu_preempt runs: its first word can be a switch out. The
    callbacks queued before that word wait for none of its runs (whether it ran at their
    call_rcu() is not known), those queued after for the runs rcu_gp_kthread() needs."""
    m = machine("linux-6.12-x86_64-rt", cpus=3)
    mm2 = with_user(m, "a")
    mm3 = m.fork("init", name="b").mm
    assert mm3 is not None
    m.fork("init", name="c")
    m.rcu_at_switch = False
    m.schedule(2, "a")
    m.exit("a")
    m.schedule(2, "b")  # mm2: call_rcu() on CPU 2, before anything was said of the kthread
    m.rcu_gp_kthread(1, running=False)  # first word: it was running, now it sleeps
    assert mm2.rcu_gp_runs == 0
    m.exit("b")
    m.schedule(2, "c")  # mm3: call_rcu() with the kthread asleep
    assert mm3.rcu_cpu == 2 and mm3.rcu_gp_runs == 2
    freed = watch_frees(m)
    m.schedule(0, "kthreadd")
    m.schedule(2, m.state.rqs[2].idle.name)  # every busy CPU switched since both
    m.rcu_callbacks(2)
    assert freed == [(mm2.name, "__mmdrop_delayed")]  # mm3 waits for two runs of it


def test_preempt_rt_runs_a_cpus_rcu_callbacks_oldest_first() -> None:
    """rcu_do_batch() invokes a CPU's callbacks in the order call_rcu() queued them (the
    segmented cblist is FIFO), not in the order the mms were created: the newer mm, whose
    last mmdrop_sched() came first, is freed first."""
    m = machine("linux-6.1-x86_64-rt")
    older = with_user(m, "a")  # mm2
    newer = m.fork("init", name="b").mm  # mm3
    assert newer is not None and older.id < newer.id
    m.schedule(1, "kthreadd")
    m.fork("kthreadd", kind="kthread", name="kw")
    freed = watch_frees(m)
    for task in ("b", "a"):  # each exits on CPU 0; the switch to init drops its mm to 0
        m.schedule(0, task)
        m.exit(task)
        m.schedule(0, "init")
    assert [mm.rcu_cpu for mm in (newer, older)] == [0, 0] and not freed
    assert m.state.rcu_callbacks == [newer, older]
    m.schedule(1, "kw")  # CPU 1's quiescent state: the newer mm's grace period is over
    assert not newer.rcu_wait and older.rcu_wait == {0}
    m.schedule(0, m.state.rqs[0].idle.name)  # CPU 0's: both over, and its callbacks run
    assert freed == [(newer.name, "__mmdrop_delayed"), (older.name, "__mmdrop_delayed")]
    assert m.state.rcu_callbacks == []


@pytest.mark.parametrize("offloaded", [False, True], ids=["rcuc", "rcu_nocbs"])
def test_preempt_rt_callbacks_of_a_cpu_going_offline(offloaded: bool) -> None:
    """takedown_cpu() ends with rcutree_migrate_callbacks(): the dead CPU's RCU callbacks,
    a queued __mmdrop_delayed() among them, join the list of the CPU running the teardown and
    run there after their grace period. Offloaded ones (RCU_NOCB_CPU_DEFAULT_ALL, or
    rcu_nocbs=all) stay on the dead CPU's list, which its rcuop thread runs elsewhere."""
    cfg = replace(preset("linux-6.12-x86_64-rt"), RCU_NOCB_CPU_DEFAULT_ALL=offloaded)
    m = machine(cfg, cpus=3)
    mm2 = with_user(m, "a")
    m.fork("init", name="b")
    m.schedule(2, "a")
    m.exit("a")  # lazy on its own mm2 on CPU 2, then __mmput: CPU 2's reference is the last
    m.schedule(2, "b")  # dead a -> user b: mmdrop_sched(): call_rcu() on CPU 2
    # (CPU 1, idle, is in an extended quiescent state: it holds the grace period up not)
    assert mm2.rcu_cpu == 2 and mm2.rcu_wait == {0, 2} and not mm2.freed
    freed = watch_frees(m)
    m.cpu_down(2, control=1)  # b is moved away (CPU 2's quiescent state), then the teardown
    assert mm2.rcu_wait == {0} and not freed
    assert mm2.rcu_cpu == (2 if offloaded else 1)
    m.schedule(0, "b")
    m.schedule(1, "kthreadd")  # the grace period ends; CPU 1 runs its ready callbacks
    if offloaded:
        assert not freed and not mm2.rcu_wait
        m.rcu_callbacks(2)  # rcuop/2, on a CPU still online
    assert freed == [(mm2.name, "__mmdrop_delayed")] and mm2.freed
    assert m.state.rcu_callbacks == []


def test_cpu_down_refuses_a_teardown_on_the_cpu_itself() -> None:
    m = machine(cpus=3)
    with pytest.raises(OperationError, match="another online CPU"):
        m.cpu_down(2, control=2)
    m.cpu_down(1)
    with pytest.raises(OperationError, match="another online CPU"):
        m.cpu_down(2, control=1)


def _cr3_loads(m: Machine) -> list[tuple[int, str]]:
    """A list that fills, from now on, with (CPU, mm name) of every x86 CR3 load in `m`."""
    loads: list[tuple[int, str]] = []

    class Watch(Observer):
        def event(self, ev: Event) -> None:
            if isinstance(ev, Cr3Loaded):
                loads.append((ev.cpu, ev.mm.name))

    m.add_observer(Watch())
    return loads


def test_preempt_rt_exec_preempted_before_activate_mm() -> None:
    """PREEMPT_RT, fs/exec.c exec_mmap(): task_lock() leaves preemption on and x86 (6.1)
    enables interrupts before activate_mm(), so the task can be switched out with tsk->mm =
    tsk->active_mm = new while its CPU still runs on the old page tables. Worked by hand
    (the sanitizer checks every step): app (mm2) execs into mm3 and is preempted by kw.
    - exec up to the window: mm3 has its user (1, 1); mm2 still has app's real user through
      exec_mmap's old_mm (1, 1); the CPU still has mm2 loaded, no CR3 load.
    - app -> kw (user -> kernel): kw borrows app's active_mm, the new mm3: mmgrab_lazy_tlb:
      mm3 (1, 2); enter_lazy_tlb: no CR3 load, the CPU stays on mm2, lazily.
    - kw -> app: switch_mm_irqs_off(mm3, mm3) compares with loaded_mm (mm2), not `prev`:
      CR3 := mm3; finish_task_switch drops kw's lazy reference: mm3 (1, 1).
    - resume: activate_mm(mm2, mm3) finds mm3 loaded: no CR3 load; mmput(mm2) is its last
      user and nobody borrows it: __mmput, __mmdrop (mm2 freed, by the exec)."""
    m = machine("linux-6.1-x86_64-rt")
    mm2 = with_user(m)
    lazy_kworker(m)  # (kw borrowed mm2 on CPU 0 once; app runs again below)
    m.schedule(0, "app")
    app = m.task("app")
    loads, freed = _cr3_loads(m), watch_frees(m)
    mm3 = m.exec(app, name="cat", preempted=True)
    assert app.mm is mm3 and app.active_mm is mm3 and app.comm == "app"
    assert (mm3.mm_users, mm3.mm_count) == (1, 1) and (mm2.mm_users, mm2.mm_count) == (1, 1)
    assert m.state.rqs[0].tlb.loaded_mm is mm2 and loads == []
    m.schedule(0, "kw")
    kw = m.task("kw")
    assert kw.active_mm is mm3 and mm3.mm_count == 2
    assert m.state.rqs[0].tlb.loaded_mm is mm2 and m.state.rqs[0].tlb.is_lazy and loads == []
    with pytest.raises(OperationError, match="disables migration"):
        m.schedule(1, app)  # task_lock() held: migrate_disable()
    m.schedule(0, app)
    assert loads == [(0, "mm3")] and mm3.mm_count == 1 and kw.active_mm is None
    with pytest.raises(OperationError, match="resume_exec"):
        m.fork(app)
    m.resume_exec(app)
    assert loads == [(0, "mm3")] and app.comm == "cat" and app.in_exec_mmap is None
    assert mm2.freed and freed == [("mm2", "__mmput")]
    assert (mm3.mm_users, mm3.mm_count) == (1, 1)


def test_exec_preempted_needs_preempt_rt_and_resume_needs_a_window() -> None:
    m = machine("linux-6.1-x86_64")
    with_user(m)
    m.schedule(1, "app")
    with pytest.raises(OperationError, match="needs PREEMPT_RT"):
        m.exec("app", preempted=True)
    with pytest.raises(OperationError, match="not inside a preempted exec_mmap"):
        m.resume_exec("app")


def test_preempt_rt_exec_window_of_a_task_without_an_mm_keeps_its_lazy_reference() -> None:
    """init's first exec (kernel_execve) on PREEMPT_RT: init has no mm and borrows init_mm
    lazily (boot 3 references + init's lazy one taken over from CPU 0's idle task). Preempted
    in the window, exec_mmap's local active_mm still holds that lazy reference, which the
    sanitizer's count must see; resume_exec() drops it (mmdrop_lazy_tlb): init_mm 3 -> 2."""
    m = machine("linux-6.1-x86_64-rt")
    m.schedule(0, "init")
    init_mm = m.state.init_mm
    assert init_mm.mm_count == 3
    mm1 = m.exec("init", preempted=True)
    assert init_mm.mm_count == 3 and m.task("init").mm is mm1
    m.schedule(0, "swapper/0")  # the idle task borrows mm1 lazily; the CPU stays on init_mm
    assert m.state.rqs[0].tlb.loaded_mm is init_mm and mm1.mm_count == 2
    m.schedule(0, "init")
    m.resume_exec("init")
    assert init_mm.mm_count == 2 and (mm1.mm_users, mm1.mm_count) == (1, 1)


def test_preempt_rt_two_execs_preempted_on_one_cpu() -> None:
    """Two tasks preempted inside exec_mmap() on the same CPU (each window left its own
    old mm loaded there in turn): the CPU runs on the second one's old mm (app's, the
    earlier task) under its new one, which the sanitizer allows whichever window it is
    (a random walk found it refused when only one window per CPU was remembered)."""
    m = machine("linux-6.1-x86_64-rt")
    mm2 = with_user(m)
    b = m.fork("init", name="b")
    old_b = b.mm
    m.schedule(0, b)
    m.exec(b, preempted=True)
    m.schedule(0, "app")  # app's own mm loaded: CR3 := mm2
    m.exec("app", preempted=True)
    assert m.state.rqs[0].tlb.loaded_mm is mm2 and len(m.state.preempted_execs()) == 2
    m.schedule(0, b)
    m.resume_exec(b)
    m.schedule(0, "app")
    m.resume_exec("app")
    assert mm2.freed and old_b is not None and old_b.freed
    assert m.state.preempted_execs() == []
