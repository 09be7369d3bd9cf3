"""An arch-neutral MMU: the hardware runs on whatever switch_mm() last loaded.

It keeps `loaded_mm` and a never-trimmed `mm_cpumask`, the minimum MMU_LAZY_TLB_SHOOTDOWN
needs (every CPU that may be lazy on an mm is in its mask). Other arches reuse these
functions for the parts they do not change.
"""

from __future__ import annotations

from activemm.model.cpu import secondary_init_mm_ref
from activemm.model.events import LazyEntered, MmSwitched
from activemm.model.kernel import Kernel
from activemm.model.state import Mm, Rq, Task


def cpu_init(k: Kernel, rq: Rq) -> None:
    """start_secondary()/cpu_init(): mmgrab_lazy_tlb(&init_mm), active_mm = &init_mm."""
    secondary_init_mm_ref(k, rq, plain_mmgrab=False)
    rq.tlb.loaded_mm = k.state.init_mm
    enter_lazy_tlb(k, k.state.init_mm, rq.idle)


def init_new_context(k: Kernel, mm: Mm, tsk: Task | None) -> None:
    """include/asm-generic/mmu_context.h: init_new_context(): nothing to set up."""


def destroy_context(k: Kernel, mm: Mm) -> None:
    """include/asm-generic/mmu_context.h: destroy_context(): nothing to free."""


def enter_lazy_tlb(k: Kernel, mm: Mm, tsk: Task) -> None:
    """include/asm-generic/mmu_context.h: enter_lazy_tlb(): a hint; nothing to do."""
    k.touch(mm, "enter_lazy_tlb")
    k.emit(LazyEntered(k.cpu, mm, tsk))


def switch_mm_irqs_off(k: Kernel, prev: Mm | None, next: Mm, tsk: Task | None, via: str) -> None:
    """switch_mm_irqs_off(): load next's page tables and mark this CPU in mm_cpumask(next)."""
    k.touch(next, via)
    k.emit(MmSwitched(k.cpu, prev, next, tsk, via))
    if not next.is_init_mm:
        next.mm_cpumask.add(k.cpu)
    k.state.rqs[k.cpu].tlb.loaded_mm = next


def activate_mm(k: Kernel, prev: Mm | None, next: Mm) -> None:
    """include/asm-generic/mmu_context.h: activate_mm(): switch_mm(prev, next, current)."""
    switch_mm_irqs_off(k, prev, next, None, "activate_mm")


def switch_to(k: Kernel, prev: Task, next: Task) -> None:
    """switch_to(): registers and stack; the MMU is not involved."""


def exit_mmap(k: Kernel, mm: Mm) -> None:
    """mm/mmap.c: exit_mmap(): the final flush of a torn-down mm. Generic: no TLB modelled."""


def flush_tlb_mm_range(k: Kernel, mm: Mm, freed_tables: bool, trim: bool | None = None) -> None:
    """flush_tlb_mm_range(): generic: a new TLB generation, nothing else modelled (no
    mm_cpumask trim: `trim` changes nothing)."""
    mm.context.tlb_gen += 1


def flush_smp_call_function_queue(k: Kernel, rq: Rq) -> None:
    """kernel/smp.c: flush_smp_call_function_queue(): the IPIs that waited while the CPU
    had interrupts off. Only x86's flush IPIs wait (they are what real traces check); the
    other architectures run theirs at once, so none is ever queued."""
    rq.call_single_queue.clear()


def leave_mm(k: Kernel) -> None:
    """leave_mm(): only x86 has it; generic CPUs never drop a lazy mm on their own."""


def cpu_disable(k: Kernel, cpu: int) -> None:
    """__cpu_disable(): generic: mm_cpumask bits stay."""


def adopt_loaded_mm(k: Kernel, mm: Mm, tsk: Task) -> None:
    """Not a kernel function: the CPU was found lazily borrowing `mm` (trace replay); its
    MMU state is what the switch_mm_irqs_off() that loaded it left: loaded, in the mask."""
    if not mm.is_init_mm:
        mm.mm_cpumask.add(k.cpu)
    k.state.rqs[k.cpu].tlb.loaded_mm = mm


def adopt_mm(k: Kernel, mm: Mm) -> None:
    """Not a kernel function: `mm` was made long before observation began (trace replay).
    Nothing of the generic MMU state depends on its age."""


def poking_init(k: Kernel) -> Mm | None:
    """poking_init(): only x86 patches kernel text through a temporary mm of its own."""
    return None


def text_poke(k: Kernel, poking_mm: Mm | None) -> None:
    """text_poke(): generic: the write goes through a kernel alias of the page (a fixmap);
    no mm is switched. (powerpc 6.2+ on radix uses a temporary mm too: not modelled.)"""


def efi_mm_init(k: Kernel) -> Mm | None:
    """efi_mm: only the x86 EFI runtime calls are modelled switching to an mm of their own
    (arm64's efi_virtmap_load() does too: not modelled)."""
    return None


def efi_call(k: Kernel, efi_mm: Mm | None) -> None:
    """An EFI runtime service call: no mm is switched in this model of the architecture."""
