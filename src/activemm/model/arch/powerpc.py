"""powerpc Book3S-64 (arch/powerpc/mm/book3s64/radix_tlb.c): MMU_LAZY_TLB_SHOOTDOWN.

Lazy users hold no mm_count reference. mm_cpumask bits are set when a CPU first runs an mm and
are never cleared on switch-away, so the mask covers every CPU that may be lazy on the mm.
With the radix MMU, exit_mmap()'s final flush already IPIs the other CPUs in the mask and moves
their lazy users to init_mm (exit_flush_lazy_tlbs, "combine final TLB flush and lazy tlb mm
shootdown IPIs"), so cleanup_lazy_tlbs() at __mmdrop() usually finds only the exiting CPU.
"""

from __future__ import annotations

from activemm.model import mm as mmh
from activemm.model.arch import generic
from activemm.model.cpu import secondary_init_mm_ref
from activemm.model.events import ShootdownIpi
from activemm.model.kernel import Kernel
from activemm.model.state import Mm, Rq

init_new_context = generic.init_new_context
destroy_context = generic.destroy_context
enter_lazy_tlb = generic.enter_lazy_tlb
switch_mm_irqs_off = generic.switch_mm_irqs_off
activate_mm = generic.activate_mm
switch_to = generic.switch_to
leave_mm = generic.leave_mm
flush_smp_call_function_queue = generic.flush_smp_call_function_queue
poking_init = generic.poking_init
text_poke = generic.text_poke
efi_mm_init = generic.efi_mm_init
efi_call = generic.efi_call
adopt_loaded_mm = generic.adopt_loaded_mm
adopt_mm = generic.adopt_mm


def cpu_init(k: Kernel, rq: Rq) -> None:
    """arch/powerpc/kernel/smp.c: start_secondary(): mmgrab_lazy_tlb(&init_mm);
    current->active_mm = &init_mm."""
    secondary_init_mm_ref(k, rq, plain_mmgrab=False)
    rq.tlb.loaded_mm = k.state.init_mm


def exit_lazy_flush_tlb(k: Kernel, cpu: int, mm: Mm) -> None:
    """radix_tlb.c: exit_lazy_flush_tlb(), on `cpu`: a kernel thread lazily using mm is moved
    to init_mm (active_mm changes, unlike x86), then the CPU leaves mm_cpumask."""
    sender = k.cpu
    current = k.state.rqs[cpu].curr
    was_lazy = current.mm is not mm and current.active_mm is mm
    k.emit(ShootdownIpi(sender, cpu, mm, was_lazy, "exit_flush_lazy_tlbs"))
    if current.mm is mm:
        return  # a kthread_use_mm() user: just flush
    k.cpu = cpu
    if was_lazy:
        init_mm = k.state.init_mm
        mmh.mmgrab_lazy_tlb(k, init_mm)
        current.active_mm = init_mm
        switch_mm_irqs_off(k, mm, init_mm, current, "switch_mm_irqs_off")
        mmh.mmdrop_lazy_tlb(k, mm, "exit_lazy_flush_tlb")
    mm.mm_cpumask.discard(cpu)
    k.cpu = sender


def exit_flush_lazy_tlbs(k: Kernel, mm: Mm) -> None:
    """radix_tlb.c: exit_flush_lazy_tlbs(): smp_call_function_many(mm_cpumask(mm), ...),
    every CPU in the mask but this one."""
    for cpu in sorted(mm.mm_cpumask):
        if cpu != k.cpu and k.state.rqs[cpu].online:
            exit_lazy_flush_tlb(k, cpu, mm)


def exit_mmap(k: Kernel, mm: Mm) -> None:
    """radix__tlb_flush() for fullmm with MMU_LAZY_TLB_SHOOTDOWN (6.6+): shoot the lazy users
    now, as part of the final flush."""
    if k.config.radix and k.config.MMU_LAZY_TLB_SHOOTDOWN:
        exit_flush_lazy_tlbs(k, mm)


# arch/powerpc/mm/book3s64/radix_tlb.c: tlb_mm_cpumask_trim_timer, flushes of a CPU between
# two trims of the mm_cpumask of whatever mm it flushes then
TLB_MM_CPUMASK_TRIM_TIMER = 1073


def tick_and_test_trim_clock(k: Kernel, cpu: int, trim: bool | None) -> bool:
    """radix_tlb.c: tick_and_test_trim_clock(): the CPU's mm_cpumask_trim_clock counts its
    flushes and says yes at every 1073rd. `trim` True or False stands for its answer (the
    checker explores both and keeps no clock, which then does not tick); None asks it."""
    if trim is not None:
        return trim
    tlb = k.state.rqs[cpu].tlb
    tlb.trim_clock += 1
    if tlb.trim_clock == TLB_MM_CPUMASK_TRIM_TIMER:
        tlb.trim_clock = 0
        return True
    return False


def flush_tlb_mm_range(k: Kernel, mm: Mm, freed_tables: bool, trim: bool | None = None) -> None:
    """radix_tlb.c: flush_type_needed() (radix; a flush that is not the exit's fullmm one):
    broadcast tlbie needs no IPIs, but the mask is trimmed, moving lazy users to init_mm:
    always when the only thread of a single-threaded process flushes its own mm, and when
    the per-CPU trim clock ticks over (tick_and_test_trim_clock(), every 1073rd flush of a
    CPU; `trim`): every other CPU in the mask (exit_flush_lazy_tlbs), and this one unless
    it runs the mm; with this CPU alone in the mask, only it, when it does not run the mm
    (an asynchronous flush)."""
    mm.context.tlb_gen += 1
    if not k.config.radix or not mm.mm_cpumask:
        return
    cpu = k.cpu
    current = k.state.rqs[cpu].curr
    if mm.mm_cpumask == {cpu}:  # active_cpus == 1, this CPU: a local flush
        if current.mm is not mm and tick_and_test_trim_clock(k, cpu, trim):
            exit_lazy_flush_tlb(k, cpu, mm)
        return
    if mm.mm_users <= 1 and current.mm is mm:
        exit_flush_lazy_tlbs(k, mm)
    elif tick_and_test_trim_clock(k, cpu, trim):
        exit_flush_lazy_tlbs(k, mm)
        if current.mm is not mm and cpu in mm.mm_cpumask:
            exit_lazy_flush_tlb(k, cpu, mm)


def cpu_disable(k: Kernel, cpu: int) -> None:
    """arch/powerpc/kernel/smp.c: __cpu_disable() -> cleanup_cpu_mmu_context(): clear the
    CPU from every mm's mm_cpumask (safe since sched_force_init_mm() ran first)."""
    for mm in k.state.mms:
        if not mm.freed:
            mm.mm_cpumask.discard(cpu)
