"""Exit windows found with tracepoints only (`--inputs sched`).

do_exit() runs exit_mm() before the sched_process_exit tracepoint (6.1 and 6.12 alike). A
task preempted in between, inside exit_mmap() most often, switches as a task without an mm:
the kernel clears its active_mm when it switches out and borrows the next CPU's mm when it
comes back, and no tracepoint has said a word. x86 leaves a trace all the same: every CR3
load in switch_mm_irqs_off() emits tlb_flush "flush on task switch" (reason
TLB_FLUSH_ON_TASK_SWITCH), so a task switched in *without* a CR3 load where the model loads
one (its mm is not the one the CPU has loaded) has no mm any more. Its exit_mm() ran after
the last sign that it still had one and after its last sleep, and before it last switched
out: there the model runs it (exit_point).

Signs that a task still has its mm, all tracepoints: a switch to it that loaded CR3, its own
"local mm shootdown" flush (flush_tlb_func() on a CPU that is not lazy: once exit_mm() has
run, its CPU is lazy), a fork, an exec, a rename by the task itself.

A CPU taken offline leaves a trace too: take_cpu_down() runs in its stopper thread
(migration/N), whose switch to the idle task on the dying CPU is not traced (RCU no longer
watches that CPU), and idle_task_exit() neither; the CPU next shows up when it comes back,
its idle task switching out while the last traced switch there went to the stopper
(returns).

The opposite sign, found before the fact: exit_mmap()'s first flush finds the exiting task's
CPU lazy (exit_mm()'s enter_lazy_tlb) and switches it to init_mm, a CR3 load outside any
context switch (lazy_exits). A user task's own CR3 load there is that, exec's activate_mm()
(an exec follows) or a text_poke() (two loads, there and back). When the task was not
switched out after that load but was preempted before it, its last preemption there may have
been inside exit_mmap() or before exit_mm(): the run time left from it to the load, against
exit_mmap()'s work after the load, decides (_preempted_in_exit_mmap); a statistical rule,
right for about five in six of the cases the markers of our captures show.

Those pairs are found too: own CR3 loads in a row on a CPU, nothing else traced there in
between, are text_poke()'s (load_runs, text_poke_hints).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

from activemm.trace.events import (
    LostEvents,
    NewTask,
    Probe,
    ProcessExec,
    ProcessExit,
    ProcessFork,
    ProcessFree,
    SchedSwitch,
    TaskRename,
    TlbFlush,
    TraceEvent,
    stopper_comm,
)
from activemm.trace.replay import CLONE_THREAD

# see ExitWindows._preempted_in_exit_mmap: kernels before 6.12 (measured on 6.1), and later
EXIT_MMAP_RATIO_6_1 = 3.25
EXIT_MMAP_RATIO = 2.25


def exit_mmap_ratio(version: tuple[int, ...]) -> float:
    """The run-to-tail ratio under which a preemption before exit_mmap()'s flush to init_mm
    is taken to be inside exit_mmap() (ExitWindows._preempted_in_exit_mmap), for a kernel
    of `version`."""
    return EXIT_MMAP_RATIO_6_1 if version < (6, 12) else EXIT_MMAP_RATIO


def ipi_load(e: TraceEvent) -> bool:
    """A flush IPI's CR3 load, not the task's own (TlbFlush.ipi_cr3_load; the scan has set
    the context switches' own loads apart)."""
    return isinstance(e, TlbFlush) and e.ipi_cr3_load


def interrupting(e: TraceEvent) -> bool:
    """An event that interrupted the running task rather than a step of its own:
    sched_process_free (delayed_put_task_struct(), an RCU callback: a softirq), a flush
    IPI's tlb_flush that loads no CR3 (in a hardirq)."""
    return isinstance(e, ProcessFree) or (isinstance(e, TlbFlush) and e.hardirq and not e.cr3_load)


def context_switch_loads(events: Iterable[object]) -> dict[int, SchedSwitch]:
    """The tlb_flush "flush on task switch" lines that context switches emit, each with its
    sched_switch: the CR3 load of switch_mm_irqs_off() is the next tracepoint on that CPU,
    in the context of the task switched out. (One switch is read both ways by the exec
    hints: a leader's to the thread whose exec takes its pid, markers.exec_hints.)"""
    loads: dict[int, SchedSwitch] = {}
    switching: dict[int, SchedSwitch] = {}  # CPU -> a switch whose CR3 load may follow
    for e in events:
        if isinstance(e, Probe) or not isinstance(e, TraceEvent):
            continue
        sw = switching.pop(e.cpu, None)
        if isinstance(e, SchedSwitch):
            switching[e.cpu] = e
        elif sw is not None and isinstance(e, TlbFlush) and e.cr3_load and e.pid == sw.prev_pid:
            loads[e.line] = sw
    return loads


@dataclass
class ExitWindows:
    """What the tracepoints say about tasks' mms, indexed by pid (sorted trace lines)."""

    cr3: set[int] = field(default_factory=set)  # sched_switch lines whose switch loaded CR3
    switch_loads: set[int] = field(default_factory=set)  # and the lines of those loads
    had_mm: dict[int, list[int]] = field(default_factory=dict)  # signs it still had its mm
    outs: dict[int, list[int]] = field(default_factory=dict)  # its switches out
    ins: dict[int, list[int]] = field(default_factory=dict)  # its switches in
    # timestamps of the lines above (switches, exits, own CR3 loads)
    ts: dict[int, float] = field(default_factory=dict)
    # its switches out that are neither preemptions ("R+") nor uninterruptible waits ("D")
    sleeps: dict[int, list[int]] = field(default_factory=dict)
    preempted: set[int] = field(default_factory=set)  # switch lines whose prev_state is "R+"
    exits: dict[int, list[int]] = field(default_factory=dict)  # its sched_process_exit
    # pid -> the thread group of a task from before the trace: the task snapshot's, else the
    # tgid column's (which tracefs prints from the pid's last recorded group when the trace
    # is read: a pid taken again later names its last life's group on every line)
    tgids: dict[int, int] = field(default_factory=dict)
    # pid -> (task_newtask line, thread group) of each task forked at that pid in the trace,
    # from clone's flags: the group of each life of a pid
    lives: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    # tgid -> (line, pid) of its tasks' sched_process_exit
    group_exits: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    # tasks that loaded CR3 outside a context switch, not for a flush IPI (ipi_load): exec,
    # exit_mmap's switch to init_mm, text_poke, and in a kernel thread kthread_use_mm()
    own_cr3: set[int] = field(default_factory=set)
    # those loads, and the ones of flush IPIs that found the task's CPU lazy (to init_mm)
    own_cr3_lines: dict[int, list[int]] = field(default_factory=dict)
    # sched_switch lines of a CPU back from offline: its idle task switches out while its
    # last traced switch was to its stopper thread
    returns: set[int] = field(default_factory=set)
    # runs of two or more own CR3 loads in a row on a CPU, nothing else traced there in
    # between: text_poke()'s use_temporary_mm() and unuse_temporary_mm(), a pair per
    # __text_poke(), and leave_mm() before them when the CPU was lazy (text_poke_hints)
    load_runs: list[list[int]] = field(default_factory=list)

    @classmethod
    def scan(cls, events: Iterable[object], tgids: dict[int, int] | None = None) -> ExitWindows:
        """`tgids`: the task snapshot's thread groups."""
        events = list(events)
        w = cls(tgids=dict(tgids or {}))
        snapshot = set(w.tgids)
        at_switch = context_switch_loads(events)
        running: dict[int, str] = {}  # CPU -> the comm its last traced switch went to
        run: dict[int, list[int]] = {}  # CPU -> its own CR3 loads since its last other event
        for e in events:
            if isinstance(e, Probe) or not isinstance(e, TraceEvent):
                continue  # not an input: the CR3 load's tlb_flush is the next tracepoint
            if e.tgid is not None and e.pid > 0 and e.pid not in snapshot:
                w.tgids.setdefault(e.pid, e.tgid)
            if interrupting(e):
                continue  # (an interrupt's, inside a run too: an EFI call runs irqs on)
            sw = at_switch.get(e.line)
            if sw is not None and isinstance(e, TlbFlush) and e.cpu == sw.cpu:
                w.cr3.add(sw.line)
                w.switch_loads.add(e.line)
                w.had_mm.setdefault(sw.next_pid, []).append(sw.line)
                continue
            if isinstance(e, TlbFlush) and e.own_cr3_load and not ipi_load(e):
                run.setdefault(e.cpu, []).append(e.line)
            elif len(loads := run.pop(e.cpu, [])) >= 2:
                w.load_runs.append(loads)
            if isinstance(e, LostEvents):
                running.pop(e.cpu, None)  # what ran there meanwhile is unknown
            elif isinstance(e, SchedSwitch):
                w.ts[e.line] = e.ts
                w.ins.setdefault(e.next_pid, []).append(e.line)
                if e.prev_pid == 0 and running.get(e.cpu) == stopper_comm(e.cpu):
                    w.returns.add(e.line)
                running[e.cpu] = e.next_comm
                w.outs.setdefault(e.prev_pid, []).append(e.line)
                if e.prev_state == "R+":
                    w.preempted.add(e.line)
                elif not e.prev_state.startswith("D"):
                    w.sleeps.setdefault(e.prev_pid, []).append(e.line)
            elif isinstance(e, TlbFlush) and (e.hardirq or ipi_load(e)):
                if e.cr3_load:  # a flush IPI found this CPU lazy
                    w.ts[e.line] = e.ts
                    w.own_cr3_lines.setdefault(e.pid, []).append(e.line)
            elif isinstance(e, TlbFlush):
                if "local mm shootdown" in e.reason:
                    w.had_mm.setdefault(e.pid, []).append(e.line)
                elif e.cr3_load:
                    w.ts[e.line] = e.ts
                    w.own_cr3.add(e.pid)
                    w.own_cr3_lines.setdefault(e.pid, []).append(e.line)
            elif isinstance(e, NewTask | ProcessFork):
                w.had_mm.setdefault(e.pid, []).append(e.line)
                if isinstance(e, NewTask):  # clone's flags say
                    group = w.group_of(e.pid, e.line) if e.clone_flags & CLONE_THREAD else None
                    w.lives.setdefault(e.child_pid, []).append((e.line, group or e.child_pid))
            elif isinstance(e, ProcessExec):
                w.had_mm.setdefault(e.exec_pid, []).append(e.line)
            elif isinstance(e, TaskRename) and e.rename_pid == e.pid:
                w.had_mm.setdefault(e.pid, []).append(e.line)
            elif isinstance(e, ProcessExit):
                w.ts[e.line] = e.ts
                w.exits.setdefault(e.exit_pid, []).append(e.line)
                tgid = w.group_of(e.pid, e.line)
                if tgid is not None and e.exit_pid == e.pid:
                    w.group_exits.setdefault(tgid, []).append((e.line, e.pid))
        w.load_runs += [loads for loads in run.values() if len(loads) >= 2]
        return w

    def text_poke_hints(self, exec_lines: set[int]) -> dict[int, tuple[int, ...]]:
        """Tracepoint-only text_poke() hints: line -> the lines of the own CR3 loads in a row
        that start there (a __text_poke() per pair).
        use_temporary_mm(poking_mm) and unuse_temporary_mm() each load CR3 outside any
        context switch, in the task that flips a static key or arms a kprobe, interrupts
        off: two own loads in a row on that CPU, a third before them when the CPU was lazy
        (leave_mm() first). A longer run is text_poke_bp()'s batch, or text_poke_copy()'s
        (an eBPF program JIT-compiled: a pair per page): one text_poke per pair. A run holding
        an exec hint (`exec_lines`, the exec's activate_mm()) has the pairs before the hint
        and those after it, each a text_poke. The other loads of a run are those
        text_pokes': () (nothing more to run there, and no kernel thread's kthread_use_mm()).
        A kernel thread's pairs may be EFI runtime calls instead (the caller decides:
        Validator._efi_not_poke)."""
        hints: dict[int, tuple[int, ...]] = {}
        for loads in self.load_runs:
            cut = [i for i, line in enumerate(loads) if line in exec_lines]
            for part in (loads[: cut[0]], loads[cut[0] + 1 :]) if cut else (loads,):
                if len(part) >= 2:
                    hints.update(dict.fromkeys(part[1:], ()))
                    hints[part[0]] = tuple(part)
        return hints

    def exit_point(self, pid: int, line: int) -> int | None:
        """Task `pid`, switched in at `line` without the CR3 load its mm needed: the switch
        out before which its exit_mm() ran, or None when its next fate is not an exit with
        no sign of an mm in between. Between exit_mm() and sched_process_exit a task is only
        preempted ("R+") or waits uninterruptibly ("D"); it neither sleeps ("S") nor gives
        up the CPU by itself ("R", cond_resched()): exit_mm() ran after the last sign that
        it had an mm and after its last switch out of another kind, before one of the
        preemptions and waits that followed. Which one no tracepoint says when the CPUs it
        came back to had its mm loaded all along (a kernel thread or the idle task borrowed
        it); the last, the switch out just before `line`, is taken: a wrong guess then
        misplaces only the exit window's own switches, where the first misplaced every
        switch before the window (an OOM victim waiting in "D" for a second before its
        exit_mm(): 544 switches on a 6-CPU capture, none with the last)."""
        span = self._without_mm(pid, line)
        if span is None:
            return None
        last = self._window_floor(pid, span[0], line)
        outs = self.outs.get(pid, [])
        j = bisect.bisect_left(outs, line) - 1
        return outs[j] if j >= 0 and outs[j] > last else None

    def lazy_exits(
        self, ratio: float = EXIT_MMAP_RATIO
    ) -> tuple[dict[int, int], set[int], dict[int, tuple[int, int]]]:
        """Switch line -> pid whose exit_mm() ran before it, known before the fact: the pid
        loaded CR3 by itself outside a context switch (exit_mmap()'s switch of its lazy CPU
        to init_mm), then switched out before its sched_process_exit, with no sign of an mm
        in between (no exec: not activate_mm()) and no other CR3 load of its own since its
        last sign of an mm (not a text_poke(), which loads two). The first such switch out
        is inside its exit window. When there is none, a preemption before the load may be
        (_preempted_in_exit_mmap, with `ratio`: exit_mmap_ratio() of the kernel's version):
        those switch lines are the second value. (A kernel thread's own loads are
        kthread_use_mm(): the validator runs these exits for user tasks only.) The third
        value: the loads that such a switch out follows -> (pid, that switch's line), where
        the validator runs the exit's exit_mm() and that flush (a flush IPI's load is among
        them, but only the task's own is exit_mmap()'s: Validator._exit_mmap_load)."""
        points: dict[int, int] = {}
        before: set[int] = set()
        exit_loads: dict[int, tuple[int, int]] = {}
        for pid, loads in self.own_cr3_lines.items():
            outs = self.outs.get(pid, [])
            for f in loads:
                span = self._without_mm(pid, f)  # None: an exec (activate_mm()) comes first
                if span is None or sum(span[0] < x < span[1] for x in loads) != 1:
                    continue
                k = bisect.bisect_right(outs, f)
                if k < len(outs) and outs[k] < span[1]:
                    points[outs[k]] = pid
                    exit_loads[f] = (pid, outs[k])
                elif (early := self._preempted_in_exit_mmap(pid, span, f, ratio)) is not None:
                    points[early] = pid
                    before.add(early)
        return points, before, exit_loads

    def _preempted_in_exit_mmap(
        self, pid: int, span: tuple[int, int], f: int, ratio: float
    ) -> int | None:
        """The lazy exit's load `f` comes after its task's last switch before its
        sched_process_exit, and the task's last switch out before `f`, after its last sign
        of an mm (or its last sleep), was a preemption ("R+"): inside its exit window, in
        exit_mmap() before the flush that found its CPU lazy, or before do_exit() reached
        exit_mm() (in user space, or early in its exit)? The work the task still had then
        tells: inside exit_mmap(), what was left of the unmapping (unmap_vmas(),
        free_pgtables()) before that flush, the first of a small mm's; before exit_mm(), all
        of it and more. The unmapping of an mm costs about what exit_mmap() does after the
        flush (freeing the gathered pages, remove_vma() for each VMA) up to
        sched_process_exit, so the preemption is taken to be inside when the task ran less
        than `ratio` times that tail from it to `f`. The ratio's scale is the kernel's: over
        2,413 such preemptions on 292 captures (committed and sweeps, the markers to tell),
        its median is 2.0 inside and 4.6 before on 6.1 (RT alike), 1.5 and 3.2 on 6.12. The
        threshold that places the most right is 3.25 on 6.1 and 2.25 on 6.12 on the
        committed captures and on the sweeps alike (exit_mmap_ratio()): 2,064 right, where
        2.5 for both placed 1,986.
        Only the last switch out before `f` is weighed: with preemptions or "D" waits before
        it, the earlier ones may have come before exit_mm() (an OOM victim waits long before
        it; taking the first cost hundreds of switches on the OOM captures), and taking the
        last, a wrong guess misplaces only the switches between it and the kernel's
        exit_mm(). A last switch out that is a "D" wait is left alone (inside exit_mmap() as
        often as before exit_mm(): no gain over 310 captures; nor from taking the earliest
        switch out, "D" waits included, that leaves less than `ratio` times the tail to run:
        801 switches out misplaced on the committed captures against 423), and so is a task
        whose thread group was dying while it ran up to that preemption or waited after it
        (_group_dying). Left alone, its exit_mm() runs at its sched_process_exit, unless it
        shows later (exit_point)."""
        outs = self.outs.get(pid, [])
        k = bisect.bisect_left(outs, f) - 1  # its last switch out before the load
        if k < 0 or outs[k] <= self._window_floor(pid, span[0], f):
            return None
        if outs[k] not in self.preempted or self._group_dying(pid, outs[k]):
            return None
        tail = self.ts[span[1]] - self.ts[f]
        return outs[k] if self._run_time(pid, outs[k], f) < ratio * tail else None

    def group_of(self, pid: int, line: int) -> int | None:
        """The thread group of the task that `pid` named at `line`: the one its last
        task_newtask before then gave it, else (a task from before the trace) the snapshot's
        or the tgid column's."""
        life = self._life(pid, line)
        return life[1] if life is not None else self.tgids.get(pid)

    def _life(self, pid: int, line: int) -> tuple[int, int] | None:
        """(task_newtask line, thread group) of the life of `pid` that `line` falls in; None
        for a task from before the trace."""
        lives = self.lives.get(pid, [])
        i = bisect.bisect_right(lives, line, key=lambda life: life[0]) - 1
        return lives[i] if i >= 0 else None

    def first_out(self, pid: int, line: int) -> bool:
        """The switch out at `line` is pid's first since its task_newtask (one traced)."""
        life = self._life(pid, line)
        if life is None:
            return False
        outs = self.outs.get(pid, [])
        j = bisect.bisect_left(outs, line) - 1
        return j < 0 or outs[j] < life[0]

    def _group_dying(self, pid: int, out: int) -> bool:
        """Did another task of pid's thread group reach its sched_process_exit while pid ran
        up to its switch out `out`, or while it waited to run again after it? Then
        exit_group() (or a fatal signal) is killing the group, and a task killed so exits as
        soon as it runs on: its preemption came before its exit_mm() (on the captures, 14
        placements of 15 with the exit while it ran were wrong). Had the preemption been
        inside its exit_mmap(), pid would have been the mm's last user: every other thread
        past its exit_mm() already, a few instructions from its sched_process_exit, not
        reaching it only now (on four captures of unseen26.c's killed NUMA workers, 20
        placements so, every one wrong; none on the 100 captures)."""
        tgid = self.group_of(pid, out)
        ins = self.ins.get(pid, [])
        i = bisect.bisect_left(ins, out) - 1
        if tgid is None or i < 0:
            return False
        back = ins[i + 1] if i + 1 < len(ins) else float("inf")
        exits = self.group_exits.get(tgid, [])
        return any(ins[i] < line < back and other != pid for line, other in exits)

    def _window_floor(self, pid: int, sign: int, line: int) -> int:
        """The later of `sign` (pid's last sign of an mm before `line`) and its last sleep
        before `line`: its exit_mm() ran after both (an exiting task never sleeps)."""
        sleeps = self.sleeps.get(pid, [])
        s = bisect.bisect_left(sleeps, line) - 1
        return max(sign, sleeps[s]) if s >= 0 else sign

    def _run_time(self, pid: int, start: int, end: int) -> float:
        """How long `pid` ran between lines `start` (a switch out of it) and `end`."""
        ins, outs = self.ins.get(pid, []), self.outs.get(pid, [])
        ran = 0.0
        for i in range(bisect.bisect_right(ins, start), len(ins)):
            if ins[i] >= end:
                break
            j = bisect.bisect_right(outs, ins[i])
            stop = outs[j] if j < len(outs) and outs[j] < end else end
            ran += self.ts[stop] - self.ts[ins[i]]
        return ran

    def _without_mm(self, pid: int, line: int) -> tuple[int, int] | None:
        """The stretch of pid's life around `line` that shows no sign of an mm: from its
        last sign before `line` (or the sched_process_exit of an earlier life of the pid,
        or -1) to its next sched_process_exit. None when it does not exit after `line`, or
        shows an mm again before it does."""
        exits = self.exits.get(pid, [])
        i = bisect.bisect_right(exits, line)
        if i == len(exits):
            return None
        signs = self.had_mm.get(pid, [])
        j = bisect.bisect_right(signs, line)
        if j < len(signs) and signs[j] < exits[i]:
            return None
        start = max(signs[j - 1] if j > 0 else -1, exits[i - 1] if i > 0 else -1)
        return start, exits[i]
