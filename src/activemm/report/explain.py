"""A step-through explainer of a scenario: for each operation, the kernel path it takes, the
kernel's own comment for the case that applies, and every field that changed."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from activemm.model.events import ContextSwitch, Event, MmFreed
from activemm.model.state import KernelState

KERNEL_PATHS: dict[str, str] = {
    "boot": "init/main.c: start_kernel() -> sched_init(); cpu_init() on each secondary CPU",
    "schedule": "kernel/sched/core.c: __schedule() -> context_switch() -> finish_task_switch()",
    "fork": "kernel/fork.c: copy_process() -> copy_mm() (dup_mm() or mmget())",
    "failed_fork": "kernel/fork.c: copy_process() -> copy_mm(), then bad_fork_cleanup_mm: mmput()",
    "exec": "fs/exec.c: begin_new_exec() -> exec_mmap()",
    "resume_exec": "fs/exec.c: exec_mmap() after a preemption: activate_mm(), mmput(old_mm)",
    "failed_exec": "fs/exec.c: alloc_bprm() -> bprm_mm_init(), then free_bprm(): mmput()",
    "exit": "kernel/exit.c: do_exit() -> exit_mm() -> mmput()",
    "kthread_use_mm": "kernel/kthread.c: kthread_use_mm()",
    "kthread_unuse_mm": "kernel/kthread.c: kthread_unuse_mm()",
    "mmget_not_zero": "include/linux/sched/mm.h: mmget_not_zero()",
    "mmput": "kernel/fork.c: mmput() (-> __mmput() on the last user)",
    "mmgrab": "include/linux/sched/mm.h: mmgrab()",
    "mmdrop": "include/linux/sched/mm.h: mmdrop() (-> __mmdrop() on the last reference)",
    "flush_tlb_mm_range": "arch/x86/mm/tlb.c: flush_tlb_mm_range() (or the arch's flush)",
    "leave_mm": "arch/x86/mm/tlb.c: leave_mm()",
    "text_poke": "arch/x86/kernel/alternative.c: __text_poke(): use/unuse_temporary_mm()",
    "efi_call": "arch/x86/platform/efi/efi_64.c: efi_enter_mm(), the firmware, efi_leave_mm()",
    "cpu_down": "kernel/cpu.c: _cpu_down(): sched_force_init_mm(), __cpu_disable(), finish_cpu()",
    "cpu_up": "kernel/cpu.c: _cpu_up() -> start_secondary() -> cpu_init()",
    "tick_do_update_jiffies64": "kernel/time/tick-sched.c: tick_do_update_jiffies64(): time "
    "goes by (jiffies, HZ a second)",
}

# kernel/sched/core.c, the comment above the four cases of context_switch()
CASE_COMMENTS: dict[str, str] = {
    "kernel->kernel": "kernel -> kernel   lazy + transfer active",
    "user->kernel": "  user -> kernel   lazy + mmgrab_lazy_tlb() active",
    "kernel->user": "kernel ->   user   switch + mmdrop_lazy_tlb() active",
    "user->user": "  user ->   user   switch",
}


def snapshot(state: KernelState) -> dict[tuple[str, str], Any]:
    """Every field worth explaining, keyed by (object, field)."""
    out: dict[tuple[str, str], Any] = {}
    for t in state.tasks:
        if t.state.value == "gone" and not t.is_idle:
            out[(t.name, "state")] = "gone"
            continue
        out[(t.name, "mm")] = t.mm.name if t.mm else "NULL"
        out[(t.name, "active_mm")] = t.active_mm.name if t.active_mm else "NULL"
        out[(t.name, "state")] = t.state.value + (" (exiting)" if t.exiting else "")
        if (window := t.in_exec_mmap) is not None:  # PREEMPT_RT: exec_mmap() preempted
            held = window.old_mm or window.active_mm
            out[(t.name, "exec_mmap")] = (
                f"before activate_mm, holding {held.name if held else 'NULL'}"
            )
    for rq in state.rqs:
        cpu = f"CPU {rq.cpu}"
        out[(cpu, "curr")] = rq.curr.name if rq.online else "offline"
        out[(cpu, "loaded_mm")] = rq.tlb.loaded_mm.name
        out[(cpu, "is_lazy")] = rq.tlb.is_lazy
        if state.global_asids.used:  # x86 INVLPGB: which CPUs run on a global ASID
            out[(cpu, "ASID")] = rq.tlb.loaded_mm_asid
    if state.jiffies:  # only a scenario that lets time go by has a clock
        out[("kernel", "jiffies")] = state.jiffies
    for mm in state.mms:
        out[(str(mm), "mm_cpumask")] = ",".join(map(str, sorted(mm.mm_cpumask))) or "-"
        if state.jiffies and mm.context.next_trim_cpumask:  # x86 6.14+'s trim, by the clock
            out[(str(mm), "next_trim_cpumask")] = mm.context.next_trim_cpumask
        out[(str(mm), "mm_users")] = mm.mm_users
        out[(str(mm), "mm_count")] = mm.mm_count
        out[(str(mm), "state")] = mm.status
        if mm.context.global_asid or mm.context.asid_transition:
            out[(str(mm), "global ASID")] = mm.context.global_asid or "-"
            out[(str(mm), "ASID transition")] = mm.context.asid_transition
    return out


def explain_step(
    index: int,
    op_name: str,
    operation: str,
    note: str,
    events: list[Event],
    before: dict[tuple[str, str], Any],
    after: dict[tuple[str, str], Any],
) -> Panel:
    parts: list[Any] = [Text(KERNEL_PATHS.get(op_name, op_name), style="bold cyan")]
    for ev in events:
        if isinstance(ev, ContextSwitch):
            parts.append(Text(f"/* {CASE_COMMENTS[ev.case].strip()} */", style="green"))
        if isinstance(ev, MmFreed):
            parts.append(
                Text(f"__mmdrop({ev.mm}) on CPU {ev.cpu}, from {ev.reason}", style="bold red")
            )
    if note:
        parts.append(Text(note, style="italic"))
    changes = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("", "field", "before", "after"):
        changes.add_column(col)
    for key in sorted(set(before) | set(after)):
        b, a = before.get(key, "-"), after.get(key, "-")
        if b != a:
            changes.add_row(key[0], key[1], str(b), Text(str(a), style="yellow"))
    parts.append(changes if changes.row_count else Text("(nothing changed)", style="dim"))
    return Panel(Group(*parts), title=f"step {index}: {operation}", title_align="left")
