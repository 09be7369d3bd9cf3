"""Replay: scheduler trace events -> model operations, for several configurations at once.

`sched_switch` -> `schedule(cpu, next)`; `task_newtask` (or `sched_process_fork`) -> `fork`
(a thread with CLONE_VM|CLONE_THREAD, a kernel thread when kthreadd forks, a
user_mode_thread when another task without an mm does); `sched_process_exec` -> `exec`;
`sched_process_exit` -> `exit`; x86 `tlb_flush` lines, read by `trace.hints.tlb_hints()`: a
TLB flush -> `flush_tlb_mm_range` (a fork's dup_mmap() flush -> that `fork`, there), CR3 loads
in a row outside a context switch -> `text_poke` or `efi_call`, exec_mmap()'s load -> `exec`,
exit_mmap()'s switch of the exiting task's lazy CPU to init_mm -> `exit`.

Real traces start mid-flight and may lose events. Tasks first seen in the trace are adopted:
kernel thread or user task from the task snapshot (`--tasks`) when given, else guessed from
pid 0, the comm (kworker/, ksoftirqd/, rcu_...) and the record-tgid column (threads of one
group share an mm); guesses are counted. When the trace says a task runs where the model does
not have it (the first switch on each CPU, after `[LOST N EVENTS]`, or when timestamps tie
across CPUs), the model is resynchronised by scheduling operations that are not counted in the
metrics. The model never invents references: adopted tasks get exactly what a task of their
kind holds.
"""

from __future__ import annotations

import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from itertools import chain, islice
from pathlib import Path

from activemm.errors import ActiveMmError, OperationError
from activemm.metrics import DEFAULT_COSTS, Metrics
from activemm.model import Machine, Observer
from activemm.model.config import KernelConfig
from activemm.model.state import Mm, Task, TaskState
from activemm.sanitizer import Sanitizer
from activemm.trace.events import (
    ExecMmap,
    ExitMmapLoad,
    LostEvents,
    MmFlush,
    NewTask,
    Placement,
    Probe,
    ProcessExec,
    ProcessExit,
    ProcessFork,
    ProcessFree,
    SchedSwitch,
    TempMmLoads,
    TlbFlush,
    TraceEvent,
    stopper_comm,
)
from activemm.trace.hints import tlb_hints

SANITIZE_EVERY = 1000  # replay: full invariant checks every this many operations
# the events tlb_hints() gives for tlb_flush lines, and those of them in place of a CR3 load
_TLB_LINES = frozenset({TlbFlush, MmFlush, TempMmLoads, ExecMmap, ExitMmapLoad})
_LOAD_HINTS = frozenset({TempMmLoads, ExecMmap, ExitMmapLoad})
CLONE_VM = 0x100
CLONE_VFORK = 0x4000
CLONE_THREAD = 0x10000
PF_KTHREAD = 0x200000

# 6.1 drivers/vhost/vhost.c: kthread_create(vhost_worker, dev, "vhost-%d", current->pid), a
# kernel thread that kthread_use_mm()s the owner's mm (6.12: a user thread of the owner)
VHOST_WORKER = re.compile(r"vhost-(\d+)")
KTHREAD_COMM = re.compile(
    r"^(kthreadd$|kworker/|ksoftirqd/|rcu_|rcu[bcop]|migration/|cpuhp/|idle_inject/|"
    r"watchdog|kswapd|khugepaged|kcompactd|oom_reaper|writeback|kblockd|irq/|jbd2/|kdamond|"
    r"kauditd|khungtaskd|ksmd|kintegrityd|kdevtmpfs|netns|scsi_|kthrotld|psimon|hwrng|"
    r"pool_workqueue|mm_percpu_wq|ext4-|xfs|nvme|kstrp|zswap|card\d|ipv6_addrconf|edac|"
    r"ttm|kvm|vfio|md_|md\d|raid|dm_|kcryptd|kdmflush|usb-storage|khubd|hub_|ata_sff|"
    r"tpm_dev|charger_manager|inet_frag|blkcg|napi/|sugov:|poll_)"
)


@dataclass
class TaskInfo:
    tgid: int
    comm: str
    kthread: bool
    exited: bool = False  # a user task first seen in do_exit() past exit_mm(): no mm


def load_task_snapshot(path: str | Path) -> dict[int, TaskInfo]:
    """Read a task snapshot: one `/proc/<pid>/task/<tid>/stat` line per thread, as the kernel
    prints it, optionally prefixed by its path and a colon (what `grep -H .
    /proc/[0-9]*/task/[0-9]*/stat` writes). Fields used: tid, (comm), and flags (the 9th;
    PF_KTHREAD = 0x200000); the thread group comes from the path, else the tid."""
    out: dict[int, TaskInfo] = {}
    p = str(path)
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as e:
        raise ActiveMmError(f"{p}: cannot read the task snapshot: {e.strerror}") from None
    path_re = re.compile(r"^/proc/(\d+)/task/(\d+)/stat:")
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        tgid: int | None = None
        m = path_re.match(line)
        if m:
            tgid = int(m[1])
            line = line[m.end() :]
        open_, close = line.find("("), line.rfind(")")
        fields = line[close + 1 :].split()
        if open_ < 0 or close < open_ or len(fields) < 7 or not line[:open_].strip().isdigit():
            raise ActiveMmError(
                f"{p}:{n}: expected a /proc/PID/task/TID/stat line 'TID (COMM) STATE PPID "
                f"PGRP SESSION TTY TPGID FLAGS ...'"
            )
        tid = int(line[:open_])
        flags = int(fields[6])
        out[tid] = TaskInfo(tgid or tid, line[open_ + 1 : close], bool(flags & PF_KTHREAD))
    return out


class Clocked(Observer):
    """An observer that wants the trace time of each operation in `now` (seconds)."""

    now: float = 0.0


@dataclass
class ReplayStats:
    anomalies: Counter[str] = field(default_factory=Counter)
    guessed_kthreads: int = 0
    guessed_user: int = 0
    from_snapshot: int = 0
    # what the trace's tlb_flush lines gave (Replayer.flush, Replayer.temp_mm): TLB_KINDS
    tlb: Counter[str] = field(default_factory=Counter)
    # x86: the traced kernel's own CR3 loads (every tlb_flush "flush on task switch" line),
    # its context switches followed by a line on their CPU (a switch's load is that line, by
    # the task switched out), and those at which the model loaded CR3 as the kernel did
    kernel_cr3_loads: int = 0
    switches_checked: int = 0
    switches_agreeing: int = 0


# ReplayStats.tlb's keys, in the order reports list them
TLB_KINDS = (
    "lines",
    "flushes",
    "flushes of another task's mm",
    "flushes of an unknown mm (not replayed)",
    "forks at their dup_mmap flush",
    "execs at their exec_mmap",
    "exits at exit_mmap's flush",
    "vhost workers' kthread_use_mm",
    "text_pokes",
    "EFI calls",
)


class Replayer:
    """One machine following the trace, under one configuration."""

    def __init__(
        self,
        config: KernelConfig,
        ncpus: int,
        metrics: Metrics,
        snapshot: dict[int, TaskInfo] | None = None,
        sanitize: bool = True,
        extra: list[Clocked] | None = None,
        sanitize_every: int = 1,
        placements: dict[int, list[Placement]] | None = None,
        picks: dict[int, bool] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.extra = extra or []
        self.sanitizer = Sanitizer(config, every=sanitize_every) if sanitize else None
        observers = [metrics, *self.extra] + ([self.sanitizer] if self.sanitizer else [])
        self.m = Machine(config, observers)
        self.m.boot(ncpus, rest_init=False)
        self.tasks: dict[int, Task] = {}
        self.tgid_of: dict[int, int] = {}
        # (leader pid, thread pid) pairs de_thread() exchanged before sched_process_exec
        self.exchanged: set[tuple[int, int]] = set()
        self.snapshot = snapshot or {}
        self.stats = ReplayStats()
        # pid -> the task whose exec ran at its exec_mmap(), until its sched_process_exec
        self.execd: dict[int, Task] = {}
        # CPU -> (pid switched out, whether the model's switch loaded CR3) of its last
        # sched_switch, until its next line tells whether the kernel's did (x86)
        self._switched: dict[int, tuple[int, bool]] = {}
        self._x86 = config.arch == "x86_64"
        # pid -> the mm its last flush of another task's mm was replayed on
        self._foreign: dict[int, Mm] = {}
        # pid -> the exited tasks that went by it until a fork took the pid again
        # (_displace), each with the line of that fork, until their final switch
        self._displaced: dict[int, list[tuple[Task, int]]] = {}
        # pid -> (line of its task_newtask, the child) of each fork made ahead of it (fork_ahead)
        self._parked: dict[int, list[tuple[int, Task]]] = {}
        # while a fork is made ahead (fork_ahead): its child, when a live task holds the pid
        self._ahead: list[Task] | None = None
        # pid -> sched_switch lines where it named two tasks as the next (_displaced_next)
        self.shared_at: dict[int, list[int]] = {}
        # id of an exiting task switched out before its final switch -> (it, that line)
        self._left_at: dict[int, tuple[Task, int]] = {}
        # pid -> the Placement of each of its sched_wakeup_new and sched_migrate_task lines
        # (ReadStats.placements): which runqueue each of two tasks of one pid is on
        self.placements = placements if placements is not None else {}
        # pid -> (line, CPU, the task) of each switch out of a task of a pid that names two
        # tasks to that CPU's stopper thread, which moves the task it preempted
        # (_runqueue_of)
        self._stopped: dict[int, list[tuple[int, int, Task]]] = {}
        # sched_switch line -> whether the task switched in is an exited one (exited_picks;
        # a validation reads the whole trace first, a replay streams it and has none)
        self.picks = picks if picks is not None else {}
        self._next_jiffy = 0.0  # trace time of the next jiffy (tick_do_update_jiffies64)

    # -- the model's view of trace tasks ------------------------------------------------

    def _is_kthread(self, pid: int, comm: str) -> bool:
        info = self.snapshot.get(pid)
        if info is not None:
            self.stats.from_snapshot += 1
            return info.kthread
        kthread = bool(KTHREAD_COMM.match(comm)) or pid == 2
        if kthread:
            self.stats.guessed_kthreads += 1
        else:
            self.stats.guessed_user += 1
        return kthread

    def _adopt(self, pid: int, comm: str, tgid: int | None) -> Task:
        """A task first met without its fork: from before the trace. Its thread group is the
        snapshot's, else the record-tgid column's: tracefs (and trace-cmd) print that
        column from the pid's last recorded group when the trace is read, so for a pid
        taken again later in the trace by another process it names that process."""
        info = self.snapshot.get(pid)
        group = info.tgid if info else (tgid if tgid is not None else self.tgid_of.get(pid))
        kthread = self._is_kthread(pid, comm)
        sibling = None
        if not kthread and group is not None and group != pid:
            for other_pid, other in self.tasks.items():
                if (
                    self.tgid_of.get(other_pid) == group
                    and other.mm is not None
                    and (other.state is not TaskState.GONE and not other.pf_kthread)
                ):
                    sibling = other
                    break
        exited = info is not None and info.exited and not kthread
        with self.metrics.unmetered():
            t = self.m.adopt(comm, kthread, None if exited else sibling, exited)
        self.tasks[pid] = t
        if group is not None:
            self.tgid_of[pid] = group
        return t

    def _old_leader(self, cpu: int, pid: int) -> None:
        """de_thread() seen from the other side: when exchange_tids() ran before the old
        leader's final switch, the leader, exiting on `cpu`, switches out for the last time
        under the exec'ing thread's pid `pid` (a thread of its group running elsewhere),
        which from now on goes by the leader's."""
        cur = self.m.state.rqs[cpu].curr
        t = self.tasks.get(pid)
        if t is None or t is cur or t.exiting or not cur.exiting or cur.is_idle:
            return
        leader = next((q for q, x in self.tasks.items() if x is cur), None)
        if leader is None or leader == pid or self.tgid_of.get(pid) != leader:
            return
        self.tasks[pid], self.tasks[leader] = cur, t
        self.exchanged.add((leader, pid))
        self.stats.anomalies["de_thread: old leader's last switch under the thread's pid"] += 1

    def _unnamed_leader(self, cpu: int, pid: int) -> Task | None:
        """de_thread() the other way round: the old leader's final switch was traced under
        its own pid `pid`, before exchange_tids(), but the replay meets it after the
        exec'ing thread went by that pid (a validation applies a switch at its
        finish_task_switch, which a stalled CPU can run milliseconds later). The exiting
        task current on `cpu` that no pid names any more is that leader: it switches out."""
        cur = self.m.state.rqs[cpu].curr
        named = self.tasks.get(pid)
        if named is None or named is cur or not cur.exiting or cur.is_idle:
            return None
        if self._is_displaced(pid, cur):
            return None  # a fork took its pid, no exec (current() knows it)
        # (no pid names it, but the exec'ing thread's old one, which _de_thread gave it)
        if any(t is cur and (pid, q) not in self.exchanged for q, t in self.tasks.items()):
            return None
        self.stats.anomalies["de_thread: old leader's last switch met after the exchange"] += 1
        return cur

    def _de_thread(self, pid: int, cpu: int) -> Task | None:
        """exec from a non-leader thread: de_thread() gives the exec'ing thread its leader's
        pid (exchange_tids) before exec_mmap(), and it can be switched out under that pid
        before sched_process_exec says so. The task the model has current on this CPU, a
        thread of group `pid` whose leader has exited, is that thread. The old leader, if
        it has not made its final switch yet (exit_notify() made it a zombie, which is all
        de_thread() waits for; PREEMPT_RT can preempt it after that, again and again), goes
        by the thread's old pid from now on."""
        cur = self.m.state.rqs[cpu].curr
        leader = self.tasks.get(pid)
        if cur.is_idle or cur.pf_kthread or (leader is not None and not (
            leader.exiting or leader.state is TaskState.GONE
        )):  # fmt: skip
            return None
        mine = (q for q, t in self.tasks.items() if t is cur and q != pid)
        q = next((q for q in mine if self.tgid_of.get(q) == pid), None)
        if q is None:
            return None
        del self.tasks[q]
        self.tasks[pid] = cur
        if leader is not None and leader.state is not TaskState.GONE:
            self.tasks[q] = leader
            self.exchanged.add((pid, q))
            self.stats.anomalies["de_thread: old leader runs on under the thread's pid"] += 1
        return cur

    def task(self, pid: int, comm: str, tgid: int | None, cpu: int) -> Task:
        if pid == 0:
            return self.m.state.rqs[cpu].idle
        t = self.tasks.get(pid)
        if t is not None and self._revived(t):
            return t
        if t is None or t.state is TaskState.GONE:
            if t is not None:
                self.stats.anomalies["pid reused without a fork seen"] += 1
            t = self._adopt(pid, comm, tgid)
        return t

    def _revived(self, t: Task) -> bool:
        """A task reaped at a switch out that read "X", seen again before its
        sched_process_free (which takes it out of `tasks`): it was not dead. sched_switch
        shows the exit_state (EXIT_DEAD for an autoreaped thread past exit_notify()) when
        the task's state has nothing to report: a schedule() called with TASK_RUNNING (woken
        first, as a PREEMPT_RT sleeping-spinlock wait can be) reads "X" (a zombie leader's
        "Z") like the final switch, which comes later."""
        if not self.m.taken_for_dead(t):
            return False
        with self.metrics.unmetered():
            self.m.revive(t)
        self.stats.anomalies["exited task switched out as dead (X) ran again"] += 1
        return True

    def _quiet(self, cpu: int, t: Task) -> None:
        """Schedule `t` on `cpu` without counting it (resynchronisation)."""
        with self.metrics.unmetered():
            self.m.schedule(cpu, t)

    def _free_task(self, t: Task, cpu: int) -> None:
        """Make `t` not current anywhere but... nowhere: if it runs on another CPU, that CPU
        goes to its idle task first."""
        if t.state is TaskState.RUNNING and t.cpu is not None and t.cpu != cpu:
            other = t.cpu
            self.stats.anomalies["task running on another CPU"] += 1
            self._quiet(other, self.m.state.rqs[other].idle)

    def current(self, cpu: int, pid: int, comm: str, tgid: int | None) -> Task:
        """The task the trace says is current on `cpu`; the model is made to agree."""
        rq = self.m.state.rqs[cpu]
        if pid < 0:
            return rq.curr
        if (rq.idle if pid == 0 else self.tasks.get(pid)) is rq.curr:
            return rq.curr  # the model already agrees: the common case
        if self._is_displaced(pid, rq.curr):
            return rq.curr  # its pid taken again, it has yet to switch out for good
        moved = self._de_thread(pid, cpu)
        if moved is not None:
            return moved
        t = self.task(pid, comm, tgid, cpu)
        if rq.curr is t:
            return t
        if t.state is TaskState.GONE:
            self.stats.anomalies["dead task seen running"] += 1
            t = self._adopt(pid, comm, tgid)
        self._free_task(t, cpu)
        if t is not rq.curr:
            self.stats.anomalies["resynchronised CPU"] += 1
            self._quiet(cpu, t)
        return t

    # -- events -------------------------------------------------------------------------

    def apply(self, ev: TraceEvent) -> None:
        self.metrics.now = ev.ts
        if ev.ts >= self._next_jiffy:  # (jiffies move on HZ times a second)
            self.m.tick_do_update_jiffies64(ev.ts)
            self._next_jiffy = (self.m.state.jiffies + 1) / self.config.HZ
        for o in self.extra:
            o.now = ev.ts
        kind = type(ev)
        switch_load = False  # the line is the CR3 load of the switch just before it here
        if self._switched and kind is not Probe:
            switch_load = self._against_trace(ev)
        own_load = False  # a CR3 load by the task itself, outside a switch
        if kind in _TLB_LINES:
            self.stats.tlb["lines"] += 1  # (tlb_hints() puts the hints for one line each)
            if kind in _LOAD_HINTS or (isinstance(ev, TlbFlush) and ev.cr3_load):
                self.stats.kernel_cr3_loads += 1
            own_load = kind is ExitMmapLoad or (
                isinstance(ev, TlbFlush) and ev.cr3_load and not ev.hardirq and not switch_load
            )
        try:
            if own_load:
                self._vhost_use_mm(ev)
            if isinstance(ev, SchedSwitch):
                m = self.metrics
                before = m.cr3_loads - m.left_mm
                self.switch(ev)
                # (a flush IPI that waited for the switch is the IPI's load)
                self._switched[ev.cpu] = (ev.prev_pid, m.cr3_loads - m.left_mm > before)
            elif isinstance(ev, NewTask):
                self.newtask(ev)
            elif isinstance(ev, ProcessFork):
                self.fork(ev)
            elif isinstance(ev, ProcessExec):
                self.exec(ev)
            elif isinstance(ev, ProcessExit):
                self.exit(ev)
            elif isinstance(ev, MmFlush):
                self.flush(ev)
            elif isinstance(ev, TempMmLoads):
                self.temp_mm(ev)
            elif isinstance(ev, ExecMmap):
                self.exec_mmap(ev)
            elif isinstance(ev, ExitMmapLoad):
                self.exit_mmap_load(ev.cpu, ev.pid)
            elif isinstance(ev, ProcessFree):
                if self._gone(ev.free_pid):
                    del self.tasks[ev.free_pid]
                    self.tgid_of.pop(ev.free_pid, None)
            elif isinstance(ev, LostEvents):
                self.stats.anomalies[ev.anomaly] += ev.count or 1
        except OperationError as e:
            # The trace asks for something the model's state does not allow: count it, keep
            # going; the next event resynchronises.
            self.stats.anomalies[f"refused: {str(e).split(':')[0]}"] += 1

    def _against_trace(self, ev: TraceEvent) -> bool:
        """Whether `ev` is the CR3 load of the context switch last traced on its CPU (x86
        tlb_flush "flush on task switch": switch_mm_irqs_off() emits one for every load; a
        switch's is the next line on its CPU, by the task switched out); on x86 presets,
        whether the model's switch made one as the kernel's did (docs/replay.md). (Every
        such line is counted in `apply`: the kernel's own CR3 loads.)"""
        switched = self._switched.pop(ev.cpu, None)
        if switched is None or isinstance(ev, LostEvents):
            return False
        kernel = isinstance(ev, TlbFlush) and ev.cr3_load and not ev.hardirq
        kernel = kernel and ev.pid == switched[0]
        if self._x86:
            self.stats.switches_checked += 1
            self.stats.switches_agreeing += kernel == switched[1]
        return kernel

    def _running(self, cpu: int, pid: int) -> Task | None:
        """The task the trace's `pid` names, when the model has it current on `cpu` (the
        hints act on that task only, never resynchronising for it)."""
        t = self.tasks.get(pid)
        rqs = self.m.state.rqs
        return t if t is not None and cpu < len(rqs) and t is rqs[cpu].curr else None

    def _vhost_use_mm(self, ev: TraceEvent) -> None:
        """A CR3 load of its own by a 6.1 vhost worker, outside a context switch (a plain
        line, or one tlb_hints() read as an exit's): drivers/vhost/vhost.c vhost_worker()
        begins with kthread_use_mm(dev->mm), the mm of the owner whose pid the worker's
        name carries. The model's worker takes that mm there (kthread.c), and lets go of it
        at its exit (Replayer.exit). A worker that borrowed that very mm already loads
        nothing and stays a plain kernel thread here (validate finds it at its first
        sleep)."""
        named = VHOST_WORKER.fullmatch(ev.comm)
        if named is None:
            return
        t = self._running(ev.cpu, ev.pid)
        if t is None or not t.pf_kthread or t.uses_mm:
            return
        owner = self.tasks.get(int(named[1]))
        if owner is None or owner.pf_kthread or owner.mm is None or owner.exiting:
            return
        self.stats.tlb["vhost workers' kthread_use_mm"] += 1
        self.m.kthread_use_mm(t, owner.mm)

    def _gone(self, pid: int) -> bool:
        t = self.tasks.get(pid)
        return t is not None and t.state is TaskState.GONE

    def switch(self, ev: SchedSwitch) -> None:
        final = ev.prev_state.startswith(("X", "Z"))
        prev = None
        if final:
            self._old_leader(ev.cpu, ev.prev_pid)
            prev = self._unnamed_leader(ev.cpu, ev.prev_pid)
        if prev is None:
            prev = self.current(ev.cpu, ev.prev_pid, ev.prev_comm, ev.tgid)
        if final and not prev.exiting and not prev.is_idle and prev.pid != 1:
            self.stats.anomalies["exit inferred from prev_state"] += 1
            self.m.exit(prev)
        if final:
            self._left_at.pop(id(prev), None)
        elif prev.exiting:  # preempted or waiting: it runs again before its final switch
            self._left_at[id(prev)] = (prev, ev.line)
        if ev.next_comm == stopper_comm(ev.cpu) and ev.prev_pid in self._displaced:
            self._stopped.setdefault(ev.prev_pid, []).append((ev.line, ev.cpu, prev))
        nxt = self._displaced_next(ev.next_pid, ev.cpu, ev.line) or self.task(
            ev.next_pid, ev.next_comm, None, ev.cpu
        )
        self._free_task(nxt, ev.cpu)
        if nxt is self.m.state.rqs[ev.cpu].curr:
            self.stats.anomalies["switch to the current task"] += 1
            return
        # An exited task switched out is reaped unless the trace says it was preempted
        # (prev_state "R+"): do_exit() can be preempted after exit_mm().
        self.m.schedule(ev.cpu, nxt, preempt=prev.exiting and not final)

    def _displace(self, pid: int, old: Task, line: int) -> None:
        """A fork at `line` takes `pid` while `old`, the task that went by it, has exited
        but not yet switched out for the last time: its parent reaped it first (a stalled
        vCPU, PREEMPT_RT preempting it past exit_notify(), or a clone3() with set_tid
        waiting for the pid). It goes on under the pid until then, beside the new task
        (current(), _displaced_next), and so may the ones before it."""
        lives = [(t, at) for t, at in self._displaced.get(pid, []) if t.state is not TaskState.GONE]
        self._displaced[pid] = [*lives, (old, line)]
        self.stats.anomalies["pid taken again before its exited task's final switch"] += 1

    def _is_displaced(self, pid: int, t: Task) -> bool:
        return any(old is t for old, _ in self._displaced.get(pid, ()))

    def _displaced_next(self, pid: int, cpu: int, line: int) -> Task | None:
        """An exited task whose pid a fork took again (_displace), switched in on the CPU
        whose runqueue it waits on (_runqueue_of): its final switch is still to come.
        Otherwise the pid names the new task, and so it does when the new one waits there
        too and what the task switched in does next says it lives (picks: exited_picks)."""
        # (running: here, switched out for good to the new one, "311 X ==> 311")
        waiting = [
            (old, at)
            for old, at in self._displaced.get(pid, ())
            if old.state not in (TaskState.GONE, TaskState.RUNNING)
        ]
        if not waiting:
            return None
        self.shared_at.setdefault(pid, []).append(line)
        here = [old for old, at in waiting if self._runqueue_of(pid, old, at, line) == cpu]
        if here and self.picks.get(line) is False:
            return None  # the new task waited there too, and it is the one that ran
        return here[0] if here else None

    def _runqueue_of(self, pid: int, old: Task, taken: int, line: int) -> int | None:
        """The CPU whose runqueue `old`, an exited task `pid` named before a fork took it at
        line `taken`, waits on at `line`: the one it last ran on, moved by each
        sched_migrate_task of the pid from there since (placements), the new task's own
        moves set apart (placed by its sched_wakeup_new, then migrated from where it is).
        Of the two on one runqueue, the exited one is taken to be the one moved (as
        `unseen49.c` showed, 6.1 with 3 CPUs: load balancing moves a task that waits, not
        the one running), unless that CPU's stopper thread moved it: migration_cpu_stop()
        (an affinity change, sched_exec()) moves the task it preempted, the one switched out
        to it last there. Without placements (a trace recorded without those events), where
        it ran last."""
        at = old.cpu
        left = self._left_at.get(id(old))
        since = left[1] if left is not None and left[0] is old else -1
        new_cpu: int | None = None
        for ln, fr, to, stopper in self.placements.get(pid, ()):
            if ln >= line:
                break
            if ln <= since:
                continue
            if fr < 0:
                if ln > taken:
                    new_cpu = to
            elif fr == at and not (
                fr == new_cpu and stopper and self._stopped_new(pid, old, fr, ln)
            ):
                at = to
            elif fr == new_cpu:
                new_cpu = to
        return at

    def _stopped_new(self, pid: int, old: Task, cpu: int, line: int) -> bool:
        """Was the task last switched out to `cpu`'s stopper thread before `line`, of the
        two that `pid` names, the new one rather than `old`?"""
        before = [t for ln, c, t in self._stopped.get(pid, ()) if ln < line and c == cpu]
        return bool(before) and before[-1] is not old

    def _fork_kind(self, parent: Task, parent_comm: str, flags: int | None) -> str:
        if parent.mm is None or parent.pf_kthread:
            return "kthread" if parent_comm == "kthreadd" or parent.is_idle else "usermode"
        if flags is not None and flags & CLONE_VM:
            return "thread" if flags & CLONE_THREAD else "vfork"
        return "process"

    def _do_fork(self, ev: TraceEvent, child_pid: int, child_comm: str, flags: int | None) -> None:
        parent = self.current(ev.cpu, ev.pid, ev.comm, ev.tgid)
        parked = self._parked.get(child_pid, [])
        if any(line == ev.line for line, _ in parked):
            self.claim(child_pid, ev.line)
            return
        if any(self.tasks.get(child_pid) is child for _, child in parked):
            del self.tasks[child_pid]  # another task takes the pid first (fork_ahead)
            self.stats.anomalies["pid taken while a fork made ahead waited for it"] += 1
        old = self.tasks.get(child_pid)
        if old is not None and old.state is not TaskState.GONE:
            if self._ahead is not None:
                # made ahead while a task goes by its pid: copy_process() gives the child
                # its pid (alloc_pid()) only after copy_mm(), at its task_newtask (claim),
                # when the task there has exited and been reaped (a clone3() with set_tid
                # waits for that); until then that task goes by it, to its final switch
                kind = self._fork_kind(parent, ev.comm, flags)
                self._ahead.append(self.m.fork(parent, kind, name=child_comm))
                if not old.exiting:
                    self.stats.anomalies["fork made ahead while the task at its pid still ran"] += 1
                return
            if not old.exiting:
                return
            # The pid of a task that exited is free again once its parent reaped it
            # (release_task()), which can come before the task's final switch (a stalled
            # vCPU, a preemption after exit_notify()): a new task takes it, and the old one
            # switches out for the last time under it all the same.
            self._displace(child_pid, old, ev.line)
        kind = self._fork_kind(parent, ev.comm, flags)
        if kind in ("kthread", "usermode") and parent.mm is not None:
            kind = "thread"  # a kernel thread inside kthread_use_mm forking: rare
        child = self.m.fork(parent, kind, name=child_comm)
        self.tasks[child_pid] = child
        self.tgid_of[child_pid] = (
            self.tgid_of.get(ev.pid, ev.pid) if kind == "thread" else (child_pid)
        )

    def newtask(self, ev: NewTask) -> None:
        self._do_fork(ev, ev.child_pid, ev.child_comm, ev.clone_flags)

    def fork_ahead(self, nt: NewTask, at: TraceEvent) -> None:
        """The fork of task_newtask `nt`, made ahead of it at its dup_mmap() flush `at`. The
        kernel gives the child its pid only later
        (alloc_pid() follows copy_mm() in copy_process(), and a clone3() with set_tid waits
        for that pid to be free): until `nt`, another task may still go by the pid, exiting
        or not yet exited (the child is then made aside), or take it and die (_do_fork
        steps the child aside for it); at `nt` the pid is the child's (claim)."""
        self._ahead_of(nt, at, self.apply)

    def _ahead_of(self, nt: NewTask, at: TraceEvent, make: Callable[[NewTask], None]) -> None:
        """Make the fork of `nt` at line `at` (`make` of `nt` moved there), ahead of its
        task_newtask, and keep its child for its claim."""
        self._ahead = []
        try:
            make(replace(nt, line=at.line, cpu=at.cpu, ts=at.ts))
            child = self._ahead[0] if self._ahead else self.tasks.get(nt.child_pid)
        finally:
            self._ahead = None
        if child is not None:
            self._parked.setdefault(nt.child_pid, []).append((nt.line, child))

    def claim(self, pid: int, line: int) -> None:
        """The task_newtask at `line` of a fork made ahead (fork_ahead): its child goes by `pid`
        from here on; a task that took the pid meanwhile has exited (its final switch may be
        still to come: _displaced)."""
        parked = self._parked.get(pid, [])
        child = next((c for at, c in parked if at == line), None)
        if child is None:
            return
        parked.remove((line, child))
        if not parked:
            del self._parked[pid]
        cur = self.tasks.get(pid)
        if cur is not None and cur is not child and cur.state is not TaskState.GONE:
            self._displace(pid, cur, line)
        self.tasks[pid] = child
        self.tgid_of[pid] = pid

    def fork(self, ev: ProcessFork) -> None:
        if ev.child_pid in self.tasks and not self._gone(ev.child_pid):
            return  # task_newtask did it, with the clone flags
        self._do_fork(ev, ev.child_pid, ev.child_comm, None)

    def flush(self, ev: MmFlush) -> None:
        """A TLB flush from this CPU (tlb_hints()): dup_mmap()'s, where the fork then runs
        (its task_newtask finds the child made), or flush_tlb_mm_range() of the task's mm,
        or, for a `foreign` flush, of the mm every CPU the IPIs reached was on, or, when no
        handler left a line (every other CPU in the mask was lazy: skipped), of the one mm
        the other CPUs lazily borrow; among several, the one this task's last such flush
        went to (none of them: not replayed)."""
        t = self.current(ev.cpu, ev.pid, ev.comm, ev.tgid)
        if ev.lazy_local and self.exit_mmap_load(ev.cpu, ev.pid):
            return
        if ev.fork is not None:
            self.stats.tlb["forks at their dup_mmap flush"] += 1
            self._ahead_of(ev.fork, ev, self.newtask)
            return
        kind = "flushes"
        rqs = self.m.state.rqs
        if ev.foreign:
            if ev.receivers:
                on = {rqs[c].curr.active_mm for c in ev.receivers if c < len(rqs)}
            else:
                on = {
                    rq.curr.active_mm
                    for rq in rqs
                    if rq.cpu != ev.cpu
                    and rq.online
                    and rq.curr.mm is None
                    and rq.curr.active_mm is not None
                    and not rq.curr.active_mm.is_init_mm
                }
            last = self._foreign.get(ev.pid)
            if len(on) > 1 and last in on:  # a task flushing another's mm goes on with it
                on = {last}
            mm = on.pop() if len(on) == 1 else None
            if mm is not None:
                self._foreign[ev.pid] = mm
            kind = "flushes of another task's mm" if mm is not t.mm else kind
        else:
            mm = t.mm
        if mm is None or mm.is_init_mm or mm.freed or mm.torn_down:
            if ev.foreign:
                self.stats.tlb["flushes of an unknown mm (not replayed)"] += 1
            return
        self.stats.tlb[kind] += 1
        for c in ev.in_switch:  # the IPI waits for the switch the trace shows next there
            if c < len(rqs) and rqs[c].online:
                self.m.local_irq_disable(c)
        self.m.flush_tlb_mm_range(ev.cpu, mm, freed_tables=ev.freed_tables)

    def temp_mm(self, ev: TempMmLoads) -> None:
        """CR3 loads in a row outside a context switch (tlb_hints()): text_poke()s, which
        on a lazy CPU leave_mm() first (an odd run), or, on a lazy CPU, EFI calls (pairs;
        before 6.15 efi_enter_mm() does not leave lazy mode). One load alone is another
        path's (ExecMmap, ExitMmapLoad, or a plain line)."""
        if ev.loads < 2:
            return
        t = self.current(ev.cpu, ev.pid, ev.comm, ev.tgid)
        lazy = self.m.state.rqs[ev.cpu].tlb.is_lazy
        efi = lazy and t.mm is None and ev.loads % 2 == 0
        self.stats.tlb["EFI calls" if efi else "text_pokes"] += ev.loads // 2
        for _ in range(ev.loads // 2):
            if efi:
                self.m.efi_call(ev.cpu)
            else:
                self.m.text_poke(ev.cpu)

    def exit_mmap_load(self, cpu: int, pid: int) -> bool:
        """exit_mmap()'s flush switched the CPU of task `pid`, current here, from its own mm,
        which it was lazy on, to init_mm (tlb_hints(): ExitMmapLoad, MmFlush.lazy_local): its
        exit_mm() ran before, perhaps before a preemption the replay took for a user task's.
        The exit runs now (its __mmput makes that flush), not at its sched_process_exit,
        which then finds it done. False when the model has no such task here."""
        t = self._running(cpu, pid)
        if t is None or t.pf_kthread or t.exiting or t.mm is None:
            return False
        self.stats.tlb["exits at exit_mmap's flush"] += 1
        self.m.exit(t)
        return True

    def exec_mmap(self, ev: ExecMmap) -> None:
        """exec_mmap() of the task current here (tlb_hints()): the exec runs now, not at its
        sched_process_exec, which then finds it done. A task the trace's pid does not name
        as current here (de_thread() has given the exec'ing thread its leader's pid) is left
        to sched_process_exec."""
        t = self._running(ev.cpu, ev.pid)
        if t is None or t.pf_kthread or t.in_exec_mmap is not None or t.exiting:
            return
        self.stats.tlb["execs at their exec_mmap"] += 1
        self.m.exec(t)
        self.execd[ev.pid] = t

    def exec(self, ev: ProcessExec) -> None:
        if (ev.exec_pid, ev.old_pid) in self.exchanged:
            self.exchanged.discard((ev.exec_pid, ev.old_pid))  # swapped at the leader's switch
        elif ev.old_pid != ev.exec_pid and ev.old_pid in self.tasks:
            # de_thread(): a non-leader thread exec'd and took over the leader's pid.
            self.tasks[ev.exec_pid] = self.tasks.pop(ev.old_pid)
        t = self.current(ev.cpu, ev.exec_pid, ev.comm, ev.tgid)
        if t.pf_kthread:
            self.stats.anomalies["exec by a task guessed to be a kernel thread"] += 1
            return
        if self.execd.pop(ev.exec_pid, None) is t:
            pass  # the exec ran at its exec_mmap() (Replayer.exec_mmap)
        elif t.in_exec_mmap is not None:  # preempted inside exec_mmap() (a validation's find)
            self.m.resume_exec(t)
        else:
            self.m.exec(t)
        self.tgid_of[ev.exec_pid] = ev.exec_pid

    def exit(self, ev: ProcessExit) -> None:
        self.execd.pop(ev.exit_pid, None)  # an exec that failed past the point of no return
        t = self.current(ev.cpu, ev.exit_pid, ev.comm, ev.tgid)
        if t.is_idle or t.exiting or (t.pid == 1 and t.comm == "init"):
            return
        if t.uses_mm:
            self.m.kthread_unuse_mm(t)
        self.m.exit(t)


@dataclass
class ReplayResult:
    trace: str
    events: int
    configs: dict[str, Metrics]
    replay_stats: dict[str, ReplayStats]
    read_anomalies: dict[str, int]


# events the replay reads ahead of itself for exited_picks() (read_ahead)
LOOKAHEAD = 5000


def exited_picks(events: Iterable[object]) -> dict[int, bool]:
    """For each sched_switch line, whether the task it switched in shows, before it switches
    out again on that CPU, to be an exited task on its way to its final switch (True) or a
    live one (False); absent when nothing says. Read ahead of the replay, for a pid that
    names two tasks waiting on one runqueue (Replayer._displaced_next): the exited one's next
    switch out is its final one ("X", "Z") and it has passed its sched_process_exit, while
    a live task may sleep ("S"), fork, exec, reach its sched_process_exit or flush its own
    mm first. A preemption ("R+") or a "D" wait (PREEMPT_RT's sleeping locks, in an exit
    too) says nothing by itself, but two more things do:
    - a switch from the pid to the same pid switches in the *other* task of the two
      (__schedule() never switches a task to itself), so what one of them shows settles
      the other's pick too;
    - a vfork() parent waits ("D", wait_for_vfork_done()) until its child execs or exits
      (mm_release()): when it runs again the child has run, so if exactly one switch in of
      the child's pid since its task_newtask is unsettled, and none settled says live, that
      one was the child's."""
    picker = ExitedPicks()
    for e in events:
        picker.feed(e)
    picker.settle(final=True)
    return picker.picks


class ExitedPicks:
    """exited_picks() one event at a time, for a replay that reads ahead of itself
    (read_ahead): `picks` grows as events come and settle() applies the rules that span
    two switches (swaps, vfork children) to what is known so far; forget() lets go of the
    picks of lines the replay has passed."""

    def __init__(self) -> None:
        self.picks: dict[int, bool] = {}
        self.running: dict[int, tuple[int, int]] = {}  # CPU -> (switch line, pid switched in)
        # (switch line of one task of a pid, switch line of the other): a switch from the pid
        # to itself, the first task switched in at the first line switching out at the second
        self.swaps: list[tuple[int, int]] = []
        # vfork() parent pid -> (its child's pid, the line of its task_newtask)
        self.vforks: dict[int, tuple[int, int]] = {}
        self.waiting: set[int] = set()  # those parents in their wait ("D") for the child
        self.children: dict[int, list[int]] = {}  # vfork child pid -> its switches in since
        self.ran: list[list[int]] = []  # switches in of a vfork child, one of which was its
        self.changed = False  # since the last settle()
        self.forgot = 0  # the line forget() was last given

    def feed(self, e: object) -> None:
        if not isinstance(e, TraceEvent) or isinstance(e, Probe):
            return
        picks = self.picks
        cur = self.running.get(e.cpu)
        if isinstance(e, SchedSwitch):
            if cur is not None and cur[1] == e.prev_pid and cur[0] not in picks:
                if e.prev_state.startswith(("X", "Z")):
                    picks[cur[0]] = True
                elif e.prev_state.startswith("S"):
                    picks[cur[0]] = False
            if cur is not None and cur[1] == e.prev_pid == e.next_pid:
                self.swaps.append((cur[0], e.line))
            self.running[e.cpu] = (e.line, e.next_pid)
            if e.prev_pid in self.vforks and e.prev_state.startswith("D"):
                self.waiting.add(e.prev_pid)
            if e.next_pid in self.children:
                self.children[e.next_pid].append(e.line)
            if e.next_pid in self.waiting:
                self.waiting.discard(e.next_pid)
                self.ran.append(self.children.pop(self.vforks.pop(e.next_pid)[0], []))
            self.changed = True
        elif (
            cur is not None
            and e.pid == cur[1]
            and cur[0] not in picks
            and (
                isinstance(e, ProcessExit | NewTask | ProcessFork | ProcessExec)
                or (
                    "local mm shootdown" in getattr(e, "reason", "")
                    and not getattr(e, "hardirq", False)
                )
            )
        ):
            picks[cur[0]] = False
            self.changed = True
        if isinstance(e, NewTask) and e.clone_flags & CLONE_VFORK:
            self.vforks[e.pid] = (e.child_pid, e.line)
            self.waiting.discard(e.pid)
            self.children[e.child_pid] = []

    def settle(self, final: bool = False) -> None:
        """Along chains of swaps, either way, and the vfork children's; what can settle no
        more is let go. Until the events end (`final`), a switch in whose task still runs
        where it was switched in is left to what it does next: that says more, as it does
        when the whole trace is read first."""
        if not (self.changed or final) or not (self.swaps or self.ran):
            return
        self.changed = False
        picks = self.picks
        running = set() if final else {line for line, _ in self.running.values()}
        settled = True
        while settled:
            settled = False
            for a, b in self.swaps:
                if (a in picks) != (b in picks):
                    known, other = (a, b) if a in picks else (b, a)
                    if other not in running:
                        picks[other] = not picks[known]
                        settled = True
            for lines in self.ran:
                unsettled = [line for line in lines if line not in picks]
                if (
                    len(unsettled) == 1
                    and unsettled[0] not in running
                    and all(picks[ln] for ln in lines if ln in picks)
                ):
                    picks[unsettled[0]] = False
                    settled = True
        self.swaps = [(a, b) for a, b in self.swaps if a not in picks or b not in picks]
        self.ran = [
            lines
            for lines in self.ran
            if any(ln not in picks for ln in lines) and all(picks.get(ln, True) for ln in lines)
        ]

    def forget(self, before: int) -> None:
        """Let go of what concerns only switch lines before `before`, which the replay has
        passed: swaps and vfork children's switches in all before it, and the picks of such
        lines but those a swap or a vfork child still to settle needs. A vfork made before
        the line of the call before is let go too: its parent never waited (its child
        exec'd first) or waits still, and its child's switches in would pile up."""
        for parent in [p for p, (_, at) in self.vforks.items() if at < self.forgot]:
            self.waiting.discard(parent)
            self.children.pop(self.vforks.pop(parent)[0], None)
        self.forgot = before
        self.swaps = [(a, b) for a, b in self.swaps if b >= before]
        self.ran = [lines for lines in self.ran if lines and lines[-1] >= before]
        keep = {ln for pair in self.swaps for ln in pair} | {ln for ls in self.ran for ln in ls}
        for ln in [ln for ln in self.picks if ln < before and ln not in keep]:
            del self.picks[ln]  # (in place: the replayers hold this dict)


def read_ahead(events: Iterable[TraceEvent], picker: ExitedPicks, n: int) -> Iterator[TraceEvent]:
    """The events, each given out once `n` more have been fed to `picker`: what a task
    switched in does next is known when the replay reaches its switch (Replayer.picks),
    however far the trace goes, in memory for `n` events."""
    held: deque[TraceEvent] = deque()
    for e in events:
        picker.feed(e)
        held.append(e)
        if len(held) > n:
            picker.settle()
            yield held.popleft()
    picker.settle(final=True)
    yield from held


def peek_cpus(
    events: Iterator[TraceEvent], n: int = 5000, stats: object = None
) -> tuple[int, Iterator[TraceEvent]]:
    """How many CPUs the trace has: the header's count (tracefs "#P:N", trace-cmd "cpus=N")
    when `stats` (the reader's ReadStats) saw one, else the highest CPU in the first `n`
    events."""
    head = list(islice(events, n))
    ncpus = max((e.cpu for e in head), default=0) + 1
    return max(ncpus, getattr(stats, "header_cpus", 0)), chain(head, events)


def replay(
    events: Iterable[TraceEvent],
    configs: list[KernelConfig],
    ncpus: int,
    snapshot: dict[int, TaskInfo] | None = None,
    sanitize: bool = True,
    costs: dict[str, int] | None = None,
    progress: object = None,
    sanitize_every: int = SANITIZE_EVERY,
    extra: dict[str, list[Clocked]] | None = None,
    placements: dict[int, list[Placement]] | None = None,
    picks: dict[int, bool] | None = None,
) -> tuple[int, dict[str, Replayer]]:
    """Feed every event to one Replayer per configuration. Returns (events, replayers by
    configuration label: the preset's name, with the settings that differ from it).
    `placements` and `picks`: see Replayer; without `picks`, the replay reads LOOKAHEAD
    events ahead of itself for them (read_ahead). With `sanitize`, bad accesses are reported
    at once and every invariant is checked every `sanitize_every` operations and at the end."""
    picker = None
    if picks is None:
        picker = ExitedPicks()
        events = read_ahead(events, picker, LOOKAHEAD)
        picks = picker.picks
    replayers = {
        c.label: Replayer(
            c,
            ncpus,
            Metrics(
                c.arch,
                costs=dict(costs or DEFAULT_COSTS),
                preempt_rt=c.PREEMPT_RT,
                invlpgb=c.invlpgb,
            ),
            snapshot,
            sanitize,
            extra=(extra or {}).get(c.label),
            sanitize_every=sanitize_every,
            placements=placements,
            picks=picks,
        )
        for c in configs
    }
    rs = list(replayers.values())
    n = 0
    passed = 0  # the last sched_switch replayed (hints move forks and flushes, not switches)
    tick = progress if callable(progress) else None
    for n, ev in enumerate(tlb_hints(events), start=1):
        if ev.cpu >= ncpus:
            for r in rs:
                r.stats.anomalies["event on a CPU beyond the machine"] += 1
            continue
        for r in rs:
            r.apply(ev)
        if isinstance(ev, SchedSwitch):
            passed = ev.line
        if n % 20000 == 0:
            for r in rs:
                r.m.forget_dead()
            if picker is not None:
                picker.forget(passed)
            if tick is not None:
                tick(n)
    for r in rs:
        if r.sanitizer is not None:
            r.sanitizer.check_now(r.m.state)
    return n, replayers
