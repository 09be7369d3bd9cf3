"""`activemm validate`: replay a capture through the model and score what the model predicts
against what the kernel's kprobes recorded, switch by switch and __mmdrop by __mmdrop.

The model reads only its inputs (`sched`: the sched/task tracepoints, tlb_flush and the task
snapshot; `markers`: those plus the three marker probes of docs/validate.md, used only for
*when* exit_mm/exec_mmap ran). The other probe lines bind a model mm to its kernel address
(one mm = one life of an address, from mm_init to __mmdrop) and tell the state from before
the trace began; everything else is prediction."""

from __future__ import annotations

import bisect
import itertools
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from activemm.errors import OperationError
from activemm.metrics import Metrics
from activemm.model.config import KernelConfig
from activemm.model.events import (
    Cr3Loaded,
    Event,
    FlushIpi,
    LazyEntered,
    MmAllocated,
    MmFreed,
    MmSwitched,
    TaskAdopted,
)
from activemm.model.kernel import Operation
from activemm.model.state import KernelState, Mm, Task
from activemm.trace.events import (
    HotplugStep,
    LostEvents,
    NewTask,
    Placement,
    Probe,
    ProcessExec,
    ProcessExit,
    ProcessFork,
    SchedSwitch,
    TaskRename,
    TlbFlush,
    TraceEvent,
)
from activemm.trace.replay import VHOST_WORKER, Clocked, Replayer, TaskInfo, exited_picks
from activemm.validate import kernel as kv
from activemm.validate.holders import Context
from activemm.validate.index import TraceIndex
from activemm.validate.kernel import (
    ENTER_LAZY,
    EXIT_MMAP,
    FINISH,
    MMDROP,
    SWITCH_MM,
    Drop,
    Outside,
    PreTrace,
    SwitchGroup,
    address,
    hexaddr,
)
from activemm.validate.markers import (
    PAST_MMPUT,
    MarkerSteps,
    exec_hints,
    exec_preemptions,
    exec_renames,
    exec_window_guesses,
    line_before,
    marked_exits,
    next_line,
    own_full_flush,
    proc_opens_around_mmput,
)
from activemm.validate.score import (
    EXEC_PREEMPTED,
    EXIT_WINDOW,
    EXIT_WINDOW_AFTER,
    FOLLOWS,
    HOTPLUG,
    INFERRED_EXIT,
    INFERRED_IN_EXIT_MMAP,
    KTHREAD_USE_MM,
    PID_SHARED,
    PRE_TRACE,
    RELEASE_POINTS,
    SYSCALL_POINTS,
    UNEXPLAINED,
    DropScorer,
    Result,
    score_outside,
)
from activemm.validate.windows import ExitWindows, exit_mmap_ratio

# a per-CPU workqueue's worker (system_wq, system_highpri_wq: "H"), not an unbound one
# ("kworker/uN:M"): USB gadget AIO's ep_user_copy_worker() is schedule_work()ed
BOUND_KWORKER = re.compile(r"kworker/\d+:\d+H?")
# an unbound workqueue's worker: efi_rts_wq, where EFI runtime calls are made, is ordered;
# it makes them one at a time, each for a caller that holds efi_runtime_lock and waits, so
# that two seldom come with no switch between, and more not once in our recordings
UNBOUND_KWORKER = re.compile(r"kworker/u\d+:\d+")
EFI_CALLS_IN_A_RUN = 2


@dataclass
class ModelSwitch:
    """What the model did in one context switch."""

    prev_task: Task
    hook: str | None = None
    prev: Mm | None = None
    next: Mm | None = None
    cr3: bool = False  # x86: the model loaded CR3 (the kernel's tlb_flush "flush on task switch")


# kernel paths that mmdrop() a reference held outside the scheduler, which the markers show
MMPUT_SWITCHED = "__mmput switched out after exit_mmap returned (its mmput return marker)"
FAILED_FORK_SEEN = "failed fork (exit_mmap of an mm copy_process made)"
PROGRESS_EVERY = 50_000  # events between two progress reports of a replay


class Validator(MarkerSteps, Clocked):
    """Drives a Replayer with the trace and watches the model's events (an Observer)."""

    def __init__(
        self,
        events: list[TraceEvent],
        config: KernelConfig,
        ncpus: int,
        snapshot: dict[int, TaskInfo] | None,
        inputs: str,
        result: Result,
        sanitize: bool = True,
        exit_points: dict[int, int] | None = None,
        preemptible: bool = False,
        efi_workers: set[int] | None = None,
        late_exits: dict[int, int] | None = None,
        placements: dict[int, list[Placement]] | None = None,
    ) -> None:
        self.events = events
        self.inputs = inputs
        # x86 EFI runtime calls before 6.15: their hooks (kernel side; efi_mm's address is
        # index.efi_addr)
        self.efi = kv.efi_calls(events)
        # the kernel can be preempted anywhere preemption is on (preempt=full, PREEMPT_RT),
        # not only where it calls cond_resched() (preempt=voluntary, Debian's default)
        self.preemptible = preemptible
        # sched inputs: switch line -> pid whose exit_mm() ran before it (windows.py), as an
        # earlier pass found them; and those this pass finds
        self.exit_points = dict(exit_points or {})
        self.found_exits: dict[int, int] = {}
        # sched inputs, 6.16+: sched_process_exit line -> the switch line after which its
        # task's exit_mm() runs, as an earlier pass found it (_late_exit); those this
        # pass finds; pid -> its exit waiting for that switch; pid -> the line of the exit
        # the model ran at its tracepoint, in the task's life now
        self.late_exits = dict(late_exits or {})
        self.found_late: dict[int, int] = {}
        self.late_waiting: dict[int, int] = {}
        self.exit_traced: dict[int, int] = {}
        # pids whose exit the model ran at an inferred window -> the cause if it was none
        self.inferred: dict[int, str] = {}
        # vhost workers that used their mm, by id() (kept alive: an id() is not reused)
        self.vhost_workers: dict[int, Task] = {}
        self.loaded_sure: dict[int, bool] = {}  # CPU -> the model knows what it has loaded
        # CPU -> the mm the kernel's CPU still has loaded where the model's has another: a
        # task found in its exit window was switched in there without a CR3 load
        self.kept_loaded: dict[int, Mm] = {}
        self.windows = (
            ExitWindows.scan(events, {pid: t.tgid for pid, t in (snapshot or {}).items()})
            if inputs == "sched"
            else None
        )
        # exits known before the fact: exit_mmap()'s switch of a lazy CPU to init_mm, those
        # of them placed at a preemption before it, and the loads that come before the switch
        # 6.16+: sched_process_exit marks exit_mm() itself; there is no window to infer
        self.exit_first = kv.exit_traced_first(config)
        self.lazy_exits, self.before_flush, self.exit_loads = (
            self.windows.lazy_exits(exit_mmap_ratio(config.version))
            if self.windows is not None and not self.exit_first
            else ({}, set(), {})
        )
        self.exit_points = {**self.lazy_exits, **self.exit_points}
        self.result = result
        self.pretrace = PreTrace.scan(events)
        snapshot = self.pretrace.tasks(snapshot)
        self.exec_hints = exec_hints(events)
        # tracepoints only: renames that mark an exec whose activate_mm() loaded no CR3
        self.exec_renames = exec_renames(events, self.exec_hints) if inputs == "sched" else set()
        # PREEMPT_RT: switches out of tasks preempted inside exec_mmap() before activate_mm()
        self.exec_preempted: set[int] = set()
        if config.PREEMPT_RT and inputs == "markers":
            self.exec_preempted = exec_preemptions(events, self.efi)
        elif config.PREEMPT_RT:
            self.exec_preempted = exec_window_guesses(events, self.exec_renames)
        self.early_forks: set[int] = set()  # lines of task_newtask replayed at their flush
        # while a fork is made at its flush: its task_newtask's line (_early_fork)
        self.ahead_of: int | None = None
        # model task id() -> (mm, task_newtask line) of forks made at a flush before their
        # mm's mm_init, bound at that birth (_model_alloc, _announce)
        self.before_birth: dict[int, list[tuple[Mm, int]]] = {}
        self.poke_hints = (
            self.windows.text_poke_hints(self.exec_hints) if self.windows is not None else {}
        )
        self.first_switches = kv.first_switches(events)
        self.first_lazy = kv.first_lazy_borrows(self.first_switches)
        self.index = TraceIndex.scan(events, config, inputs, preemptible, self.efi, self.exec_hints)
        self._holders_begin(events)
        # exit_mmap marker line -> (line, pid) of the proc_mem_open() returns whose file's
        # reference that __mmput came after
        self.proc_ahead = proc_opens_around_mmput(events) if inputs == "markers" else {}
        self.exit_ends = self.index.final_switches if self.exit_first else self.index.exit_lines
        # 6.16+, markers: sched_process_exit lines whose exit_mm() marker follows
        self.exit_at_marker = (
            marked_exits(events) if self.exit_first and inputs == "markers" else set()
        )
        self.kworkers_using: set[int] = set()  # kernel threads in an inferred kthread_use_mm
        # sched: the mm a kernel thread's CR3 load was last shown to take
        self.kthread_mm: Mm | None = None
        # sched: kernel threads shown to make EFI calls (an earlier pass's too)
        self.efi_workers: set[int] = set(efi_workers or ())
        # line where the kernel's __mmput ran -> (mm_users holder to put there, its mm)
        self.deferred: dict[int, tuple[str, Mm]] = {}
        self.unpinned: set[int] = set()
        self.ctx = Context()
        # binding: model mm id -> kernel address (kept after the life ends), and the reverse
        # for the life in progress
        self.addr: dict[int, int] = {}
        self.live: dict[int, Mm] = {}
        # model mm id -> where its life ended in the kernel (the address's __mmdrop, or its
        # next mm_init) while the model still held it: a line that life ends at
        self.outlived_at: dict[int, int] = {}
        # mm address -> (line, CPU) of each context switch that moved a CPU off it (scoring)
        self.let_go: dict[int, list[tuple[int, int]]] = {}
        self.pretrace_mms: set[int] = set()
        self.new_addrs: dict[int, list[int]] = {}  # model task id() -> mm_init addresses
        self.births: dict[int, list[int]] = {}  # address -> trace lines of its mm_init returns
        # lines of kernel __mmdrops of mms no model mm stood for -> the failed fork or exec
        self.unclaimed: dict[int, str] = {}
        self.forked: set[int] = set()  # addresses copy_process() allocated (dup_mm)
        # kernel side, per CPU
        self.pending: dict[int, SwitchGroup] = {}
        self.anchor: dict[int, tuple[object, ...]] = {}
        self.finished: dict[int, SwitchGroup] = {}  # the CPU's last complete switch
        self.switched: set[int] = set()  # CPUs whose first sched_switch the trace holds
        self.mmput_open: dict[int, int] = {}  # mm address -> pid running its exit_mmap
        self.pins: dict[int, list[str]] = {}  # pid -> holders standing for __mmput's share
        self.late: set[int] = set()  # pids whose pins stand for an __mmput after their exit
        # __mmput end marker lines -> the pid whose pins stand until then (it switched out
        # between its exit_mmap()'s return and there: mmdrop() came when it ran on)
        self.pinned_to: dict[int, int] = {}
        self.past_exit: set[int] = set()  # pids past their sched_process_exit
        self.exit_mmap_of: dict[int, int] = {}  # pid -> the mm of its last exit_mmap marker
        self.mm_kthreads: set[int] = set()  # kernel threads the kernel saw kthread_use_mm
        # forking pids (mm_init of a fork announced, the fork not replayed yet) -> the CPUs
        # lazy on their mm in the model when dup_mmap()'s flush of it ran, with their lazy
        # episode (None: not yet)
        self.forking: dict[int, set[tuple[int, int]] | None] = {}
        # CPU -> mm id -> (pid, operation) of the flush of that mm whose IPI waits there for
        # interrupts to come back on (the end of a switch): what a flush to init_mm there
        # then comes from
        self.waiting_ipis: dict[int, dict[int, tuple[int, str]]] = {}
        # mm address -> the CPU whose idle task still borrowed it going offline: finish_cpu()
        # drops it later, on another CPU, in whichever task runs the hotplug teardown
        self.offlined: dict[int, int] = {}
        self.offlined_ever: set[int] = set()
        self.finishing: set[int] = set()  # CPUs whose finish_cpu() step (cpuhp_enter) began
        # CPU going offline -> the CPU its takedown_cpu() step (cpuhp_enter) runs on
        self.taken_down_from: dict[int, int] = {}
        # pid -> the release it is in (its point, the mm address whose mmdrop() follows)
        self.releasing: dict[int, tuple[str, int, int]] = {}  # (with its marker's line)
        # addresses whose release's mmdrop() came after a CPU let go of the mm, that CPU's
        # switch after the release's marker: which was last no input says
        self.release_raced: set[int] = set()
        self.finish_holds: dict[int, str] = {}  # such a line -> the holder standing in till then
        self.epoch: Counter[int] = Counter()
        # CPU -> switches that loaded a user mm (switch_mm_irqs_off): a lazy episode, a chain
        # of tasks without an mm borrowing one mm, lasts from one to the next
        self.episode: Counter[int] = Counter()
        self.seen_cpu: set[int] = set()
        self.first_switch: dict[int, int] = {}  # CPU -> line of its first complete switch
        self.exit_marked: dict[int, int] = {}  # pid -> line of exit_mm's enter_lazy_tlb
        # 6.16+: pids past sched_process_exit (-> its line), their exit_mm() marker not seen
        self.exiting_since: dict[int, int] = {}
        self.windowed: set[int] = set()  # pids switched out between exit_mm and that tracepoint
        self.exec_marked: dict[int, int] = {}  # pid -> line of exec's activate_mm
        # kernel side: pids past exec's activate_mm whose exec_mmap() may still drop the
        # mm it borrowed (a kernel thread's exec) or put the old one, even after a preemption
        self.exec_open: set[int] = set()
        self.diverged: set[int] = set()  # CPUs whose borrowed mm came from a missed switch
        self.hotplugged: set[int] = set()  # CPUs that went offline or came back
        # x86 poking_mm (allocated at boot): a binding, both modes
        self.poking_addr = self.pretrace.poking_mm
        # x86 efi_mm (static): bound from its calls' hooks, before 6.15 or since
        self.efi_addr = self.index.efi_addr or self.pretrace.efi_mm
        self.tainted: set[int] = set()  # kernel mm addresses of missed switches
        self.raced: set[int] = set()  # mm addresses whose __mmput the model pinned
        self.exec_mmputs: set[int] = set()  # mm addresses an exec's exec_mmap() put
        # mm addresses whose __mmput ran in a task past its sched_process_exit (a reference
        # one of its files held: vhost's dev->mm, put back in exit_files())
        self.after_exit: set[int] = set()
        # mm address -> (line, pid) of every exit_mm marker of it: a slab address serves many
        # mms, and each life has its own (exited_from())
        self.exit_marks: dict[int, list[tuple[int, int]]] = {}
        self.marker_done: set[int] = set()
        # CPU -> exec's activate_mm marker, waiting for the CR3 load's tlb_flush
        self.armed: dict[int, Probe] = {}  # id() of model tasks exec'd at their marker
        # the two sides of the scores
        self.kernel_drops: list[Drop] = []
        self.model_drops: list[Drop] = []
        self.kernel_outside: list[Outside] = []
        self.model_outside: list[Outside] = []
        self.switch: ModelSwitch | None = None
        self.op: Operation | None = None
        self.metrics = Metrics(config.arch)
        self.replayer = Replayer(
            config, ncpus, self.metrics, snapshot, sanitize=sanitize, extra=[self],
            sanitize_every=500, placements=placements, picks=exited_picks(events),
        )  # fmt: skip
        self.m = self.replayer.m
        # PREEMPT_RT: the model's RCU callbacks run where the kernel's rcuc/N thread ran
        self.m.rcu_at_switch = False
        # CPUs offline when the trace began (a later bring-up step shows it): offline in the
        # model too until their first event, holding up no RCU grace period meanwhile
        self.unborn = {c for c in kv.first_bringups(events) if 0 < c < ncpus}
        with self.metrics.unmetered():
            for cpu in sorted(self.unborn):
                self.ctx = Context("hotplug", 0, cpu, 0)
                self._refusable(self.m.cpu_down, cpu)

    # -- observer: what the model does -------------------------------------------------

    @property
    def quiet(self) -> bool:
        return self.metrics.paused

    def begin(self, op: Operation, state: KernelState) -> None:
        self.op = op
        if op.name == "schedule" and self.ctx.kind == "switch" and not self.quiet:
            self.switch = ModelSwitch(state.rqs[op.args["cpu"]].curr)

    def end(self, op: Operation, state: KernelState) -> None:
        self.op = None
        if not self.waiting_ipis:
            return
        cpu = op.args.get("cpu")
        if isinstance(cpu, int) and cpu in self.waiting_ipis and not state.rqs[cpu].irqs_disabled:
            del self.waiting_ipis[cpu]  # the IPIs that waited there have run

    def event(self, ev: Event) -> None:
        if isinstance(ev, MmSwitched | LazyEntered):
            self._model_hook(ev)
        elif isinstance(ev, MmFreed):
            self._model_free(ev)
        elif isinstance(ev, MmAllocated):
            self._model_alloc(ev)
        elif isinstance(ev, TaskAdopted) and ev.mm is not None:
            self.pretrace_mms.add(ev.mm.id)
        elif isinstance(ev, Cr3Loaded) and self.switch is not None:
            self.switch.cr3 = True
        elif isinstance(ev, FlushIpi) and self.op is not None:
            rq = self.m.state.rqs[ev.to_cpu]
            if rq.irqs_disabled:
                waiting = self.waiting_ipis.setdefault(ev.to_cpu, {})
                waiting.setdefault(ev.mm.id, (self.ctx.pid, self.op.name))

    def _model_hook(self, ev: MmSwitched | LazyEntered) -> None:
        sw = self.switch
        in_schedule = self.op is not None and self.op.name == "schedule" and sw is not None
        if in_schedule and sw is not None and sw.hook is None:
            if isinstance(ev, LazyEntered):
                sw.hook, sw.prev = ENTER_LAZY, ev.mm
            elif ev.via in ("switch_mm_irqs_off", "switch_mm"):
                sw.hook, sw.prev, sw.next = SWITCH_MM, ev.prev, ev.next
            return
        if self.quiet or self.op is None or self.op.name in ("adopt", "adopt_lazy", "boot"):
            return
        cpu, pid, epoch = ev.cpu, self.ctx.pid, self.episode[ev.cpu]
        hotplug = {"cpu_up": "cpu_init", "cpu_down": "idle_task_exit"}.get(self.op.name)
        if hotplug == "idle_task_exit" and isinstance(ev, LazyEntered):
            hotplug = "untraced_switch"  # the dying CPU's last switch, to its idle task
        if hotplug is not None:
            prev = self._a(ev.prev) if isinstance(ev, MmSwitched) else 0
            mm = self._a(ev.mm if isinstance(ev, LazyEntered) else ev.next)
            self.model_outside.append(Outside(hotplug, cpu, pid, mm, prev, self.ctx.line, epoch))
        elif isinstance(ev, LazyEntered):  # exit_mm() or kthread_unuse_mm(): `via` says
            self.model_outside.append(Outside("enter_lazy_tlb", cpu, pid, self._a(ev.mm), 0,
                                              self.ctx.line, epoch, via=self.op.name))  # fmt: skip
        elif ev.via == "activate_mm":
            self.model_outside.append(Outside("activate_mm", cpu, pid, self._a(ev.next),
                                              self._a(ev.prev), self.ctx.line, epoch))  # fmt: skip
        elif ev.via in ("use_temporary_mm", "unuse_temporary_mm"):
            self.model_outside.append(Outside("temporary_mm", cpu, pid, self._a(ev.next), 0,
                                              self.ctx.line, epoch))  # fmt: skip
        elif self.op.name == "sched_cpu_wait_empty":
            self.model_outside.append(Outside("sched_force_init_mm", cpu, pid, self._a(ev.next),
                                              self._a(ev.prev), self.ctx.line, epoch))  # fmt: skip
        elif ev.via in ("efi_enter_mm", "efi_leave_mm"):
            self.model_outside.append(Outside(ev.via, cpu, pid, self._a(ev.next),
                                              self._a(ev.prev), self.ctx.line, epoch))  # fmt: skip
        elif ev.next.is_init_mm and ev.task is None:
            # an IPI that waited for this CPU's switch is the flush's that sent it
            name = self.op.name
            lazy_on = self.m.state.rqs[cpu].curr.active_mm  # (x86: the mm it borrows)
            waited = self.waiting_ipis.get(cpu, {}).get(lazy_on.id) if lazy_on else None
            if waited is not None and name in ("schedule", "local_irq_enable"):
                pid, name = waited
            # a fork's dup_mmap() flush that the model runs after the kernel's, which came
            # before this lazy episode of the CPU (Outside.late_fork)
            flushed = self.forking.get(pid) if name in ("fork", "failed_fork") else None
            late = flushed is not None and (cpu, epoch) not in flushed
            self.model_outside.append(Outside("flush_to_init_mm", cpu, pid, self._a(ev.next), 0,
                                              self.ctx.line, epoch, late, name))  # fmt: skip
        else:
            self.model_outside.append(Outside("switch_mm", cpu, pid, self._a(ev.next),
                                              self._a(ev.prev), self.ctx.line, epoch))  # fmt: skip

    def _model_free(self, ev: MmFreed) -> None:
        if self.quiet:
            point: tuple[object, ...] = ("resynchronisation", self.ctx.line)
        elif ev.reason == "__mmdrop_delayed":
            point = ("call_rcu", ev.cpu)  # PREEMPT_RT: an RCU callback of the CPU that queued it
        elif self.ctx.kind == "__mmput end":
            point = ("__mmput", self.ctx.pid)
        elif self.ctx.kind in (*RELEASE_POINTS, "mmdrop_async"):
            point = (self.ctx.kind, self.ctx.pid)
        elif self.ctx.kind == "finish_cpu":
            point = ("finish_cpu", 0)  # as the model's own finish_cpu() says it
        elif (ev.reason == "finish_task_switch" and self.ctx.kind == "switch") or (
            self.ctx.kind == "switch finish"  # the drop of a switch applied ahead of it
        ):
            point = ("finish_task_switch", self.ctx.line)
        else:  # __mmput, exec_mmap, a holder's mmdrop...
            point = (ev.reason, self.ctx.pid)
        addr = self.addr.get(ev.mm.id)
        # a free after the kernel freed the address (or handed it out again: a reference the
        # model held longer) ends the life the mm was bound in, not one that followed
        life_line = self.outlived_at.get(ev.mm.id)
        self.model_drops.append(Drop(addr, point, self.ctx.line, ev.cpu, ev.mm.name, life_line))

    def _model_alloc(self, ev: MmAllocated) -> None:
        if self.op is None:
            return
        if self.op.name == "text_poke" and self.poking_addr is not None:
            self._bind(ev.mm, self.poking_addr)  # poking_init()'s, from before the trace
            self.result.learned["x86 poking_mm (allocated at boot)"] += 1
            return
        if self.op.name == "efi_call" and self.efi_addr is not None:
            self._bind(ev.mm, self.efi_addr)  # static: efi_mm
            self.result.learned["x86 efi_mm (static)"] += 1
            return
        owner = self.op.args.get("parent") or self.op.args.get("task")
        queue = self.new_addrs.get(id(owner), [])
        if queue:
            self._bind(ev.mm, queue.pop(0))
        elif self.ahead_of is not None:
            # made at a flush of the parent's before its mm_init (with tracepoints alone the
            # last full one before task_newtask; the fork's own was absorbed by a flush IPI):
            # bound at that birth, if it comes before the task_newtask
            self.before_birth.setdefault(id(owner), []).append((ev.mm, self.ahead_of))
        else:
            self.result.anomalies["new mm not announced by mm_init"] += 1

    # -- bindings ---------------------------------------------------------------------

    def _bind(self, mm: Mm, addr: int) -> None:
        self.addr[mm.id] = addr
        self.live[addr] = mm

    def _life_ends(self, addr: int, line: int) -> None:
        """The kernel's life of `addr` ends at `line` (its __mmdrop, or the next mm_init of
        the address): no model mm stands for the address any more, and one the model still
        holds is scored in the life it had (outlived_at)."""
        mm = self.live.pop(addr, None)
        if mm is not None and not mm.freed:
            self.outlived_at.setdefault(mm.id, line)

    def _resolve(self, mm: Mm | None, kernel_value: int) -> int | None:
        """The address the model's `mm` stands for; a model mm from before the trace (or
        init_mm) that is not bound yet is bound to what the kernel shows, if that address is
        not taken by another life."""
        if mm is None:
            return 0
        if mm.id in self.addr:
            return self.addr[mm.id]
        taken = kernel_value in self.live and not self.live[kernel_value].freed
        if mm.is_init_mm and kv.is_init_mm(kernel_value):
            self._bind(mm, kernel_value)
            return kernel_value
        if (
            mm.id in self.pretrace_mms
            and kernel_value
            and not taken
            and not kv.is_init_mm(kernel_value)
        ):
            self._bind(mm, kernel_value)
            self.result.learned["mm of a task from before the trace"] += 1
            return kernel_value
        return None

    def _name(self, mm: Mm | None, addr: int | None) -> str:
        if mm is None:
            return "NULL"
        return f"{mm.name} ({hexaddr(addr) if addr is not None else 'unbound'})"

    # -- driving the model ------------------------------------------------------------

    def run(self, progress: Callable[[int], None] | None = None) -> None:
        """Replay every event, then score; `progress` hears how many are done, now and then."""
        handlers = {
            SchedSwitch: self._on_switch,
            Probe: self._on_probe,
        }
        for i, ev in enumerate(self.events):
            if progress is not None and i % PROGRESS_EVERY == 0:
                progress(i)
            if ev.cpu in self.armed and not self._cr3_of_armed_exec(ev):
                self._fire_armed(ev)
            self.now = ev.ts
            self.metrics.now = ev.ts
            if ev.cpu in self.unborn:
                self._first_event(ev)
            handler = handlers.get(type(ev))
            if handler is not None:
                handler(ev)  # type: ignore[operator]
            else:
                self._on_sched_event(ev)
            upcoming = self.index.before_switch.get(ev.line)
            if upcoming is not None:
                self._schedule_begins(upcoming)
        for cpu in list(self.armed):
            self._refusable(self._early_exec, self.armed.pop(cpu))
        if self.events:
            last = self.events[-1]
            for pid in list(self.pins):  # by the end of the trace __mmput has returned
                end = TraceEvent(last.line, last.cpu, last.ts, pid, "", None)
                self._refusable(self._unpin, end)
        for group in self.pending.values():
            # tracing stopped between a sched_switch and its probes: not scored
            if group.finish is None:
                self.result.anomalies["context switch cut off by the end of the trace"] += 1
        self.pending.clear()
        self._score()

    def _drive(self, kind: str, ev: TraceEvent, apply: Any, *args: Any) -> None:
        self.ctx = Context(kind, ev.line, ev.cpu, ev.pid)
        apply(*args)

    def _on_sched_event(self, ev: TraceEvent) -> None:
        if ev.line in self.index.switch_load_lines:
            self._switch_ends(ev.cpu, ev)  # whatever else this CR3 load's line is read for
        if ev.pid in self.forking and self.forking[ev.pid] is None and own_full_flush(ev):
            self._fork_flushed(ev.pid)  # the first since the fork's mm_init: dup_mmap()'s
            addr = self.index.failed_forks.get(ev.line)
            if addr is not None and self._queued(ev.pid, addr):
                self._refusable(self._failed_fork, ev, addr)
                return
        if self._deferred_ends_here(ev) and isinstance(ev, TlbFlush):
            return
        if isinstance(ev, TlbFlush):
            if ev.cr3_load and ev.line not in self.index.switch_load_lines:
                self.kept_loaded.pop(ev.cpu, None)  # the CPU loads another mm
            if ev.line in self.index.efi_loads:
                return  # the EFI call's own, run at its marker
            if "local mm shootdown" in ev.reason and not ev.hardirq:
                self._mask_says_left(ev)
            if self._cr3_of_armed_exec(ev):
                del self.armed[ev.cpu]
                self._refusable(self._early_exec, ev)
            elif ev.line in self.exec_hints and ev.cpu not in self.pending:
                self._refusable(self._early_exec, ev)
            elif ev.line in self.index.fork_hints:
                self._early_fork(ev)
            elif self.inputs == "sched" and self._vhost_use_mm(ev):
                pass
            elif ev.line in self.poke_hints and ev.cpu not in self.pending:
                run = self.poke_hints[ev.line]
                loads = len(run)
                # (a lazy CPU's leave_mm() first is one load more: before 6.15 an EFI call
                # made none, since then its use_temporary_mm() makes it as a text_poke does)
                temporary = kv.efi_temporary_mm(self.m.config)
                even = loads >= 2 and (loads % 2 == 0 or temporary)
                if even and self._efi_not_poke(ev, run):
                    self.ctx = Context("efi_call", ev.line, ev.cpu, ev.pid)
                    for _ in range(loads // 2):
                        self._refusable(self.m.efi_call, ev.cpu)
                        self.result.learned["EFI runtime call (a kernel thread's CR3 loads)"] += 1
                    return
                self.ctx = Context("text_poke", ev.line, ev.cpu, ev.pid)
                for _ in range(loads // 2):
                    self._refusable(self.m.text_poke, ev.cpu)
                    self.result.learned["text_poke (own CR3 loads in pairs, tlb_flush)"] += 1
            elif (self.inputs == "sched" and self._kthread_load(ev)) or self._exit_mmap_load(ev):
                pass
            elif self._lazy_cpu_flushed(ev):
                self.ctx = Context("flush", ev.line, ev.cpu, ev.pid)
                self._refusable(self.m.leave_mm, ev.cpu)
                self.result.learned["lazy CPU flushed to init_mm (tlb_flush in an IPI)"] += 1
            elif self._exiting_lazy_load(ev):
                self.ctx = Context("flush", ev.line, ev.cpu, ev.pid)
                self._refusable(self.m.leave_mm, ev.cpu)
                self.result.learned[
                    "exiting task's CPU flushed to init_mm before exit_mmap's final flush "
                    "(tlb_flush)"
                ] += 1
            return
        if (
            isinstance(ev, TaskRename)
            and ev.line in self.exec_renames
            and ev.cpu not in self.pending
        ):
            self._refusable(self._early_exec, ev)
            self.result.learned[
                "exec_mmap at the exec's rename (no own CR3 load: preempted inside exec_mmap, "
                "PREEMPT_RT)"
            ] += 1
        if isinstance(ev, HotplugStep):
            self._refusable(self._finish_cpu, ev)
            self._teardown_step(ev)
            if self.inputs == "sched":
                self._refusable(self._wait_empty, ev)
        if ev.pid in self.pins and isinstance(ev, PAST_MMPUT):
            self._refusable(self._unpin, ev)
        if isinstance(ev, LostEvents):
            self.result.anomalies[ev.anomaly] += ev.count or 1
        if isinstance(ev, ProcessExec | ProcessExit | ProcessFork | NewTask):
            self.anchor[ev.cpu] = ("other", ev.pid)
        if isinstance(ev, ProcessExit):
            self.past_exit.add(ev.exit_pid)
            self.exec_open.discard(ev.exit_pid)
        elif isinstance(ev, NewTask | ProcessFork):
            self.past_exit.discard(ev.child_pid)  # a new life of the pid
        elif isinstance(ev, ProcessExec):
            self.past_exit.discard(ev.exec_pid)  # de_thread(): a thread took the leader's pid
            self.exec_open.difference_update((ev.exec_pid, ev.old_pid))  # exec_mmap is done
        if isinstance(ev, ProcessExec):
            t = self.replayer.tasks.get(ev.old_pid)
            if t is None or id(t) not in self.marker_done:
                t = self.replayer.tasks.get(ev.exec_pid)
            if t is not None and id(t) in self.marker_done:
                # exec_mmap already ran at its marker: only the pid bookkeeping is left
                self.marker_done.discard(id(t))
                self.replayer.exchanged.discard((ev.exec_pid, ev.old_pid))
                if self.replayer.tasks.get(ev.old_pid) is t and ev.old_pid != ev.exec_pid:
                    self.replayer.tasks[ev.exec_pid] = self.replayer.tasks.pop(ev.old_pid)
                self.replayer.tgid_of[ev.exec_pid] = ev.exec_pid
                return
            self.exec_marked.pop(ev.exec_pid, None)
        if isinstance(ev, ProcessExit):
            self.exit_marked.pop(ev.exit_pid, None)
            if self.exit_first:
                self.exiting_since[ev.exit_pid] = ev.line
            if ev.line in self.exit_at_marker and self._runs_with_mm(ev.cpu, ev.exit_pid):
                return  # 6.16+: exit_mm() follows at its marker, where the model runs it
            if (
                self.exit_first
                and self.inputs == "sched"
                and self._runs_with_mm(ev.cpu, ev.exit_pid)
            ):
                if ev.line in self.late_exits:  # exit_mm() after a preemption (_late_exit)
                    self.late_waiting[ev.exit_pid] = ev.line
                    return
                # 6.16+, tracepoints only: exit_mm() follows at once, its __mmput() ends at
                # the task's last flush before it dies (MarkerSteps._defer_to_last)
                self._marker_exit(ev)
                self.exit_traced[ev.exit_pid] = ev.line
                return
        if isinstance(ev, NewTask) and ev.line in self.early_forks:
            self.replayer.claim(ev.child_pid, ev.line)  # (made at its dup_mmap flush)
            self._fork_never_born(ev)
        else:
            self._drive(type(ev).__name__, ev, self.replayer.apply, ev)
        if isinstance(ev, NewTask | ProcessFork):  # (the fork is done: replayed now or early)
            self._forked(ev.pid)
            if self.uffd_forks:
                self._refusable(self._uffd_fork_grabs, ev.child_pid)

    def _fork_never_born(self, nt: NewTask) -> None:
        """A fork made ahead of its mm's mm_init whose task_newtask came with no birth
        between: its mm stays unbound."""
        parent = self.replayer.tasks.get(nt.pid)
        waiting = self.before_birth.get(id(parent), []) if parent is not None else []
        if any(line == nt.line for _, line in waiting):
            waiting[:] = [(mm, line) for mm, line in waiting if line != nt.line]
            self.result.anomalies["new mm not announced by mm_init"] += 1

    def _runs_with_mm(self, cpu: int, pid: int) -> bool:
        """Whether user task `pid` is current on `cpu` in the model with its mm, not exiting
        yet."""
        t = self.m.state.rqs[cpu].curr
        return (
            t is self.replayer.tasks.get(pid)
            and t.mm is not None
            and not (t.exiting or t.uses_mm or t.pf_kthread)
        )

    def _cpu_came_online(self, p: Probe) -> None:
        """cpu_init()'s enter_lazy_tlb(&init_mm) by the idle task, outside a context switch,
        marks a CPU coming online. It went offline before: at its idle_task_exit() marker the
        model took it down (its last switches are not traced; finish_cpu() dropped its idle
        task's borrowed mm), or, when that marker is missing, it does so here."""
        self.ctx = Context("hotplug", p.line, p.cpu, p.pid)
        if self.m.state.rqs[p.cpu].online:
            self.m.cpu_down(p.cpu)
        self.m.cpu_up(p.cpu)
        self.result.learned["CPU came online (cpu_init marker)"] += 1

    def _first_event(self, ev: TraceEvent) -> None:
        """The first event of a CPU offline when the trace began: it has come up (cpu_up();
        with markers its cpu_init marker does that, when it is this event)."""
        self.unborn.discard(ev.cpu)
        if self.m.state.rqs[ev.cpu].online:
            return
        marked = isinstance(ev, Probe) and kv.outside_kind(ev, self.efi) == "cpu_init"
        if marked and self.inputs == "markers":
            return
        self.ctx = Context("hotplug", ev.line, ev.cpu, ev.pid)
        self._refusable(self.m.cpu_up, ev.cpu)
        self.result.learned["CPU came online for the first time (its first event)"] += 1

    def _cpu_returned(self, sw: SchedSwitch) -> None:
        """Sched inputs: the CPU's idle task switches out where the last traced switch went
        to its stopper thread: the CPU went offline in between (take_cpu_down(), then the
        untraced switch to the idle task, idle_task_exit(), finish_cpu() on another CPU)
        and is back. The model takes it down and up here; its finish_cpu() drop comes
        later than the kernel's."""
        if not self.m.state.rqs[sw.cpu].online:
            return
        self.ctx = Context("finish_cpu", sw.line, sw.cpu, sw.pid)
        self.m.cpu_down(sw.cpu)
        self.ctx = Context("hotplug", sw.line, sw.cpu, sw.pid)
        self.m.cpu_up(sw.cpu)
        self.result.learned["CPU went offline and came back (untraced switch to idle)"] += 1

    def _cpu_going_offline(self, p: Probe) -> None:
        """idle_task_exit()'s switch to init_mm by the idle task: the CPU goes offline, and
        the model takes it down, finish_cpu() included. The kernel's finish_cpu() runs later,
        on another CPU, in the task driving the hotplug teardown; when the trace has its
        cpuhp_enter tracepoint, the idle task's borrowed mm is held in its name until then."""
        rq = self.m.state.rqs[p.cpu]
        lines = self.index.finish_cpus.get(p.cpu, [])
        i = bisect.bisect_right(lines, p.line)
        offlines = self.index.offline_lines.get(p.cpu, [])
        j = bisect.bisect_right(offlines, p.line)
        before_next = j == len(offlines) or (i < len(lines) and lines[i] < offlines[j])
        mm = rq.curr.active_mm  # what the idle task borrows once cpu_down() switched to it
        if i < len(lines) and before_next and mm is not None and not mm.is_init_mm:
            holder = f"finish_cpu() of CPU {p.cpu} (line {lines[i]})"
            with self.metrics.unmetered():
                self.m.mmgrab(mm, holder, p.cpu)
            self.finish_holds[lines[i]] = holder
        control = self.taken_down_from.pop(p.cpu, None)
        online = control is not None and control != p.cpu and self.m.state.rqs[control].online
        self.m.cpu_down(p.cpu, control if online else None)

    def _finish_cpu(self, ev: HotplugStep) -> None:
        """cpuhp_enter(finish_cpu): the hotplug teardown drops the dead CPU's borrowed mm."""
        holder = self.finish_holds.pop(ev.line, None)
        if holder is not None:
            self.ctx = Context("finish_cpu", ev.line, ev.cpu, ev.pid)
            self.m.mmdrop(holder, ev.cpu)
            self.result.learned["finish_cpu() (cpuhp_enter tracepoint)"] += 1

    def _wait_empty(self, ev: HotplugStep) -> None:
        """Sched inputs, 6.13+: cpuhp_enter(sched_cpu_wait_empty) on the outgoing CPU, by
        its hotplug thread: sched_force_init_mm() follows at once (the CPU runs nothing else
        by then), moving the mm that thread borrows onto init_mm (markers: its own hook)."""
        rq = self.m.state.rqs[ev.cpu]
        if (
            ev.function != "sched_cpu_wait_empty"
            or ev.target_cpu != ev.cpu
            or self.m.config.version < (6, 13)
            or not rq.online
            or self.replayer.tasks.get(ev.pid) is not rq.curr
            or rq.curr.mm is not None
        ):
            return
        self.ctx = Context("hotplug", ev.line, ev.cpu, ev.pid)
        self.m.sched_cpu_wait_empty(ev.cpu)
        self.result.learned["hotplug thread moved to init_mm (cpuhp_enter tracepoint)"] += 1

    def _teardown_step(self, ev: HotplugStep) -> None:
        """Where the kernel's finish_cpu() runs, both modes: from its cpuhp_enter line to the
        next step of the same CPU's teardown. Once that next step begins, the dead CPU's
        borrowed mm is no longer finish_cpu()'s to drop: a later __mmdrop of it is another
        holder's last reference (io_uring's, a /proc reader's...), scored where it ran."""
        cpu = ev.target_cpu
        if ev.function == "takedown_cpu":  # (it ends with rcutree_migrate_callbacks())
            self.taken_down_from[cpu] = ev.cpu
        if ev.function == "finish_cpu":
            self.finishing.add(cpu)
        elif cpu in self.finishing:
            self.finishing.discard(cpu)
            self._forget_offlined(cpu)

    def _forget_offlined(self, cpu: int) -> None:
        """The dead CPU's borrowed mm is no longer finish_cpu()'s to drop."""
        self.offlined = {a: c for a, c in self.offlined.items() if c != cpu}

    def _temporary_mm(self, p: Probe, mm: int) -> None:
        """switch_mm_irqs_off(NULL, mm, current) outside a context switch marks __text_poke()
        when `mm` is the poking mm (allocated at boot: PreTrace.poking_mm, the heap mm such
        hooks load on the way in, not back), and from 6.15 an EFI runtime call when it is efi_mm
        (static, in the kernel image: PreTrace.efi_mm; efi_enter_mm() runs
        use_temporary_mm() too). The model runs text_poke or efi_call there (leave_mm if
        lazy, the temporary mm and back); the unuse_temporary_mm() hook that follows, back to
        the mm loaded before, is the model's to predict."""
        if mm == self.poking_addr:
            self.ctx = Context("text_poke", p.line, p.cpu, p.pid)
            self._refusable(self.m.text_poke, p.cpu)
            self.result.learned["text_poke (use_temporary_mm marker)"] += 1
        elif mm == self.efi_addr and kv.efi_temporary_mm(self.m.config):
            self.ctx = Context("efi_call", p.line, p.cpu, p.pid)
            self._refusable(self.m.efi_call, p.cpu)
            self.result.learned["EFI runtime call (use_temporary_mm marker)"] += 1
        # (any other: unuse_temporary_mm())

    def _kthread_use_mm(self, p: Probe, addr: int) -> None:
        """switch_mm_irqs_off(active_mm, mm, current) by a kernel thread outside a context
        switch marks kthread_use_mm() (vhost's worker on 6.1, USB gadget, some GPU drivers):
        the model runs it there, on the mm bound to `next` (the caller's choice; what
        happens to active_mm and the counts is the model's to predict)."""
        t = self.m.state.rqs[p.cpu].curr
        mm = self.live.get(addr)
        if not t.pf_kthread or t.uses_mm or mm is None or mm.freed:
            return
        self.ctx = Context("kthread_use_mm", p.line, p.cpu, p.pid)
        self.m.kthread_use_mm(t, mm)
        self.result.learned["kthread_use_mm (switch_mm_irqs_off marker)"] += 1

    def _vhost_use_mm(self, ev: TlbFlush | SchedSwitch) -> bool:
        """Sched inputs: a vhost worker on 6.1 (drivers/vhost/vhost.c) is a kernel thread
        named "vhost-<owner pid>" (kthread_create() names it once it sleeps in kthread())
        whose vhost_worker() starts with kthread_use_mm(dev->mm), the mm of the task that
        ran VHOST_SET_OWNER. The model runs kthread_use_mm at the worker's CR3 load there
        (tlb_flush "flush on task switch" outside a context switch), or, when none came (it
        had borrowed that very mm already), before it first sleeps under that name. Not at
        the thread's first switch out when that is in "D" and the thread borrows another
        mm: that may be kthread()'s wait for its first wake-up (TASK_UNINTERRUPTIBLE,
        before vhost_worker(); named already when kthread_create() returned in time), and
        a worker borrowing another mm loads CR3 at its kthread_use_mm(), which shows it.
        Its kthread_unuse_mm() comes at its exit (replay.py). On 6.12 the workers are user
        threads of the owner, with its mm."""
        first_wait = False
        if isinstance(ev, SchedSwitch):
            if ev.prev_state.startswith("R"):
                return False  # preempted: maybe before vhost_worker() began; it sleeps after
            comm, pid = ev.prev_comm, ev.prev_pid
            first_wait = (
                ev.prev_state.startswith("D")
                and self.windows is not None
                and self.windows.first_out(pid, ev.line)
            )
        elif ev.own_cr3_load and ev.cpu not in self.pending:
            comm, pid = ev.comm, ev.pid
        else:
            return False
        m = VHOST_WORKER.fullmatch(comm)
        if m is None:
            return False
        t = self.m.state.rqs[ev.cpu].curr
        owner = self.replayer.tasks.get(int(m[1]))
        if t is not self.replayer.tasks.get(pid) or not t.pf_kthread or t.uses_mm:
            return False
        if id(t) in self.vhost_workers:
            return False  # it has let go of the mm: it is on its way out
        if owner is None or owner.pf_kthread or owner.mm is None or owner.exiting:
            return False
        if first_wait and t.active_mm is not owner.mm:
            return False  # maybe kthread()'s wait; its kthread_use_mm() will load CR3
        self.ctx = Context("kthread_use_mm", ev.line, ev.cpu, pid)
        self._refusable(self.m.kthread_use_mm, t, owner.mm)
        self.vhost_workers[id(t)] = t
        self.result.learned["kthread_use_mm (a vhost worker's, from its name)"] += 1
        return True

    def _kthread_load(self, ev: TlbFlush) -> bool:
        """Sched inputs: a kernel thread's own CR3 load outside a context switch (not in an
        interrupt, not text_poke()'s pair) is its kthread_use_mm() of a user mm (a kworker
        serving a user's request: USB gadget AIO's ep_user_copy_worker(), say), and no
        tracepoint names the mm. Its CPU keeps that mm loaded (the thread's
        kthread_unuse_mm() keeps it lazily) until the next CR3 load there: the first user
        task its CPU then runs without one has that very mm. Found so (a look ahead, as exit
        windows are found after the fact), the model runs kthread_use_mm() here and
        kthread_unuse_mm() before the thread next switches out. With a CR3 load first (the
        thread's switch to a task with another mm, say), a per-CPU kworker's takes the mm of
        the next user task woken on any CPU (_next_woken_mm: the reader whose request it
        completed, woken by that completion); failing that, or for another kernel thread,
        the mm a kernel thread's load was last shown so to take (a kworker serving one
        device serves the same reader again); each while it has users and is not the one
        loaded (a load changes the mm); with neither, nothing. (Not an unbound kworker, ksmd
        or khugepaged: their lone own loads are an __mmput()'s exit_mmap() switching a lazy
        CPU to init_mm, the last mm_users reference theirs: cpuset_migrate_mm_workfn()'s,
        say.)"""
        if not ev.own_cr3_load or ev.cpu in self.pending or ev.cpu >= len(self.m.state.rqs):
            return False
        t = self.m.state.rqs[ev.cpu].curr
        if t is not self.replayer.tasks.get(ev.pid) or not t.pf_kthread or t.uses_mm or t.is_idle:
            return False
        user = self._next_user_without_load(ev.cpu, ev.line)
        mm = None if user is None or user.exiting else user.mm
        how = "the mm of the next task its CPU ran without one"
        if user is None:
            # a CR3 load came first (the thread's switch to a task with another mm, say)
            loaded = self.m.state.rqs[ev.cpu].tlb.loaded_mm
            if BOUND_KWORKER.fullmatch(ev.comm):
                mm = self._next_woken_mm(ev.line, loaded)
                how = "the mm of the next user task woken"
            last = self.kthread_mm
            if mm is None and last is not None and last.status == "live" and last is not loaded:
                mm, how = last, "the mm a kernel thread's load was last shown to take"
        if mm is None:
            return False
        self.kthread_mm = mm
        self.ctx = Context("kthread_use_mm", ev.line, ev.cpu, ev.pid)
        self._refusable(self.m.kthread_use_mm, t, mm)
        self.kworkers_using.add(ev.pid)
        self.result.learned[f"kthread_use_mm (a kernel thread's CR3 load; {how})"] += 1
        return True

    def _next_woken_mm(self, line: int, loaded: Mm | None) -> Mm | None:
        """The mm of the first user task woken after `line` on any CPU (switched in after a
        wait, not a preemption) whose mm is live and not `loaded` (kernel threads, exiting
        tasks and tasks of the loaded mm are passed over: the kworker's load left it)."""
        i = bisect.bisect_right(self.index.wakeups, line, key=lambda e: e.line)
        for sw in itertools.islice(self.index.wakeups, i, None):
            t = self.replayer.tasks.get(sw.next_pid)
            if t is None or t.pf_kthread or t.exiting or t.mm is None:
                continue
            if t.mm.status == "live" and t.mm is not loaded:
                return t.mm
        return None

    def _next_user_without_load(self, cpu: int, line: int) -> Task | None:
        """The first task with an mm (in the model, now) that `cpu` switches to after `line`,
        when neither that switch nor anything before it on that CPU loaded CR3."""
        events = self.index.cpu_tracepoints.get(cpu, [])
        i = bisect.bisect_right(events, line, key=lambda e: e.line)
        user: Task | None = None
        for e in events[i:]:
            if isinstance(e, TlbFlush) and e.cr3_load:
                return None  # in the switch, or anywhere before it
            if user is not None:
                return user  # switched to without a load
            if isinstance(e, SchedSwitch) and e.next_pid != 0:
                nxt = self.replayer.tasks.get(e.next_pid)
                if nxt is not None and nxt.mm is not None:
                    user = nxt
        return None

    def _efi_not_poke(self, ev: TlbFlush, run: tuple[int, ...]) -> bool:
        """Own CR3 loads in pairs of a kernel thread (the run of lines from `ev`): EFI
        runtime calls before 6.15 (efi_enter_mm(): switch_mm() to efi_mm and back to the
        thread's active_mm) or text_poke()s (use_temporary_mm(): the poking mm and back to
        what was loaded, leave_mm() first on a lazy CPU). The way back tells them apart when
        the first task with an mm the CPU then switches to, with no CR3 load, has the
        thread's active_mm: the calls came back to that mm, a text_poke() to init_mm (or,
        lazy, left it first: a third load); or when the CPU is lazy on the user mm it has
        loaded, where a text_poke() would leave lazy mode first (a third load). A thread
        shown so to make EFI calls (efi_rts_wq's kworker; an earlier pass's findings too) is
        taken to make them again, any other to poke text. From 6.15 both are a
        use_temporary_mm() pair, the same CR3 loads there and back: with efi_mm in use in the
        trace (PreTrace.efi_mm, the binding of its static address) and no poking mm, the
        pairs are EFI calls; with both, an unbound kworker's one or two pairs are
        (efi_rts_wq is an ordered workqueue, whose worker is "kworker/uN:M", and its calls
        are made one at a time, each for a caller that waits), anyone else's are text_pokes:
        a user task's writing a sysctl, a per-CPU kworker's flipping a deferred static key
        (netstamp_work, perf_sched_work, the kprobe optimizer: system_wq), and an unbound
        kworker's longer runs (text_poke_bp() patches a site in three pokes at least)."""
        rq = self.m.state.rqs[ev.cpu] if ev.cpu < len(self.m.state.rqs) else None
        if rq is None or self.m.config.arch != "x86_64":
            return False
        if kv.efi_temporary_mm(self.m.config):
            if self.efi_addr is None:
                return False
            return self.poking_addr is None or bool(
                rq.curr.pf_kthread
                and UNBOUND_KWORKER.fullmatch(ev.comm)
                and len(run) // 2 <= EFI_CALLS_IN_A_RUN
            )
        curr = rq.curr
        if self.replayer.tasks.get(ev.pid) is not curr or not curr.pf_kthread or curr.mm:
            return False
        user = self._next_user_without_load(ev.cpu, run[-1])
        if self._lazy_on_loaded_mm(ev.cpu, ev.line) or (
            user is not None and user.mm is not None and user.mm is curr.active_mm
        ):
            self.efi_workers.add(ev.pid)
        return ev.pid in self.efi_workers

    def _lazy_on_loaded_mm(self, cpu: int, line: int) -> bool:
        """Tracepoints alone: the last CR3 load on `cpu` before `line` is a context switch's
        (switch_mm_irqs_off() loads only for a task with an mm), no own or flush-IPI load
        since: the CPU still has that user mm loaded, and a kernel thread running there is
        lazy on it (enter_lazy_tlb()). (Not the model's state, which an exit window it
        missed leaves lazy where the kernel's CPU had switched to init_mm.)"""
        assert self.windows is not None
        events = self.index.cpu_tracepoints.get(cpu, [])
        i = bisect.bisect_left(events, line, key=lambda e: e.line)
        for e in reversed(events[:i]):
            if isinstance(e, LostEvents):
                return False
            if isinstance(e, TlbFlush) and e.cr3_load:
                return e.line in self.windows.switch_loads
        return False

    def _lazy_cpu_flushed(self, ev: TlbFlush) -> bool:
        """tlb_flush "flush on task switch" outside a context switch, in a hardirq (a flush
        IPI), in the idle task (the call-function queue run from the idle loop) or in a
        kernel thread flushing the very mm it borrows (khugepaged collapsing its pages): the
        CR3 load of flush_tlb_func() switching a lazy CPU to init_mm (in the idle task it may
        be cpuidle's leave_mm() before a deep C-state instead: the same switch, which the
        model's leave_mm() runs either way). A shootdown the inputs
        do not otherwise announce (munmap, mprotect... of the borrowed mm), it leaves
        active_mm and its reference alone: the model's CPU follows it when it, too, is lazy."""
        if not ev.cr3_load:
            return False
        if ev.cpu in self.pending or ev.cpu >= len(self.m.state.rqs):
            return False
        curr = self.m.state.rqs[ev.cpu].curr
        # (with tracepoints only, a kernel thread that kthread_use_mm()ed a user mm looks lazy)
        kthread = (
            self.inputs == "markers"
            and self.replayer.tasks.get(ev.pid) is curr
            and curr.pf_kthread
            and curr.mm is None
        )
        if not (ev.ipi_cr3_load or kthread):
            return False
        borrowed = self.first_lazy.get(ev.cpu)
        if ev.cpu not in self.seen_cpu and borrowed is not None:
            # a CPU flushed before its first switch: what it borrows is known already
            self.ctx = Context("resync", ev.line, ev.cpu, ev.pid)
            self._refusable(self._adopt_borrowed, ev.cpu, borrowed, ev.line)
        rq = self.m.state.rqs[ev.cpu]
        return rq.online and rq.curr.mm is None and not rq.tlb.loaded_mm.is_init_mm

    def _exiting_lazy_load(self, ev: TlbFlush) -> bool:
        """Markers: a CR3 load of the exiting task itself, past its exit_mm() (the model's
        CPU lazy on the old mm), that is not where the model runs its __mmput (the final
        flush, MarkerSteps._defer_to_last): a flush of the mm with page tables freed earlier
        in exit_mmap() (x86 flush_tlb_mm_range() runs flush_tlb_func() on its own CPU,
        which, lazy, switches to init_mm): the model's CPU follows it, as a lazy CPU
        follows a flush IPI (unseen47.c on 6.17, swap on a RAM disk). active_mm and its
        reference stay."""
        if self.inputs != "markers" or not ev.own_cr3_load or ev.hardirq:
            return False
        if ev.cpu in self.pending or ev.cpu >= len(self.m.state.rqs):
            return False
        rq = self.m.state.rqs[ev.cpu]
        t = rq.curr
        if t is not self.replayer.tasks.get(ev.pid) or t.pf_kthread or t.mm is not None:
            return False
        return rq.online and t.exiting and rq.tlb.is_lazy and not rq.tlb.loaded_mm.is_init_mm

    # -- context switches -------------------------------------------------------------

    def _on_switch(self, ev: SchedSwitch) -> None:
        if ev.line in self.index.ksmd_releases:
            self._ksmd_release(ev)
        callbacks_of = kv.rcu_callbacks_of(ev.prev_comm)
        if callbacks_of is not None and self.m.config.PREEMPT_RT:
            # CPU N's RCU callbacks ran in the thread now switched out (PREEMPT_RT runs RCU's
            # core in rcuc/N; rcuop/N when N's are offloaded): so do the model's (a
            # tracepoint, both inputs)
            self.ctx = Context("rcu_callbacks", ev.line, ev.cpu, ev.prev_pid)
            if callbacks_of < len(self.m.state.rqs):
                self._refusable(self.m.rcu_callbacks, callbacks_of)
        for comm, pid, running in ((ev.prev_comm, ev.prev_pid, False),
                                   (ev.next_comm, ev.next_pid, True)):  # fmt: skip
            if kv.is_rcu_gp_kthread(comm) and self.m.config.PREEMPT_RT:
                # RCU's grace-period kthread goes off or on a CPU: the grace period of a
                # callback queued before it ran begins and ends in its runs (a tracepoint,
                # both inputs)
                self.ctx = Context("rcu_gp_kthread", ev.line, ev.cpu, pid)
                if ev.cpu < len(self.m.state.rqs):
                    self._refusable(self.m.rcu_gp_kthread, ev.cpu, running)
        # an __mmput after exit that ended before this switch
        self._deferred_ends_here(ev, pin=False)
        if ev.prev_pid in self.kworkers_using:
            self.kworkers_using.discard(ev.prev_pid)
            t = self.m.state.rqs[ev.cpu].curr
            if t is self.replayer.tasks.get(ev.prev_pid) and t.uses_mm:
                self.ctx = Context("kthread_unuse_mm", ev.line, ev.cpu, ev.prev_pid)
                self._refusable(self.m.kthread_unuse_mm, t)
        if ev.prev_pid in self.exit_marked and self.inputs == "sched":
            self.windowed.add(ev.prev_pid)
        if ev.prev_state.startswith(("X", "Z")):
            self.exiting_since.pop(ev.prev_pid, None)  # (a marker the probe missed)
        if ev.prev_pid in self.late and not self._may_be_in_mmput(ev):
            # it sleeps, or is dead: its __mmput after exit has returned (preempted, "R+",
            # or on PREEMPT_RT waiting for a lock, "D", it may still be inside it)
            self.late.discard(ev.prev_pid)
            if ev.prev_pid in self.pins:
                self._refusable(self._unpin, ev)
        old = self.pending.pop(ev.cpu, None)
        if old is not None:
            self.result.anomalies["context switch without finish_task_switch"] += 1
            self._apply_group(old, ev)
        self.pending[ev.cpu] = SwitchGroup(ev)
        if ev.cpu < len(self.m.state.rqs):
            # interrupts are off on this CPU until the switch's finish_task_switch: a flush
            # IPI sent meanwhile is handled there, on the state the switch left
            self.m.local_irq_disable(ev.cpu)
        self.switched.add(ev.cpu)
        self.anchor[ev.cpu] = ("switch", ev.line)
        if ev.line not in self.index.switch_loads:
            self._switch_ends(ev.cpu, ev)

    def _switch_ends(self, cpu: int, at: TraceEvent) -> None:
        """The CPU's pending switch runs in the model at its last tracepoint: the CR3 load's
        tlb_flush ("flush on task switch", traced in switch_mm_irqs_off) when it loads one,
        else its sched_switch. That is all the tracepoints say of when a switch ends (the
        rest of finish_task_switch() follows with interrupts off): the model's interrupts
        are on again from here (a flush IPI sent meanwhile finds the state the switch left,
        as the kernel's did at its finish_task_switch()). Where its probes fall is not an
        input, whichever --inputs."""
        group = self.pending.get(cpu)
        if group is not None and not group.ran:
            group.model, group.ran = self._switch_model(group), True
            self._irqs_on(at)

    def _on_probe(self, p: Probe) -> None:
        group = self.pending.get(p.cpu)
        f = p.function
        if f in (SWITCH_MM, ENTER_LAZY) and kv.in_switch(p, group):
            assert group is not None
            group.hook = kv.hook_of(p)
            left = address(p.args.get("prev")) if f == SWITCH_MM else 0
            if left and left != address(p.args.get("next")):
                self.let_go.setdefault(left, []).append((p.line, p.cpu))
        elif f == FINISH:
            if group is not None:
                group.finish = p
                del self.pending[p.cpu]
                self._apply_group(group, p)
                self.anchor[p.cpu] = ("finish_task_switch", group.switch.line)
                self.finished[p.cpu] = group
        elif f in (SWITCH_MM, ENTER_LAZY) and kv.switch_in_flight(p, p.cpu in self.switched):
            # tracing began between a sched_switch and its probes: not scored
            self.result.anomalies["context switch cut off by the start of the trace"] += 1
        elif f in (SWITCH_MM, ENTER_LAZY):
            self._outside(p)
        elif f == MMDROP:
            self._kernel_drop(p)
        elif f == EXIT_MMAP and p.returned:
            # __mmput's mmdrop() follows on this CPU, whatever ran here since exit_mmap began
            # (it may have been preempted and moved): not a finish_task_switch() drop
            self.anchor[p.cpu] = (EXIT_MMAP, 0)
            # an __mmput left to its end (no flush of its own before exit_mmap returned)
            self._deferred_ends_here(p)
            if p.pid in self.pins and self.inputs == "markers":
                end = self.index.mmput_ends.get(p.line)
                if end is not None and self._switched_out_between(p.pid, p.line, end):
                    self.pinned_to[end] = p.pid  # its mmdrop() comes when it runs on
                    self.result.learned[MMPUT_SWITCHED] += 1
                elif end is None and self._preempted_in_mmput(p):
                    self.late.add(p.pid)  # its mmdrop() comes when it runs on
                else:  # __mmput()'s mmdrop() follows exit_mmap()'s return at once
                    self._refusable(self._unpin, p)
        elif p.line in self.pinned_to:  # an __mmput's end marker, awaited
            if self.pinned_to.pop(p.line) == p.pid and p.pid in self.pins:
                self._refusable(self._unpin, p)
        elif f == EXIT_MMAP:
            mm = address(p.args.get("mm"))
            if p.line in self.proc_ahead:
                self._refusable(self._proc_open_ahead, p, mm)
            self.anchor[p.cpu] = (EXIT_MMAP, mm)
            self.mmput_open[mm] = p.pid
            self.exit_mmap_of[p.pid] = mm
            owner = self.exited_from(mm)
            if owner is not None and owner != p.pid:
                self.raced.add(mm)
            if p.pid in self.exec_open:
                self.exec_mmputs.add(mm)  # exec_mmap()'s mmput() of the old mm, its own
            if self._past_exit(p.pid, p.line) and not self.exit_first:
                self.after_exit.add(mm)  # (6.16+: every exit's __mmput comes after it)
            if self.inputs == "markers" and self._queued(p.pid, mm):
                self._born_and_gone(p, mm)
            if self.inputs == "markers" and p.line in self.index.ksm_kept.get(mm, ()):
                self._refusable(self._ksm_exit, p)
            self._deferred_ends_here(p)
        elif not self._holder_probe(p) and kv.births_read(p, self.index.use_mm_init):
            self._announce(p, kv.born(p))

    def exited_from(self, mm: int) -> int | None:
        """The pid whose exit_mm() let go of the mm now at address `mm` (None: none did, in
        this life of the address: an exit before its last mm_init was an earlier mm's)."""
        marks, births = self.exit_marks.get(mm), self.births.get(mm)
        if not marks or (births and marks[-1][0] < births[-1]):
            return None
        return marks[-1][1]

    def _announce(self, p: Probe, addr: int) -> None:
        """mm_init returned a new mm in task p.pid's context (fork: the parent; exec: the
        task itself): the next mm the model allocates there is this one."""
        if p.pid <= 0:
            return
        t = self.replayer.tasks.get(p.pid)
        if t is None:
            t = self.replayer.current(p.cpu, p.pid, p.comm, p.tgid)
        self.births.setdefault(addr, []).append(p.line)
        self._life_ends(addr, p.line)  # a new life of this address
        early = [(mm, nt) for mm, nt in self.before_birth.pop(id(t), []) if nt > p.line]
        if early and kv.born_in_fork(p):
            self._bind(early.pop(0)[0], addr)  # a fork made ahead of its birth
            self.result.learned["fork made at a flush before its mm_init, bound there"] += 1
        else:
            self.new_addrs.setdefault(id(t), []).append(addr)
        if early:
            self.before_birth[id(t)] = early
        if kv.born_in_fork(p):
            self.forked.add(addr)
            self.forking[p.pid] = None
        else:
            self.forked.discard(addr)
        self.uffd_forks.pop(addr, None)  # what a life that never became a model mm left

    def _fork_flushed(self, pid: int) -> None:
        """pid's dup_mmap() ended with flush_tlb_mm() of its mm (its first full flush since
        the fork's mm_init: "remote ipi send" when other CPUs were in mm_cpumask, else the
        "local mm shootdown"): which CPUs were lazy on that mm then, in the model, and in
        which lazy episode. With markers a fork, failed or not, runs there (_early_fork,
        _failed_fork); with tracepoints only, a fork runs at the flush's last line, and a
        failed one not at all."""
        t = self.replayer.tasks.get(pid)
        mm = t.mm if t is not None else None
        self.forking[pid] = {
            (rq.cpu, self.episode[rq.cpu])
            for rq in self.m.state.rqs
            if mm is not None and rq.curr.mm is None and rq.curr.active_mm is mm
        }

    def _mask_says_left(self, ev: TlbFlush) -> None:
        """x86 flush_tlb_mm_range() traces "remote ipi send" whenever another CPU is in the
        mm's mm_cpumask (lazy ones too, before should_flush_tlb() picks), then its local part
        ("local mm shootdown", run when the mm is loaded here); and a CPU whose hardware has
        an mm loaded is in its mm_cpumask. A local part with no "remote ipi send" of the same
        flush before it: no other CPU had the mm loaded. A CPU the model has lazily on that
        mm since before the trace (it has loaded no user mm since) had already moved to
        init_mm then, on a flush or leave_mm before the trace: learned here, unmetered.
        (With INVLPGB, 6.15+, an mm with a global ASID is flushed by broadcast, no IPIs.)"""
        config = self.m.config
        if config.arch != "x86_64" or config.invlpgb:
            return
        rqs = self.m.state.rqs
        t = self.replayer.tasks.get(ev.pid)
        if ev.cpu >= len(rqs) or t is None or t.mm is None or t.mm.is_init_mm:
            return
        mm = t.mm  # (the task's own: its CPU's may not be known yet, early in the trace)
        stale = [
            c
            for c in self.first_lazy
            if c != ev.cpu
            and c < len(rqs)
            and self.episode[c] == 0
            and rqs[c].curr.mm is None
            and rqs[c].tlb.loaded_mm is mm
        ]
        if not stale:
            return
        # the task's own flush line before this one, if it was a "remote ipi send": the IPIs
        # of this flush went out first
        before = line_before(self.index.own_flushes.get(ev.pid, []), ev.line)
        if before is not None and before == line_before(
            self.index.ipi_sends.get(ev.pid, []), ev.line
        ):
            return
        ctx, self.ctx = self.ctx, Context("resync", ev.line, ev.cpu, ev.pid)
        with self.metrics.unmetered():
            for c in stale:
                self._refusable(self.m.leave_mm, c)
                self.result.learned[
                    "CPU lazy since before the trace already on init_mm (a flush with no IPI)"
                ] += 1
        self.ctx = ctx

    def _early_fork(self, ev: TlbFlush) -> None:
        """A fork's dup_mmap() flush (fork_flushes: its parent's last full flush before its
        task_newtask; with markers, marked_fork_flushes: that flush's first line, where the
        IPIs went out): the model forks here, so that its flush of the parent's mm reaches the
        CPUs lazy on it now, as the kernel's did; the parent may wait long before
        task_newtask (a userfaultfd monitor reading the fork event)."""
        nt = self.index.fork_hints[ev.line]
        self.past_exit.discard(nt.child_pid)  # a new life of the pid
        self.ahead_of = nt.line
        try:  # (the parent's own flush: its line, CPU and pid are the fork's there)
            self._drive("NewTask", ev, self.replayer.fork_ahead, nt, ev)
        finally:
            self.ahead_of = None
        self.early_forks.add(nt.line)
        self.result.learned["fork at its dup_mmap flush (tlb_flush)"] += 1

    def _failed_fork(self, ev: TlbFlush, addr: int) -> None:
        """A failed fork's dup_mmap() flush (marked_fork_flushes: its mm goes to exit_mmap()
        next, with no task_newtask): the model runs the failed fork here, so that its flush
        of the parent's mm reaches the CPUs lazy on it now, as the kernel's did. What follows
        in the kernel (the new mm put back, exit_mmap(), __mmdrop() at the end of the
        parent's __mmput()) changes nothing another CPU sees; the exit_mmap marker then only
        ends that __mmput."""
        queue = self._queued(ev.pid, addr)
        assert queue is not None
        queue.remove(addr)
        queue.insert(0, addr)
        self.ctx = Context("__mmput", ev.line, ev.cpu, ev.pid)
        self.m.failed_fork(self.replayer.tasks[ev.pid])
        self._forked(ev.pid)
        self.result.learned[FAILED_FORK_SEEN] += 1
        self.result.learned["failed fork at its dup_mmap flush (tlb_flush)"] += 1

    def _forked(self, pid: int) -> None:
        """pid's fork has been replayed (or its failure): its dup_mmap() is behind it."""
        self.forking.pop(pid, None)

    def _queued(self, pid: int, addr: int) -> list[int] | None:
        """The mm_init addresses announced in pid's context and not yet given to a model
        mm, if `addr` is one of them."""
        t = self.replayer.tasks.get(pid)
        queue = self.new_addrs.get(id(t)) if t is not None else None
        return queue if queue and addr in queue else None

    def _born_and_gone(self, p: Probe, addr: int) -> None:
        """exit_mmap of an mm this task's mm_init returned and no exec or child took: an
        execve that failed after bprm_mm_init() (free_bprm's mmput), or, when copy_process()
        allocated it, a fork that failed after copy_mm() (bad_fork_cleanup_mm's mmput). The
        model's failed_exec / failed_fork binds its new mm to this address and puts it here."""
        queue = self._queued(p.pid, addr)
        assert queue is not None
        queue.remove(addr)
        queue.insert(0, addr)
        self.ctx = Context("__mmput", p.line, p.cpu, p.pid)
        task = self.replayer.tasks[p.pid]
        if addr in self.forked:
            # no full flush of its own between the birth and here (marked_fork_flushes would
            # have run it there): dup_mmap() was killed before it flushed the parent's mm
            self._refusable(self.m.failed_fork, task, "process", True)
            self._forked(p.pid)
            self.result.learned[FAILED_FORK_SEEN] += 1
        else:
            self._refusable(self.m.failed_exec, task)
            self.result.learned["failed execve (exit_mmap of an mm no exec installed)"] += 1

    def _preempted_in_mmput(self, p: Probe) -> bool:
        """Whether the exiting task whose own exit's exit_mmap() returned at `p` is
        preempted before its sched_process_exit (or before it sleeps). On a fully
        preemptible kernel the rest of __mmput() (set_mm_exe_file(), the mmlist and lru_gen
        locks) can be preempted, and it is nearly all of the time between exit_mmap()'s
        return and that tracepoint (do_exit() only checks acct_process() in between): such a
        task had not reached __mmput()'s mmdrop() yet (its own CPU's lazy reference, dropped
        at that switch, is then not the last). On PREEMPT_RT those locks are sleeping
        spinlock_t's: the task may also wait for one there ("D"; an exiting task does not
        sleep otherwise before its sched_process_exit). Under preempt=voluntary nothing there
        reschedules; a task running another's __mmput (a /proc reader) or exec's goes on
        with other work, where it is as likely preempted after."""
        if not self.preemptible or self._past_exit(p.pid, p.line):
            return False
        mm = self.exit_mmap_of.get(p.pid)
        if mm is None or self.exited_from(mm) != p.pid:
            return False
        ix = self.index
        preempted, exit_, rest = (
            next_line(lines.get(p.pid, []), p.line)
            for lines in (ix.preemptions, ix.exit_lines, ix.rests)
        )
        if rest is not None and rest in self.index.lock_waits:
            preempted = rest if preempted is None else min(preempted, rest)
        return (
            preempted is not None
            and exit_ is not None
            and preempted < exit_
            and (rest is None or preempted <= rest)
        )

    def _switched_out_between(self, pid: int, line: int, end: int) -> bool:
        """pid switched out (preempted, or waiting) after `line` and before `end`."""
        return any(
            (at := next_line(lines.get(pid, []), line)) is not None and at < end
            for lines in (self.index.preemptions, self.index.rests)
        )

    def _may_be_in_mmput(self, sw: SchedSwitch) -> bool:
        """A switch out that can come inside __mmput(): a preemption ("R", "R+"), or on
        PREEMPT_RT a wait for a sleeping spinlock_t ("D"); not a sleep, not the dead
        task's last switch. Any switch out is, with exit_mmap's return markers, while the
        task's exit_mmap has not returned (a "D" wait in unmap_vmas() for a page being
        swapped, after a flush that found its CPU lazy: unseen47.c on 6.18)."""
        return (
            sw.prev_state.startswith("R")
            or sw.line in self.index.lock_waits
            or self._inside_exit_mmap(sw.prev_pid, sw.line)
        )

    def _inside_exit_mmap(self, pid: int, line: int) -> bool:
        """With exit_mmap's return markers in the trace: pid's last exit_mmap marker before
        `line` has not returned by then (markers only)."""
        if self.inputs != "markers" or not self.index.mmput_returns:
            return False
        start = line_before(self.index.exit_mmap_lines.get(pid, []), line)
        end = next_line(self.index.mmput_returns.get(pid, []), start) if start is not None else None
        return start is not None and (end is None or end > line)

    def _kernel_drop(self, p: Probe) -> None:
        """Where the kernel's __mmdrop ran: in finish_task_switch() (only after a switch from
        a task without an mm to one with, dropping the borrowed mm: the hook's `prev`), at
        the end of __mmput() (an exit_mmap of this mm by this task is open), or elsewhere."""
        addr = address(p.args.get("mm"))
        queued_on = kv.rcu_callbacks_of(p.comm)  # an RCU callback's free: whose list
        if queued_on is not None and self._queued_before_the_trace(addr):
            return
        anchor = self.anchor.get(p.cpu, ("other",))
        group = self.finished.get(p.cpu)
        # both end with this life of the address, whatever the branch below
        async_pid = self.async_drops.pop(addr, None)
        offlined = self.offlined.pop(addr, None)
        releasing = self.releasing.get(p.pid)
        if releasing is not None and releasing[1] == addr:
            del self.releasing[p.pid]  # a task's release ends with its mmdrop()
        else:
            releasing = None
        point: tuple[object, ...]
        # a release of this mm under way in this task (its marker came first) whose mmdrop()
        # this is, not a finish_task_switch()'s run just before: at preempt depth 0
        released = releasing is not None and p.preempt_depth == 0 and not self.m.config.PREEMPT_RT
        if (
            anchor[0] == "finish_task_switch"
            and not released
            and group is not None
            and group.hook is not None
            and group.hook.function == SWITCH_MM
            and group.hook.prev == addr
            and group.finish is not None
            and address(group.finish.args.get("prev_mm")) == 0
        ):
            point = anchor
        elif self.mmput_open.get(addr) == p.pid:
            point = ("__mmput", p.pid)
        elif releasing is not None:
            # this task's release of this very mm (its marker came first, it may have been
            # preempted since): its mmdrop() was the last, even after a signal's oom_mm went
            # (that mmdrop_async() was not the last, its work has nothing to free)
            point = (releasing[0], p.pid)
            # a CPU let go after the release's marker, before this (a syscall's marker is
            # its mmgrab(): lazy CPUs letting go meanwhile are why it is the last)
            let_go = [line for line, _ in self.let_go.get(addr, [])]
            late = any(releasing[2] < line < p.line for line in let_go)
            if late and releasing[0] not in SYSCALL_POINTS:
                self.release_raced.add(addr)
        elif async_pid is not None:  # mmdrop_async_fn(), from the work free_signal_struct queued
            point = ("mmdrop_async", async_pid)
        elif offlined is not None:
            point = ("finish_cpu", 0)  # its idle task's borrowed mm, dropped for a dead CPU
        elif queued_on is not None:
            point = ("call_rcu", queued_on)  # PREEMPT_RT's __mmdrop_delayed(), queued there
        elif anchor[0] == "activate_mm" or p.pid in self.exec_open:
            # (exec_mmap()'s mmdrop() of the borrowed mm, after activate_mm(): the task may
            # have been preempted in between, PREEMPT_RT's exec_mmap() being preemptible)
            point = ("exec_mmap", p.pid)
        elif anchor[0] in ("kthread_use_mm", "sched_force_init_mm", *RELEASE_POINTS):
            point = anchor  # (the path, the pid that ran it)
        else:
            point = ("other", p.pid)
        self.exec_open.discard(p.pid)  # exec_mmap() drops or puts one mm, then it is done
        self.mmput_open.pop(addr, None)
        queue = self._queued(p.pid, addr)
        if queue is not None:  # born and gone before any model mm claimed it
            queue.remove(addr)
            self.unclaimed[p.line] = "fork" if addr in self.forked else "exec"
        self.kernel_drops.append(Drop(addr, point, p.line, p.cpu))
        self._life_ends(addr, p.line)

    def _queued_before_the_trace(self, addr: int) -> bool:
        """PREEMPT_RT: an RCU callback's __mmdrop (the caller checks it ran in rcuc/N or
        rcuop/N) of an mm the trace never showed (no model mm bound to it, no mm_init
        waiting for one): its last mmdrop_sched() call_rcu()ed it before the trace began.
        Lazy RCU (RCU_LAZY, on offloaded CPUs: rcu_nocbs=) holds such callbacks for up to
        seconds. State from before the trace, learned, not predicted: it is not scored."""
        if (
            not self.m.config.PREEMPT_RT
            or addr in self.live
            or any(addr in queue for queue in self.new_addrs.values())
        ):
            return False
        self.result.learned["mm call_rcu()ed before the trace (its RCU callback's __mmdrop)"] += 1
        return True

    def _outside(self, p: Probe) -> None:
        kind = kv.outside_kind(p, self.efi)
        cpu, pid = p.cpu, p.pid
        if p.function == ENTER_LAZY:
            mm, prev = address(p.args.get("mm")), 0
        else:
            mm, prev = address(p.args.get("next")), address(p.args.get("prev"))
        if kind == "flush_to_init_mm":
            prev = 0
            self._resolve(self.m.state.init_mm, mm)
        self.kernel_outside.append(Outside(kind, cpu, pid, mm, prev, p.line, self.episode[cpu]))
        if kind in kv.HOTPLUG:
            self.hotplugged.add(cpu)
        if kind == "idle_task_exit":
            self.offlined[address(p.args.get("t_active_mm"))] = cpu
            self.offlined_ever.add(address(p.args.get("t_active_mm")))
        elif kind == "cpu_init":  # back online: finish_cpu() ran long before
            self._forget_offlined(cpu)
        if kind == "cpu_init" and self.inputs == "markers":
            self._refusable(self._cpu_came_online, p)
        if kind == "idle_task_exit" and self.inputs == "markers" and self.m.state.rqs[cpu].online:
            self.ctx = Context("hotplug", p.line, p.cpu, p.pid)
            self._refusable(self._cpu_going_offline, p)
            self.result.learned["CPU went offline (idle_task_exit marker)"] += 1
        if kind == "temporary_mm" and self.inputs == "markers":
            self._temporary_mm(p, mm)
        if kind == "efi_enter_mm" and self.inputs == "markers":
            self.ctx = Context("efi_call", p.line, p.cpu, p.pid)
            self._refusable(self.m.efi_call, p.cpu)
            self.result.learned["EFI runtime call (efi_enter_mm marker)"] += 1
        if kind == "sched_force_init_mm":
            # (its mmdrop_lazy_tlb() of the mm the hotplug thread let go follows)
            self.anchor[cpu] = ("sched_force_init_mm", pid)
        if kind == "sched_force_init_mm" and self.inputs == "markers":
            self.ctx = Context("hotplug", p.line, p.cpu, p.pid)
            self._refusable(self.m.sched_cpu_wait_empty, cpu)
            self.result.learned["hotplug thread moved to init_mm (sched_force_init_mm marker)"] += 1
        if kind == "switch_mm":
            self.anchor[cpu] = ("kthread_use_mm", pid)
            self.mm_kthreads.add(pid)
            if self.inputs == "markers":
                self._refusable(self._kthread_use_mm, p, mm)
        if kind == "activate_mm":
            self.anchor[cpu] = ("activate_mm", pid)
            self.exec_open.add(pid)
            self.exec_marked[pid] = p.line
            if self.inputs == "markers":
                self.armed[cpu] = p
        elif kind == "enter_lazy_tlb":
            if kv.is_kthread(p):
                # kthread_unuse_mm(): a kernel thread letting go of the mm it used, keeping
                # it lazily; never an exit, whatever the mm's owner does
                self.mm_kthreads.add(pid)
            else:
                if not self.exit_first:  # (since 6.16 no window comes before it)
                    self.exit_marked[pid] = p.line
                self.exiting_since.pop(pid, None)
                self.exit_marks.setdefault(mm, []).append((p.line, pid))
            if self.inputs == "markers":
                self._refusable(self._marker_exit, p)

    def _learn_cpu(self, group: SwitchGroup) -> None:
        """The first switch of a CPU shows what it had borrowed before the trace began (its
        hook, read ahead: the model runs the switch before its probes)."""
        sw, first = group.switch, self.first_switches.get(group.switch.cpu)
        hook = first.hook if first is not None and first.switch.line == sw.line else group.hook
        self.seen_cpu.add(sw.cpu)
        if hook is None:
            return
        self.ctx = Context("resync", sw.line, sw.cpu, sw.prev_pid)
        prev = self.replayer.current(sw.cpu, sw.prev_pid, sw.prev_comm, sw.tgid)
        if prev.mm is not None:
            self._resolve(prev.mm, hook.prev)
            return
        if kv.is_init_mm(hook.prev):
            self._resolve(self.m.state.init_mm, hook.prev)
            return
        self._adopt_borrowed(sw.cpu, hook.prev, sw.line)

    def _adopt_borrowed(self, cpu: int, addr: int, line: int) -> None:
        """CPU `cpu` was lazily borrowing the mm at `addr` when the trace began (its first
        switch says so): the model's CPU takes it, and so do the CPUs not yet seen that
        borrowed the same mm."""
        self.seen_cpu.add(cpu)
        mm = self.live.get(addr)
        if mm is None or mm.freed:
            for pid in self.pretrace.owners(addr):
                owner = self.replayer.task(pid, f"pid{pid}", None, cpu)
                if owner.mm is not None:
                    mm = owner.mm
                    break
        if mm is not None and (mm.freed or mm.mm_users == 0):
            mm = None
        # An mm nobody in the trace owns is a zombie (its users exited before the trace) if
        # the kernel frees it later; if it is neither torn down nor freed while the trace
        # lasts, a task that never runs in the trace still uses it.
        held_by = None
        if mm is None and not self._ends_later(addr, line):
            held_by = f"unseen owner of {kv.hexaddr(addr)}"
        with self.metrics.unmetered():
            borrowed = self.m.adopt_lazy(cpu, mm, held_by=held_by)
            self.result.learned["mm borrowed by a CPU before the trace"] += 1
            # Other CPUs borrowing the same mm when the trace began hold references too,
            # whenever their first switch comes: take them now, or this CPU's letting go
            # would free it under them.
            for other, other_addr in sorted(self.first_lazy.items()):
                if other_addr == addr and other not in self.seen_cpu:
                    try:
                        self.m.adopt_lazy(other, borrowed)
                    except OperationError:
                        continue  # that CPU runs a task of its own by now: learn it later
                    self.seen_cpu.add(other)
                    self.result.learned["mm borrowed by a CPU before the trace"] += 1
        if borrowed.id not in self.addr:
            self._bind(borrowed, addr)

    def _ends_later(self, addr: int, line: int) -> bool:
        """Does the kernel tear this address down (exit_mmap) or free it after `line`?"""
        return any(ln > line for ln, _pid in self.index.exit_mmaps.get(addr, [])) or any(
            ln > line for ln in self.index.drop_lines.get(addr, [])
        )

    def _apply_group(self, group: SwitchGroup, at: TraceEvent) -> None:
        """The kernel's switch is over at `at` (its finish_task_switch, or the CPU's next
        sched_switch when that probe is missing): it is scored against the model's, which
        ran at the switch's last tracepoint (_switch_ends). A switch still waiting for the
        CR3 load the tracepoints promised it (a trace out of the kernel's order on one CPU)
        runs here, counted, and only then turns the model's interrupts on."""
        if not group.ran:
            self.result.anomalies["context switch whose CR3 load came after its finish"] += 1
            group.model, group.ran = self._switch_model(group), True
            self._irqs_on(at)
        self._compare_switch(group, group.model)

    def _schedule_begins(self, sw: SchedSwitch) -> None:
        """The CPU's next tracepoint or marker is the sched_switch `sw` (markers inputs;
        probe lines that only bind addresses do not count, their place is no input): from
        here its model has interrupts off, as __schedule() will. A flush IPI the kernel's CPU
        took before that would have left a line there (on a lazy CPU its switch to init_mm,
        a CR3 load; a real flush, "remote shootdown"), so one sent meanwhile waited for the
        switch and its finish_task_switch() handled it on the state the switch left (a lazy
        CPU switched to a user mm, whose stale TLB the switch itself flushed: nothing to
        do).

        Unless that state is lazy (a user task switched out for a kernel thread or the idle
        task) and the CPU loads no CR3 before its next switch: flush_tlb_func() on a lazy
        CPU switches it to init_mm, a CR3 load, so the IPI reached it only after that lazy
        episode, on a user mm again (a vCPU that stalled between the sender's "remote ipi
        send" and the IPI itself: 5 ms on a PREEMPT_RT capture under TCG). The model takes
        it before the switch then, on the user mm it was sent for: its interrupts stay on."""
        cpu = sw.cpu
        group = self.pending.get(cpu)  # (one the model ran already is over there)
        if cpu >= len(self.m.state.rqs) or (group is not None and not group.ran):
            return
        if sw.line not in self.index.loads_after and self._switch_lazies(sw):
            return
        self.m.local_irq_disable(cpu)

    def _switch_lazies(self, sw: SchedSwitch) -> bool:
        """Whether, in the model, `sw` takes its CPU from a user mm to lazy TLB mode: the task
        switched out has an mm and the one switched in has none."""
        prev = self.m.state.rqs[sw.cpu].curr
        nxt = self.replayer.tasks.get(sw.next_pid) if sw.next_pid else None
        incoming_lazy = sw.next_pid == 0 or (nxt is not None and nxt.mm is None)
        return prev.mm is not None and not prev.mm.is_init_mm and incoming_lazy

    def _irqs_on(self, at: TraceEvent) -> None:
        """A switch applied at `at`: interrupts are on again on its CPU (the model's
        finish_task_switch turned them on, unless the model refused the switch: then the
        IPIs that waited run here, under their own context; the switch's is put back)."""
        if at.cpu < len(self.m.state.rqs):
            ctx, self.ctx = self.ctx, Context("irqs on", at.line, at.cpu, at.pid)
            self._refusable(self.m.local_irq_enable, at.cpu)
            self.ctx = ctx

    def _switch_model(self, group: SwitchGroup) -> ModelSwitch | None:
        """The model's side of a switch: applied, the model's switch returned."""
        sw = group.switch
        self.first_switch.setdefault(sw.cpu, sw.line)
        if sw.cpu not in self.seen_cpu:
            self._learn_cpu(group)
        self.switch = None
        if self.inputs == "sched":
            self._vhost_use_mm(sw)
            if self.windows is not None and sw.line in self.windows.returns:
                self._refusable(self._cpu_returned, sw)
        if self.exit_points.get(sw.line) == sw.prev_pid:
            self._inferred_exit(sw)
        if sw.line in self.exec_preempted:
            self._preempted_in_exec_mmap(sw)
        rqs = self.m.state.rqs
        loaded = rqs[sw.cpu].tlb.loaded_mm if sw.cpu < len(rqs) else None  # before the switch
        self._drive("switch", sw, self.replayer.apply, sw)
        self.epoch[sw.cpu] += 1
        model, self.switch = self.switch, None
        if model is not None and model.hook == SWITCH_MM:
            self.episode[sw.cpu] += 1
        if self.windows is not None and model is not None and not self.exit_first:
            self._exit_window_seen(sw, model, loaded)
        elif self.windows is not None and self.exit_first:
            self._late_exit(sw)
        return model

    def _late_exit(self, sw: SchedSwitch) -> None:
        """Sched inputs, 6.16+: sched_process_exit comes before exit_mm() (after it,
        perf_event_exit_task()), and the model runs exit_mm() at the tracepoint. A task
        preempted in between still has its mm: switched back in, it loads CR3 when its CPU
        had another mm loaded, and a task without one never does (enter_lazy_tlb()). So a
        switch to a task whose exit the model ran, with the kernel's CR3 load ("flush on
        task switch" right after it), shows that exit_mm() came after this switch: the next
        pass runs it here, when the task is back (a later preemption before it shows the
        same way, and moves it on). Where the CPU had the task's own mm loaded (a kernel
        thread borrowed it meanwhile), no load was due either way, and nothing shows."""
        assert self.windows is not None
        pid, t = sw.next_pid, self.m.state.rqs[sw.cpu].curr
        if sw.prev_state.startswith(("X", "Z")):
            self.exit_traced.pop(sw.prev_pid, None)
            self.late_waiting.pop(sw.prev_pid, None)
        exit_line = self.late_waiting.get(pid)
        if exit_line is not None and self.late_exits.get(exit_line) == sw.line:
            del self.late_waiting[pid]
            if self._runs_with_mm(sw.cpu, pid):
                self._marker_exit(TraceEvent(sw.line, sw.cpu, sw.ts, pid, sw.next_comm, None))
                self.exit_traced[pid] = exit_line
                self.result.late_exit_points[sw.line] = pid
                self.result.learned[
                    "exit_mm after a preemption past sched_process_exit (6.16+: the task "
                    "came back with a CR3 load)"
                ] += 1
            return
        exit_line = self.exit_traced.get(pid)
        if (
            exit_line is not None
            and sw.line in self.windows.cr3
            and self.replayer.tasks.get(pid) is t
            and t.exiting
            and t.mm is None
            and not t.pf_kthread
        ):
            self.found_late[exit_line] = sw.line

    def _exit_window_seen(self, sw: SchedSwitch, model: ModelSwitch, loaded: Mm | None) -> None:
        """Sched inputs: the model loaded CR3 for a user task switched in, the kernel did
        not (no tlb_flush "flush on task switch"): it has no mm any more, its exit_mm() ran
        before an earlier switch out (windows.py), which the next pass runs it at. Only
        where the model is sure what the CPU had loaded (`loaded`, before the switch): since
        its last CR3 load, no kernel thread that loads CR3 itself (kthread_use_mm() of a user
        mm) and no task found in an exit window ran there.
        Or where the kernel's CPU is known to have kept an mm the model's has not: a task
        found so came back without a CR3 load, so the CPU still has what it had before
        (kept_loaded), up to its next CR3 load, while the model, which loaded the task's mm,
        is no longer sure. A task switched in meanwhile whose mm is another needed a CR3 load
        too: without one, it has no mm either. (Tasks killed together, each waiting in its
        exit_mmap() and coming back in turn on one CPU, show one after another so in a single
        pass, where the CPU's first found one would hide the rest until later passes.)"""
        assert self.windows is not None
        cpu, sure = sw.cpu, self.loaded_sure.get(sw.cpu, False)
        t = self.m.state.rqs[cpu].curr
        suspect = self.found_exits.values()
        kept = self.kept_loaded.pop(cpu, None)
        if sw.line in self.windows.cr3:
            self.loaded_sure[cpu] = t.mm is not None and sw.next_pid not in suspect
            return
        # no CR3 load in the kernel's switch: its CPU has what it had loaded before
        if sure and loaded is not None:
            kept = loaded
        if sw.next_pid in self.windows.own_cr3 and t.pf_kthread:
            self.loaded_sure[cpu] = False
            return  # a kernel thread that may load CR3 itself: nothing known any more
        if sw.next_pid in suspect:
            self.loaded_sure[cpu] = False
        if kept is not None:  # (read only while the model is unsure, overwritten before)
            self.kept_loaded[cpu] = kept
        needed = model.cr3 if sure else kept is not None and t.mm is not kept
        if not needed or t.pf_kthread or t.mm is None or t.exiting:
            return
        if sw.next_pid in suspect:  # its exit is found already: this is a later sign of it
            return
        point = self.windows.exit_point(sw.next_pid, sw.line)
        if point is not None and point not in self.exit_points:
            self.found_exits[point] = sw.next_pid
            self.loaded_sure[cpu] = False

    def _exit_mmap_load(self, ev: TlbFlush) -> bool:
        """Sched inputs: the task's own CR3 load to init_mm that its exit window's first
        switch out follows (ExitWindows.lazy_exits, third value): exit_mmap()'s final flush
        (tlb_finish_mmu()) found its CPU lazy after exit_mm() and switched it to init_mm (x86
        flush_tlb_func()),
        then the task was preempted before its __mmput() was done. Its exit_mm() runs here,
        not at that switch, and so does that flush of the mm (the kernel's hook is a CR3 load
        of this interval; after the switch the CPU no longer has the mm loaded). The rest of
        __mmput(), its final mmdrop() with it, runs where it did before: at the task's last
        flush or its sched_process_exit (MarkerSteps._defer_to_last)."""
        pid, out = self.exit_loads.get(ev.line, (None, 0))
        if pid != ev.pid or not ev.own_cr3_load or ev.cpu in self.pending:
            return False
        mm = self.m.state.rqs[ev.cpu].curr.mm
        if mm is None or not self._exit_runs(ev, ev.pid):
            return False
        self.inferred[ev.pid] = INFERRED_EXIT
        self.result.lazy_exit_points[out] = ev.pid
        self.result.learned["exit_mm inferred (exit_mmap switched its CPU to init_mm)"] += 1
        if not (mm.freed or mm.torn_down):  # (torn down: the model's __mmput ran here)
            self.ctx = Context("flush", ev.line, ev.cpu, ev.pid)
            self._refusable(self.m.flush_tlb_mm_range, ev.cpu, mm, True)
        return True

    def _exit_runs(self, ev: TraceEvent, pid: int) -> bool:
        """Sched inputs: user task `pid`, current on ev's CPU with its mm, runs its exit_mm()
        at `ev` (MarkerSteps._marker_exit, its __mmput deferred); False when the model has no
        such task there, or it is exiting already, or a kernel thread (its own CR3 loads are
        kthread_use_mm()'s)."""
        t = self.m.state.rqs[ev.cpu].curr
        if t is not self.replayer.tasks.get(pid) or t.mm is None or t.exiting or t.pf_kthread:
            return False
        self._marker_exit(ev)
        return True

    def _inferred_exit(self, sw: SchedSwitch) -> None:
        """Sched inputs: the task switched out here ran exit_mm() before (its own switch to
        init_mm came before, or came after with little of exit_mmap() left to run from
        here, or the pass before found it switched in later without an mm): the model's
        exit runs now."""
        if not self._exit_runs(sw, sw.prev_pid):
            return
        early = sw.line in self.before_flush
        self.inferred[sw.prev_pid] = INFERRED_IN_EXIT_MMAP if early else INFERRED_EXIT
        if early:
            self.result.early_exit_points[sw.line] = sw.prev_pid
            self.result.learned[
                "exit_mm inferred (preempted in exit_mmap before it switched its CPU to init_mm)"
            ] += 1
        elif sw.line in self.lazy_exits:
            self.result.lazy_exit_points[sw.line] = sw.prev_pid
            self.result.learned["exit_mm inferred (exit_mmap switched its CPU to init_mm)"] += 1
        else:
            self.result.learned["exit_mm inferred (switched in later without a CR3 load)"] += 1

    def _compare_switch(self, group: SwitchGroup, model: ModelSwitch | None) -> None:
        res = self.result
        res.context_switches.total += 1
        hook = group.hook
        if model is None or hook is None or group.finish is None:
            what = "no model switch" if model is None else "the kernel's probes are missing"
            self.result.mismatch(
                "context_switch", group.switch.line, {"error": what}, {}, "anomaly"
            )
            return
        after = model.prev_task.active_mm
        prev = self._resolve(model.prev, hook.prev)
        nxt = self._resolve(model.next, hook.next) if model.hook == SWITCH_MM else 0
        after_addr = self._resolve(after, group.prev_active_after or 0)
        predicted = {
            "hook": model.hook,
            "prev": prev,
            "next": nxt,
            "prev_active_mm_after": after_addr,
        }
        kernel = {
            "hook": hook.function,
            "prev": hook.prev,
            "next": hook.next,
            "prev_active_mm_after": group.prev_active_after,
        }
        if predicted == kernel:
            res.context_switches.matched += 1
            if hook.function == SWITCH_MM:
                self.diverged.discard(group.switch.cpu)  # a user mm again: in step
                self.hotplugged.discard(group.switch.cpu)
            return
        shown = {
            "hook": model.hook,
            "prev": self._name(model.prev, prev),
            "next": self._name(model.next, nxt) if model.hook == SWITCH_MM else None,
            "prev_active_mm_after": self._name(after, after_addr),
        }
        seen = {k: (hexaddr(v) if k != "hook" and isinstance(v, int) else v)
                for k, v in kernel.items()}  # fmt: skip
        only_prev = all(predicted[k] == kernel[k] for k in kernel if k != "prev")
        cause = FOLLOWS if only_prev and group.switch.cpu in self.diverged else self._cause(group)
        self.result.mismatch("context_switch", group.switch.line, shown, seen, cause)
        self.diverged.add(group.switch.cpu)
        self.tainted |= {hook.prev, hook.next, group.prev_active_after or 0} - {0}

    def _cause(self, group: SwitchGroup) -> str:
        sw = group.switch
        if sw.cpu in self.hotplugged:
            return HOTPLUG
        if sw.line in self.replayer.shared_at.get(sw.next_pid, ()):
            return PID_SHARED
        for pid in (sw.prev_pid, sw.next_pid):
            if pid in self.exit_marked:
                return EXIT_WINDOW
            if pid in self.exiting_since:
                return EXIT_WINDOW_AFTER
            if pid in self.inferred:
                return self.inferred[pid]
            if pid in self.exec_marked:
                return "exec window (exec_mmap ran before sched_process_exec)"
            if pid in self.mm_kthreads:
                return KTHREAD_USE_MM
        if self.m.config.PREEMPT_RT and self._preempted_in_exec(group):
            return EXEC_PREEMPTED
        if self.epoch[sw.cpu] <= 1:
            return PRE_TRACE
        if sw.cpu in self.diverged:
            return FOLLOWS
        if self._pid_shared(sw.prev_pid, sw.line) or self._pid_shared(sw.next_pid, sw.line):
            return PID_SHARED
        return UNEXPLAINED

    def _pid_shared(self, pid: int, line: int) -> bool:
        """Did `pid` name two tasks at `line`, the replay having picked one of them at a
        switch before (Replayer.shared_at), in the same life of the newer (no task_newtask
        of the pid in between)? A miss with no other cause then follows from that pick."""
        picked = line_before(self.replayer.shared_at.get(pid, []), line + 1)
        if picked is None:
            return False
        born = next_line(self.newtask_lines.get(pid, []), picked)
        return born is None or line < born

    @cached_property
    def newtask_lines(self) -> dict[int, list[int]]:
        """pid -> the lines of its task_newtask (read only for a pid that named two tasks)."""
        lines: dict[int, list[int]] = {}
        for e in self.events:
            if isinstance(e, NewTask):
                lines.setdefault(e.child_pid, []).append(e.line)
        return lines

    def _preempted_in_exec(self, group: SwitchGroup) -> bool:
        """The task switched out was preempted inside its exec: it sched_process_exec()s
        before it next switches out of its own accord, or (PREEMPT_RT's window inside
        exec_mmap()) the kernel switched it out already on the mm its next activate_mm
        activated. Or the task switched in comes back into that window: the kernel switched
        it in on the mm its next activate_mm activates (which then loads no CR3, so with
        tracepoints only nothing told the model the exec had begun)."""
        sw = group.switch
        hook = group.hook
        if hook is None:
            return False
        if sw.prev_state.startswith("R"):
            exec_ = next_line(self.index.exec_lines.get(sw.prev_pid, []), sw.line)
            rest = next_line(self.index.rests.get(sw.prev_pid, []), sw.line)
            if exec_ is not None and (rest is None or rest > exec_):
                return True
            if self._activates_next(sw.prev_pid, sw.line, hook.prev):
                return True
        return hook.function == SWITCH_MM and self._activates_next(sw.next_pid, sw.line, hook.next)

    def _activates_next(self, pid: int, line: int, mm: int | None) -> bool:
        """Exec's next activate_mm() by `pid` after `line`, before the task next rests,
        activates `mm`: the task was inside exec_mmap()'s window at `line`."""
        activation = next_line(self.index.activations.get(pid, []), line)
        if activation is None or mm != self.index.activated[activation]:
            return False
        rest = next_line(self.index.rests.get(pid, []), line)
        return rest is None or rest > activation

    # -- scoring ---------------------------------------------------------------------

    def _score(self) -> None:
        drops = DropScorer(
            self.result,
            self.inputs,
            self.exit_marks,
            self.tainted,
            self.raced,
            self.births,
            self.unclaimed,
            self.offlined_ever,
            self.after_exit,
            self.let_go,
            self.exec_mmputs,
            self.release_raced,
            self.exit_first,
            self.index.hotplug_lines,
            self._kthread_used(),
            self.index.cpu_lines,
        )
        drops.score(self.kernel_drops, self.model_drops)
        score_outside(
            self.result, self.kernel_outside, self.model_outside, self.first_switch,
            self.mm_kthreads, self.windowed, set(self.first_lazy), self._ipi_waited,
            bool(self.index.mmput_returns), self._flushed_by_another_mmput, self._pid_shared,
        )  # fmt: skip

    def _kthread_used(self) -> dict[int, list[int]]:
        """mm address -> lines of the kernel's kthread_use_mm() of it (read for causes)."""
        used: dict[int, list[int]] = {}
        for o in self.kernel_outside:
            if o.kind == "switch_mm":
                used.setdefault(o.mm, []).append(o.line)
        return used

    def _flushed_by_another_mmput(self, o: Outside) -> bool:
        """With tracepoints only, the model's flush to init_mm came from the __mmput it ran
        in task o.pid (at its exit or exec), and in the kernel that task ran no exit_mmap in
        that life (from its previous exec or life's end to its death): an mm_users reference
        no tracepoint shows (a /proc reader's get_task_mm(), uprobes' register_for_each_vma(),
        ...) was put last, by its holder, whose __mmput flushed other lazy CPUs at another
        time (the exit_mmap markers, read only for causes, say so)."""
        if self.inputs != "sched" or o.via not in ("exit", "mmput"):
            return False
        start = max(
            line_before(self.index.exec_lines.get(o.pid, []), o.line) or 0,
            line_before(self.index.final_switches.get(o.pid, []), o.line) or 0,
        )
        end = next_line(self.index.final_switches.get(o.pid, []), o.line) or float("inf")
        return not any(
            pid == o.pid and start < line < end
            for puts in self.index.exit_mmaps.values()
            for line, pid in puts
        )

    def _ipi_waited(self, o: Outside) -> bool:
        """Nothing traced on the CPU the model flushed between that flush and a switch
        there that loaded a user mm: the kernel's IPI may have been taken after it."""
        lines = self.index.cpu_lines.get(o.cpu, [])
        i = bisect.bisect_right(lines, o.line)
        return i < len(lines) and lines[i] in self.index.user_loads
