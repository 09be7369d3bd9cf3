"""The kernel paths whose timing the trace marks (exec_mmap, exit_mm, exit_mmap) and the
steps the validator takes at those marks: exec at the CR3 load that follows exec's
activate_mm, exit at exit_mm's enter_lazy_tlb, a pin standing for the users' share of
mm_count while the kernel's __mmput() may still run, and __mmput() run by another task (a
/proc reader) placed at its exit_mmap. A mixin of the Validator (core.py), which owns the
state these methods share."""

from __future__ import annotations

import bisect

from activemm.errors import OperationError
from activemm.metrics import Metrics
from activemm.model import Machine
from activemm.model.state import Mm, Task, TaskState, clone_state
from activemm.trace.events import (
    NewTask,
    Probe,
    ProcessExec,
    ProcessExit,
    ProcessFork,
    SchedSwitch,
    TaskRename,
    TlbFlush,
    TraceEvent,
)
from activemm.validate import kernel as kv
from activemm.validate.holders import Context, HolderSteps
from activemm.validate.kernel import (
    ENTER_LAZY,
    EXIT_MMAP,
    KSM_REMOVE,
    MMDROP,
    SWITCH_MM,
    address,
)
from activemm.validate.windows import context_switch_loads, interrupting

# Tracepoints a task emits only once its __mmput() has returned (tlb_flush lines, by
# contrast, come from inside exit_mmap()).
PAST_MMPUT = (ProcessExit, ProcessExec, TaskRename, NewTask, ProcessFork)


def marked_exits(events: list[TraceEvent]) -> set[int]:
    """Lines of the sched_process_exit tracepoints that the exiting task's own exit_mm()
    marker (enter_lazy_tlb of itself, outside a switch) follows before its last switch
    out: on 6.16 and later the tracepoint comes first (kv.exit_traced_first), and with
    markers the model's exit runs at the marker. (perf_event_exit_task() between the two
    takes mutexes: the task may wait, "D", with its mm.)"""
    found: set[int] = set()
    open_: dict[int, int] = {}  # pid -> line of its sched_process_exit, marker not yet seen
    for ev in events:
        if isinstance(ev, ProcessExit):
            open_[ev.exit_pid] = ev.line
        elif isinstance(ev, SchedSwitch) and ev.prev_state.startswith(("X", "Z")):
            open_.pop(ev.prev_pid, None)
        elif (
            isinstance(ev, Probe)
            and ev.function == ENTER_LAZY
            and ev.pid in open_
            and ev.args.get("t_pid") == str(ev.pid)
            and not kv.is_kthread(ev)
        ):
            found.add(open_.pop(ev.pid))
    return found


def exec_hints(events: list[TraceEvent]) -> set[int]:
    """Lines of tracepoint-only exec hints: on x86 every CR3 load in switch_mm_irqs_off()
    emits tlb_flush "flush on task switch"; the last one a task emits by itself, outside a
    context switch, before its sched_process_exec is exec's activate_mm(). So is the last
    such load before the task renames itself when its fate is sched_process_exit
    (begin_new_exec()'s __set_task_comm() follows exec_mmap()): an exec that failed after
    the point of no return (load_elf_binary() failing in elf_map(), say), whose task dies of
    SIGSEGV without sched_process_exec. exit_mmap()'s switch of the exiting task's CPU to
    init_mm is followed by no rename. Own loads in a row, nothing else of the task's traced
    between, are text_poke()'s, there and back (use_temporary_mm() and
    unuse_temporary_mm(): a static key flipped by a perf event opened before the exec, an
    eBPF program JIT-compiled just before it, one pair per page of code), paired from the
    first: the last of an odd run is the exec's; an even run is no exec's, whose load is
    looked for before it. Probe lines are not read: this is what tracepoints alone say."""
    hints: set[int] = set()
    exiting: set[int] = set()  # exiting next (sched_process_exit, no exec before it)
    renamed: set[int] = set()  # exiting next, and renaming themselves before that
    seeking: set[int] = set()  # execing next, the exec's load not found yet
    # pid -> (its last load before either, how many own loads in a row end there)
    pending: dict[int, tuple[int, int]] = {}
    at_switch = context_switch_loads(events)
    # the next load after a leader's switch to the thread whose exec takes its pid
    # (de_thread()): when the leader still had the mm they share, that switch loads nothing
    # and the load is the exec's own, under the leader's pid already; when the leader, past
    # its exit_mm(), had borrowed another mm, it is the switch's, and the exec's follows
    renumbered = {(e.exec_pid, e.old_pid) for e in events if isinstance(e, ProcessExec)}
    either = {line for line, sw in at_switch.items() if (sw.prev_pid, sw.next_pid) in renumbered}
    for ev in reversed(events):
        if isinstance(ev, Probe) or interrupting(ev):
            continue
        own_load = (
            isinstance(ev, TlbFlush)
            and ev.own_cr3_load
            and (ev.line not in at_switch or ev.line in either)
        )
        if (not own_load or ev.line in either) and ev.pid in pending:
            last, run = pending.pop(ev.pid)  # the task did something else before the run
            if run % 2:  # the pairs before it are text_poke()'s
                hints.add(last)
                seeking.discard(ev.pid)
                if own_load:
                    continue  # (the leader's switch's load, the exec's after it)
        if isinstance(ev, ProcessExec):
            exiting.discard(ev.exec_pid)
            seeking.add(ev.exec_pid)
            renamed.discard(ev.exec_pid)
        elif isinstance(ev, ProcessExit):
            exiting.add(ev.exit_pid)
            seeking.discard(ev.exit_pid)
            renamed.discard(ev.exit_pid)
        elif isinstance(ev, TaskRename) and ev.rename_pid == ev.pid:
            renamed.add(ev.pid)
        elif own_load and ev.pid in pending:
            last, run = pending[ev.pid]
            pending[ev.pid] = (last, run + 1)
        elif own_load and ev.pid in seeking:
            pending[ev.pid] = (ev.line, 1)
        elif own_load and ev.pid in exiting and ev.pid in renamed:
            renamed.discard(ev.pid)
            pending[ev.pid] = (ev.line, 1)
    hints.update(last for last, run in pending.values() if run % 2)
    return hints


def _bounded(ev: TraceEvent) -> int | None:
    """The pid whose exec window `ev` cannot be inside of: an exec's (its earlier exec),
    an exit's (an earlier life of the pid), a new task's (its birth); None for other
    events."""
    if isinstance(ev, ProcessExec):
        return ev.exec_pid
    if isinstance(ev, ProcessExit):
        return ev.exit_pid
    if isinstance(ev, NewTask | ProcessFork):
        return ev.child_pid
    return None


def exec_renames(events: list[TraceEvent], hints: set[int]) -> set[int]:
    """Lines of the renames that stand in for an exec's activate_mm() when it loaded no CR3
    (tracepoints only): on PREEMPT_RT exec_mmap() can be preempted after it set tsk->mm and
    before activate_mm() (task_lock() is a sleeping lock there), and the switch back in
    loads the new mm, so activate_mm() finds it loaded and emits no tlb_flush. Such an exec
    has no own CR3 load (`hints`, exec_hints()) between its task's birth, earlier exec or
    earlier life's exit and its sched_process_exec; its begin_new_exec() renames the task
    (__set_task_comm(), every exec does: its last rename before sched_process_exec) after
    exec_mmap() returned, the first tracepoint to show the new mm installed. Without that
    bound (a task from before the trace) none is taken."""
    renames: set[int] = set()
    seeking: dict[int, int | None] = {}  # pid -> its exec's rename line, once seen
    for ev in reversed(events):
        if isinstance(ev, Probe) or interrupting(ev):
            continue
        if isinstance(ev, TlbFlush) and ev.line in hints:
            seeking.pop(ev.pid, None)  # the exec's own load
            continue
        if isinstance(ev, TaskRename) and ev.rename_pid == ev.pid and ev.pid in seeking:
            if seeking[ev.pid] is None:
                seeking[ev.pid] = ev.line
            continue
        bound = _bounded(ev)
        if bound is not None and (line := seeking.pop(bound, None)) is not None:
            renames.add(line)
        if isinstance(ev, ProcessExec):
            seeking[ev.exec_pid] = None
    return renames


def exec_window_guesses(events: list[TraceEvent], renames: set[int]) -> set[int]:
    """PREEMPT_RT, tracepoints only: for each exec_renames() rename, the switch out of its
    task that is taken for the preemption inside exec_mmap(): its last preemption ("R+")
    with migration disabled (task_lock(), a sleeping spinlock_t on RT) before the rename,
    since its birth, earlier exec or earlier life's exit. The window's own preemption is
    one of those; a later one (a page table lock in the old mm's exit_mmap(), which the
    exec's mmput() runs before the rename) can be taken instead, never an earlier one, so a
    wrong guess costs only switches the rename alone would miss too."""
    by_line = {ev.line: ev for ev in events if isinstance(ev, TaskRename) and ev.line in renames}
    pids = {ev.pid for ev in by_line.values()}
    last: dict[int, int] = {}  # pid -> its last lock-held preemption since its last bound
    guesses: set[int] = set()
    for ev in events:
        if isinstance(ev, SchedSwitch) and ev.prev_pid in pids:
            if ev.prev_state == "R+" and ev.migrate_disabled:
                last[ev.prev_pid] = ev.line
        elif (bound := _bounded(ev)) is not None:
            last.pop(bound, None)
        elif ev.line in by_line and (line := last.pop(ev.pid, None)) is not None:
            guesses.add(line)
    return guesses


def exec_preemptions(events: list[TraceEvent], efi: dict[int, str] | None = None) -> set[int]:
    """Lines of the switches out of tasks preempted inside exec_mmap() after it set
    tsk->mm = tsk->active_mm = new, before activate_mm() (PREEMPT_RT: task_lock() disables
    migration, not preemption, and x86 on 6.1 enables interrupts before activate_mm()).
    Such a switch out is a preemption with migration disabled (the irq-flags column: a
    spinlock_t held, task_lock()), and the task's next step, once back, is exec's
    activate_mm() marker. What tells the window from a preemption earlier in exec_mmap() (on
    our 6.1-rt captures, 12 of the 14 lock-held preemptions just before an exec's
    activate_mm): activate_mm() then loads no CR3, because the task's switch back in loaded
    the new mm already; before the window, the task came back to its old mm and
    activate_mm() loads the new one, its tlb_flush "flush on task switch" the next event on
    that CPU. Markers input only: with tracepoints alone, the preemptions of an exec that
    loads no CR3 of its own, before its sched_process_exec (lock-held ones come after the
    window too: task_lock() again in __set_task_comm()), do not say which was the window.

    A task preempted so several times in a row (back, and preempted again before any other
    step of its own) may have been inside the window each time: every one after
    tsk->mm = new. An earlier one was when its switch back in loaded CR3 while nothing else
    had on that CPU since it left (the CPU still ran the task's old mm, the task had the new
    one already); a user task run meanwhile, or a flush IPI there, leaves it unknown, and it
    is taken to have come before the window."""
    if efi is None:  # EFI calls' hooks (kv.efi_calls) have no task either
        efi = kv.efi_calls(events)
    found: set[int] = set()
    # pid -> (line, CPU, CR3 loads there so far) of its lock-held preemption, while away
    out: dict[int, tuple[int, int, int]] = {}
    running: dict[int, int] = {}  # pid -> that line, the task back, until its next step
    deciding: dict[int, tuple[int, int]] = {}  # CPU -> (pid, line) at exec's activate_mm
    loads: dict[int, int] = {}  # CPU -> how many CR3 loads it showed so far
    back: dict[int, tuple[int, bool]] = {}  # CPU -> (line, no load since) of a return there
    inside: dict[int, bool] = {}  # line of a lock-held preemption -> its return says so
    # pid -> its earlier lock-held preemptions in a row, each with what its return said
    chain: dict[int, list[tuple[int, bool]]] = {}
    for ev in events:
        cpu = ev.cpu
        if not isinstance(ev, Probe) and cpu in back:  # the tracepoint after a return
            line, quiet = back.pop(cpu)
            inside[line] = quiet and isinstance(ev, TlbFlush) and ev.cr3_load
        if isinstance(ev, TlbFlush) and ev.cr3_load:
            loads[cpu] = loads.get(cpu, 0) + 1
        if cpu in deciding:  # the event after the marker on its CPU: its CR3 load, or not
            pid, line = deciding.pop(cpu)
            if not (isinstance(ev, TlbFlush) and ev.own_cr3_load and ev.pid == pid):
                found.add(line)
                for earlier, within in reversed(chain.get(pid, [])):
                    if not within:
                        break
                    found.add(earlier)
            chain.pop(pid, None)
        if isinstance(ev, SchedSwitch):
            if ev.next_pid in out:
                line, was, seen = out.pop(ev.next_pid)
                running[ev.next_pid] = line
                if was == cpu:
                    back[cpu] = (line, loads.get(cpu, 0) == seen)
            if ev.prev_state.startswith("R") and ev.migrate_disabled and ev.prev_pid > 0:
                out[ev.prev_pid] = (ev.line, cpu, loads.get(cpu, 0))
        if ev.pid not in running or (isinstance(ev, SchedSwitch) and ev.prev_pid != ev.pid):
            continue
        if isinstance(ev, Probe) and ev.function in (SWITCH_MM, ENTER_LAZY):
            if kv.outside_kind(ev, efi) == "activate_mm":
                deciding[cpu] = (ev.pid, running[ev.pid])
            else:
                chain.pop(ev.pid, None)
            del running[ev.pid]
        elif isinstance(ev, SchedSwitch) and out.get(ev.pid, (0, 0, 0))[0] == ev.line:
            # preempted again, lock held, before any other step of its own: a row
            line = running.pop(ev.pid)
            chain.setdefault(ev.pid, []).append((line, inside.pop(line, False)))
        elif isinstance(ev, SchedSwitch | ProcessExec | ProcessExit | NewTask | ProcessFork):
            del running[ev.pid]
            chain.pop(ev.pid, None)
    return found


CLONE_VM = 0x100  # include/uapi/linux/sched.h


def proc_opens_around_mmput(events: list[TraceEvent]) -> dict[int, list[tuple[int, int]]]:
    """exit_mmap marker line -> (line, pid) of each proc_mem_open() return whose file took
    its reference before that __mmput: proc_mem_open() takes the mm with mm_access() (an
    mm_users reference), mmgrab()s it for the file and mmput()s the first. When the process
    exited meanwhile, that mmput() runs __mmput() in the opener: the exit_mmap marker comes
    before the return that names the mm. Or the opener was preempted after its mmput() and
    before its return (a fully preemptible kernel) while the process's last task put the
    mm: that task's exit_mmap marker comes before the return too, and the file's mmgrab()
    before both (mm_access() found a task with that mm, and mm_users above 0: its last put
    was still to come). Either way the return names a life of the mm (no __mmdrop of it
    since) whose one __mmput came first: the model takes the file's reference at that
    marker, not at the return, by which time it would have freed the mm."""
    found: dict[int, list[tuple[int, int]]] = {}
    put: dict[int, int] = {}  # mm -> the line of the exit_mmap marker of its life
    for ev in events:
        if not isinstance(ev, Probe):
            continue
        if ev.function == EXIT_MMAP and not ev.returned:
            put[address(ev.args.get("mm"))] = ev.line
        elif ev.function == MMDROP:
            put.pop(address(ev.args.get("mm")), None)
        elif ev.function == "proc_mem_open" and ev.returned:
            line = put.get(address(ev.args.get("ret")))
            if line is not None:
                found.setdefault(line, []).append((ev.line, ev.pid))
    return found


# markers.ksm_unlock_preemptions: the longest a remover's preemption may come after its
# last removal to be the one its unlock's wakeup caused, before its mmdrop() (seconds)
KSM_UNLOCK_GAP = 0.001


def ksm_unlock_preemptions(
    events: list[TraceEvent],
) -> dict[int, tuple[int, int, int | None]]:
    """exit_mmap marker line -> (pid, mm address, that pid's next switch in: None past the
    trace's end), on a preemptible kernel. KSM takes an exited mm's slot out (mm/ksm.c) in
    ksmd's scan_get_next_rmap_item() or in an unmerge (unmerge_and_remove_all_rmap_items(),
    2 written to /sys/kernel/mm/ksm/run) once it finds mm_users at 0: it removes the slot's
    rmap_items (the remove_rmap_item_from_tree markers, mm_users 0), mmap_read_unlock()s the
    mm and mmdrop()s it (ksmd clears MMF_VM_MERGEABLE before the unlock, the unmerge after
    it). The unlock wakes the task whose __mmput waits for KSM to let go of the mmap lock,
    in __ksm_exit()'s mmap_write_lock() or, later, in exit_mmap()'s, and the woken task may
    preempt the remover right there, before its mmdrop(): the remover's next event after
    its last removal is its switch out ("R+") to that task, whose exit_mmap of the mm is
    under way (its marker came, its return not yet) or comes next, before the remover runs
    again. KSM's reference is held at that marker, whatever the flag reads, and the
    remover's mmdrop() comes when it next runs, not at its last removal. Only when that
    removal was the last of the mm's life: ksmd's scan also unlocks the mm after each page
    it looks at (scan_get_next_rmap_item() returns with the lock dropped), which wakes the
    waiter as well, and removes the slot later. And only when the switch out came straight
    after that removal (KSM_UNLOCK_GAP): freeing the slot, the unlock and the wakeup's
    preemption take tens of microseconds, under TCG too (14 to 86 on our captures); a
    remover that ran on for milliseconds without a marker went on to other mms, its
    mmdrop() done (7.6 ms on 6.1-rt with 3 CPUs, the waiter's own mmdrop() the last)."""
    found: dict[int, tuple[int, int, int | None]] = {}
    removals: dict[int, list[int]] = {}  # mm -> lines of its removals (mm_users 0)
    drops: dict[int, list[int]] = {}  # mm -> lines of its __mmdrop (ends of its lives)
    last_removal: dict[int, int] = {}  # found line -> the removal before the preemption
    removed: dict[int, tuple[int, int]] = {}  # pid -> (mm, line) of its last event, a removal
    woken: dict[int, tuple[int, int, int]] = {}  # pid switched in -> (remover, mm, removal)
    away: dict[int, list[int]] = {}  # remover's pid -> found lines awaiting its return
    inside: dict[int, tuple[int, int]] = {}  # pid -> (its exit_mmap marker's line, mm)
    removal_ts: dict[int, float] = {}  # pid -> when its last removal was

    def note(line: int, remover: int, mm: int, removal: int) -> None:
        found[line] = (remover, mm, None)
        last_removal[line] = removal
        away.setdefault(remover, []).append(line)

    for ev in events:
        if not isinstance(ev, TraceEvent):
            continue
        if isinstance(ev, SchedSwitch):
            for line in away.pop(ev.next_pid, []):
                found[line] = (*found[line][:2], ev.line)
            woken = {t: w for t, w in woken.items() if w[0] != ev.next_pid}
        gone = removed.pop(ev.pid, None)
        if isinstance(ev, Probe) and ev.function == MMDROP:
            drops.setdefault(address(ev.args.get("mm")), []).append(ev.line)
        if isinstance(ev, Probe) and ev.function == KSM_REMOVE:
            if ev.args.get("mm_users") == "0":
                mm = address(ev.args.get("mm"))
                removed[ev.pid] = (mm, ev.line)
                removal_ts[ev.pid] = ev.ts
                removals.setdefault(mm, []).append(ev.line)
        elif (
            isinstance(ev, SchedSwitch)
            and gone is not None
            and ev.prev_state.startswith("R")
            and ev.ts - removal_ts.get(ev.prev_pid, ev.ts) <= KSM_UNLOCK_GAP
        ):
            under_way = inside.get(ev.next_pid)
            if under_way is not None and under_way[1] == gone[0]:
                note(under_way[0], ev.prev_pid, *gone)
            else:
                woken[ev.next_pid] = (ev.prev_pid, *gone)
        elif isinstance(ev, Probe) and ev.function == EXIT_MMAP and ev.returned:
            inside.pop(ev.pid, None)
        elif isinstance(ev, Probe) and ev.function == EXIT_MMAP:
            inside[ev.pid] = (ev.line, address(ev.args.get("mm")))
            w = woken.pop(ev.pid, None)
            if w is not None and w[1] == address(ev.args.get("mm")):
                note(ev.line, *w)
    for line, (_, mm, _) in list(found.items()):
        removal = last_removal[line]
        end = next_line(drops.get(mm, []), removal) or 1 << 62
        later = next_line(removals.get(mm, []), removal)
        if later is not None and later < end:
            del found[line]  # the slot went later: its removals go on after the waiter ran
    return found


def leaving_mm(t: Task) -> Mm | None:
    """The mm t's coming exit or exec gives up: its mm, or, for a task preempted inside
    exec_mmap() (whose mm is the new one already), the old mm exec_mmap() still holds."""
    return t.mm if t.in_exec_mmap is None else t.in_exec_mmap.old_mm


def own_full_flush(ev: TraceEvent) -> bool:
    """A full TLB flush of the task's own mm, as dup_mmap()'s flush_tlb_mm() emits it:
    "remote ipi send" when other CPUs are in the mm's mm_cpumask, else a "local mm
    shootdown" alone; not one received in a hardirq, not a CR3 load."""
    return (
        isinstance(ev, TlbFlush)
        and ev.pages == -1
        and not ev.hardirq
        and not ev.cr3_load
        and ("ipi send" in ev.reason or "local mm shootdown" in ev.reason)
    )


def fork_flushes(events: list[TraceEvent]) -> dict[int, NewTask]:
    """Lines of tracepoint-only fork hints -> the fork they belong to: dup_mmap() ends with
    flush_tlb_mm() of the parent's mm, a full flush ("remote ipi send" when other CPUs are in
    its mm_cpumask, else a "local mm shootdown"), before task_newtask; between the two the
    parent only finishes copy_process(), or waits (a userfaultfd monitor reading the fork
    event). So a task's last full flush of its own (not in a hardirq, not a CR3 load) since
    its previous fork, before a task_newtask without CLONE_VM, is that fork's flush. Probe
    lines are not read."""
    hints: dict[int, NewTask] = {}
    last: dict[int, int] = {}  # pid -> line of its last own full flush since its last fork
    for ev in events:
        if own_full_flush(ev):
            last[ev.pid] = ev.line
        elif isinstance(ev, NewTask):
            line = last.pop(ev.pid, None)
            if line is not None and not ev.clone_flags & CLONE_VM:
                hints[line] = ev
        elif isinstance(ev, ProcessExec | ProcessExit):
            last.pop(ev.pid, None)
    return hints


def marked_fork_flushes(
    events: list[TraceEvent], use_mm_init: bool
) -> tuple[dict[int, NewTask], dict[int, int], set[int]]:
    """Where forks' dup_mmap() flushes ran, read with the probes that bind addresses: a
    fork's new mm is born (mm_init's return to copy_process(), or dup_mmap()'s probe on
    kernels traced without mm_init), and dup_mmap() ends with flush_tlb_mm() of the parent's
    mm whether or not it copied everything: the forking task's first full flush of its own
    after that birth. Its first line is the "remote ipi send" when other CPUs are in the
    mm's mm_cpumask (they act on the IPIs from there on; the "local mm shootdown" follows),
    else the local part alone. Returns (that line -> the fork's task_newtask, for forks that
    succeed; that line -> the new mm's address, for forks that fail: the forking task's
    exit_mmap() of that mm, with no task_newtask between, in dup_mmap() itself under strict
    overcommit or later in copy_process(): a cgroup's pids.max, a signal meanwhile), and
    the task_newtask lines of forks whose flush left no line: flush_tlb_func() returns
    untraced when the CPU's TLB is already at the mm's new generation, which a flush IPI
    arriving between dup_mmap()'s inc_mm_tlb_gen() and its local flush brings about (a
    task reclaiming memory on another CPU flushed every CPU every 35 us, `unseen47.c` on
    6.1): such a fork runs at its task_newtask, not at an earlier flush of its parent's.
    The birth is a probe: markers input only."""
    forks: dict[int, NewTask] = {}
    failed: dict[int, int] = {}
    unflushed: set[int] = set()
    pending: dict[int, tuple[int, int | None]] = {}  # pid -> (address, flush line)
    for ev in events:
        if isinstance(ev, Probe):
            if ev.function == EXIT_MMAP and not ev.returned:
                born = pending.get(ev.pid)
                if born is not None and born[0] == address(ev.args.get("mm")):
                    del pending[ev.pid]
                    if born[1] is not None:
                        failed[born[1]] = born[0]
            elif kv.births_read(ev, use_mm_init) and kv.born_in_fork(ev) and kv.born(ev):
                pending[ev.pid] = (kv.born(ev), None)
        elif own_full_flush(ev):
            born = pending.get(ev.pid)
            if born is not None and born[1] is None:
                pending[ev.pid] = (born[0], ev.line)
        elif isinstance(ev, NewTask):
            born = pending.pop(ev.pid, None)
            if born is not None and not ev.clone_flags & CLONE_VM:
                if born[1] is not None:
                    forks[born[1]] = ev
                else:
                    unflushed.add(ev.line)
        elif isinstance(ev, ProcessExec | ProcessExit):
            pending.pop(ev.pid, None)  # the task moved on
    return forks, failed, unflushed


def next_line(lines: list[int], line: int) -> int | None:
    """The first of the sorted `lines` after `line`, if any."""
    i = bisect.bisect_right(lines, line)
    return lines[i] if i < len(lines) else None


def line_before(lines: list[int], line: int) -> int | None:
    """The last of the sorted `lines` before `line`, if any."""
    i = bisect.bisect_left(lines, line)
    return lines[i - 1] if i > 0 else None


def last_flush(flushes: list[int], start: int, ends: list[int]) -> int | None:
    """Where a kernel path that began at line `start` flushed last: the last of `flushes`
    after `start` and before the first of `ends` after it; with none, that end; None when
    neither follows. Both lists are sorted lines."""
    j = bisect.bisect_right(ends, start)
    end = ends[j] if j < len(ends) else None
    i = bisect.bisect_left(flushes, end if end is not None else 1 << 62) - 1
    return flushes[i] if i >= 0 and flushes[i] > start else end


class MarkerSteps(HolderSteps):
    """The marker-driven steps; the Validator provides the state below (and HolderSteps')."""

    metrics: Metrics
    armed: dict[int, Probe]  # CPU -> exec's activate_mm marker, waiting for the CR3 load
    marker_done: set[int]  # id() of model tasks exec'd ahead of sched_process_exec
    pins: dict[int, list[str]]  # pid -> holders standing for __mmput's share
    # line of the event where __mmput runs (another task's exit_mmap, exit_mmap's final
    # flush...) -> (the mm_users holder standing in until then, its mm)
    deferred: dict[int, tuple[str, Mm]]
    unpinned: set[int]  # such lines where no pin follows (6.16+ exits, tracepoints only)
    exit_first: bool  # sched_process_exit before exit_mm() (6.16+, kv.exit_traced_first)
    # pid -> where its exit's __mmput() has returned by: its sched_process_exit before 6.16,
    # its last switch out (dead) since (kv.exit_traced_first)
    exit_ends: dict[int, list[int]]
    raced: set[int]  # mm addresses whose __mmput the model pinned
    late: set[int]  # pids whose pins stand for an __mmput after their sched_process_exit
    past_exit: set[int]  # pids past their sched_process_exit (in this life of the pid)

    def _cr3_of_armed_exec(self, ev: TraceEvent) -> bool:
        """The tlb_flush "flush on task switch" that the CR3 load of an armed exec's
        activate_mm emits: exec_mmap goes on (mmput, mmdrop_lazy_tlb) only after it, and under
        TCG switch_mm_irqs_off alone can take a millisecond."""
        armed = self.armed.get(ev.cpu)
        return (
            armed is not None
            and isinstance(ev, TlbFlush)
            and ev.pid == armed.pid
            and ev.own_cr3_load
        )

    def _fire_armed(self, ev: TraceEvent) -> None:
        """Anything else on that CPU before the CR3 load: exec_mmap happens first."""
        armed = self.armed.pop(ev.cpu)
        self._refusable(self._early_exec, armed)

    def _early_exec(self, ev: TraceEvent) -> None:
        """exec_mmap() ran in the CPU's current task: exec it in the model now rather than at
        sched_process_exec, which fires only once load_elf_binary() returns. de_thread() has
        already given an exec'ing non-leader thread its leader's pid: follow it."""
        t = self.replayer.m.state.rqs[ev.cpu].curr
        if t.pf_kthread or t.is_idle or id(t) in self.marker_done:
            return
        tasks = self.replayer.tasks
        if tasks.get(ev.pid) is not t:
            leader = tasks.get(ev.pid)
            pids = [pid for pid, other in tasks.items() if other is t]
            for pid in pids:
                del tasks[pid]
            tasks[ev.pid] = t
            self.replayer.tgid_of[ev.pid] = ev.pid
            if pids and leader is not None and leader.state is not TaskState.GONE:
                # exchange_tids(): the old leader, exiting but not yet switched out for the
                # last time, goes by the thread's old pid (that last switch shows it)
                tasks[pids[0]] = leader
        self.ctx = Context("exec", ev.line, ev.cpu, ev.pid)
        old = leaving_mm(t)
        if self.inputs == "markers" and self._last_user(t) is not None:
            self._kept_ahead(old, ev)  # (a vfork child's exec leaves its parent the mm)
        deferred = self._defer_mmput(t, ev) or self._defer_to_last(
            t, ev, self.index.ipi_sends, self.index.exec_lines, "exec"
        )
        if t.in_exec_mmap is not None:  # preempted inside it (_preempted_in_exec_mmap)
            self.m.resume_exec(t)
        else:
            self.m.exec(t)
        self.marker_done.add(id(t))
        if not deferred:
            self._pin(old, ev, f"__mmput of {t.name}'s old mm")

    def _preempted_in_exec_mmap(self, sw: SchedSwitch) -> None:
        """PREEMPT_RT, markers: the task switched out here was preempted inside exec_mmap(),
        its new mm installed, before activate_mm() (exec_preemptions): the model's exec runs
        up to there now, and the exec's activate_mm marker finishes it."""
        t = self.replayer.m.state.rqs[sw.cpu].curr
        if t.pf_kthread or t.is_idle or t.exiting or t.in_exec_mmap or id(t) in self.marker_done:
            return
        self.ctx = Context("exec", sw.line, sw.cpu, sw.prev_pid)
        self._refusable(self.m.exec, t, None, True)
        self.result.learned[
            "exec preempted inside exec_mmap, before activate_mm (PREEMPT_RT: migration "
            "disabled, and activate_mm loads no CR3)"
        ] += 1

    def _marker_exit(self, p: TraceEvent) -> None:
        """enter_lazy_tlb outside a switch: exit_mm() (or kthread_unuse_mm()) runs now (or,
        with sched inputs, the switch out before which exit_mm() is found to have run)."""
        t = self.replayer.m.state.rqs[p.cpu].curr
        self.ctx = Context("exit", p.line, p.cpu, p.pid)
        if t.uses_mm:
            self.m.kthread_unuse_mm(t)
        elif t.mm is not None and not t.exiting and not t.is_idle:
            mm = t.mm
            deferred = self._defer_mmput(t, p) or self._defer_to_last(
                t, p, self.index.own_flushes, self.exit_ends, "exit"
            )
            self.m.exit(t)
            if not deferred:
                self._pin(mm, p, f"__mmput of {t.name}")

    def _defer_to_last(
        self,
        t: Task,
        p: TraceEvent,
        flushes_by_pid: dict[int, list[int]],
        ends_by_pid: dict[int, list[int]],
        how: str,
    ) -> bool:
        """The model's __mmput() flushes at once; the kernel's exit_mmap() flushes at its end
        (tlb_finish_mmu), and the task can be preempted in between, so the IPIs (and, for an
        exit, its own CPU's switch to init_mm) land in later intervals. The task's last
        tlb_flush before sched_process_exit (an exit), or its last "remote ipi send" before
        sched_process_exec (exec's mmput of the old mm: the new mm's flushes are local), is
        that final flush; with none, the tracepoint itself. With markers, exit_mmap's return
        ends the search too (a later flush is the new mm's), and is the point with none. An
        mm_users reference taken now is put back there, and __mmput runs in the model at that
        point. Tracepoints only:
        with sched inputs it serves an exit found in its window and an exec at its hint."""
        if self._last_user(t) is None:
            return False
        # with no flush of its own, by the time exit_mmap flushed no CPU had the mm loaded
        # any more (they all switched away): __mmput ended before the tracepoint
        ends = ends_by_pid.get(p.pid, [])
        if self.inputs == "markers":  # exit_mmap's final flush comes before it returns
            ends = sorted(ends + self.index.mmput_returns.get(p.pid, []))
        at = last_flush(flushes_by_pid.get(p.pid, []), p.line, ends)
        if how == "exit" and at is not None:
            at = self._after_unmap_flush(p, at, ends) or at
        if at is None or at in self.deferred or not self._outlives(t, how):
            return False
        mm = leaving_mm(t)
        if how == "exec" and self.inputs == "sched" and mm is not None and mm.id in self.addr:
            # a task that migrates during its exec leaves CPUs lazy on its new mm, whose
            # flushes then send IPIs too: which "remote ipi send" was the old mm's last is a
            # guess, and a lazy user's switch may have come between the two
            self.raced.add(self.addr[mm.id])
        if how == "exit" and self.exit_first and self.inputs == "sched":
            # 6.16+, tracepoints only: exit_mmap() returns soon after its final flush, and
            # __mmput()'s mmdrop() follows: no pin after it (on our 6.17 captures a task
            # switched out after that flush had mostly finished __mmput() already)
            self.unpinned.add(at)
        return self._defer(
            t, p, at, f"exit_mmap's final flush in pid {p.pid} (line {at})",
            f"{how}'s __mmput at exit_mmap's final flush (tlb_flush)",
        )  # fmt: skip

    def _after_unmap_flush(self, p: TraceEvent, at: int, ends: list[int]) -> int | None:
        """Was the exiting task's flush at line `at` one that skipped lazy CPUs, not
        exit_mmap()'s final one? Then the end where its __mmput ends (None: `at` may be the
        final flush). The task's CPU has had the mm loaded, lazily, since exit_mm() at `p`;
        the final flush (tlb_finish_mmu() after free_pgtables(): freed_tables) runs
        flush_tlb_func() on every CPU of mm_cpumask, this one too, and a lazy CPU with the
        mm loaded switches to init_mm there: a CR3 load right after it. A flush with no CR3
        load on the task's CPU from exit_mm() until the task next switches out, with the
        end (sched_process_exit, exit_mmap's return) after that switch, skipped the lazy
        CPUs (native_flush_tlb_multi()'s should_flush_tlb()): an unmap flush, such as
        __unmap_hugepage_range()'s tlb_flush_mmu_tlbonly() of the whole mm after
        huge_pmd_unshare(). The final flush came after the task ran again, on a CPU that
        no longer had the mm loaded, and with no CPU left in mm_cpumask it flushed
        nothing: __mmput ends at the end."""
        if at in ends:
            return None  # no flush of its own
        end = next_line(ends, at)
        outs = sorted(self.index.rests.get(p.pid, []) + self.index.preemptions.get(p.pid, []))
        out = next_line(outs, p.line - 1)  # its first switch out from exit_mm() on
        if end is None or out is None or not at < out < end:
            return None  # it did not run on from exit_mm() to the flush, or did not switch out
        load = next_line(self.index.cr3_loads.get(p.cpu, []), p.line)
        return end if load is None or load > out else None

    def _outlives(self, t: Task, how: str) -> bool:
        """Does t's mm survive t's exit (or exec) in the model (tried on a copy)? An exiting
        task holds it lazily, an exec'd one's old mm has lazy users when other CPUs are sent
        IPIs for it; it survives unless the model drops a reference early (as the
        exit-mmput-before-lazy mutant does): then there is no flush to align, and holding the
        mm would hide the early free."""
        trial = Machine.from_state(self.m.config, clone_state(self.m.state))
        copy = next(x for x in trial.state.tasks if x.pid == t.pid and x.comm == t.comm)
        mm = leaving_mm(copy)
        assert mm is not None
        mm_id = mm.id
        try:
            if how == "exit":
                trial.exit(copy)
            elif copy.in_exec_mmap is not None:
                trial.resume_exec(copy)
            else:
                trial.exec(copy)
        except OperationError:
            return False
        return not any(m.id == mm_id and m.freed for m in trial.state.mms)

    def _past_exit(self, pid: int, line: int) -> bool:
        """Whether the task running as `pid` at `line` is past its sched_process_exit: not
        when the task that exited switched out dead ("X", "Z") since, for the pid's events
        are then another task's, a thread that exec'd and took its dead leader's pid in
        de_thread() (exchange_tids()) before exec_mmap() and sched_process_exec."""
        if pid not in self.past_exit:
            return False
        dead = line_before(self.index.final_switches.get(pid, []), line)
        exited = line_before(self.index.exit_lines.get(pid, []), line)
        return dead is None or exited is None or dead < exited

    def _put_back(self, ev: TraceEvent, holder: str, mm: Mm, pin: bool = True) -> None:
        """Where the kernel's __mmput ran (another task's exit_mmap, exit_mmap's final
        flush): put the reference _defer() took; __mmput runs in the model (flush, then the
        users' mmdrop), pinned until the task's next traced event: for a task past its
        sched_process_exit, its next switch out that is not a preemption."""
        self.ctx = Context("__mmput", ev.line, ev.cpu, ev.pid)
        self._refusable(self.m.mmput, holder, ev.cpu)
        if pin:
            self._pin(mm, ev, f"__mmput in pid {ev.pid}")
        if self._past_exit(ev.pid, ev.line) and ev.pid in self.pins:
            self.late.add(ev.pid)

    def _deferred_ends_here(self, ev: TraceEvent, pin: bool = True) -> bool:
        """An __mmput that _defer() left to this line runs now (True), or none does."""
        deferred = self.deferred.pop(ev.line, None)
        if deferred is None:
            return False
        self._put_back(ev, *deferred, pin=pin and ev.line not in self.unpinned)
        return True

    def _defer_mmput(self, t: Task, p: TraceEvent) -> bool:
        """With markers, exit_mmap says *where* __mmput runs: when t gives up its mm's last
        real user here but the kernel's exit_mmap of it runs in another task (a /proc
        reader's get_task_mm() held an mm_users reference), or in t itself only after its
        sched_process_exit (vhost's get_task_mm(), given back when exit_files() releases
        the device), that reference is taken in the model now and put back at that
        exit_mmap."""
        mm = self._last_user(t)
        if mm is None or self.inputs != "markers":
            return False
        elsewhere = self._mmput_elsewhere(mm, p)
        if elsewhere is None:
            return False
        line, pid = elsewhere
        if pid == p.pid:
            line = self._late_end(pid, line)
            why = f"an mm_users reference given back after exit (line {line})"
            learned = "__mmput after the task's exit (exit_mmap marker)"
        else:
            line = self._final_flush(pid, line)
            why = f"get_task_mm by pid {pid} (line {line})"
            learned = "__mmput run by another task (exit_mmap marker)"
        return self._defer(t, p, line, why, learned)

    def _final_flush(self, pid: int, start: int) -> int:
        """Where an __mmput run by another task (its exit_mmap at line `start`) flushed: the
        last tlb_flush of that task before exit_mmap returns, or with none (no CPU had the
        mm loaded any more) the return itself. The reader goes on running: its flushes
        after the return are its own mm's. Without the return marker (older captures), the
        exit_mmap marker itself."""
        returns = self.index.mmput_returns.get(pid, [])
        at = last_flush(self.index.own_flushes.get(pid, []), start, returns) if returns else None
        return start if at is None or at in self.deferred else at

    def _late_end(self, pid: int, start: int) -> int:
        """Where an __mmput after the task's exit (its exit_mmap at line `start`) flushed:
        its last own tlb_flush before it next switches out other than by preemption, or,
        with none (no CPU had the mm loaded any more), that switch itself: __mmput had
        returned by then."""
        at = last_flush(self.index.own_flushes.get(pid, []), start, self.index.rests.get(pid, []))
        return start if at is None else at

    def _last_user(self, t: Task) -> Mm | None:
        """The mm t's coming exit or exec puts (leaving_mm), if it puts its last real user."""
        mm = leaving_mm(t)
        if mm is not None and mm.mm_users == 1:
            return mm
        return None

    def _defer(self, t: Task, p: TraceEvent, at: int, holder: str, learned: str) -> bool:
        """An mm_users reference standing for the kernel's __mmput, which runs at line `at`:
        taken now (out of the metrics), it keeps the model's __mmput() from running until
        _put_back() puts it there."""
        mm = leaving_mm(t)
        assert mm is not None
        with self.metrics.unmetered():
            self.m.mmget_not_zero(mm, holder, p.cpu)
        self.deferred[at] = (holder, mm)
        self.result.learned[learned] += 1
        return True

    def _pin(self, mm: Mm | None, p: TraceEvent, what: str) -> None:
        """The model's __mmput() is one step; the kernel's can be preempted half way (inside
        exit_mmap) and finish much later. When an operation just ran __mmput() and the mm
        survived it (a lazy user holds it), the users' share of mm_count is given back to it
        as a pin until the task's next traced event, by which time the kernel's __mmput() has
        returned. Taken after the operation, so that a model that frees too early still
        does."""
        if mm is None or not mm.torn_down or mm.freed:
            return
        self._hold(mm, f"{what} (line {p.line})", p)

    def _hold(self, mm: Mm, holder: str, p: TraceEvent) -> None:
        """Pin `mm` (mm_count) in the name of p.pid's __mmput until that task's next traced
        event."""
        with self.metrics.unmetered():
            self.m.mmgrab(mm, holder, p.cpu)
        self.pins.setdefault(p.pid, []).append(holder)
        if mm.id in self.addr:
            self.raced.add(self.addr[mm.id])

    def _mmput_elsewhere(self, mm: Mm, ev: TraceEvent) -> tuple[int, int] | None:
        """The next exit_mmap of this life of mm's address, if another task runs it, or the
        same task after its sched_process_exit."""
        addr = self.addr.get(mm.id)
        if addr is None:
            return None
        runs = self.index.exit_mmaps.get(addr, [])
        i = bisect.bisect_right(runs, (ev.line, 1 << 62))
        if i == len(runs) or not self.index.same_life(addr, ev.line, runs[i][0]):
            return None  # none, or that exit_mmap belongs to a later life of the address
        line, pid = runs[i]
        if pid != ev.pid:
            return line, pid
        exits = self.index.exit_lines.get(pid, [])
        k = bisect.bisect_right(exits, ev.line)
        return (line, pid) if k < len(exits) and exits[k] < line else None

    def _unpin(self, ev: TraceEvent) -> None:
        self.ctx = Context("__mmput end", ev.line, ev.cpu, ev.pid)
        for holder in self.pins.pop(ev.pid):
            self.m.mmdrop(holder, ev.cpu)
