"""Scoring what the model predicted against what the kernel did, and why each miss happened.

`Result` collects the three scores and the mismatches; `DropScorer` and `score_outside` match
the __mmdrop and outside-schedule lists of both sides as multisets."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from activemm.validate.kernel import Drop, Outside, hexaddr

MAX_MISMATCHES = 50
HELD_OUTSIDE = (
    "mm_count held outside the scheduler (io_uring's ctx->mm_account, the OOM killer's "
    "signal->oom_mm, an open /proc/PID/mem, a userfaultfd, a binder file's alloc->mm, "
    "a write of /proc/PID/oom_score_adj, "
    "a KVM VM's kvm->mm, khugepaged's scan cursor, ksmd's mm_slot...) and dropped later "
    "elsewhere, or not within the trace: no input announces it"
)
ELSEWHERE = (
    "__mmput ran in another task (an mm_users reference such as a /proc reader's "
    "get_task_mm()): only the exit_mmap marker says so"
)
EXIT_WINDOW = "exit window (exit_mm ran before sched_process_exit)"
# 6.16+ (validate/kernel.py exit_traced_first): the tracepoint comes first
MMPUT_END = (
    "__mmput's end (6.16+, tracepoints only): the model ends it at exit_mmap's final flush; "
    "the kernel's was preempted after that flush, or ended only after the task switched out"
)
EXIT_WINDOW_AFTER = (
    "exit window (6.16+: exit_mm ran after sched_process_exit; the task was preempted or "
    "waited in between, in perf_event_exit_task())"
)
EXEC_PREEMPTED = (
    "exec window: the task was preempted inside exec_mmap(), after it set tsk->mm and before "
    "activate_mm() (PREEMPT_RT lets it be; the exec's marker comes only after)"
)
AFTER_EXIT = (
    "__mmput ran in the exiting task after its sched_process_exit (an mm_users reference one "
    "of its files held, such as vhost's dev->mm, put back in exit_files()): no tracepoint "
    "marks it"
)
FOLLOWS = "follows an earlier miss on this CPU: the mm it borrows lazily came from that switch"
INFERRED_EXIT = (
    "exit window inferred where there was none (tracepoints only): the task came back without "
    "the CR3 load the model's CPU needed, because that CPU had dropped to init_mm on a flush the "
    "kernel's CPU took while it still ran the mm (a flush IPI placed later than the kernel's)"
)
INFERRED_IN_EXIT_MMAP = (
    "exit window inferred where there was none (tracepoints only): the task's last preemption "
    "before exit_mmap switched its CPU to init_mm was taken to be inside exit_mmap (it ran "
    "little from there to that switch, against exit_mmap's work after it), but it came before "
    "do_exit reached exit_mm"
)
LATE_FLUSH = (
    "exit_mmap's TLB flush ran after a context switch (the kernel's __mmput was preempted); "
    "the model's one-step __mmput flushes before it"
)
RACE = (
    "the end of a __mmput (the exiting task's, exec's or a /proc reader's) and the last lazy "
    "user's switch raced: no input says which came first"
)
TAINTED = "follows an earlier missed switch that involved this mm"
RCU_PENDING = (
    "PREEMPT_RT: the RCU callback that frees this mm (mmdrop_sched's call_rcu) had not run "
    "when the trace ended; the model ran it where the CPU's rcuc (or, offloaded, rcuop) "
    "thread last ran, every CPU having switched and the grace-period kthread having run twice "
    "since the call_rcu, but the kernel's grace period was longer (preempted readers, lazy "
    "RCU's batching: not in the inputs)"
)
IPI_TIMING = (
    "flush IPI reached this lazy CPU in another lazy episode than the model's (it had loaded "
    "a user mm in between)"
)
IPI_LATE = "model IPIs a CPU the kernel's flush did not switch (it was no longer lazy)"
IPI_AFTER_SWITCH = (
    "the flush IPI waited for this CPU's context switch (no event there between the flush "
    "and a switch that loaded a user mm: interrupts are off from __schedule() to "
    "finish_task_switch(), and a stalled vCPU takes none): flush_tlb_func() then found "
    "another mm loaded, or its TLB caught up, and returned without switching to init_mm"
)
UNMAP_FLUSH = (
    "__mmput run at one point, its exit_mmap marker or its task's last traced flush (this "
    "capture has no exit_mmap return markers): any flush the kernel had made by then was an "
    "unmap flush, which skips lazy CPUs (no page tables freed yet); its final flush came "
    "later, after the lazy CPU had left, and had no CPU to IPI (nothing traced)"
)
MISSED_PROBE = (
    "the kernel's switch_mm_irqs_off probe missed this hit (its tlb_flush shows the CR3 load "
    "to init_mm, which the model followed): the flush IPI came while another kprobe's "
    "handler ran on that CPU, and kprobes do not nest (kprobe_profile's nmissed)"
)
FORK_FLUSH = (
    "a fork's dup_mmap() flush of the parent's mm that the model ran after the kernel's (a failed "
    "fork whole at its exit_mmap marker; with tracepoints only, a fork at the local part of its "
    "flush, after the IPIs went out): this CPU was not lazy yet at the kernel's (the parent's "
    "first full tlb_flush after the fork's mm_init)"
)
HOTPLUG = (
    "CPU hotplug: no input says when a CPU goes offline (idle_task_exit, finish_cpu) or comes "
    "back (with tracepoints only, the model learns it when the CPU is back)"
)
CONCURRENT = (
    "two CPUs let go of this mm at once (their finish_task_switch drops raced): which "
    "decrement was last (on PREEMPT_RT, which CPU queued the RCU callback) is not in the inputs"
)
RCU_MOVED = (
    "PREEMPT_RT: the RCU callback that frees this mm was queued on a CPU that then went "
    "offline, and takedown_cpu()'s rcutree_migrate_callbacks() moved it to the CPU taking it "
    "down, whose rcuc thread ran it; the model's grace period (every CPU switched since the "
    "call_rcu) had ended before, and it ran the callback where it was queued"
)
RELEASE_RACE = (
    "a holder's release and the last lazy user's switch raced: the release's marker came "
    "before that switch, its mmdrop() after it (its task preempted, or its vCPU stalled, in "
    "between), and which was last is not in the inputs"
)
RELEASE_ENDED_FIRST = (
    "a holder's release and the last lazy user's switch raced the other way: the release's "
    "marker (where the model drops its reference) came after that switch's sched_switch and "
    "before its finish_task_switch() dropped the CPU's lazy reference (the vCPU stalled in "
    "between); the model runs a switch where it is traced, and which mmdrop() was last is not "
    "in the inputs"
)
RELEASED_AT_ONCE = (
    "two holders let go of this mm at once (their releases ran side by side, e.g. two io_uring "
    "rings freed by two kworkers): each mmdrop() comes a little after its marker, and which "
    "was last is not in the inputs"
)
FAILED_EXEC = (
    "an execve that failed (no such file, not a program...): bprm_mm_init's mm was born and "
    "freed in the task without a tracepoint; only the exit_mmap marker shows it"
)
FAILED_FORK = (
    "a fork that failed after copy_mm() (a cgroup's pids.max, a signal meanwhile): dup_mm's "
    "copy was born and freed in the parent without a tracepoint; only the exit_mmap marker "
    "shows it"
)
KTHREAD_USE_MM = (
    "kthread_use_mm: no tracepoint marks a kernel thread taking a user mm (its switch_mm_irqs_off "
    "is a marker)"
)
TEXT_POKE = (
    "text_poke's use_temporary_mm(poking_mm) and back: no tracepoint marks it (its kprobe is "
    "a marker)"
)
BORROWED_PREV = (
    "exec from a task without an mm: activate_mm's prev is the mm it borrowed, another in the "
    "model after an earlier miss on this CPU"
)
EFI_AS_POKE = (
    "an EFI runtime call the model ran as a text_poke (tracepoints only): a kernel thread's "
    "two CR3 loads are either's when its CPU has init_mm loaded, and nothing after showed "
    "the call come back to the thread's active_mm (its switch_mm_irqs_off is a marker)"
)
PRE_TRACE = "first switch of the CPU (state from before the trace)"
PRE_TRACE_LOADED = (
    "the CPU was lazy on this mm when the trace began and has loaded no user mm since: whether "
    "a flush (or leave_mm) before the trace had already moved its hardware to init_mm (x86 "
    "loaded_mm, and with it the CPU's bit in mm_cpumask) no input shows"
)
UNEXPLAINED = "unexplained"
PID_SHARED = (
    "pid taken again while the exited task it named had yet to switch out for the last time "
    "(its parent reaped it first): two tasks go by the pid, and which one a switch names no "
    "tracepoint says when both wait on that CPU"
)
NEARBY = 30  # trace lines: two CPUs' switches racing on one mm sit this close
# a context switch's own lines on its CPU after its hook's probe: the tlb_flush of its CR3
# load (x86), the finish_task_switch() probe
SWITCH_TAIL = 2


@dataclass
class Score:
    total: int = 0
    matched: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"total": self.total, "matched": self.matched}


@dataclass
class Result:
    trace: str
    preset: str
    inputs: str
    kernel: str | None
    context_switches: Score = field(default_factory=Score)
    mmdrop: Score = field(default_factory=Score)
    outside_schedule: Score = field(default_factory=Score)
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    mismatch_count: int = 0
    causes: Counter[str] = field(default_factory=Counter)
    learned: Counter[str] = field(default_factory=Counter)
    anomalies: Counter[str] = field(default_factory=Counter)
    preset_from: str = "--preset"  # how the preset was chosen
    # the kernel's preemption: voluntary (Debian 12's default, and a bare trace's), full
    # (capture --kernel-args preempt=full), lazy (Debian 13's 6.17 default), none, or rt
    # (PREEMPT_RT)
    preemption: str = "voluntary"
    # sched inputs: switch line -> pid whose exit_mm() was found to run before it: after the
    # fact (switched in later without a CR3 load), and before it (exit_mmap's switch of its
    # CPU to init_mm), as the model ran them
    exit_points: dict[int, int] = field(default_factory=dict)
    lazy_exit_points: dict[int, int] = field(default_factory=dict)
    # and those placed at a preemption before exit_mmap's switch of the CPU to init_mm
    early_exit_points: dict[int, int] = field(default_factory=dict)
    # 6.16+: switch line -> pid whose exit_mm() ran once it was back there, after a
    # preemption past its sched_process_exit
    late_exit_points: dict[int, int] = field(default_factory=dict)

    def mismatch(
        self, group: str, line: int, predicted: dict[str, Any], kernel: dict[str, Any], cause: str
    ) -> None:
        """Count one miss under its cause; the first MAX_MISMATCHES are kept in full."""
        self.mismatch_count += 1
        self.causes[cause] += 1
        if len(self.mismatches) < MAX_MISMATCHES:
            self.mismatches.append({"group": group, "line": line, "predicted": predicted,
                                    "kernel": kernel, "cause": cause})  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        return {
            "trace": self.trace,
            "preset": self.preset,
            "preset_from": self.preset_from,
            "preemption": self.preemption,
            "inputs": self.inputs,
            "kernel": self.kernel,
            "context_switches": self.context_switches.as_dict(),
            "mmdrop": self.mmdrop.as_dict(),
            "outside_schedule": self.outside_schedule.as_dict(),
            "mismatches": self.mismatches,
            "mismatch_causes": dict(self.causes),
            "learned": dict(self.learned),
            "anomalies": dict(self.anomalies),
        }


# syscalls that mmgrab() another process's mm and mmdrop() it before they return, their
# marker at the mmgrab(): lazy CPUs that let go in between are why that mmdrop() is the last
SYSCALL_POINTS = ("process_mrelease", "__set_oom_adj")
# where the kernel drops a reference held outside the scheduler: an unknown place, or one
# whose marker the model follows (its misses have the same cause without the marker)
RELEASE_POINTS = (
    "io_ring_ctx_free",
    "proc_release",
    "uffd_release",
    "khugepaged",
    "ksm",
    "binder_release",
    "kvm_destroy_vm",
    *SYSCALL_POINTS,
)
HELD_POINTS = ("other", *RELEASE_POINTS, "mmdrop_async")


class DropScorer:
    """__mmdrop: both sides as multisets of (address, point); each miss gets its cause."""

    def __init__(
        self,
        result: Result,
        inputs: str,
        exit_marks: dict[int, list[tuple[int, int]]],
        tainted: set[int],
        raced: set[int],
        births: dict[int, list[int]] | None = None,
        unclaimed: dict[int, str] | None = None,
        offlined: set[int] | None = None,
        after_exit: set[int] | None = None,
        let_go: dict[int, list[tuple[int, int]]] | None = None,
        exec_mmputs: set[int] | None = None,
        release_raced: set[int] | None = None,
        exit_first: bool = False,
        hotplug_lines: dict[int, list[int]] | None = None,
        kthread_used: dict[int, list[int]] | None = None,
        cpu_lines: dict[int, list[int]] | None = None,
    ) -> None:
        self.result = result
        # sched_process_exit before exit_mm() (6.16+): __mmput's end is no window's
        self.window_cause = MMPUT_END if exit_first else EXIT_WINDOW
        self.inputs = inputs
        # mm address -> (line, pid) of each exit_mm marker of it, every life of the address
        self.exit_marks = exit_marks
        self.tainted = tainted  # addresses of mms in context switches the model missed
        self.raced = raced  # addresses whose __mmput the model pinned until a later event
        self.births = births or {}  # address -> lines where mm_init handed it out
        # kernel __mmdrop lines of mms the model never had -> "exec" or "fork" (what failed)
        self.unclaimed = unclaimed or {}
        self.offlined = offlined or set()  # addresses a CPU going offline still borrowed
        # addresses whose __mmput ran in a task past its sched_process_exit
        self.after_exit = after_exit or set()
        # address -> (line, CPU) of each context switch that moved a CPU off it
        self.let_go = let_go or {}
        # addresses whose __mmput an exec ran (exec_mmap()'s mmput() of the task's old mm)
        self.exec_mmputs = exec_mmputs or set()
        # addresses whose release's mmdrop() came after a lazy CPU let go, its marker before
        self.release_raced = release_raced or set()
        self.hotplug_lines = hotplug_lines or {}  # CPU -> lines of its hotplug steps
        # address -> lines of the kernel's kthread_use_mm() of it (its switch_mm_irqs_off)
        self.kthread_used = kthread_used or {}
        self.cpu_lines = cpu_lines or {}  # CPU -> the lines of its events, probes too
        self.model_mmputs: dict[int | None, set[object]] = {}  # address -> pids, model side
        self.kernel_lines: dict[int | None, list[int]] = {}  # address -> its __mmdrop lines
        # side -> its frees in a finish_task_switch
        self.finishes: dict[str, list[Drop]] = {}
        # address -> lines where the model's __mmput freed it
        self.puts: dict[int | None, list[int]] = {}
        # address -> lines where the model freed it at a holder's release
        self.release_lines: dict[int | None, list[int]] = {}
        # side -> its frees at the release of a reference held outside the scheduler
        self.releases: dict[str, list[Drop]] = {}
        self.model_side: dict[int | None, list[Drop]] = {}  # address -> the model's frees

    def score(self, kernel_drops: list[Drop], model_drops: list[Drop]) -> None:
        res = self.result
        sides = (("kernel", kernel_drops), ("model", model_drops))
        self.finishes = {
            side: [x for x in drops if x.point[0] == "finish_task_switch"] for side, drops in sides
        }
        self.releases = {
            side: [x for x in drops if x.point[0] in RELEASE_POINTS] for side, drops in sides
        }
        self.rcu_frees = {
            side: [x for x in drops if x.point[0] == "call_rcu"] for side, drops in sides
        }
        other = {d.addr for d in kernel_drops if d.point[0] in HELD_POINTS}
        self.kernel_lines = {}
        for d in kernel_drops:
            self.kernel_lines.setdefault(d.addr, []).append(d.line)
        self.model_mmputs, self.puts, self.model_side = {}, {}, {}
        self.release_lines = {}
        for m in model_drops:
            self.model_side.setdefault(m.addr, []).append(m)
            if m.point[0] in RELEASE_POINTS:
                self.release_lines.setdefault(m.addr, []).append(m.line)
            if m.point[0] == "__mmput":
                self.model_mmputs.setdefault(m.addr, set()).add(m.point[1])
                self.puts.setdefault(m.addr, []).append(m.line)
        elsewhere = {d.addr for d in kernel_drops if self.mmput_by_another(d)}
        window = {d.addr for d in kernel_drops if self.exit_window_drop(d)}
        # freed by a kernel thread's kthread_use_mm() (the mm it kept lazily since its last
        # kthread_unuse_mm()): with tracepoints only, neither call shows
        in_kthread = {d.addr for d in kernel_drops if self.unseen_kthread_use(d)}
        # a lazy user's finish overlapping an __mmput's end (their model side: that __mmput)
        overlapped = {d.addr for d in kernel_drops if _finish_overlapped(d, self.puts)}
        # and a release's end (its model side: that release)
        ended_first = {d.addr for d in kernel_drops if _finish_overlapped(d, self.release_lines)}
        # PREEMPT_RT: the model's RCU frees of lives the kernel never freed in the trace (their
        # callback still waited for a grace period): of a point's frees, left over first
        pending = {id(d) for d in model_drops if d.point[0] == "call_rcu" and self.kernel_kept(d)}
        kernel_left, model_left = self.pair(kernel_drops, model_drops, pending)
        missed: dict[int | None, list[tuple[Drop, str]]] = {}  # address -> kernel-side misses
        for d in kernel_drops:
            res.mmdrop.total += 1
            if id(d) not in kernel_left:
                res.mmdrop.matched += 1
                continue
            near = sorted(
                (m for m in model_drops if m.addr == d.addr), key=lambda m: abs(m.line - d.line)
            )[:1]
            predicted = {"freed_at": list(near[0].point), "line": near[0].line} if near else {}
            kernel = {"mm": hexaddr(d.addr), "freed_at": list(d.point)}
            cause = (
                CONCURRENT if self.concurrent(d, "model")
                else RCU_MOVED if self.moved_offline(d, "model")
                else RELEASED_AT_ONCE if self.released_at_once(d, "model")
                else self.cause(d)
            )  # fmt: skip
            res.mismatch("mmdrop", d.line, predicted or {"freed_at": "never"}, kernel,
                         cause)  # fmt: skip
            missed.setdefault(d.addr, []).append((d, cause))
        for d in model_drops:
            if id(d) in model_left:
                res.mmdrop.total += 1
                cause = (
                    CONCURRENT if self.concurrent(d, "kernel")
                    else RCU_MOVED if self.moved_offline(d, "kernel")
                    else RELEASED_AT_ONCE if self.released_at_once(d, "kernel")
                    else RCU_PENDING if id(d) in pending
                    else RELEASE_RACE if d.addr in self.release_raced
                    else RELEASE_ENDED_FIRST
                    if d.addr in ended_first and d.point[0] in RELEASE_POINTS
                    else HELD_OUTSIDE if d.addr in other or self.kernel_kept(d)
                    else KTHREAD_USE_MM if d.addr in in_kthread
                    else AFTER_EXIT if self.late_mmput(d.addr)
                    else RACE if d.addr in self.raced
                    # the kernel's free of the same mm, elsewhere: the same cause
                    else paired if (paired := self.paired_cause(d, missed)) is not None
                    else ELSEWHERE if d.addr in elsewhere
                    else self.window_cause if d.addr in window
                    else HOTPLUG if self.offline_borrowed(d)
                    else TAINTED if d.addr in self.tainted
                    else RACE if d.point[0] == "__mmput" and d.addr in overlapped
                    # its exit __mmput, run whole at sched_process_exit (tracepoints only),
                    # of an mm the kernel freed before: that __mmput ended inside the window
                    else self.window_cause if self.exit_window_drop(d)
                    and d.addr in self.kernel_lines
                    else "model freed an mm the kernel did not"
                )  # fmt: skip
                predicted = {"mm": d.name, "address": hexaddr(d.addr), "freed_at": list(d.point)}
                res.mismatch("mmdrop", d.line, predicted, {"freed_at": "not here"}, cause)

    def pair(
        self, kernel_drops: list[Drop], model_drops: list[Drop], pending: set[int]
    ) -> tuple[set[int], set[int]]:
        """Match the two sides' frees of each (address, point), the ids of those left over on
        each side returned. A point repeats across the lives of an address (PREEMPT_RT's
        ("call_rcu", CPU) above all: a slab address serves many mms), so frees are paired
        within a life first (life(), in line order), and only then across lives (a model
        free that ran after the kernel had handed the address out again), the `pending` ones
        (model frees of lives the kernel never freed in the trace) last: as many matches as
        multisets give, and a miss left in the life where it happened, so that its cause is
        sought there."""
        sides: dict[tuple[object, ...], tuple[list[Drop], list[Drop]]] = {}
        for i, drops in enumerate((kernel_drops, model_drops)):
            for d in drops:
                sides.setdefault((d.addr, d.point), ([], []))[i].append(d)
        kernel_left: set[int] = set()
        model_left: set[int] = set()
        for kernel, model in sides.values():
            lives: dict[tuple[int | None, int], tuple[list[Drop], list[Drop]]] = {}
            for i, drops in enumerate((kernel, model)):
                for d in drops:
                    lives.setdefault(self.life(d.addr, d.in_life), ([], []))[i].append(d)
            ks: list[Drop] = []
            ms: list[Drop] = []
            for k, m in lives.values():
                n = min(len(k), len(m))
                ks += k[n:]
                ms += m[n:]
            ms.sort(key=lambda d: (id(d) in pending, d.line))
            n = min(len(ks), len(ms))
            kernel_left.update(id(d) for d in ks[n:])
            model_left.update(id(d) for d in ms[n:])
        return kernel_left, model_left

    def paired_cause(self, d: Drop, missed: dict[int | None, list[tuple[Drop, str]]]) -> str | None:
        """The model freed d's mm where the kernel did not: the cause found for the kernel's
        free of that mm, elsewhere (its miss nearest to d in the same life of the address), so
        that both sides of one miss say the same; None when that life has no kernel miss, or
        its cause is unexplained. (The address-wide sets of the chain after it mix lives: a
        slab address serves many mms.)"""
        life = self.life(d.addr, d.in_life)
        same = [(k, c) for k, c in missed.get(d.addr, []) if self.life(k.addr, k.line) == life]
        if not same:
            return None
        _, cause = min(same, key=lambda kc: abs(kc[0].line - d.line))
        return None if cause == UNEXPLAINED else cause

    def kernel_kept(self, d: Drop) -> bool:
        """The model freed this mm, and in the kernel that life of its address (from the
        mm_init before the model's free to the next) saw no __mmdrop at all: a reference the
        inputs never showed kept it past the end of the trace (or freed it where no probe
        sees it, as mmdrop_async() can)."""
        start, _ = self.life(d.addr, d.in_life)
        return start is not None and not self.in_its_life(d, self.kernel_lines.get(d.addr, []))

    def in_its_life(self, d: Drop, lines: list[int]) -> bool:
        """One of `lines` falls inside the life of d's address that d ends (from before the
        trace, when no mm_init of the address came before it)."""
        start, end = self.life(d.addr, d.in_life)
        lo = -1 if start is None else start
        return any(lo < line < end for line in lines)

    def exited_from(self, addr: int | None, line: int) -> int | None:
        """The pid whose exit_mm() let go of the mm at `addr` in the life `line` falls in,
        before `line` (None: no exit did)."""
        start, _ = self.life(addr, line)
        marks = [(at, pid) for at, pid in self.exit_marks.get(addr or 0, []) if at < line]
        if not marks or (start is not None and marks[-1][0] < start):
            return None
        return marks[-1][1]

    def life(self, addr: int | None, line: int) -> tuple[int | None, int]:
        """The life of `addr` that `line` falls in: the line of the mm_init that handed it
        out before (None: none in the trace) and of the next one (a huge line: none)."""
        births = self.births.get(addr, []) if addr is not None else []
        i, j = bisect.bisect_left(births, line), bisect.bisect_right(births, line)
        return births[i - 1] if i else None, births[j] if j < len(births) else 1 << 62

    def concurrent(self, d: Drop, other_side: str) -> bool:
        """Both sides freed this mm in a finish_task_switch, of different switches: two CPUs
        let go of their lazy references at once, and which decrement came last is not in the
        inputs (the probe is at finish_task_switch's entry, the mmdrop after it). Close
        together, or far apart when the kernel's finish ran on past the other switch: its
        CPU stalled between its switch and the mmdrop (a vCPU the host did not run: 8 ms
        with nothing traced on a 5-CPU capture under TCG)."""
        if d.point[0] == "call_rcu":
            return self.queued_at_once(d, other_side)
        if d.point[0] != "finish_task_switch":
            return False
        others = self.finishes.get(other_side, [])
        if _freed_nearby(d, others):
            return True
        pairs = ((d, x) for x in others) if other_side == "model" else ((x, d) for x in others)
        return any(_finish_stalled(k, m) for k, m in pairs)

    def ended_in_window(self, d: Drop) -> bool:
        """Tracepoints only: the kernel freed d's mm before the model's __mmput of it, which
        ran whole at the sched_process_exit of the task that exited from it: the kernel's
        __mmput had ended inside that exit window (the task was preempted after it, before
        the tracepoint), and the last lazy user's switch freed the mm then. On PREEMPT_RT
        that switch's mmdrop_sched() queued the free (call_rcu) and an RCU callback ran it
        later, after the model's __mmput perhaps: the switch on that CPU that let go of the
        mm last before the free is when."""
        when = d.line
        if d.point[0] == "call_rcu":
            when = self.last_let_go(d.addr, d.point[1], when) or when
        return any(
            self.exit_window_drop(m) and m.line > when for m in self.model_side.get(d.addr, [])
        )

    def queued_at_once(self, d: Drop, other_side: str) -> bool:
        """PREEMPT_RT: both sides freed this mm from an RCU callback, queued on two CPUs
        (the one whose mmdrop_sched() was last), and the kernel's switches moved those two
        CPUs off the mm within NEARBY lines of each other: they let go at once. Or further
        apart, the kernel's CPU first, when that CPU traced nothing after its switch's own
        lines until the model's CPU let go (stalled_after): its finish_task_switch() ran
        its mmdrop_sched() late, after the other CPU's."""
        others = [x for x in self.rcu_frees.get(other_side, []) if x.addr == d.addr]
        other = min(others, key=lambda x: abs(x.line - d.line), default=None)
        if other is None or other.point == d.point:
            return False
        end = d.line if other_side == "model" else other.line  # the kernel's __mmdrop
        mine, theirs = (self.last_let_go(d.addr, cpu, end) for cpu in (d.point[1], other.point[1]))
        if mine is None or theirs is None:
            return False
        if abs(mine - theirs) <= NEARBY:
            return True
        kernel_cpu, kernel_at, model_at = (
            (d.point[1], mine, theirs) if other_side == "model" else (other.point[1], theirs, mine)
        )
        return kernel_at < model_at and self.stalled_after(kernel_cpu, kernel_at, model_at)

    def stalled_after(self, cpu: object, switch: int, until: int) -> bool:
        """Nothing was traced on `cpu` after its context switch's hook at line `switch` but
        that switch's own lines (its CR3 load's tlb_flush, its finish_task_switch() probe)
        until line `until`: the CPU may have stalled inside that finish, before its mmdrop
        (a vCPU the host did not run)."""
        lines = self.cpu_lines.get(cpu) if isinstance(cpu, int) else None
        if not lines:
            return False
        between = bisect.bisect_left(lines, until) - bisect.bisect_right(lines, switch)
        return between <= SWITCH_TAIL

    def last_let_go(self, addr: int | None, cpu: object, before: int) -> int | None:
        """The line of the last kernel switch on `cpu` that moved it off the mm at `addr`
        before line `before` (None: none did)."""
        moves = [line for line, c in self.let_go.get(addr or 0, []) if c == cpu and line < before]
        return moves[-1] if moves else None

    def moved_offline(self, d: Drop, other_side: str) -> bool:
        """PREEMPT_RT: both sides freed this mm from an RCU callback, the kernel's run by
        another CPU's rcuc than the model's, and the model's CPU went through hotplug steps
        (cpuhp_enter, a tracepoint) between the model's free and the kernel's: the kernel's
        grace period had not ended when that CPU went down, and takedown_cpu()'s
        rcutree_migrate_callbacks() moved the callback to the CPU taking it down; the
        model's grace period (every CPU switched since the call_rcu) had, and it ran the
        callback where it was queued. Points carry no line: any free of d's (address, point)
        on its side may be the one left over."""
        side = "kernel" if other_side == "model" else "model"
        others = [x for x in self.rcu_frees.get(other_side, []) if x.addr == d.addr]
        for mine in self.rcu_frees.get(side, []):
            if mine.addr != d.addr or mine.point != d.point:
                continue
            start, end = self.life(d.addr, mine.line)  # the other side's free of that life
            lo = -1 if start is None else start
            other = next((x for x in others if lo < x.line < end), None)
            if other is None or other.point == mine.point:
                continue
            model, kernel = (other, mine) if other_side == "model" else (mine, other)
            cpu = model.point[1]
            steps = self.hotplug_lines.get(cpu, []) if isinstance(cpu, int) else []
            if any(model.line < s < kernel.line for s in steps):
                return True
        return False

    def released_at_once(self, d: Drop, other_side: str) -> bool:
        """Both sides freed this mm where a holder released it (an io_uring ring, a /proc
        file, a userfaultfd...), in different tasks, close together: two releases ran side by
        side on two CPUs. The model drops each at its marker, the kernel a little after it
        (io_ring_ctx_free() sleeps in flush_delayed_work() in between): which mmdrop() was
        last is not in the inputs."""
        return d.point[0] in RELEASE_POINTS and _freed_nearby(d, self.releases.get(other_side, []))

    def cause(self, d: Drop) -> str:
        if d.line in self.unclaimed:
            return FAILED_FORK if self.unclaimed[d.line] == "fork" else FAILED_EXEC
        if d.addr in self.release_raced:
            return RELEASE_RACE
        if _finish_overlapped(d, self.release_lines):
            return RELEASE_ENDED_FIRST
        if d.point[0] in HELD_POINTS:
            return HELD_OUTSIDE
        if d.point[0] == "__mmput" and self.late_mmput(d.addr):
            return AFTER_EXIT
        if self.mmput_by_another(d):
            return ELSEWHERE
        if self.exit_window_drop(d):
            return self.window_cause
        if self.unseen_kthread_use(d):
            return KTHREAD_USE_MM
        if d.addr in self.raced:
            return RACE
        if self.offline_borrowed(d):
            return HOTPLUG
        if d.addr in self.tainted:
            return TAINTED
        if _finish_overlapped(d, self.puts):
            return RACE
        if self.ended_in_window(d):
            return self.window_cause
        if self.used_by_kthread(d):
            return KTHREAD_USE_MM
        return UNEXPLAINED

    def used_by_kthread(self, d: Drop) -> bool:
        """With tracepoints only, a kernel thread took this life of d's mm with
        kthread_use_mm() (a USB gadget kworker's AIO copy): the references it held, and the
        lazy one it keeps after kthread_unuse_mm() until it switches away, no input shows."""
        return self.inputs == "sched" and self.in_its_life(
            d, self.kthread_used.get(d.addr or 0, [])
        )

    def offline_borrowed(self, d: Drop) -> bool:
        """With tracepoints only, the model takes a CPU offline only when it comes back: one
        that went offline lazily borrowing this mm keeps its reference in the model until
        then (the kernel's finish_cpu() dropped it when the CPU died)."""
        return self.inputs == "sched" and d.addr in self.offlined

    def late_mmput(self, addr: int | None) -> bool:
        """With tracepoints only, a __mmput of this mm ran in a task past its exit: the model,
        told of no reference its files held, ran it at sched_process_exit."""
        return self.inputs == "sched" and addr in self.after_exit

    def unseen_kthread_use(self, d: Drop) -> bool:
        """With tracepoints only, the kernel freed this mm in a kernel thread's
        kthread_use_mm(): its mmdrop_lazy_tlb() of the mm the thread had kept lazily since
        an earlier kthread_unuse_mm(), a zombie whose owner exited meanwhile."""
        return self.inputs == "sched" and d.point[0] == "kthread_use_mm"

    def exit_window_drop(self, d: Drop) -> bool:
        """With tracepoints only, the model's __mmput runs whole at sched_process_exit; the
        kernel's ran from exit_mm on and could be preempted in between."""
        return (
            self.inputs == "sched"
            and d.point[0] == "__mmput"
            and self.exited_from(d.addr, d.in_life) == d.point[1]
        )

    def mmput_by_another(self, d: Drop) -> bool:
        """The kernel's __mmput of this mm ran in a task that did not exit from it last (a
        /proc reader's mmput(), say). With markers, not an exec whose siblings exited before
        it (de_thread() killed them): it runs its old mm's __mmput itself, at the exit_mmap
        marker the model follows too. (With tracepoints only, the model runs the exiting
        siblings' and the exec's puts where their tracepoints are, and the kernel's last
        one, the exec's, is known from that marker alone.)"""
        if d.point[0] != "__mmput":
            return False
        if self.inputs == "markers" and d.addr in self.exec_mmputs:
            return False
        owner = self.exited_from(d.addr, d.in_life)
        if owner is not None:
            return owner != d.point[1]
        # with tracepoints only, no exit let go of it (an exec did): the model ran that
        # __mmput in the exec, the kernel in a task holding mm_users
        return self.inputs == "sched" and any(
            pid != d.point[1] for pid in self.model_mmputs.get(d.addr, ())
        )


def _finish_overlapped(d: Drop, puts: dict[int | None, list[int]]) -> bool:
    """The kernel freed d's mm in the finish_task_switch() of a switch traced before the
    model's __mmput of it ended, and its __mmdrop came after that end: the finish ran on
    while the __mmput ended on another CPU (a vCPU that stalled between the two: 12 ms on
    a 16-CPU capture under TCG), and which mmdrop() was last no input says. The model runs
    a switch where it is traced, its drop with it. `puts`: address -> lines of the model's
    __mmput frees (or of its frees at a holder's release, which end as an __mmput does)."""
    if d.point[0] != "finish_task_switch" or not isinstance(switch := d.point[1], int):
        return False
    return any(switch < line < d.line for line in puts.get(d.addr, []))


def _finish_stalled(kernel: Drop, model: Drop) -> bool:
    """The kernel freed the mm in the finish_task_switch() of switch S, the model in another
    switch's, traced after S and before the kernel's __mmdrop: S's CPU let go last only
    because its finish ran late."""
    switch = kernel.point[1]
    return (
        kernel.addr == model.addr
        and model.point != kernel.point
        and model.point[0] == kernel.point[0] == "finish_task_switch"
        and isinstance(switch, int)
        and switch < model.line < kernel.line
    )


def _freed_nearby(d: Drop, others: list[Drop]) -> bool:
    """One of `others` freed d's mm at another point, within NEARBY lines of it."""
    return any(
        x.addr == d.addr and x.point != d.point and abs(x.line - d.line) <= NEARBY for x in others
    )


def score_outside(
    result: Result,
    kernel: list[Outside],
    model: list[Outside],
    first_switch: dict[int, int] | None = None,
    mm_kthreads: set[int] | None = None,
    windowed: set[int] | None = None,
    lazy_at_start: set[int] | None = None,
    waited: Callable[[Outside], bool] | None = None,
    returns: bool = True,
    elsewhere: Callable[[Outside], bool] | None = None,
    shared: Callable[[int, int], bool] | None = None,
) -> None:
    """Outside-schedule hooks match on (kind, task, mms), flushes to init_mm on (CPU, lazy
    episode): the switches that loaded a user mm on that CPU before it. Within one episode the
    CPU borrows one mm, whichever kernel threads run, so an IPI delivered a switch later
    (a stalled vCPU) is the same flush. A flush on the right CPU in another episode is a miss
    with its cause. `windowed`: with sched inputs, the tasks switched out after their exit_mm
    (its marker, read only for causes) and before sched_process_exit, whose exit the model
    ran at that tracepoint: by then the kernel's CPU may have been lazy on another mm.
    `lazy_at_start`: the CPUs found lazily borrowing an mm when the trace began. `waited`:
    does nothing happen on a flushed CPU between the model's flush and a switch there that
    loads a user mm (the kernel's IPI may have waited for it). `returns`: the trace has
    exit_mmap return markers. `elsewhere`: did the kernel run the __mmput that made the
    model's flush in another task. `shared(pid, line)`: did the pid name two tasks then, the
    replay picking one of them at a switch before (a miss found no other cause for is that
    pick's)."""

    def cause_of(o: Outside) -> str:
        cause = _outside_cause(o, mm_kthreads or set())
        return PID_SHARED if cause == UNEXPLAINED and shared and shared(o.pid, o.line) else cause

    mleft = Counter(o.key() for o in model)
    unmatched_k = []
    for o in kernel:
        result.outside_schedule.total += 1
        if mleft[o.key()] > 0:
            mleft[o.key()] -= 1
            result.outside_schedule.matched += 1
        else:
            unmatched_k.append(o)
    unmatched_m = []
    for o in model:
        if mleft[o.key()] > 0:
            mleft[o.key()] -= 1
            unmatched_m.append(o)
    # A flush of one CPU to init_mm that both sides made, in different intervals of that CPU:
    # the exiting task's own flush (same task), or an IPI that reached another CPU after it
    # had switched again. Paired nearest first.
    paired: dict[int, str] = {}  # id() of either side -> cause
    spare = [o for o in unmatched_m if o.kind == "flush_to_init_mm"]
    for o in unmatched_k:
        if o.kind != "flush_to_init_mm":
            continue
        near = [m for m in spare if m.cpu == o.cpu]
        if not near:
            continue
        m = min(near, key=lambda x: (x.pid != o.pid, abs(x.line - o.line)))
        spare.remove(m)
        paired[id(o)] = paired[id(m)] = LATE_FLUSH if m.pid == o.pid else IPI_TIMING
    # exec from a task without an mm (a user-mode helper): activate_mm's `prev` is the mm it
    # borrowed, which differs when the model's CPU borrowed another after an earlier miss
    spare = [o for o in unmatched_m if o.kind == "activate_mm" and id(o) not in paired]
    for o in unmatched_k:
        if o.kind != "activate_mm" or id(o) in paired:
            continue
        same = [m for m in spare if (m.pid, m.mm) == (o.pid, o.mm) and m.prev and o.prev]
        if same:
            spare.remove(same[0])
            paired[id(o)] = paired[id(same[0])] = BORROWED_PREV
    # an EFI call (its hooks, kernel side) the model ran as a text_poke (with tracepoints
    # only its two CR3 loads are either's): both sides, by task and CPU, nearest first
    spare = [o for o in unmatched_m if o.kind == "temporary_mm" and id(o) not in paired]
    for o in unmatched_k:
        near = [m for m in spare if (m.cpu, m.pid) == (o.cpu, o.pid)]
        if o.kind not in ("efi_enter_mm", "efi_leave_mm") or not near:
            continue
        m = min(near, key=lambda x: abs(x.line - o.line))
        spare.remove(m)
        paired[id(o)] = paired[id(m)] = EFI_AS_POKE
    first = first_switch or {}
    for o in unmatched_k:
        cause = paired.get(id(o)) or (
            PRE_TRACE if o.line < first.get(o.cpu, o.line + 1) else cause_of(o)
        )
        result.mismatch("outside_schedule", o.line, {"predicted": "nothing here"},
                        _outside_dict(o), cause)  # fmt: skip
    for o in unmatched_m:
        result.outside_schedule.total += 1
        if id(o) in paired:
            why = paired[id(o)]
        elif o.kind == "flush_to_init_mm":
            why = (
                PRE_TRACE_LOADED
                if o.epoch == 0 and o.cpu in (lazy_at_start or set())
                else FORK_FLUSH
                if o.late_fork
                else EXIT_WINDOW
                if o.pid in (windowed or set())
                else ELSEWHERE
                if elsewhere is not None and elsewhere(o)
                else _late_ipi_cause(o, waited, returns)
            )
        else:
            # a kernel path that no input marks, run where the model's guess put it (with
            # tracepoints only, a vhost worker's kthread_use_mm at its first sleep)
            why = cause_of(o)
        result.mismatch("outside_schedule", o.line, _outside_dict(o),
                        {"kernel": "nothing here"}, why)  # fmt: skip


def _late_ipi_cause(o: Outside, waited: Callable[[Outside], bool] | None, returns: bool) -> str:
    """Why the model's flush switched a CPU to init_mm that the kernel's did not."""
    if o.via == "leave_mm":  # the model followed the kernel's own tlb_flush there
        return MISSED_PROBE
    if o.via == "mmput" and not returns:
        return UNMAP_FLUSH
    if waited is not None and waited(o):
        return IPI_AFTER_SWITCH
    return IPI_LATE


def _outside_dict(o: Outside) -> dict[str, Any]:
    return {"kind": o.kind, "cpu": o.cpu, "pid": o.pid, "mm": hexaddr(o.mm),
            "prev": hexaddr(o.prev)}  # fmt: skip


def _outside_cause(o: Outside, mm_kthreads: set[int]) -> str:
    """`mm_kthreads`: the kernel threads seen calling kthread_use_mm (their kthread_unuse_mm
    is an enter_lazy_tlb outside schedule; with tracepoints only, a USB gadget kworker's use
    and unuse, two CR3 loads in a row, also read as an EFI call's). The model's own
    kthread_unuse_mm (`via`) follows a kthread_use_mm it ran: with tracepoints only, where
    a kernel thread's own CR3 load and the next task switched in there without one made it
    guess one (a lazy CPU's local flush to init_mm, when that task had left its mm in an
    exit window, also reads so)."""
    unuse = o.kind == "enter_lazy_tlb" and (o.pid in mm_kthreads or o.via == "kthread_unuse_mm")
    # an EFI call guessed from a kernel thread's pair of CR3 loads (tracepoints only), by a
    # thread the kernel saw in kthread_use_mm(): those loads were its use and unuse
    efi = o.kind in ("efi_enter_mm", "efi_leave_mm") and o.pid in mm_kthreads
    if o.kind == "switch_mm" or unuse or efi:
        return KTHREAD_USE_MM
    if o.kind == "flush_to_init_mm":
        return (
            "flush to init_mm on a CPU the model did not have lazy on an mm at that point "
            "(it diverged earlier)"
        )
    if o.kind == "temporary_mm":
        return TEXT_POKE
    if o.kind in ("idle_task_exit", "cpu_init", "untraced_switch"):
        return HOTPLUG
    return UNEXPLAINED
