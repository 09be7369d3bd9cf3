"""alpha (arch/alpha/include/asm/mmu_context.h): "the alpha PALcode joins the two".

The context switch is one PALcode call, swpctx, that loads the next thread's PCB: kernel and
user stack pointers, *page-table base (ptbr) and ASN* together. So the MMU context is part of
the thread's register context, and must be right in the PCB before switch_to():
enter_lazy_tlb() writes the borrowed mm's ptbr into the incoming kernel thread's PCB (that is
why the scheduler passes `next` to it), and switch_mm() only writes the PCB's ASN.
The hardware state (`loaded_mm`) is whatever PCB swpctx last loaded. A consequence, read off
the code (arch/alpha/include/asm/mmu_context.h, not tested on hardware): kthread_use_mm() calls
switch_mm(), which writes only the PCB ASN, so the CPU keeps the previous page tables until the
next swpctx. ASNs are per CPU with a
version; when a CPU runs out of ASNs it flushes its TLB (tbiap) and starts a new version.
alpha keeps no mm_cpumask: flush_tlb_mm() IPIs every CPU.
"""

from __future__ import annotations

from activemm.model.arch import generic
from activemm.model.cpu import secondary_init_mm_ref
from activemm.model.events import AsnRollover, LazyEntered, MmSwitched, PcbLoaded
from activemm.model.kernel import Kernel
from activemm.model.state import Mm, Rq, Task

destroy_context = generic.destroy_context
leave_mm = generic.leave_mm
flush_smp_call_function_queue = generic.flush_smp_call_function_queue
poking_init = generic.poking_init
text_poke = generic.text_poke
efi_mm_init = generic.efi_mm_init
efi_call = generic.efi_call
cpu_disable = generic.cpu_disable
adopt_mm = generic.adopt_mm


WIDTH_HARDWARE_ASN = 8
ASN_FIRST_VERSION = 1 << WIDTH_HARDWARE_ASN
HARDWARE_ASN_MASK = ASN_FIRST_VERSION - 1


def asn_layout(k: Kernel) -> tuple[int, int]:
    """(HARDWARE_ASN_MASK, ASN_FIRST_VERSION): the version lives above the low 8 bits,
    whatever MAX_ASN (EV5: 127, EV6: 255) the CPU has."""
    return HARDWARE_ASN_MASK, ASN_FIRST_VERSION


def cpu_init(k: Kernel, rq: Rq) -> None:
    """arch/alpha/kernel/smp.c: smp_callin(): mmgrab(&init_mm); current->active_mm = &init_mm
    ("All kernel threads share the same mm context"); the CPU's ASN starts a first version."""
    secondary_init_mm_ref(k, rq, plain_mmgrab=True)
    rq.tlb.last_asn = asn_layout(k)[1]
    rq.tlb.loaded_mm = k.state.init_mm
    rq.idle.pcb.ptbr = k.state.init_mm


def init_new_context(k: Kernel, mm: Mm, tsk: Task | None) -> None:
    """mmu_context.h: init_new_context(): zero the mm's context on every CPU and, if the mm is
    for another task (fork), set that task's PCB ptbr to the new page tables."""
    mm.context.asn = {rq.cpu: 0 for rq in k.state.rqs}
    if tsk is not None:
        tsk.pcb.ptbr = mm


def __get_new_mm_context(k: Kernel, mm: Mm, cpu: int) -> int:
    """mmu_context.h: __get_new_mm_context(): next ASN on this CPU; on running out, tbiap()
    flushes the whole TLB and a new version starts."""
    mask, first_version = asn_layout(k)
    tlb = k.state.rqs[cpu].tlb
    asn = tlb.last_asn
    nxt = asn + 1
    if (asn & mask) >= k.config.alpha_max_asn:
        nxt = (asn & ~mask) + first_version
        k.emit(AsnRollover(cpu, nxt // first_version))
    tlb.last_asn = nxt
    return nxt


def enter_lazy_tlb(k: Kernel, mm: Mm, tsk: Task) -> None:
    """mmu_context.h: enter_lazy_tlb(): task_thread_info(next)->pcb.ptbr = pfn(mm->pgd), so
    the coming swpctx keeps the borrowed page tables. The ASN is not set."""
    k.touch(mm, "enter_lazy_tlb")
    k.emit(LazyEntered(k.cpu, mm, tsk))
    tsk.pcb.ptbr = mm


def switch_mm_irqs_off(k: Kernel, prev: Mm | None, next: Mm, tsk: Task | None, via: str) -> None:
    """mmu_context.h: ev5_switch_mm(): take a new ASN if next's context on this CPU is of an
    old version, else note need_new_asn; always write next's PCB ASN. No hardware change:
    that happens in the following swpctx."""
    k.touch(next, via)
    k.emit(MmSwitched(k.cpu, prev, next, tsk, via))
    cpu = k.cpu
    mask, _ = asn_layout(k)
    tlb = k.state.rqs[cpu].tlb
    mmc = next.context.asn.get(cpu, 0)
    if (mmc ^ tlb.last_asn) & ~mask:
        mmc = __get_new_mm_context(k, next, cpu)
        next.context.asn[cpu] = mmc
    else:
        tlb.need_new_asn = True
    if tsk is not None:
        tsk.pcb.asn = mmc & mask


def __load_new_mm_context(k: Kernel, next: Mm, current: Task) -> None:
    """mmu_context.h: __load_new_mm_context(): a new ASN, current's PCB gets ASN and ptbr,
    and __reload_thread() runs swpctx on current's own PCB."""
    mask, _ = asn_layout(k)
    mmc = __get_new_mm_context(k, next, k.cpu)
    next.context.asn[k.cpu] = mmc
    current.pcb.asn = mmc & mask
    current.pcb.ptbr = next
    swpctx(k, current)


def activate_mm(k: Kernel, prev: Mm | None, next: Mm) -> None:
    """mmu_context.h: ev5_activate_mm() (exec) = __load_new_mm_context(next): exec has no
    following switch_to(), so the PCB is reloaded right here."""
    k.touch(next, "activate_mm")
    current = k.state.rqs[k.cpu].curr
    k.emit(MmSwitched(k.cpu, prev, next, None, "activate_mm"))
    __load_new_mm_context(k, next, current)


def swpctx(k: Kernel, tsk: Task) -> None:
    """PAL_swpctx: load tsk's PCB: the hardware now runs on pcb.ptbr with pcb.asn."""
    k.state.rqs[k.cpu].tlb.loaded_mm = tsk.pcb.ptbr or k.state.init_mm
    k.emit(PcbLoaded(k.cpu, tsk, tsk.pcb.ptbr, tsk.pcb.asn))


def switch_to(k: Kernel, prev: Task, next: Task) -> None:
    """arch/alpha/include/asm/switch_to.h: alpha_switch_to() = PAL_swpctx to next's PCB,
    then check_mmu_context(): if need_new_asn and the mm's context here was zeroed by a
    remote flush_tlb_mm meanwhile, load a fresh one."""
    swpctx(k, next)
    tlb = k.state.rqs[k.cpu].tlb
    if tlb.need_new_asn:
        tlb.need_new_asn = False
        mm = next.active_mm
        if mm is not None and not mm.context.asn.get(k.cpu, 0):
            __load_new_mm_context(k, mm, next)


def flush_tlb_mm_range(k: Kernel, mm: Mm, freed_tables: bool, trim: bool | None = None) -> None:
    """arch/alpha/kernel/smp.c: flush_tlb_mm(): if this CPU runs on mm it takes a new context
    (flush_tlb_current). If it is the only user, the other CPUs' contexts are just zeroed;
    otherwise an IPI makes each CPU running on mm take a new context (ipi_flush_tlb_mm) and
    the rest zero theirs (flush_tlb_other), so they take a new ASN at their next switch.
    (alpha has no mm_cpumask trim: `trim` changes nothing.)"""
    mm.context.tlb_gen += 1
    sender = k.cpu
    current = k.state.rqs[sender].curr
    if current.active_mm is mm:
        __load_new_mm_context(k, mm, current)
        if mm.mm_users <= 1:
            for rq in k.state.rqs:
                if rq.online and rq.cpu != sender:
                    mm.context.asn[rq.cpu] = 0
            return
    for rq in k.state.rqs:
        if not rq.online or rq.cpu == sender:
            continue
        if rq.curr.active_mm is mm:
            k.cpu = rq.cpu
            __load_new_mm_context(k, mm, rq.curr)
            k.cpu = sender
        else:
            mm.context.asn[rq.cpu] = 0
    if current.active_mm is not mm:
        mm.context.asn[sender] = 0


def exit_mmap(k: Kernel, mm: Mm) -> None:
    """mm/mmap.c: exit_mmap(): alpha keeps lazy users on the mm; ASNs make the flush cheap."""


def adopt_loaded_mm(k: Kernel, mm: Mm, tsk: Task) -> None:
    """Not a kernel function: the CPU was found lazily borrowing `mm` (trace replay): the
    PCB it last loaded with swpctx holds mm's page tables (enter_lazy_tlb set its ptbr)."""
    tsk.pcb.ptbr = mm
    k.state.rqs[k.cpu].tlb.loaded_mm = mm
