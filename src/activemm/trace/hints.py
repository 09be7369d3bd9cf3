"""What a replay reads from x86's `tlb_flush` tracepoint besides the scheduler events.

The kernel emits `tlb_flush` for every CR3 load in switch_mm_irqs_off() ("flush on task
switch") and for every TLB flush: on the flushing CPU "remote ipi send" (native_flush_tlb_multi()
when other CPUs are in the mm's mm_cpumask) and the local part ("local mm shootdown", from
flush_tlb_func()); on the CPUs the IPIs reach "remote shootdown", or a CR3 load of init_mm on a
lazy one. `tlb_hints()` turns those lines into operations the model has:

- **MmFlush**: a flush of the running task's own mm (arch/x86/mm/tlb.c: flush_tlb_mm_range(),
  from munmap, mprotect, a COW fault, exit_mmap...), with whether page tables were freed and
  whether it was dup_mmap()'s flush of a fork;
- **TempMmLoads**: CR3 loads in a row by the running task outside a context switch, with
  nothing between: text_poke()'s use_temporary_mm(poking_mm) and back (after leave_mm() on a
  lazy CPU: a third load), or an EFI runtime call's efi_mm and back;
- **ExecMmap**: one such load followed by the task's own task_rename: exec_mmap(), where
  begin_new_exec() renames the task next (sched_process_exec comes only at the end of the
  exec, if it does);
- **ExitMmapLoad**: one such load followed by the task's sched_process_exit, no rename, exec
  or fork of its own between: exit_mmap()'s final flush found the task's CPU lazy on its mm
  (exit_mm() ran before) and switched it to init_mm. A flush that IPIs other CPUs first says
  the same with its local part (MmFlush.lazy_local).

Each takes the place of the first line it was read from, once what follows has told what it
was; the other lines stay as they are (a replay does nothing with a bare `tlb_flush`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from activemm.trace.events import (
    ExecMmap,
    ExitMmapLoad,
    LostEvents,
    MmFlush,
    NewTask,
    Probe,
    ProcessExec,
    ProcessExit,
    ProcessFork,
    SchedSwitch,
    TaskRename,
    TempMmLoads,
    TlbFlush,
    TraceEvent,
)

CLONE_VM = 0x100

# How many events a replay holds back behind a flush or a run of CR3 loads it cannot tell yet
# (IPIs still out, a full flush not yet known to be a fork's); beyond that it is replayed with
# what is known by then.
HORIZON = 20000


@dataclass
class _Flush:
    """A flush met, until it is known enough to replay."""

    ev: TlbFlush
    sent: bool  # it began with "remote ipi send": other CPUs were in its mm_cpumask
    local_seen: bool = False  # its local part came: the flushed mm was loaded there
    over: bool = False  # the sender's next event came: every IPI was handled
    freed_tables: bool = False
    fork: NewTask | None = None
    resolved: bool = False
    receivers: list[int] | None = None  # CPUs whose IPI handler left a line
    lazy_local: bool = False  # its local part was a lazy CPU's switch to init_mm
    switching: set[int] | None = None  # CPUs whose sched_switch came after the IPIs went out
    in_switch: list[int] | None = None  # receivers among those: the IPI waited for the switch

    def event(self) -> MmFlush:
        e = self.ev
        return MmFlush(
            e.line,
            e.cpu,
            e.ts,
            e.pid,
            e.comm,
            e.tgid,
            e.pages,
            self.freed_tables,
            self.fork,
            foreign=(self.sent and not self.local_seen) or self.lazy_local,
            receivers=tuple(self.receivers or ()),
            lazy_local=self.lazy_local,
            in_switch=tuple(self.in_switch or ()),
        )

    def received(self, cpu: int) -> bool:
        """A handler's line on `cpu` while the IPIs are out: the first one there is this
        flush's (a CPU takes each flush's IPI once). Whether it was."""
        receivers = self.receivers or []
        if cpu == self.ev.cpu or not self.sent or self.over or cpu in receivers:
            return False
        self.receivers = [*receivers, cpu]
        if cpu in (self.switching or ()):
            self.in_switch = [*(self.in_switch or []), cpu]
        return True

    def switched(self, cpu: int) -> None:
        """A sched_switch on `cpu` while the IPIs are out: __schedule() there had turned
        interrupts off, so an IPI whose handler's line comes after it waited for the
        switch."""
        if cpu != self.ev.cpu and self.sent and not self.over:
            self.switching = (self.switching or set()) | {cpu}


@dataclass
class _Run:
    """CR3 loads in a row by one task outside a context switch, until the run ends."""

    ev: TlbFlush
    loads: int = 1
    resolved: bool = False
    renamed: bool = False  # the task's own task_rename came next on this CPU
    exited: bool = False  # the task's sched_process_exit came, nothing of the kinds between

    def event(self) -> TraceEvent:
        """TempMmLoads; for one load alone, ExecMmap when the task renamed itself next,
        ExitMmapLoad when its exit came first, or else the line itself (kthread_use_mm():
        other events bring it; a switch's own load whose line names, after de_thread()'s
        exchange_tids() on another CPU, not the task the sched_switch line named)."""
        e = self.ev
        if self.loads == 1 and self.renamed:
            return ExecMmap(e.line, e.cpu, e.ts, e.pid, e.comm, e.tgid)
        if self.loads == 1 and self.exited:
            return ExitMmapLoad(e.line, e.cpu, e.ts, e.pid, e.comm, e.tgid)
        if self.loads == 1:
            return e
        return TempMmLoads(e.line, e.cpu, e.ts, e.pid, e.comm, e.tgid, self.loads)


def _who(ev: TraceEvent) -> int:
    """The task a line is by, as a key: its pid, but each CPU's idle task apart (all are pid
    0)."""
    return ev.pid if ev.pid > 0 else -1 - ev.cpu


def _sender(ev: TlbFlush) -> bool:
    """A line flush_tlb_mm_range() emits on the flushing CPU: "remote ipi send" or the local
    part, "local mm shootdown"; not a flush IPI's line (in a hardirq) or a CR3 load."""
    return (
        not ev.hardirq
        and not ev.cr3_load
        and ("ipi send" in ev.reason or "local mm shootdown" in ev.reason)
    )


class _Hints:
    def __init__(self, horizon: int) -> None:
        self.horizon = horizon
        self.buf: deque[TraceEvent | _Flush | _Run] = deque()
        self.flushes: dict[int, _Flush] = {}  # _who() -> its flush not resolved yet
        self.runs: dict[int, _Run] = {}  # CPU -> its run of CR3 loads going on
        # CPU -> prev_pid of the sched_switch that was its last line: a CR3 load next by
        # that task is the switch's own (the line shows the task switched out; one by the
        # task switched in came after the switch)
        self.switched: dict[int, int] = {}
        # CPUs whose task last loaded one mm outside a switch (exec's activate_mm()): a lone
        # local flush there is of that mm, not of the one the replay gives the task
        self.temp: set[int] = set()
        self.irq_flags = False  # the trace marks hardirq context (tracefs irq-info column)
        # _who() -> its one CR3 load outside a switch, until its next line tells whether it
        # was exec_mmap()'s (task_rename next; the task's switches and flush lines between:
        # preempted in the old mm's exit_mmap(), whose flushes come first)
        self.execs: dict[int, _Run] = {}
        # _who() -> its one CR3 load outside a switch that was not exec_mmap()'s, until the
        # task's exit (exit_mmap()'s) or its rename, exec or fork (neither) tells
        self.exits: dict[int, _Run] = {}

    def _resolve(self, f: _Flush) -> None:
        f.over = f.resolved = True
        if self.flushes.get(_who(f.ev)) is f:
            del self.flushes[_who(f.ev)]

    def _end_run(self, cpu: int, by: TraceEvent | None = None) -> None:
        """The run on `cpu` is over (`by`: the CPU's line that ended it). One load alone
        waits on while its task is switched out or flushes (_exec_wait)."""
        run = self.runs.pop(cpu, None)
        if run is None:
            return
        if run.loads == 1:
            self.temp.add(cpu)
            if run.ev.pid > 0 and by is not None and self._exec_goes_on(run, by):
                self._wait(self.execs, run)
                return
            if run.ev.pid > 0 and by is not None and not run.renamed and self._await_exit(run, by):
                return
        run.resolved = True

    @staticmethod
    def _exec_goes_on(run: _Run, ev: TraceEvent) -> bool:
        """After a task's one CR3 load: True while `ev` leaves open whether it was
        exec_mmap()'s (the task switched out, or its flush lines); the task's own
        task_rename says it was (run.renamed)."""
        if isinstance(ev, TaskRename) and ev.rename_pid == run.ev.pid:
            run.renamed = True
            return False
        if _who(ev) != _who(run.ev):
            return False
        return isinstance(ev, SchedSwitch) or (isinstance(ev, TlbFlush) and not ev.cr3_load)

    def _exec_wait(self, ev: TraceEvent) -> None:
        """A line of a task whose one CR3 load waits (self.execs)."""
        run = self.execs.get(_who(ev))
        if run is not None and not self._exec_goes_on(run, ev):
            del self.execs[_who(ev)]
            if run.renamed or not self._await_exit(run, ev):
                run.resolved = True

    @staticmethod
    def _exit_says(run: _Run, ev: TraceEvent) -> bool | None:
        """After a task's one CR3 load that was not exec_mmap()'s: True when `ev` is the
        task's sched_process_exit, False when it is the task's own rename, exec or fork
        (it was still a live user task: not exit_mmap()'s load), None for anything else."""
        pid = run.ev.pid
        if isinstance(ev, ProcessExit):
            return True if ev.exit_pid == pid else None
        if isinstance(ev, TaskRename):
            return False if ev.rename_pid == pid else None
        if isinstance(ev, ProcessExec):
            return False if pid in (ev.exec_pid, ev.old_pid) else None
        if isinstance(ev, NewTask | ProcessFork):
            return False if ev.pid == pid else None
        return None

    def _await_exit(self, run: _Run, ev: TraceEvent) -> bool:
        """Whether `run` waits on for its task's exit after `ev` (self.exits); `ev` may
        already be the exit (run.exited)."""
        says = self._exit_says(run, ev)
        if says is not None:
            run.exited = says
            return False
        self._wait(self.exits, run)
        return True

    @staticmethod
    def _wait(waits: dict[int, _Run], run: _Run) -> None:
        """`run` waits in `waits` (self.execs, self.exits) for its task's next telling line;
        an earlier load of the task's waiting there is replayed as what is known of it."""
        earlier = waits.get(_who(run.ev))
        if earlier is not None:
            earlier.resolved = True
        waits[_who(run.ev)] = run

    def _exit_wait(self, ev: TraceEvent) -> None:
        """A line of a task whose one CR3 load waits for its exit (self.exits)."""
        run = self.exits[_who(ev)]
        says = self._exit_says(run, ev)
        if says is not None:
            del self.exits[_who(ev)]
            run.exited = says
            run.resolved = True

    def _forget(self) -> None:
        """Lost events: what was going on is unknown."""
        for f in list(self.flushes.values()):
            self._resolve(f)
        for run in [*self.execs.values(), *self.exits.values()]:
            run.resolved = True
        self.execs.clear()
        self.exits.clear()
        for cpu in list(self.runs):
            self._end_run(cpu)
        self.switched.clear()
        self.temp.clear()

    def _load(self, ev: TlbFlush) -> _Run | None:
        """A CR3 load: a switch's, a flush IPI's on a lazy CPU, the local part of the task's
        own flush on its lazy CPU (exit_mmap() after exit_mm()), or one of a run."""
        cpu = ev.cpu
        self.irq_flags |= ev.hardirq
        in_switch = not ev.hardirq and self.switched.get(cpu) == ev.pid
        ipi = ev.ipi_cr3_load and not in_switch  # a flush IPI's (in a hardirq or the idle task)
        own = not ipi and not in_switch
        if not in_switch and (ipi or not self.irq_flags):
            for o in self.flushes.values():  # a lazy CPU the IPIs sent to init_mm
                if o.received(cpu):
                    o.freed_tables = True
        run = self.runs.get(cpu)
        if run is not None and own and run.ev.pid == ev.pid:
            run.loads += 1
            return None
        self._end_run(cpu)
        if not own:
            return None
        f = self.flushes.get(_who(ev))
        if f is not None and f.sent and not f.over and f.ev.cpu == cpu and not f.local_seen:
            # flush_tlb_func() here on a lazy CPU, to init_mm: the flush was of the mm it
            # borrowed (the task's own in the kernel's exit_mmap(), after exit_mm())
            f.local_seen = f.freed_tables = f.lazy_local = True
            f.receivers = [*(f.receivers or []), cpu]
            return None
        self.temp.discard(cpu)
        earlier = self.exits.pop(_who(ev), None)  # a task loads again: it was no exit
        if earlier is not None:
            earlier.resolved = True
        run = self.runs[cpu] = _Run(ev)
        return run

    def _flush_line(self, ev: TlbFlush) -> _Flush | None:
        cpu = ev.cpu
        self._end_run(cpu)
        f = self.flushes.get(_who(ev))
        ongoing = f is not None and f.sent and not f.over and f.ev.cpu == cpu
        # the local part of the same flush: its pages, all of them, or none (up to date)
        same = "local" in ev.reason and f is not None and ev.pages in (f.ev.pages, -1, 0)
        if ongoing and same and f is not None and not f.local_seen:
            f.local_seen = True
            return None
        if f is not None:
            self._resolve(f)  # another flush: that one is over, and not a fork's
        sent = "ipi send" in ev.reason
        if not sent and cpu in self.temp:
            return None  # of the mm the task loaded outside a switch
        f = self.flushes[_who(ev)] = _Flush(ev, sent)
        if not sent:
            f.local_seen = f.over = True
            if ev.pages != -1:  # not a fork's: dup_mmap() flushes the whole mm
                self._resolve(f)
        return f

    def _task_went_on(self, ev: TraceEvent) -> None:
        """The flushing task's next event: its IPIs were all handled. A full flush waits past
        the task's switches (preempted in copy_process() after dup_mmap(), its next event of
        its own may still be its task_newtask)."""
        f = self.flushes.get(_who(ev))
        if f is None:
            return
        f.over = True
        if isinstance(ev, SchedSwitch) and f.ev.pages == -1:
            return
        if isinstance(ev, NewTask) and f.ev.pages == -1 and not ev.clone_flags & CLONE_VM:
            f.fork = ev
        self._resolve(f)

    def feed(self, ev: TraceEvent) -> Iterator[TraceEvent]:
        held: _Flush | _Run | None = None
        if (self.execs or self.exits) and not isinstance(ev, Probe | LostEvents):
            who = _who(ev)
            if who in self.execs:
                self._exec_wait(ev)
            elif who in self.exits:
                self._exit_wait(ev)
        if isinstance(ev, TlbFlush):
            if ev.cr3_load:
                held = self._load(ev)
            elif _sender(ev):
                self._end_run(ev.cpu, ev)
                held = self._flush_line(ev)
            else:
                self._end_run(ev.cpu, ev)
                if "remote shootdown" in ev.reason:  # flush_tlb_func() on a CPU the IPIs reached
                    for o in self.flushes.values():
                        o.received(ev.cpu)
            self.switched.pop(ev.cpu, None)
        elif isinstance(ev, LostEvents):
            self._forget()
        elif not isinstance(ev, Probe):
            self._end_run(ev.cpu, ev)
            self.temp.discard(ev.cpu)
            if isinstance(ev, SchedSwitch):
                self.switched[ev.cpu] = ev.prev_pid
                if self.flushes:
                    for o in self.flushes.values():
                        o.switched(ev.cpu)
            else:
                self.switched.pop(ev.cpu, None)
            self._task_went_on(ev)
        if held is not None:
            self.buf.append(held)
        elif self.buf:
            self.buf.append(ev)
        else:
            yield ev
            return
        if len(self.buf) > self.horizon:
            self._give_up(self.buf[0])
        yield from self._ready()

    def _give_up(self, item: TraceEvent | _Flush | _Run) -> None:
        """Replay `item` with what is known of it by now."""
        if isinstance(item, _Flush):
            self._resolve(item)
        elif isinstance(item, _Run):
            item.resolved = True
            if self.runs.get(item.ev.cpu) is item:
                del self.runs[item.ev.cpu]
            if self.execs.get(_who(item.ev)) is item:
                del self.execs[_who(item.ev)]
            if self.exits.get(_who(item.ev)) is item:
                del self.exits[_who(item.ev)]

    def _ready(self) -> Iterator[TraceEvent]:
        buf = self.buf
        while buf and not (isinstance(buf[0], _Flush | _Run) and not buf[0].resolved):
            head = buf.popleft()
            yield head if isinstance(head, TraceEvent) else head.event()

    def close(self) -> Iterator[TraceEvent]:
        self._forget()
        for item in self.buf:
            self._give_up(item)
        yield from self._ready()


def tlb_hints(events: Iterable[TraceEvent], horizon: int = HORIZON) -> Iterator[TraceEvent]:
    """The events, with what the `tlb_flush` lines tell turned into MmFlush, TempMmLoads,
    ExecMmap and ExitMmapLoad events (module docstring):

    - a flush is "remote ipi send" and then, on the same CPU, its local part ("local mm
      shootdown" of the same pages, all of them or none, or on a lazy CPU its CR3 load of
      init_mm); or a "local mm shootdown" alone.
      IPIs sent with no local part flushed an mm the CPU did not have loaded, another task's
      (`foreign`). While the IPIs are out (until the sender's next event: it waits for them),
      the CPUs whose IPI handler leaves a line ("remote shootdown", or a CR3 load outside a
      context switch: in a hardirq, when the trace says, or by the idle task, which runs the
      call-function queue itself while it polls) are its `receivers`; such a load is
      a lazy CPU that flush_tlb_func() sent to init_mm, which native_flush_tlb_multi() IPIs
      only when page tables were freed (`freed_tables`); a receiver whose line comes after
      a sched_switch of its own since the IPIs went out took the IPI only at that switch's
      end (`in_switch`). `fork`: a full flush whose task's
      next event but its switches is a task_newtask without CLONE_VM is that fork's
      dup_mmap() flush;
    - a run ends at the CPU's next line that is not a load of the same task's (probes apart).
      A run of one load followed by the task's own task_rename (its switches and flush
      lines apart: preempted in the old mm's exit_mmap()) is exec_mmap() (ExecMmap); one
      followed by the task's sched_process_exit, no rename, exec or fork of its own between,
      is exit_mmap()'s switch of its lazy CPU to init_mm (ExitMmapLoad); a lone local flush
      right after a run of one load is left alone.

    Events are held back while something is not known yet, at most `horizon` of them."""
    hints = _Hints(horizon)
    for ev in events:
        yield from hints.feed(ev)
    yield from hints.close()
