"""arch/x86/mm/tlb.c: lazy TLB mode, ASIDs, tlb_gen and flush IPIs on x86-64.

The CPU's hardware state (`cpu_tlbstate.loaded_mm`) and the task's `active_mm` are different
things here: a lazy CPU hit by a flush IPI switches its hardware to init_mm while the kernel
thread's active_mm (and its lazy reference) stays. Kernel versions differ in how mm_cpumask is
kept: before 6.14 a CPU's bit is cleared when it switches away; since 6.14 ("x86/mm/tlb: Update
mm_cpumask lazily") it stays and is trimmed by the first flush that reaches a CPU no longer
running the mm.

Since 6.15, on CPUs with INVLPGB (AMD Zen 3+; `invlpgb` in the config), an mm running on more
than three CPUs at once gets a *global* ASID, the same on every CPU: its flushes are broadcast
by the hardware (INVLPGB, TLBSYNC) with no IPI, so a lazy CPU on it is never sent to init_mm,
and it switches back to it without a TLB generation check.
"""

from __future__ import annotations

from activemm.model.arch import generic
from activemm.model.cpu import secondary_init_mm_ref
from activemm.model.events import (
    BroadcastFlush,
    CpumaskTrimmed,
    Cr3Loaded,
    FlushIpi,
    FlushSkippedLazy,
    GlobalAsidAssigned,
    LazyEntered,
    LeftMm,
    MmSwitched,
    TlbFlushed,
)
from activemm.model.fork import mm_alloc
from activemm.model.kernel import Kernel
from activemm.model.state import (
    MAX_ASID_AVAILABLE,
    CpuTlbState,
    Mm,
    QueuedFlush,
    Rq,
    Task,
    TlbContext,
)

# the switches in and out of a temporary mm (text_poke, EFI since 6.15)
TEMPORARY_MM = ("use_temporary_mm", "unuse_temporary_mm")
INIT_MM_CTX_ID = 1  # INIT_MM_CONTEXT: .ctx_id = 1; last_mm_ctx_id starts there

switch_to = generic.switch_to


def lazy_cpumask(k: Kernel) -> bool:
    """Since 6.14 mm_cpumask bits are not cleared on switch-away (209954cbc7d0)."""
    return k.config.version >= (6, 14)


def initialize_tlbstate_and_flush(k: Kernel, tlb: CpuTlbState) -> None:
    """arch/x86/mm/tlb.c: initialize_tlbstate_and_flush(): CR3 = init_mm with ASID 0,
    next_asid = 1, ctxs[0] = init_mm's context, other slots cleared."""
    init_mm = k.state.init_mm
    tlb.loaded_mm = init_mm
    tlb.loaded_mm_asid = 0
    tlb.next_asid = 1
    tlb.is_lazy = False
    tlb.ctxs = [TlbContext() for _ in range(k.config.nr_dyn_asids)]
    tlb.ctxs[0] = TlbContext(init_mm.context.ctx_id, init_mm.context.tlb_gen)


def cpu_init(k: Kernel, rq: Rq) -> None:
    """arch/x86/kernel/cpu/common.c: cpu_init(): mmgrab(&init_mm); cur->active_mm = &init_mm;
    initialize_tlbstate_and_flush(); enter_lazy_tlb(&init_mm, cur)."""
    secondary_init_mm_ref(k, rq, plain_mmgrab=True)
    initialize_tlbstate_and_flush(k, rq.tlb)
    enter_lazy_tlb(k, k.state.init_mm, rq.idle)


def init_new_context(k: Kernel, mm: Mm, tsk: Task | None) -> None:
    """arch/x86/include/asm/mmu_context.h: init_new_context(): ctx_id from the global
    counter, tlb_gen = 0, next_trim_cpumask = jiffies + HZ (6.14+: no trim in the mm's first
    second); mm_init_global_asid(): no global ASID, not in transition."""
    k.state.next_ctx_id += 1
    mm.context.ctx_id = k.state.next_ctx_id
    mm.context.tlb_gen = 0
    mm.context.next_trim_cpumask = k.state.jiffies + k.config.HZ
    mm.context.global_asid = 0
    mm.context.asid_transition = False


def destroy_context(k: Kernel, mm: Mm) -> None:
    """arch/x86/include/asm/mmu_context.h: destroy_context() (from __mmdrop):
    mm_free_global_asid() (the LDT it also frees is not modelled)."""
    mm_free_global_asid(k, mm)


def enter_lazy_tlb(k: Kernel, mm: Mm, tsk: Task) -> None:
    """arch/x86/mm/tlb.c: enter_lazy_tlb(): if loaded_mm == &init_mm return; is_lazy = true.
    No CR3 write, no cpumask change."""
    k.touch(mm, "enter_lazy_tlb")
    k.emit(LazyEntered(k.cpu, mm, tsk))
    tlb = k.state.rqs[k.cpu].tlb
    tlb.unlazy_by = ""
    if tlb.loaded_mm.is_init_mm:
        return
    tlb.is_lazy = True


def choose_new_asid(k: Kernel, tlb: CpuTlbState, next: Mm, next_tlb_gen: int) -> tuple[int, bool]:
    """arch/x86/mm/tlb.c: choose_new_asid(): next's global ASID if it has one (broadcast
    flushes keep it current: no flush); else reuse the slot holding next's ctx_id (flush if
    it is behind next's tlb_gen), else take the next slot round robin and flush."""
    if global_asid := mm_global_asid(k, next):
        return global_asid, False
    for asid, ctx in enumerate(tlb.ctxs):
        if ctx.ctx_id == next.context.ctx_id:
            return asid, ctx.tlb_gen < next_tlb_gen
    new_asid = tlb.next_asid
    tlb.next_asid += 1
    if new_asid >= k.config.nr_dyn_asids:
        new_asid = 0
        tlb.next_asid = 1
    return new_asid, True


def switch_mm_irqs_off(k: Kernel, prev: Mm | None, next: Mm, tsk: Task | None, via: str) -> None:
    """arch/x86/mm/tlb.c: switch_mm_irqs_off(). It ignores its `prev` argument: the real
    previous mm is cpu_tlbstate.loaded_mm.

    prev == next: nothing, unless the mm is moving to a global ASID (reload with it), or the
    CPU comes back from lazy mode on a dynamic ASID and the mm's tlb_gen moved meanwhile ("TLB
    contents went out of date while we were in lazy mode"): reload with flush.
    prev != next: set this CPU in mm_cpumask(next) (before 6.14: clear it in prev's), pick an
    ASID (choose_new_asid), load CR3 with or without a flush."""
    k.touch(next, via)
    k.emit(MmSwitched(k.cpu, prev, next, tsk, via))
    cpu = k.cpu
    tlb = k.state.rqs[cpu].tlb
    real_prev = tlb.loaded_mm
    prev_asid = tlb.loaded_mm_asid
    was_lazy = tlb.is_lazy
    tlb.is_lazy = False
    if via not in TEMPORARY_MM:  # (a temporary mm comes back to the state it found)
        tlb.unlazy_by = ""
    next_tlb_gen = next.context.tlb_gen
    if real_prev is next:
        if mm_needs_global_asid(k, next, prev_asid):  # moving to its global ASID: reload
            new_asid, need_flush = choose_new_asid(k, tlb, next, next_tlb_gen)
        else:
            # "Broadcast TLB invalidation keeps this ASID up to date all the time."
            up_to_date = is_global_asid(k, prev_asid) or not was_lazy
            if up_to_date or k.bug("x86-no-tlb-gen-catchup"):
                return
            if tlb.ctxs[prev_asid].tlb_gen == next_tlb_gen:
                return
            new_asid, need_flush = prev_asid, True
    else:
        if not lazy_cpumask(k) and not real_prev.is_init_mm:
            real_prev.mm_cpumask.discard(cpu)
        if not next.is_init_mm:
            next.mm_cpumask.add(cpu)
        new_asid, need_flush = choose_new_asid(k, tlb, next, next_tlb_gen)
    if need_flush:
        tlb.ctxs[new_asid] = TlbContext(next.context.ctx_id, next_tlb_gen)
    k.emit(Cr3Loaded(cpu, next, new_asid, need_flush))
    tlb.loaded_mm = next
    tlb.loaded_mm_asid = new_asid


def activate_mm(k: Kernel, prev: Mm | None, next: Mm) -> None:
    """arch/x86/include/asm/mmu_context.h: activate_mm(): switch_mm_irqs_off(prev, next, NULL)
    (exec: no task argument; from 6.9 to 6.15 `prev` is NULL too, see
    activate_mm_passes_prev)."""
    switch_mm_irqs_off(
        k, prev if k.config.activate_mm_passes_prev else None, next, None, "activate_mm"
    )


def should_flush_tlb(k: Kernel, cpu: int, mm: Mm, trim: bool = False) -> bool:
    """arch/x86/mm/tlb.c: should_flush_tlb() (6.15+; before 6.14: tlb_is_not_lazy()):
    a lazy CPU is skipped (it catches up at its next switch_mm_irqs_off); a CPU running the
    mm is flushed; a stale cpumask bit only when the once-a-second trim is due (`trim`:
    info->trim_cpumask), which clears it in flush_tlb_func()."""
    tlb = k.state.rqs[cpu].tlb
    if tlb.is_lazy:
        return False
    if not lazy_cpumask(k):
        return True
    return tlb.loaded_mm is mm or trim


def flush_tlb_func(k: Kernel, cpu: int, mm: Mm, new_tlb_gen: int) -> None:
    """arch/x86/mm/tlb.c: flush_tlb_func(), on `cpu` (IPI handler or local call).

    A CPU on an mm moving to a global ASID reloads it (switch_mm_irqs_off(NULL, loaded_mm)),
    which clears is_lazy even on a lazy CPU: 6.17 tests for the transition before is_lazy
    (a fix that swaps them was posted in May 2025); a global ASID needs no flush here."""
    sender = k.cpu
    k.cpu = cpu
    try:
        tlb = k.state.rqs[cpu].tlb
        loaded = tlb.loaded_mm
        if mm is not loaded:
            if lazy_cpumask(k):
                mm.mm_cpumask.discard(cpu)  # trace TLB_REMOTE_WRONG_CPU
                k.emit(CpumaskTrimmed(cpu, mm))
            return
        if loaded.is_init_mm:
            return
        if mm_needs_global_asid(k, loaded, tlb.loaded_mm_asid):
            was_lazy = tlb.is_lazy
            switch_mm_irqs_off(k, None, loaded, None, "flush_tlb_func")
            if was_lazy:  # a kernel thread on a borrowed mm, no longer lazy (see above)
                tlb.unlazy_by = "flush_tlb_func"
        if is_global_asid(k, tlb.loaded_mm_asid):
            return
        if tlb.is_lazy:
            # "We're in lazy mode. We need to at least flush our paging-structure cache to
            # avoid speculatively reading garbage into our TLB. Just switch to init_mm."
            k.emit(LeftMm(cpu, loaded, "flush IPI while lazy"))
            switch_mm_irqs_off(k, None, k.state.init_mm, None, "flush_tlb_func")
            return
        ctx = tlb.ctxs[tlb.loaded_mm_asid]
        if new_tlb_gen <= ctx.tlb_gen:
            return
        tlb.ctxs[tlb.loaded_mm_asid] = TlbContext(ctx.ctx_id, mm.context.tlb_gen)
        k.emit(TlbFlushed(cpu, mm, mm.context.tlb_gen))
    finally:
        k.cpu = sender


def should_trim_cpumask(k: Kernel, mm: Mm) -> bool:
    """arch/x86/mm/tlb.c: should_trim_cpumask() (6.14+): once jiffies has passed the mm's
    next_trim_cpumask, move it a second on (jiffies + HZ) and trim at this flush."""
    if k.state.jiffies > mm.context.next_trim_cpumask:  # time_after(jiffies, next)
        mm.context.next_trim_cpumask = k.state.jiffies + k.config.HZ
        return True
    return False


def flush_tlb_mm_range(k: Kernel, mm: Mm, freed_tables: bool, trim: bool | None = None) -> None:
    """arch/x86/mm/tlb.c: flush_tlb_mm_range().

    Bump the mm's tlb_gen; an mm with a global ASID is flushed by broadcast
    (broadcast_tlb_flush); else if any other CPU is in mm_cpumask, flush_tlb_multi() on the
    mask with info->trim_cpumask = should_trim_cpumask() (6.14+), then
    consider_global_asid(); else flush locally if this CPU has the mm loaded. `trim` True or
    False stands for should_trim_cpumask()'s answer (the checker explores both, keeping no
    clock); None asks it, by the model's jiffies."""
    k.touch(mm, "flush_tlb_mm_range")
    cpu = k.cpu
    mm.context.tlb_gen += 1
    new_tlb_gen = mm.context.tlb_gen
    if mm_global_asid(k, mm):
        broadcast_tlb_flush(k, mm, new_tlb_gen)
    elif any(c != cpu for c in mm.mm_cpumask if k.state.rqs[c].online):
        trim_cpumask = lazy_cpumask(k) and (should_trim_cpumask(k, mm) if trim is None else trim)
        flush_tlb_multi(k, mm, new_tlb_gen, freed_tables, trim_cpumask)
        consider_global_asid(k, mm)
    elif k.state.rqs[cpu].tlb.loaded_mm is mm:
        flush_tlb_func(k, cpu, mm, new_tlb_gen)


def flush_tlb_multi(
    k: Kernel, mm: Mm, new_tlb_gen: int, freed_tables: bool, trim: bool = False
) -> None:
    """arch/x86/mm/tlb.c: native_flush_tlb_multi() on mm_cpumask(mm): every CPU when page
    tables were freed or the mm is in ASID transition, lazy ones included; otherwise only
    those should_flush_tlb() picks (with `trim`, stale bits too). An IPI to a CPU with
    interrupts off (inside __schedule()) waits on its call_single_queue; the sender's wait
    for it is not modelled (nothing it goes on to do depends on it here)."""
    cpu = k.cpu
    everyone = freed_tables or mm_in_asid_transition(k, mm)
    for c in sorted(mm.mm_cpumask):
        rq = k.state.rqs[c]
        if not rq.online:
            continue
        if everyone or should_flush_tlb(k, c, mm, trim):
            if c == cpu:
                flush_tlb_func(k, c, mm, new_tlb_gen)
                continue
            k.emit(FlushIpi(cpu, c, mm))
            if rq.irqs_disabled:  # inside __schedule(): handled at its finish_task_switch
                rq.call_single_queue.append(QueuedFlush(mm, new_tlb_gen))
            else:
                flush_tlb_func(k, c, mm, new_tlb_gen)
        elif rq.tlb.is_lazy:
            k.emit(FlushSkippedLazy(cpu, c, mm))


# -- INVLPGB global ASIDs (6.15+, CONFIG_BROADCAST_TLB_FLUSH, X86_FEATURE_INVLPGB) ----------


def is_global_asid(k: Kernel, asid: int) -> bool:
    """arch/x86/include/asm/tlbflush.h: is_global_asid(): not a dynamic (per-CPU) ASID."""
    return asid >= k.config.nr_dyn_asids


def mm_global_asid(k: Kernel, mm: Mm) -> int:
    """arch/x86/include/asm/tlbflush.h: mm_global_asid(): 0 without INVLPGB."""
    return mm.context.global_asid if k.config.invlpgb else 0


def mm_in_asid_transition(k: Kernel, mm: Mm) -> bool:
    """arch/x86/include/asm/tlbflush.h: mm_in_asid_transition()."""
    return k.config.invlpgb and mm.context.asid_transition


def mm_needs_global_asid(k: Kernel, mm: Mm, asid: int) -> bool:
    """arch/x86/mm/tlb.c: mm_needs_global_asid(): the mm has a global ASID and this CPU
    runs it on another one (it is transitioning)."""
    global_asid = mm_global_asid(k, mm)
    return bool(global_asid) and asid != global_asid


def reset_global_asid_space(k: Kernel) -> None:
    """arch/x86/mm/tlb.c: reset_global_asid_space(): after invlpgb_flush_all_nonglobals(),
    the freed global ASIDs may be reused; the search starts again after the dynamic ones."""
    space = k.state.global_asids
    space.used -= space.freed
    space.freed.clear()
    space.last = k.config.nr_dyn_asids


def allocate_global_asid(k: Kernel) -> int:
    """arch/x86/mm/tlb.c: allocate_global_asid(): the next free ASID from the last one
    handed out (find_next_zero_bit), 0 when none is left."""
    space = k.state.global_asids
    if space.last >= MAX_ASID_AVAILABLE - 1:
        reset_global_asid_space(k)
    asid = next((a for a in range(space.last, MAX_ASID_AVAILABLE) if a not in space.used), None)
    if asid is None:
        return 0  # "This should never happen."
    space.used.add(asid)
    space.last = asid
    space.available -= 1
    return asid


def mm_active_cpus_exceeds(k: Kernel, mm: Mm, threshold: int) -> bool:
    """arch/x86/mm/tlb.c: mm_active_cpus_exceeds(): more than `threshold` CPUs in
    mm_cpumask have the mm loaded and are not lazy."""
    if len(mm.mm_cpumask) <= threshold:
        return False
    rqs = k.state.rqs
    running = sum(1 for c in mm.mm_cpumask if rqs[c].tlb.loaded_mm is mm and not rqs[c].tlb.is_lazy)
    return running > threshold


def use_global_asid(k: Kernel, mm: Mm) -> None:
    """arch/x86/mm/tlb.c: use_global_asid() -> mm_assign_global_asid(): the mm gets a global
    ASID and is in transition until every CPU running it has switched to that ASID."""
    if mm_global_asid(k, mm):
        return
    if not k.state.global_asids.available:
        return  # VM_WARN_ONCE "Ran out of global ASIDs"
    asid = allocate_global_asid(k)
    if not asid:
        return
    mm.context.asid_transition = True
    mm.context.global_asid = asid
    k.emit(GlobalAsidAssigned(k.cpu, mm, asid))


def mm_free_global_asid(k: Kernel, mm: Mm) -> None:
    """arch/x86/mm/tlb.c: mm_free_global_asid() (destroy_context, at __mmdrop): the ASID is
    marked freed, reusable after the next wrap-around's flush."""
    if not mm_global_asid(k, mm):
        return
    space = k.state.global_asids
    space.freed.add(mm.context.global_asid)
    mm.context.global_asid = 0
    space.available += 1


def consider_global_asid(k: Kernel, mm: Mm) -> None:
    """arch/x86/mm/tlb.c: consider_global_asid(), after an IPI flush: a global ASID for an
    mm running on more than three CPUs (`global_asid_threshold`). The kernel looks only "once
    in a while", when (current->pid & 0x1f) == (jiffies & 0x1f); the model has no jiffies and
    looks at every such flush, i.e. at the first moment the kernel could."""
    if not k.config.invlpgb:
        return
    if mm_active_cpus_exceeds(k, mm, k.config.global_asid_threshold):
        use_global_asid(k, mm)


def finish_asid_transition(k: Kernel, mm: Mm, new_tlb_gen: int) -> None:
    """arch/x86/mm/tlb.c: finish_asid_transition(): if a CPU runs the mm (lazily too) on a
    dynamic ASID still, IPI the whole mask (flush_tlb_multi: in transition, every CPU), which
    makes it reload the global one; once none does, the transition is over."""
    if not mm_in_asid_transition(k, mm):
        return
    global_asid = mm_global_asid(k, mm)
    for c in sorted(mm.mm_cpumask):
        tlb = k.state.rqs[c].tlb
        if tlb.loaded_mm is not mm:
            continue
        if tlb.loaded_mm_asid != global_asid:
            if k.bug("invlpgb-no-transition-ipi"):
                break
            flush_tlb_multi(k, mm, new_tlb_gen, False)
            return
    mm.context.asid_transition = False


def broadcast_tlb_flush(k: Kernel, mm: Mm, new_tlb_gen: int) -> None:
    """arch/x86/mm/tlb.c: broadcast_tlb_flush(): INVLPGB of the mm's global ASID on every
    CPU (paging-structure caches included, so lazy CPUs may stay: no IPI, no switch to
    init_mm), then finish_asid_transition(), then TLBSYNC."""
    k.emit(BroadcastFlush(k.cpu, mm, mm.context.global_asid))
    finish_asid_transition(k, mm, new_tlb_gen)


def flush_smp_call_function_queue(k: Kernel, rq: Rq) -> None:
    """kernel/smp.c: flush_smp_call_function_queue(), as interrupts come back on (here:
    finish_task_switch()'s finish_lock_switch()): the flush IPIs sent to this CPU while it
    was inside __schedule() run now, on the state its switch left. A CPU lazy on the flushed
    mm before the switch and running a user task after it is not lazy any more: no switch
    to init_mm (flush_tlb_func() flushes or, on another mm, returns)."""
    queued, rq.call_single_queue = rq.call_single_queue, []
    for q in queued:
        flush_tlb_func(k, rq.cpu, q.mm, q.tlb_gen)


def exit_mmap(k: Kernel, mm: Mm) -> None:
    """mm/mmap.c: exit_mmap() -> tlb_finish_mmu(): a full flush with freed_tables, so every
    CPU in mm_cpumask is IPIed, lazy ones too; they switch their hardware to init_mm.
    (That includes this CPU when exit_mm() just made it lazy on this very mm.)"""
    flush_tlb_mm_range(k, mm, freed_tables=True)


def leave_mm(k: Kernel) -> None:
    """arch/x86/mm/tlb.c: leave_mm(): a lazy CPU (e.g. entering a deep C-state) drops its
    borrowed page tables for init_mm. active_mm and its reference are untouched."""
    tlb = k.state.rqs[k.cpu].tlb
    if tlb.loaded_mm.is_init_mm:
        return
    k.emit(LeftMm(k.cpu, tlb.loaded_mm, "leave_mm"))
    switch_mm_irqs_off(k, None, k.state.init_mm, None, "leave_mm")


def poking_init(k: Kernel) -> Mm:
    """arch/x86/mm/init.c: poking_init(): `poking_mm = mm_alloc()` (copy_init_mm() before
    6.2), an mm of its own for patching kernel text, never freed (its mm_users stays 1)."""
    return mm_alloc(k, "poking_mm")


def use_temporary_mm(k: Kernel, temp_mm: Mm) -> Mm:
    """arch/x86/kernel/alternative.c (6.15+: arch/x86/mm/tlb.c): use_temporary_mm(): leave
    lazy mode first ("otherwise we'll end up with a stale address space WITHOUT being in lazy
    mode after restoring the previous mm"), note loaded_mm, switch_mm_irqs_off(NULL, temp_mm,
    current). current->active_mm is not changed. Returns the mm to go back to."""
    tlb = k.state.rqs[k.cpu].tlb
    if tlb.is_lazy and not k.bug("text-poke-no-leave-mm"):
        leave_mm(k)
    prev = tlb.loaded_mm
    switch_mm_irqs_off(k, None, temp_mm, k.state.rqs[k.cpu].curr, "use_temporary_mm")
    return prev


def unuse_temporary_mm(k: Kernel, prev: Mm, temp_mm: Mm) -> None:
    """arch/x86/kernel/alternative.c: unuse_temporary_mm(): switch_mm_irqs_off(NULL, prev,
    current), then clear this CPU in mm_cpumask(poking_mm) ("no TLB flushing is needed
    anywhere")."""
    switch_mm_irqs_off(k, None, prev, k.state.rqs[k.cpu].curr, "unuse_temporary_mm")
    temp_mm.mm_cpumask.discard(k.cpu)


def text_poke(k: Kernel, poking_mm: Mm | None) -> None:
    """arch/x86/kernel/alternative.c: __text_poke(): map the page in poking_mm, then with
    interrupts off use_temporary_mm(poking_mm), write, unuse_temporary_mm(). A jump label or
    static key flip, a kprobe armed, a module's alternatives: text_poke_bp() batches call it
    several times in a row."""
    assert poking_mm is not None, "poking_init() gives x86 its poking_mm"
    prev = use_temporary_mm(k, poking_mm)
    unuse_temporary_mm(k, prev, poking_mm)


def efi_mm_init(k: Kernel) -> Mm:
    """arch/x86/platform/efi/efi_64.c: efi_mm, a static mm_struct whose page tables
    efi_alloc_page_tables() builds at boot: the EFI runtime services' address space. Never
    freed: its initializer gives it users (the model: one, its "efi_mm" holder's)."""
    return mm_alloc(k, "efi_mm")


def switch_mm(k: Kernel, prev: Mm | None, next: Mm, tsk: Task | None, via: str) -> None:
    """arch/x86/mm/tlb.c: switch_mm(): switch_mm_irqs_off() with interrupts off. Its `prev`
    reaches switch_mm_irqs_off() on 6.1 and NULL does since 6.9 (seen by kprobes on
    Debian's 6.1 and 6.12 kernels: KernelConfig.switch_mm_passes_prev); unused either way."""
    switch_mm_irqs_off(k, prev if k.config.switch_mm_passes_prev else None, next, tsk, via)


def efi_enter_mm(k: Kernel, efi_mm: Mm) -> Mm:
    """arch/x86/platform/efi/efi_64.c: efi_enter_mm(), from arch_efi_call_virt_setup().
    Before 6.15: efi_prev_mm = current->active_mm; current->active_mm = &efi_mm;
    switch_mm(efi_prev_mm, &efi_mm, NULL), no mmgrab ("the mm can not change under us"),
    and no leave_mm() first: a lazy CPU leaves lazy mode (switch_mm_irqs_off() clears
    is_lazy) and, back on efi_prev_mm, runs it as if it were current's own until its next
    context switch. 6.15+ ("x86/efi: Make efi_enter/leave_mm() use the
    use_/unuse_temporary_mm() machinery"): use_temporary_mm(&efi_mm), active_mm untouched.
    Returns the mm efi_leave_mm() goes back to."""
    if k.config.version >= (6, 15):
        return use_temporary_mm(k, efi_mm)
    curr = k.state.rqs[k.cpu].curr
    prev = curr.active_mm
    assert prev is not None, "every task has an active_mm"
    curr.active_mm = efi_mm
    switch_mm(k, prev, efi_mm, None, "efi_enter_mm")
    return prev


def efi_leave_mm(k: Kernel, prev: Mm, efi_mm: Mm) -> None:
    """arch/x86/platform/efi/efi_64.c: efi_leave_mm(), from arch_efi_call_virt_teardown().
    Before 6.15: current->active_mm = efi_prev_mm; switch_mm(&efi_mm, efi_prev_mm, NULL).
    6.15+: unuse_temporary_mm()."""
    if k.config.version >= (6, 15):
        unuse_temporary_mm(k, prev, efi_mm)
        return
    rq = k.state.rqs[k.cpu]
    rq.curr.active_mm = prev
    switch_mm(k, efi_mm, prev, None, "efi_leave_mm")
    if rq.curr.mm is None and not prev.is_init_mm:
        rq.tlb.unlazy_by = "efi_leave_mm"  # a kernel thread's borrowed mm, not lazy


def efi_call(k: Kernel, efi_mm: Mm | None) -> None:
    """drivers/firmware/efi/runtime-wrappers.c: an EFI runtime service call (efi_call_rts(),
    run by the efi_rts_wq kworker for efivarfs reads and writes and the like): preemption
    off (kernel_fpu_begin()), efi_enter_mm(), the firmware's code, efi_leave_mm()."""
    assert efi_mm is not None, "efi_mm_init() gives x86 its efi_mm"
    prev = efi_enter_mm(k, efi_mm)
    efi_leave_mm(k, prev, efi_mm)


def adopt_mm(k: Kernel, mm: Mm) -> None:
    """Not a kernel function: `mm` was made long before observation began (trace replay):
    its init_new_context() second has passed, so the once-a-second mm_cpumask trim of
    flush_tlb_mm_range() is due at its first flush."""
    mm.context.next_trim_cpumask = k.state.jiffies - k.config.HZ


def adopt_loaded_mm(k: Kernel, mm: Mm, tsk: Task) -> None:
    """Not a kernel function: the CPU was found lazily borrowing `mm` (trace replay). Its
    cpu_tlbstate is what switch_mm_irqs_off() and enter_lazy_tlb() left: mm loaded in an ASID
    slot that is up to date, the CPU in mm_cpumask, lazy."""
    tlb = k.state.rqs[k.cpu].tlb
    if mm.is_init_mm or tlb.loaded_mm is mm:
        return
    if not lazy_cpumask(k) and not tlb.loaded_mm.is_init_mm:
        tlb.loaded_mm.mm_cpumask.discard(k.cpu)
    mm.mm_cpumask.add(k.cpu)
    asid, _ = choose_new_asid(k, tlb, mm, mm.context.tlb_gen)
    tlb.ctxs[asid] = TlbContext(mm.context.ctx_id, mm.context.tlb_gen)
    tlb.loaded_mm, tlb.loaded_mm_asid, tlb.is_lazy = mm, asid, True


def cpu_disable(k: Kernel, cpu: int) -> None:
    """arch/x86/kernel/smpboot.c: native_cpu_disable(): mm_cpumask bits are left alone."""
