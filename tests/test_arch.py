"""Architecture layers, checked against sequences worked out by hand from the kernel source:
arch/x86/mm/tlb.c, arch/alpha/include/asm/mmu_context.h, arch/powerpc/mm/book3s64/radix_tlb.c."""

from __future__ import annotations

from dataclasses import replace

import pytest

from activemm import PRESETS, Machine
from activemm.errors import ConfigError
from activemm.model.arch import x86
from activemm.model.arch.powerpc import TLB_MM_CPUMASK_TRIM_TIMER
from activemm.model.events import (
    AsnRollover,
    BroadcastFlush,
    CpumaskTrimmed,
    Cr3Loaded,
    FlushIpi,
    FlushSkippedLazy,
    GlobalAsidAssigned,
    LazyEntered,
    LeftMm,
    MmSwitched,
    PcbLoaded,
    ShootdownIpi,
)
from activemm.model.state import MAX_ASID_AVAILABLE, Mm

from .helpers import Events, lazy_kworker, machine, with_user


def watched(preset: str, cpus: int = 2) -> tuple[Machine, Events]:
    m = machine(preset, cpus)
    ev = Events()
    m.add_observer(ev)
    return m, ev


def test_x86_asid_round_robin_and_slot_exhaustion() -> None:
    # TLB_NR_DYN_ASIDS = 6; cpu_init leaves init_mm in slot 0 and next_asid = 1.
    m, ev = watched("linux-6.17-x86_64")
    m.schedule(0, "init")
    m.exec("init")  # activate_mm: mm1 not cached -> slot 1 (next_asid 2), flush
    assert [(c.mm.name, c.asid, c.flush) for c in ev.take(Cr3Loaded)] == [("mm1", 1, True)]
    for i in range(1, 7):
        m.fork("init", name=f"p{i}")  # mm2 .. mm7
    got = []
    for i in range(1, 7):
        m.schedule(0, f"p{i}")
        got += [(c.mm.name, c.asid, c.flush) for c in ev.take(Cr3Loaded)]
    # slots 2,3,4,5; then next_asid 6 >= 6 wraps to 0 (evicting init_mm), then 1 (evicting mm1)
    assert got == [
        ("mm2", 2, True),
        ("mm3", 3, True),
        ("mm4", 4, True),
        ("mm5", 5, True),
        ("mm6", 0, True),
        ("mm7", 1, True),
    ]
    m.schedule(0, "init")  # mm1 was evicted: new slot 2 (evicting mm2), flush
    m.schedule(0, "p5")  # mm6 still in slot 0, tlb_gen unchanged: reuse without flush
    m.schedule(0, "p1")  # mm2 evicted: slot 3, flush
    got = [(c.mm.name, c.asid, c.flush) for c in ev.take(Cr3Loaded)]
    assert got == [("mm1", 2, True), ("mm6", 0, False), ("mm2", 3, True)]


def test_x86_same_mm_back_from_lazy_with_and_without_a_flush() -> None:
    m, ev = watched("linux-6.17-x86_64")
    with_user(m)
    m.schedule(1, "kthreadd")
    m.fork("kthreadd", kind="kthread", name="kw")
    m.schedule(0, "app")
    ev.take(Cr3Loaded)
    # U -> K -> U, nothing flushed meanwhile: prev == next, was_lazy, ctxs tlb_gen equal:
    # return early, no CR3 write at all.
    m.schedule(0, "kw")
    m.schedule(0, "app")
    assert ev.take(Cr3Loaded) == []
    # Again with a flush from CPU 1 while CPU 0 is lazy: CPU 0 is not IPIed
    # (should_flush_tlb: is_lazy), and catches up with a flushing reload in the same ASID.
    m.schedule(0, "kw")
    asid = m.rq(0).tlb.loaded_mm_asid
    m.flush_tlb_mm_range(1, "mm2")
    assert [e.to_cpu for e in ev.take(FlushSkippedLazy)] == [0]
    m.schedule(0, "app")
    assert [(c.asid, c.flush) for c in ev.take(Cr3Loaded)] == [(asid, True)]


def test_x86_flush_ipis_only_non_lazy_cpus_unless_tables_freed() -> None:
    m, ev = watched("linux-6.17-x86_64", cpus=3)
    with_user(m)
    m.schedule(1, "app")
    m.fork("app", kind="thread", name="t")
    m.schedule(2, "t")
    m.schedule(1, "swapper/1")  # CPU 1 lazy on mm2; CPU 2 runs t on mm2
    ev.seen.clear()
    m.flush_tlb_mm_range(2, "mm2")
    assert [e.to_cpu for e in ev.take(FlushIpi)] == []  # CPU 2 is local, CPU 1 lazy
    m.flush_tlb_mm_range(0, "mm2")  # from CPU 0, which does not run mm2 (stale bit, 6.17)
    # CPU 0 is in the mask (it ran app before): should_flush_tlb false for it (loaded_mm is
    # mm1, no trim); CPU 2 runs mm2: IPI; CPU 1 lazy: skipped.
    ev_ipis = [e.to_cpu for e in ev.seen if isinstance(e, FlushIpi)]
    assert ev_ipis == [2]
    ev.seen.clear()
    m.flush_tlb_mm_range(0, "mm2", freed_tables=True)
    # freed tables: every CPU in mm_cpumask but the sender; lazy CPU 1 goes to init_mm.
    assert [e.to_cpu for e in ev.take(FlushIpi)] == [1, 2]
    assert m.rq(1).tlb.loaded_mm is m.state.init_mm
    assert m.task("swapper/1").active_mm is m.task("app").mm


def test_x86_fork_flushes_the_parents_mm_and_a_lazy_cpu_drops_to_init_mm() -> None:
    """kernel/fork.c: dup_mmap() ends with flush_tlb_mm(oldmm), on x86 a full flush with
    freed_tables: CPU 0, lazy on app's mm, is IPIed and switches its hardware to init_mm
    (its active_mm, and the reference, stay)."""
    m, ev = watched("linux-6.17-x86_64")
    mm2 = with_user(m)
    lazy_kworker(m)  # CPU 0 runs kw, lazy on mm2
    m.schedule(1, "app")
    ev.seen.clear()
    m.fork("app", name="child")
    assert [(i.cpu, i.to_cpu, i.mm.name) for i in ev.take(FlushIpi)] == [(1, 0, "mm2")]
    switched = [(s.cpu, s.next.name, s.via) for s in ev.take(MmSwitched)]
    assert switched == [(0, "init_mm", "flush_tlb_func")]
    assert m.rq(0).tlb.loaded_mm is m.state.init_mm
    assert m.task("kw").active_mm is mm2


def _app_threads(kthreads: bool) -> tuple[Machine, Events, Mm]:
    """6.1 on 3 CPUs: app (mm2) running on CPU 1 with threads t (running on CPU 2) and t2;
    with `kthreads`, kthreadd's kernel threads kw and kw2 too (not running)."""
    m, ev = watched("linux-6.1-x86_64", cpus=3)
    mm2 = with_user(m)
    m.schedule(1, "app")
    m.fork("app", kind="thread", name="t")
    m.fork("app", kind="thread", name="t2")
    if kthreads:
        m.schedule(2, "kthreadd")
        m.fork("kthreadd", kind="kthread", name="kw")
        m.fork("kthreadd", kind="kthread", name="kw2")
    m.schedule(2, "t")
    return m, ev, mm2


@pytest.mark.parametrize(
    ("next_task", "to_init_mm"), [("t2", False), ("kw2", True)], ids=["to-user", "to-kthread"]
)
def test_x86_a_flush_ipi_waits_for_a_switch_in_progress(next_task: str, to_init_mm: bool) -> None:
    """Interrupts are off from __schedule()'s local_irq_disable() to finish_task_switch()'s
    finish_lock_switch(): a freed-tables flush IPI sent to a CPU mid-switch, lazy on the mm
    when it began, runs after the switch (kernel/smp.c's call_single_queue), on the state
    the switch left. Switched to a thread of that mm the CPU is no longer lazy: the flush
    leaves it on the mm. Switched to another kernel thread it still borrows the mm lazily:
    flush_tlb_func() moves it to init_mm then, not before (its hardware stayed on the mm
    until the switch's end)."""
    m, ev, mm2 = _app_threads(kthreads=True)
    m.schedule(1, "kw")  # CPU 1 lazy on mm2
    m.local_irq_disable(1)  # CPU 1's __schedule() has begun
    ev.seen.clear()
    m.flush_tlb_mm_range(2, "mm2", freed_tables=True)
    assert [e.to_cpu for e in ev.take(FlushIpi)] == [1]  # sent, not yet handled:
    assert ev.take(MmSwitched) == [] and m.rq(1).tlb.loaded_mm is mm2
    m.schedule(1, next_task)
    assert not m.rq(1).irqs_disabled and m.rq(1).call_single_queue == []
    via = [s.via for s in ev.take(MmSwitched)]
    assert ("flush_tlb_func" in via) is to_init_mm
    assert m.rq(1).tlb.loaded_mm is (m.state.init_mm if to_init_mm else mm2)
    assert m.rq(1).curr.active_mm is mm2
    # the same flush with interrupts on: handled at once, CPU 1 (lazy again) to init_mm
    m.schedule(1, "kw" if next_task == "t2" else "t2")
    m.schedule(1, "swapper/1")
    if next_task == "t2":
        m.local_irq_disable(1)
        m.local_irq_enable(1)  # a begun switch given up: interrupts back on, nothing queued
    ev.seen.clear()
    m.flush_tlb_mm_range(2, "mm2", freed_tables=True)
    assert [s.via for s in ev.take(MmSwitched)] == ["flush_tlb_func"]


def test_x86_a_cpu_inside_schedule_with_a_flush_waiting_runs_no_stale_user_code() -> None:
    """A flush IPI sent to a CPU running a thread of the mm once that CPU's __schedule()
    has begun waits there (interrupts off). Its TLB generation is behind meanwhile, which
    the sanitizer takes for a missed flush only where user code could run: not inside
    __schedule(), where the IPI is queued. The switch's end (to another thread of the mm)
    runs it and catches the TLB up."""
    m, ev, mm2 = _app_threads(kthreads=False)
    ev.seen.clear()
    m.local_irq_disable(1)
    m.flush_tlb_mm_range(2, "mm2")  # CPU 1 runs mm2, not lazy: IPIed, queued
    tlb = m.rq(1).tlb
    assert tlb.ctxs[tlb.loaded_mm_asid].tlb_gen < mm2.context.tlb_gen
    m.schedule(0, "kthreadd")  # the sanitizer checks every CPU after each operation
    m.schedule(1, "t2")
    assert tlb.ctxs[tlb.loaded_mm_asid].tlb_gen == mm2.context.tlb_gen
    assert [s.via for s in ev.take(MmSwitched) if s.cpu == 1] == ["switch_mm_irqs_off"]


def test_x86_6_1_clears_cpumask_on_switch_away_6_17_does_not() -> None:
    for name, stale in (("linux-6.1-x86_64", False), ("linux-6.17-x86_64", True)):
        m = machine(name)
        with_user(m)
        m.schedule(1, "app")
        m.schedule(1, "kthreadd")  # lazy: the bit stays on both
        m.schedule(1, "swapper/1")
        m.schedule(0, "app")
        m.schedule(0, "init")  # user -> user: real switch away from mm2 on CPU 0
        mm2 = m.task("app").mm
        assert mm2 is not None
        assert (0 in mm2.mm_cpumask) is stale, name


def _threads_on_every_cpu(preset: str, cpus: int) -> tuple[Machine, Events, Mm]:
    """app (mm2) on CPU 0 and a thread t1.. on each other CPU; kthreadd's kernel thread kw
    forked (not running)."""
    m, ev = watched(preset, cpus)
    mm2 = with_user(m)
    m.schedule(0, "app")
    m.schedule(1, "kthreadd")
    m.fork("kthreadd", kind="kthread", name="kw")
    for cpu in range(1, cpus):
        m.fork("app", kind="thread", name=f"t{cpu}")
        m.schedule(cpu, f"t{cpu}")
    ev.seen.clear()
    return m, ev, mm2


def test_x86_invlpgb_global_asid_only_for_more_than_three_running_cpus() -> None:
    """consider_global_asid() -> mm_active_cpus_exceeds(mm, 3): CPUs in mm_cpumask that have
    the mm loaded and are not lazy must number four or more."""
    m, ev, mm2 = _threads_on_every_cpu("linux-6.17-x86_64-invlpgb", 4)
    m.schedule(3, "kw")  # CPU 3 lazy on mm2: three CPUs run it, four are in its mask
    m.flush_tlb_mm_range(0, "mm2")
    assert ev.take(GlobalAsidAssigned) == [] and mm2.context.global_asid == 0
    assert [i.to_cpu for i in ev.take(FlushIpi)] == [1, 2]  # lazy CPU 3 skipped
    m.schedule(3, "t3")  # four now
    m.flush_tlb_mm_range(0, "mm2")
    # the flush itself still goes by IPI; the ASID is assigned after it
    assert [i.to_cpu for i in ev.take(FlushIpi)] == [1, 2, 3]
    # global ASIDs start after the TLB_NR_DYN_ASIDS dynamic ones (reset_global_asid_space)
    assert [(g.mm, g.asid) for g in ev.take(GlobalAsidAssigned)] == [(mm2, 6)]
    assert mm2.context.asid_transition
    # the same four CPUs, without INVLPGB: never a global ASID
    plain, pev, pmm = _threads_on_every_cpu("linux-6.17-x86_64", 4)
    plain.flush_tlb_mm_range(0, "mm2")
    assert pev.take(GlobalAsidAssigned) == [] and pmm.context.global_asid == 0


def test_x86_invlpgb_transition_then_broadcast_keeps_lazy_cpus_on_the_mm() -> None:
    """broadcast_tlb_flush(): no flush IPI; finish_asid_transition() IPIs mm_cpumask while
    a CPU still runs the mm on a dynamic ASID (each reloads the global one: a CR3 write
    with no flush), then ends the transition. After that a lazy CPU is never IPIed, not even
    for freed page tables, so it keeps the mm loaded (without INVLPGB: init_mm)."""
    m, ev, mm2 = _threads_on_every_cpu("linux-6.17-x86_64-invlpgb", 4)
    m.flush_tlb_mm_range(0, "mm2")  # mm2 gets global ASID 6, in transition
    ev.seen.clear()
    m.flush_tlb_mm_range(1, "mm2")
    assert [(b.cpu, b.asid) for b in ev.take(BroadcastFlush)] == [(1, 6)]
    assert [i.to_cpu for i in ev.take(FlushIpi)] == [0, 2, 3]  # the transition's round
    assert sorted((c.cpu, c.asid, c.flush) for c in ev.take(Cr3Loaded)) == [
        (cpu, 6, False) for cpu in range(4)
    ]
    assert mm2.context.asid_transition  # cleared by the next broadcast, which finds none
    m.flush_tlb_mm_range(1, "mm2")
    assert not mm2.context.asid_transition and ev.take(FlushIpi) == []
    m.schedule(3, "kw")
    ev.seen.clear()
    m.flush_tlb_mm_range(0, "mm2", freed_tables=True)
    assert ev.take(FlushIpi) == [] and ev.take(LeftMm) == []
    assert m.rq(3).tlb.loaded_mm is mm2 and m.rq(3).tlb.is_lazy
    m.schedule(3, "t3")  # back on its global ASID: no CR3 write at all
    assert ev.take(Cr3Loaded) == []
    # the same with a dynamic ASID: the lazy CPU goes to init_mm
    plain, _, _ = _threads_on_every_cpu("linux-6.17-x86_64", 4)
    plain.schedule(3, "kw")
    plain.flush_tlb_mm_range(0, "mm2", freed_tables=True)
    assert plain.rq(3).tlb.loaded_mm is plain.state.init_mm


def test_x86_invlpgb_transition_ipi_takes_a_lazy_cpu_out_of_lazy_mode() -> None:
    """6.17's flush_tlb_func() tests mm_needs_global_asid() before is_lazy: a lazy CPU on
    the mm still on a dynamic ASID reloads it as the global one through
    switch_mm_irqs_off(), which clears is_lazy; the kernel thread runs on, not lazy (the
    WARN in a later leave_mm(); a fix swapping the tests was posted in May 2025)."""
    m, _, mm2 = _threads_on_every_cpu("linux-6.17-x86_64-invlpgb", 4)
    m.flush_tlb_mm_range(0, "mm2")
    m.schedule(3, "kw")
    assert m.rq(3).tlb.is_lazy
    m.flush_tlb_mm_range(0, "mm2")  # sanitizer attached: the state is accepted as the kernel's
    rq3 = m.rq(3)
    assert rq3.curr.comm == "kw" and rq3.curr.active_mm is mm2
    assert rq3.tlb.loaded_mm is mm2 and rq3.tlb.loaded_mm_asid == 6 and not rq3.tlb.is_lazy


def test_x86_invlpgb_global_asid_given_back_at_mmdrop_and_reused_after_wraparound() -> None:
    """destroy_context() -> mm_free_global_asid(): the ASID is marked freed; the allocator
    goes on from the last one it handed out and reuses freed ones only once it wraps
    (reset_global_asid_space(), behind invlpgb_flush_all_nonglobals())."""
    cfg = replace(PRESETS["linux-6.17-x86_64-invlpgb"], global_asid_threshold=0)
    m, ev = watched(cfg, 2)
    mm2 = with_user(m)  # init (mm1) on CPU 0
    m.schedule(1, "app")
    m.flush_tlb_mm_range(0, "mm2")  # CPU 1 in the mask: the IPI path, then consider
    assert [(g.mm, g.asid) for g in ev.take(GlobalAsidAssigned)] == [(mm2, 6)]
    m.exit("app")
    m.schedule(1, "swapper/1")  # lazy on the zombie
    m.schedule(0, "kthreadd")
    m.schedule(1, "init")  # the last reference goes: __mmdrop
    space = m.state.global_asids
    assert mm2.status == "freed" and mm2.context.global_asid == 0
    assert space.freed == {6} and 6 in space.used
    # the fork's dup_mmap() flushes init's mm1 (CPU 0, where init ran before, still in its
    # mask: the IPI path), so mm1 gets the next one; then mm3: 6 is not reused yet
    m.fork("init", name="b")  # mm3
    m.schedule(0, "b")
    m.flush_tlb_mm_range(1, "mm3")
    got = [(g.mm.name, g.asid) for g in ev.take(GlobalAsidAssigned)]
    assert got == [("mm1", 7), ("mm3", 8)]
    space.last = MAX_ASID_AVAILABLE - 1  # as if every ASID up to the top had been handed out
    assert x86.allocate_global_asid(m.k) == 6  # wrapped: the freed one is free again
    assert space.freed == set() and space.used == {6, 7, 8}


def _stale_bit(preset: str) -> tuple[Machine, Events]:
    """3 CPUs: app (mm2) ran on CPU 1 and its thread t runs on CPU 2; CPU 1 then switched to
    another process (mm3), CPU 0 is lazy on init's mm1."""
    m, ev = watched(preset, cpus=3)
    with_user(m)
    m.schedule(1, "app")
    m.fork("app", kind="thread", name="t")
    m.schedule(2, "t")
    m.fork("init", name="other")
    m.schedule(1, "other")
    m.schedule(0, "kthreadd")
    ev.seen.clear()
    return m, ev


def test_x86_cpumask_trim_ipis_a_stale_cpu_and_clears_its_bit() -> None:
    """Reference scenario 15 (6.14+, "Only trim the mm_cpumask once a second"): CPU 1 left
    mm2 but stays in its mask; a flush skips it (should_flush_tlb: not loaded, no trim due)
    unless the trim is due, when it is IPIed and flush_tlb_func() clears its bit
    (TLB_REMOTE_WRONG_CPU). Before 6.14 the bit went at the switch itself."""
    m, ev = _stale_bit("linux-6.17-x86_64")
    mm2 = m.mm("mm2")
    assert mm2.mm_cpumask == {1, 2}
    m.flush_tlb_mm_range(2, "mm2")
    assert ev.take(FlushIpi) == [] and mm2.mm_cpumask == {1, 2}
    m.flush_tlb_mm_range(2, "mm2", trim=True)
    assert [(i.cpu, i.to_cpu) for i in ev.take(FlushIpi)] == [(2, 1)]
    assert [(t.cpu, t.mm) for t in ev.take(CpumaskTrimmed)] == [(1, mm2)]
    assert mm2.mm_cpumask == {2}
    old, _ = _stale_bit("linux-6.12-x86_64")
    assert old.mm("mm2").mm_cpumask == {2}


def test_x86_cpumask_trim_skips_a_lazy_cpu_with_a_stale_bit() -> None:
    """should_flush_tlb() tests is_lazy first: a CPU lazy on another mm keeps its stale bit
    through a trim (and CPU 0, which never ran mm2, is not in its mask at all)."""
    m, ev = _stale_bit("linux-6.17-x86_64")
    m.schedule(1, "swapper/1")  # CPU 1 lazy on mm3, its bit in mm2's mask stale
    ev.seen.clear()
    m.flush_tlb_mm_range(2, "mm2", trim=True)
    assert ev.take(FlushIpi) == [] and m.mm("mm2").mm_cpumask == {1, 2}
    assert [s.to_cpu for s in ev.take(FlushSkippedLazy)] == [1]


def test_powerpc_trim_clock_moves_lazy_users_to_init_mm() -> None:
    """radix flush_type_needed(): when the CPU's trim clock ticks over
    (tick_and_test_trim_clock(), every 1073rd flush), exit_flush_lazy_tlbs() IPIs the rest
    of the mask: a kernel thread lazily on the mm there is moved to init_mm (its active_mm
    changes, unlike x86) and the CPU leaves the mask; without the trim a multi-threaded
    process's flush is a broadcast tlbie that leaves both alone."""
    m, ev = _stale_bit("linux-6.17-powerpc-radix")
    mm2 = m.mm("mm2")
    m.schedule(1, "app")
    m.schedule(1, "swapper/1")  # lazy on mm2
    ev.seen.clear()
    m.flush_tlb_mm_range(2, "mm2")
    assert ev.take(ShootdownIpi) == [] and m.task("swapper/1").active_mm is mm2
    m.flush_tlb_mm_range(2, "mm2", trim=True)
    assert [(s.to_cpu, s.was_lazy) for s in ev.take(ShootdownIpi)] == [(1, True)]
    assert m.task("swapper/1").active_mm is m.state.init_mm and mm2.mm_cpumask == {2}


def test_x86_cpumask_trim_goes_by_jiffies_once_a_second_per_mm() -> None:
    """should_trim_cpumask(): init_new_context() sets next_trim_cpumask = jiffies + HZ and a
    flush that takes the IPI path trims only once jiffies is past it (time_after, strict),
    moving it a second on. mm2 was born at jiffies 0: a flush at jiffies HZ leaves CPU 1's
    stale bit, one at HZ + 1 IPIs CPU 1 and clears it; with the bit stale again, a flush
    within the next second does not, and dup_mmap()'s flush of the parent's mm asks too
    (a fork at 2 HZ + 2 takes the trim due then: the next is due after 3 HZ + 2)."""
    m, ev = _stale_bit("linux-6.17-x86_64")
    hz = m.config.HZ
    mm2 = m.mm("mm2")

    def flush_at(jiffies: int) -> list[int]:
        m.tick_do_update_jiffies64(jiffies / hz)
        m.flush_tlb_mm_range(2, "mm2")
        return [i.to_cpu for i in ev.take(FlushIpi)]

    def stale_again() -> None:
        m.schedule(1, "app")
        m.schedule(1, "other")
        ev.seen.clear()
        assert mm2.mm_cpumask == {1, 2}

    assert flush_at(hz) == [] and mm2.mm_cpumask == {1, 2}
    assert flush_at(hz + 1) == [1] and mm2.mm_cpumask == {2}
    stale_again()
    assert flush_at(2 * hz) == [] and flush_at(2 * hz + 1) == []
    m.tick_do_update_jiffies64((2 * hz + 2.5) / hz)
    m.fork("t", name="child")  # dup_mmap(): flush_tlb_mm(mm2), its trim due
    stale_again()
    assert flush_at(2 * hz + 3) == []
    assert flush_at(3 * hz + 2) == [] and flush_at(3 * hz + 3) == [1]
    m.tick_do_update_jiffies64(0.0)  # jiffies never go back
    assert m.state.jiffies == 3 * hz + 3


def test_x86_an_adopted_mm_is_due_for_its_trim_at_once() -> None:
    """An mm found when observation began (a trace replay) was born long ago: its first
    flush with another CPU in the mask trims, whatever the time."""
    m, ev = watched("linux-6.17-x86_64", cpus=2)
    m.tick_do_update_jiffies64(1.0)
    a = m.adopt("a", kernel_thread=False)
    b = m.adopt("b", kernel_thread=False)
    assert a.mm is not None
    m.schedule(0, a)
    m.schedule(0, b)  # CPU 0's bit in a's mm stale
    m.schedule(1, a)
    ev.seen.clear()
    m.flush_tlb_mm_range(1, a.mm)
    assert [i.to_cpu for i in ev.take(FlushIpi)] == [0] and a.mm.mm_cpumask == {1}


def test_powerpc_trim_clock_ticks_over_at_the_1073rd_flush_of_a_cpu() -> None:
    """tick_and_test_trim_clock(): the CPU's mm_cpumask_trim_clock counts its flushes (every
    mm's) and says yes at the 1073rd, then starts again; a flush whose `trim` the caller
    gives (the checker) leaves the clock alone."""
    m, ev = _stale_bit("linux-6.17-powerpc-radix")
    mm2 = m.mm("mm2")
    m.schedule(1, "app")
    m.schedule(1, "swapper/1")  # lazy on mm2
    ev.seen.clear()
    for _ in range(10):
        m.flush_tlb_mm_range(2, "mm2", trim=False)
    assert m.state.rqs[2].tlb.trim_clock == 0
    for _ in range(TLB_MM_CPUMASK_TRIM_TIMER - 1):
        m.flush_tlb_mm_range(2, "mm2")
    assert ev.take(ShootdownIpi) == [] and m.task("swapper/1").active_mm is mm2
    m.flush_tlb_mm_range(2, "mm2")
    assert [s.to_cpu for s in ev.take(ShootdownIpi)] == [1] and mm2.mm_cpumask == {2}
    assert m.state.rqs[2].tlb.trim_clock == 0


def test_invlpgb_needs_x86_and_6_15() -> None:
    for kw in ({"arch": "generic"}, {"version": (6, 12)}):
        with pytest.raises(ConfigError, match=r"6\.15"):
            replace(PRESETS["linux-6.17-x86_64-invlpgb"], **kw)  # type: ignore[arg-type]


def test_alpha_enter_lazy_tlb_writes_the_incoming_threads_pcb() -> None:
    m, ev = watched("alpha")
    with_user(m)
    m.schedule(1, "kthreadd")
    m.fork("kthreadd", kind="kthread", name="kw")
    m.schedule(0, "app")
    app_mm = m.task("app").mm
    ev.seen.clear()
    m.schedule(0, "kw")
    # enter_lazy_tlb(mm2, kw) sets kw's PCB ptbr before PAL_swpctx loads it.
    lazy = ev.take(LazyEntered)
    assert lazy[0].task.comm == "kw" and m.task("kw").pcb.ptbr is app_mm
    assert m.rq(0).tlb.loaded_mm is app_mm  # swpctx loaded kw's PCB: still mm2's tables


def test_alpha_asn_rollover_flushes_and_starts_a_new_version() -> None:
    # MAX_ASN = 3: ASNs 1, 2, 3 on CPU 0 (last_asn starts at ASN_FIRST_VERSION = 256), then
    # __get_new_mm_context wraps: tbiap(), next = 256 + 256 = 512, version 2. A fork takes one
    # too: dup_mmap() ends with flush_tlb_mm(oldmm), and alpha's flush_tlb_mm() of the mm the
    # CPU runs on is flush_tlb_current(): a new context for the parent.
    cfg = replace(PRESETS["alpha"], alpha_max_asn=3)
    m = machine(cfg)
    ev = Events()
    m.add_observer(ev)
    m.schedule(0, "init")
    m.exec("init")  # ASN 1
    m.fork("init", name="p0")  # init: ASN 2
    m.fork("init", name="p1")  # init: ASN 3
    assert ev.take(AsnRollover) == []
    m.fork("init", name="p2")  # init: wraps, a new version
    roll = ev.take(AsnRollover)
    assert len(roll) == 1 and roll[0].version == 2
    loads = ev.take(PcbLoaded)
    assert loads[-1].task.comm == "init"
    m.schedule(0, "p2")  # the child's first ASN of version 2
    assert ev.take(AsnRollover) == []
    assert ev.take(PcbLoaded)[-1].task.comm == "p2"


def test_powerpc_radix_exit_flush_shoots_lazy_users_before_mmdrop() -> None:
    m, ev = watched("linux-6.17-powerpc-radix")
    with_user(m)
    lazy_kworker(m)  # CPU 0 lazy on mm2, uncounted
    m.schedule(1, "app")
    ev.seen.clear()
    m.exit("app")
    ipis = ev.take(ShootdownIpi)
    # exit_mmap -> exit_flush_lazy_tlbs IPIs CPU 0 (the only other CPU in the mask, lazy);
    # then __mmdrop -> cleanup_lazy_tlbs finds only CPU 1 (the exiting CPU) in the mask.
    assert [(i.to_cpu, i.was_lazy, i.source) for i in ipis] == [
        (0, True, "exit_flush_lazy_tlbs"),
        (1, True, "cleanup_lazy_tlbs"),
    ]
    assert m.task("kw").active_mm is m.state.init_mm


def test_generic_shootdown_ipis_whole_mask_at_mmdrop() -> None:
    m, ev = watched("linux-6.17-shootdown")
    with_user(m)
    lazy_kworker(m)
    m.schedule(1, "app")
    ev.seen.clear()
    m.exit("app")
    assert [(i.to_cpu, i.source) for i in ev.take(ShootdownIpi)] == [
        (0, "cleanup_lazy_tlbs"),
        (1, "cleanup_lazy_tlbs"),
    ]


def test_powerpc_cpu_disable_clears_masks_after_force_init_mm() -> None:
    m = machine("linux-6.17-powerpc-radix")
    with_user(m)
    m.schedule(1, "app")
    m.schedule(1, "swapper/1")
    mm2 = m.task("app").mm
    assert mm2 is not None and 1 in mm2.mm_cpumask
    m.cpu_down(1)
    assert 1 not in mm2.mm_cpumask
    assert m.rq(1).idle.active_mm is None


def test_alpha_kthread_use_mm_keeps_the_old_page_tables() -> None:
    """A model prediction read off arch/alpha/include/asm/mmu_context.h, not tested on
    hardware: kthread_use_mm() -> switch_mm() = ev5_switch_mm() writes only the PCB ASN, never
    the PCB ptbr, and no swpctx follows. The kernel thread keeps running on the page tables it
    borrowed before; moved to another CPU, swpctx loads that stale ptbr from its PCB; when the
    old mm is freed, that CPU runs on freed page tables."""

    from activemm import Violation

    m = machine("alpha")
    m.schedule(0, "init")
    m.exec("init")  # mm1
    m.fork("init", name="app")  # mm2
    m.schedule(1, "kthreadd")
    m.fork("kthreadd", kind="kthread", name="kw")
    m.schedule(0, "kw")  # kw borrows mm1: enter_lazy_tlb writes kw's PCB ptbr = mm1
    m.kthread_use_mm("kw", "mm2")  # ASN written, ptbr not: the CPU stays on mm1
    kw = m.task("kw")
    assert kw.mm is not None and kw.mm.name == "mm2" and kw.pcb.ptbr is not None
    assert kw.pcb.ptbr.name == "mm1" and m.rq(0).tlb.loaded_mm.name == "mm1"
    m.schedule(0, "swapper/0")
    m.schedule(1, "kw")  # swpctx on CPU 1 loads kw's PCB: mm1's page tables
    assert m.rq(1).tlb.loaded_mm.name == "mm1"
    m.schedule(0, "init")
    with pytest.raises(Violation, match="page tables of freed mm1"):
        m.exec("init")  # mm1's last user and last reference go: freed under CPU 1


@pytest.mark.parametrize(("name", "passes"), [("linux-6.1-x86_64", True),
                                              ("linux-6.12-x86_64", False),
                                              ("linux-6.17-x86_64", True)])  # fmt: skip
def test_x86_exec_activate_mm_prev_argument(name: str, passes: bool) -> None:
    """Seen by kprobes on Debian's kernels: exec's switch_mm_irqs_off() gets the old
    active_mm as `prev` on 6.1, NULL on 6.12 (through switch_mm(), which passes NULL since
    6.9) and the old active_mm again on 6.17 (6.16 calls switch_mm_irqs_off() directly)
    (tests/data/captures)."""
    m = machine(name)
    old = with_user(m)
    hooks = Events()
    m.add_observer(hooks)
    m.schedule(1, "app")
    m.exec("app")
    activate = [e for e in hooks.of(MmSwitched) if e.via == "activate_mm"]
    assert len(activate) == 1
    assert activate[0].prev is (old if passes else None)
    assert activate[0].next is m.task("app").mm


def test_x86_text_poke_leaves_lazy_mode_and_comes_back_to_what_was_loaded() -> None:
    """arch/x86/kernel/alternative.c: __text_poke(): use_temporary_mm() calls leave_mm() on a
    lazy CPU, loads poking_mm, and unuse_temporary_mm() goes back to the mm loaded before and
    clears the CPU in poking_mm's mask. active_mm and every reference stay as they were."""
    m, ev = watched("linux-6.1-x86_64")
    mm2 = with_user(m)
    lazy_kworker(m)  # CPU 0 runs kw, lazy on mm2
    counts = (mm2.mm_users, mm2.mm_count)
    ev.seen.clear()
    m.text_poke(0)
    (holder,) = [h for h in m.state.holders if h.name == "poking_mm"]
    poking, kw = holder.mm, m.task("kw")
    switched = [(s.next, s.prev, s.task, s.via) for s in ev.take(MmSwitched)]
    assert switched == [
        (m.state.init_mm, None, None, "leave_mm"),
        (poking, None, kw, "use_temporary_mm"),
        (m.state.init_mm, None, kw, "unuse_temporary_mm"),
    ]
    tlb = m.rq(0).tlb
    assert tlb.loaded_mm is m.state.init_mm and not tlb.is_lazy
    assert kw.active_mm is mm2 and (mm2.mm_users, mm2.mm_count) == counts
    assert (poking.mm_users, poking.mm_count, poking.mm_cpumask) == (1, 1, set())
    # a CPU running a user task goes back to that task's mm; the same poking_mm is reused
    m.schedule(1, "app")
    m.text_poke(1)
    back = [(s.next, s.via) for s in ev.take(MmSwitched)]
    assert back == [(mm2, "switch_mm_irqs_off"), (poking, "use_temporary_mm"),
                    (mm2, "unuse_temporary_mm")]  # fmt: skip
    assert m.rq(1).tlb.loaded_mm is mm2 and 1 in mm2.mm_cpumask
    assert [h.name for h in m.state.holders] == ["poking_mm"]


@pytest.mark.parametrize("name, passes", [("linux-6.1-x86_64", True),
                                          ("linux-6.12-x86_64", False)])  # fmt: skip
def test_x86_efi_call_before_6_15_swaps_active_mm_and_ends_lazy_mode(
    name: str, passes: bool
) -> None:
    """arch/x86/platform/efi/efi_64.c before 6.15: efi_enter_mm() sets current->active_mm to
    efi_mm and switch_mm(efi_prev_mm, &efi_mm, NULL)s, with no leave_mm() first;
    efi_leave_mm() restores active_mm and switches back. No reference is taken. A kworker
    lazy on mm2 comes back to mm2 out of lazy mode: a flush of mm2 then IPIs that CPU and
    flushes it (it no longer skips it as lazy), and nothing moves it to init_mm. switch_mm()
    hands switch_mm_irqs_off() its `prev` on 6.1, NULL on 6.12 (as activate_mm(): seen by
    kprobes on Debian's kernels)."""
    m, ev = watched(name)
    mm2 = with_user(m)
    lazy_kworker(m)  # CPU 0 runs kw, lazy on mm2
    counts = (mm2.mm_users, mm2.mm_count)
    ev.seen.clear()
    m.efi_call(0)
    (holder,) = [h for h in m.state.holders if h.name == "efi_mm"]
    efi, kw = holder.mm, m.task("kw")
    switched = [(s.prev, s.next, s.task, s.via) for s in ev.take(MmSwitched)]
    before = (mm2, efi) if passes else (None, None)
    assert switched == [
        (before[0], efi, None, "efi_enter_mm"),
        (before[1], mm2, None, "efi_leave_mm"),
    ]
    tlb = m.rq(0).tlb
    assert tlb.loaded_mm is mm2 and not tlb.is_lazy and 0 in mm2.mm_cpumask
    assert kw.active_mm is mm2 and (mm2.mm_users, mm2.mm_count) == counts
    assert (efi.mm_users, efi.mm_count, efi.mm_cpumask) == (1, 1, set())
    m.schedule(1, "app")
    ev.seen.clear()
    m.flush_tlb_mm_range(1, "mm2")
    assert [e.to_cpu for e in ev.take(FlushIpi)] == [0]
    assert ev.take(FlushSkippedLazy) == [] and ev.take(LeftMm) == []
    assert m.rq(0).tlb.loaded_mm is mm2
    # the same efi_mm serves every call
    m.efi_call(1)
    assert [s.next for s in ev.take(MmSwitched)] == [efi, mm2]
    assert [h.name for h in m.state.holders] == ["efi_mm"]


def test_x86_efi_call_since_6_15_is_a_temporary_mm() -> None:
    """6.15+ ("x86/efi: Make efi_enter/leave_mm() use the use_/unuse_temporary_mm()
    machinery"): leave_mm() first on a lazy CPU, efi_mm and back to what was loaded;
    active_mm untouched."""
    m, ev = watched("linux-6.17-x86_64")
    mm2 = with_user(m)
    lazy_kworker(m)
    ev.seen.clear()
    m.efi_call(0)
    (holder,) = [h for h in m.state.holders if h.name == "efi_mm"]
    kw = m.task("kw")
    switched = [(s.next, s.task, s.via) for s in ev.take(MmSwitched)]
    assert switched == [
        (m.state.init_mm, None, "leave_mm"),
        (holder.mm, kw, "use_temporary_mm"),
        (m.state.init_mm, kw, "unuse_temporary_mm"),
    ]
    assert kw.active_mm is mm2 and m.rq(0).tlb.loaded_mm is m.state.init_mm


def test_text_poke_switches_no_mm_outside_x86() -> None:
    m, ev = watched("linux-6.17-powerpc-radix")
    with_user(m)
    ev.seen.clear()
    m.text_poke(0)
    m.efi_call(0)
    assert ev.take(MmSwitched) == [] and m.state.holders == []
