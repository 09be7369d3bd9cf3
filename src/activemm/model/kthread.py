"""kernel/kthread.c: a kernel thread temporarily adopting a user address space."""

from __future__ import annotations

from activemm.model import mm as mmh
from activemm.model.events import KthreadUnuseMm, KthreadUseMm
from activemm.model.kernel import Kernel
from activemm.model.state import Mm, Task


def kthread_use_mm(k: Kernel, tsk: Task, mm: Mm) -> None:
    """kernel/kthread.c: kthread_use_mm().

    6.4+: always mmgrab(mm) ("we must still mmgrab(mm) and mmdrop_lazy_tlb(active_mm),
    because these references are not equivalent"), install mm, switch_mm_irqs_off(), then
    mmdrop_lazy_tlb() the previously borrowed mm, which may be a zombie's final drop.
    Before 6.4: grab and drop only when the mm changes (plain mmgrab/mmdrop)."""
    active_mm = tsk.active_mm
    assert active_mm is not None
    old_rules = not k.config.lazy_tlb_helpers
    changes = active_mm is not mm
    if (changes or not old_rules) and not k.bug("use-no-grab"):
        mmh.mmgrab(k, mm)
    tsk.active_mm = mm
    tsk.mm = mm
    tsk.uses_mm = True
    k.arch.switch_mm_irqs_off(k, active_mm, mm, tsk, "switch_mm_irqs_off")
    k.emit(KthreadUseMm(k.cpu, tsk, mm))
    if old_rules:
        if changes:
            mmh.mmdrop(k, active_mm, "kthread_use_mm")
    else:
        mmh.mmdrop_lazy_tlb(k, active_mm, "kthread_use_mm")


def kthread_unuse_mm(k: Kernel, tsk: Task) -> None:
    """kernel/kthread.c: kthread_unuse_mm().

    6.4+: mm = NULL, mmgrab_lazy_tlb(mm), enter_lazy_tlb(mm) ("active_mm is still 'mm'"),
    then mmdrop(mm) of the use reference: under REFCOUNT the use ref becomes the lazy ref.
    Before 6.4 the use reference simply became the lazy reference."""
    mm = tsk.mm
    assert mm is not None
    tsk.mm = None
    tsk.uses_mm = False
    k.emit(KthreadUnuseMm(k.cpu, tsk, mm))
    if not k.config.lazy_tlb_helpers and k.config.lazy_tlb:
        mmh.enter_kernel_context(k, mm, tsk)
        return
    if not k.bug("unuse-no-lazy-grab"):
        mmh.mmgrab_lazy_tlb(k, mmh.lazy_mm_for(k, mm))
    tsk.active_mm = mmh.enter_kernel_context(k, mm, tsk)
    mmh.mmdrop(k, mm, "kthread_unuse_mm")
