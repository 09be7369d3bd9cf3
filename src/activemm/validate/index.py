"""What the validator looks up in a trace, indexed in one pass before the replay: the lines
of each CPU, task and mm address that its rules look back or ahead to (a CPU's CR3 loads, a
task's switches out and exits, the exit_mmap markers and __mmdrops of each address...). The
index only reads the trace; the replay never changes it."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from activemm.model.config import KernelConfig
from activemm.trace.events import (
    HotplugStep,
    NewTask,
    Probe,
    ProcessExec,
    ProcessExit,
    SchedSwitch,
    TlbFlush,
    TraceEvent,
)
from activemm.validate import kernel as kv
from activemm.validate.kernel import (
    EXIT_MMAP,
    FINISH,
    KSM_REMOVE,
    KSMD,
    MMDROP,
    SWITCH_MM,
    address,
)
from activemm.validate.markers import fork_flushes, ksm_unlock_preemptions, marked_fork_flushes
from activemm.validate.windows import context_switch_loads


@dataclass
class TraceIndex:
    """Lines of the trace, by CPU, pid or mm address (sorted), and what they show."""

    cpu_lines: dict[int, list[int]] = field(default_factory=dict)  # CPU -> lines of its events
    # CPU -> its tracepoint events (no probe lines), for sched inputs' look-ahead
    cpu_tracepoints: dict[int, list[TraceEvent]] = field(default_factory=dict)
    # pid -> lines of its own tlb_flush events (not in a hardirq), and of its exits
    own_flushes: dict[int, list[int]] = field(default_factory=dict)
    ipi_sends: dict[int, list[int]] = field(default_factory=dict)  # its "remote ipi send"s
    exit_lines: dict[int, list[int]] = field(default_factory=dict)
    exec_lines: dict[int, list[int]] = field(default_factory=dict)
    rests: dict[int, list[int]] = field(default_factory=dict)  # its switches out, not preempted
    preemptions: dict[int, list[int]] = field(default_factory=dict)  # and those preempted
    final_switches: dict[int, list[int]] = field(default_factory=dict)  # its switches out, dead
    # PREEMPT_RT: switches out in "D", where a sleeping spinlock_t's wait shows too
    lock_waits: set[int] = field(default_factory=set)
    cr3_loads: dict[int, list[int]] = field(default_factory=dict)  # CPU -> its CR3 loads
    user_loads: set[int] = field(default_factory=set)  # sched_switch lines that loaded a user mm
    # the sched_switch lines whose next tracepoint on their CPU is their CR3 load's
    # tlb_flush (in switch_mm_irqs_off, by the task switched out), and those tlb_flushes;
    # not a load the exec hints read as the exec's own (a leader's switch to the thread
    # whose exec takes its pid loads nothing when they share the mm)
    switch_loads: set[int] = field(default_factory=set)
    switch_load_lines: set[int] = field(default_factory=set)
    # sched: switches to a task whose last switch out was a wait, not a preemption (it
    # was woken), in trace order
    wakeups: list[SchedSwitch] = field(default_factory=list)
    # markers: the tracepoint or marker lines a CPU's sched_switch follows directly, no
    # other tracepoint or marker there between (probe lines that only bind addresses or
    # are scored are skipped: their place is not an input; with tracepoints only the
    # model's flushes run at approximate points), each with that sched_switch
    before_switch: dict[int, SchedSwitch] = field(default_factory=dict)
    # markers: sched_switch lines after which their CPU loaded CR3 outside a context
    # switch before its next sched_switch (a lazy CPU a flush IPI sent to init_mm, in a
    # hardirq; or the task's own load)
    loads_after: set[int] = field(default_factory=set)
    # x86 EFI runtime calls: markers, the CR3 loads of the calls (the tlb_flush right after
    # each of their hooks); efi_mm's address (the first efi_enter_mm's `next`)
    efi_loads: set[int] = field(default_factory=set)
    efi_addr: int | None = None
    use_mm_init: bool = False  # mm_init's return probe names new mms (else dup_mmap...)
    # mm address -> (line, pid) of its exit_mmap markers; pid -> the lines of its own, and of
    # its exit_mmap returning (the marker of __mmput's end)
    exit_mmaps: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    exit_mmap_lines: dict[int, list[int]] = field(default_factory=dict)
    mmput_returns: dict[int, list[int]] = field(default_factory=dict)
    # exit_mmap's return line -> the line where that __mmput() returned (its end marker,
    # kv.mmput_ended: recorded since 2026-12; none in older captures)
    mmput_ends: dict[int, int] = field(default_factory=dict)
    drop_lines: dict[int, list[int]] = field(default_factory=dict)  # address -> __mmdrops
    finish_cpus: dict[int, list[int]] = field(default_factory=dict)  # cpuhp_enter(finish_cpu)
    hotplug_lines: dict[int, list[int]] = field(default_factory=dict)  # cpuhp_enter for a CPU
    offline_lines: dict[int, list[int]] = field(default_factory=dict)  # its idle_task_exit
    # mm address -> lines of __khugepaged_exit markers that leave khugepaged holding it,
    # and of exit_mmap markers that find KSM keeping it
    thp_kept: dict[int, list[int]] = field(default_factory=dict)
    ksm_kept: dict[int, list[int]] = field(default_factory=dict)
    # KSM: the reference an mm_slot kept past __mmput goes when ksmd (or an unmerge)
    # takes the exited mm's slot out, right after removing its last rmap_item: the last
    # remove_rmap_item_from_tree of that life after each kept exit_mmap (none: held past
    # the trace's end, or a slot with no rmap_items, below)
    ksm_releases: set[int] = field(default_factory=set)
    # a kept slot with no rmap_item to remove (ksmd's cursor rested on it, so
    # __ksm_exit() left it for ksmd): ksmd's scan takes it out first thing when it next
    # runs (scan_get_next_rmap_item(): ksm_test_exit(), no_vmas), or goes on to it in the
    # run it is in. No marker: at that run's switch-in (or, running, its switch out), the
    # sched_switch line -> (ksmd's pid, the mm's address)
    ksmd_releases: dict[int, tuple[int, int]] = field(default_factory=dict)
    activations: dict[int, list[int]] = field(default_factory=dict)  # exec's activate_mm
    activated: dict[int, int] = field(default_factory=dict)  # such a line -> the mm it activated
    # a fork's dup_mmap() flush (markers.fork_flushes; with markers, marked_fork_flushes)
    # -> its task_newtask, and the lines of failed forks' flushes -> the mm they made
    fork_hints: dict[int, NewTask] = field(default_factory=dict)
    failed_forks: dict[int, int] = field(default_factory=dict)

    def same_life(self, addr: int, line: int, later: int) -> bool:
        """Lines `line` and `later` see one life of the mm at `addr`: no __mmdrop of it in
        between (slab reuses addresses)."""
        drops = self.drop_lines.get(addr, [])
        j = bisect.bisect_right(drops, line)
        return j == len(drops) or drops[j] >= later

    @classmethod
    def scan(
        cls,
        events: list[TraceEvent],
        config: KernelConfig,
        inputs: str,
        preemptible: bool,
        efi: dict[int, str],
        exec_hints: set[int],
    ) -> TraceIndex:
        """Index `events`, read with `inputs` under `config` (`preemptible`: the kernel can be
        preempted anywhere preemption is on), whose EFI calls' hooks are `efi` (kv.efi_calls)
        and exec hints `exec_hints` (markers.exec_hints)."""
        ix = cls(fork_hints=fork_flushes(events))
        # pid -> (the line of its exit_mmap's return, the function it returned into) while
        # the __mmput() around it has not ended
        open_mmputs: dict[int, tuple[int, str | None]] = {}
        # mm address -> lines of remove_rmap_item_from_tree markers of it with no users left
        ksm_removes: dict[int, list[int]] = {}
        switching: set[int] = set()  # CPUs between a sched_switch and its finish probe
        out_state: dict[int, str] = {}  # pid -> the prev_state of its last switch out
        last_switch: dict[int, int] = {}
        at_switch = {
            line: sw for line, sw in context_switch_loads(events).items() if line not in exec_hints
        }
        ix.switch_loads = {sw.line for sw in at_switch.values()}
        ix.switch_load_lines = set(at_switch)
        after_efi: set[int] = set()  # CPUs whose last event was an EFI call's hook
        ksmd_runs: list[tuple[int, int, int]] = []  # ksmd's switch-in line, CPU, pid
        ksmd_ends: dict[int, int] = {}  # the switch-in line of a run of ksmd -> its end
        last_marked: dict[int, int] = {}  # CPU -> its last tracepoint or marker line
        for e in events:
            on_cpu = ix.cpu_lines.setdefault(e.cpu, [])
            on_cpu.append(e.line)
            if e.cpu in after_efi:
                after_efi.discard(e.cpu)
                if isinstance(e, TlbFlush) and e.cr3_load and inputs == "markers":
                    ix.efi_loads.add(e.line)
            if isinstance(e, Probe) and e.line in efi:
                after_efi.add(e.cpu)
                if ix.efi_addr is None and efi[e.line] == "efi_enter_mm":
                    ix.efi_addr = address(e.args.get("next"))
            if inputs == "sched" and not isinstance(e, Probe):
                ix.cpu_tracepoints.setdefault(e.cpu, []).append(e)
            if e.cpu in switching and (
                (isinstance(e, Probe) and e.function == SWITCH_MM)
                or (isinstance(e, TlbFlush) and e.cr3_load)
            ):
                ix.user_loads.add(last_switch[e.cpu])
            if isinstance(e, SchedSwitch) and e.cpu in last_marked and inputs == "markers":
                ix.before_switch[last_marked[e.cpu]] = e
            if (
                isinstance(e, TlbFlush)
                and e.cr3_load
                and inputs == "markers"
                and e.line not in ix.switch_load_lines
                and e.cpu in last_switch
            ):
                ix.loads_after.add(last_switch[e.cpu])
            if not (isinstance(e, Probe) and kv.binds_only(e)):
                last_marked[e.cpu] = e.line
            if isinstance(e, SchedSwitch):
                switching.add(e.cpu)
                last_switch[e.cpu] = e.line
                if inputs == "sched" and not out_state.get(e.next_pid, "S").startswith("R"):
                    ix.wakeups.append(e)
                out_state[e.prev_pid] = e.prev_state
                if e.prev_comm == KSMD and ksmd_runs and ksmd_runs[-1][1] == e.cpu:
                    ksmd_ends.setdefault(ksmd_runs[-1][0], e.line)
                if e.next_comm == KSMD:
                    ksmd_runs.append((e.line, e.cpu, e.next_pid))
                if e.prev_state.startswith(("X", "Z")):
                    ix.final_switches.setdefault(e.prev_pid, []).append(e.line)
                if not e.prev_state.startswith(("R", "D")):
                    # a sleep: the rest of __mmput() does not sleep (on PREEMPT_RT its
                    # spinlock_t waits are "D"); a kworker that ran mmput_async_fn()'s __mmput
                    # has no mmput() return to come ("I", idle, after its work)
                    open_mmputs.pop(e.prev_pid, None)
                if not e.prev_state.startswith("R"):
                    ix.rests.setdefault(e.prev_pid, []).append(e.line)
                    if config.PREEMPT_RT and e.prev_state.startswith("D"):
                        ix.lock_waits.add(e.line)
                else:
                    ix.preemptions.setdefault(e.prev_pid, []).append(e.line)
            elif isinstance(e, Probe) and e.function == FINISH:
                switching.discard(e.cpu)
            if isinstance(e, TlbFlush) and e.cr3_load:
                ix.cr3_loads.setdefault(e.cpu, []).append(e.line)
            if isinstance(e, TlbFlush) and not e.hardirq and e.pid > 0:
                if e.cpu in switching:
                    continue  # the CR3 load of a context switch, not the task's own flush
                ix.own_flushes.setdefault(e.pid, []).append(e.line)
                if "ipi send" in e.reason:
                    ix.ipi_sends.setdefault(e.pid, []).append(e.line)
            elif isinstance(e, ProcessExit):
                ix.exit_lines.setdefault(e.exit_pid, []).append(e.line)
            elif isinstance(e, ProcessExec):
                ix.exec_lines.setdefault(e.exec_pid, []).append(e.line)
            elif isinstance(e, HotplugStep):
                ix.hotplug_lines.setdefault(e.target_cpu, []).append(e.line)
                if e.function == "finish_cpu":
                    ix.finish_cpus.setdefault(e.target_cpu, []).append(e.line)
            if not isinstance(e, Probe):
                continue
            if e.function == EXIT_MMAP and e.returned:
                ix.mmput_returns.setdefault(e.pid, []).append(e.line)
                open_mmputs[e.pid] = (e.line, e.caller)
                continue  # exit_mmap returning (the marker of __mmput's end)
            if (ret := open_mmputs.get(e.pid)) is not None and kv.mmput_ended(e, ret[1]):
                del open_mmputs[e.pid]
                ix.mmput_ends[ret[0]] = e.line
                continue
            if e.function == EXIT_MMAP:
                open_mmputs.pop(e.pid, None)  # (an end the probe missed)
                ix.exit_mmaps.setdefault(address(e.args.get("mm")), []).append((e.line, e.pid))
                ix.exit_mmap_lines.setdefault(e.pid, []).append(e.line)
                if kv.ksm_keeps(e):
                    ix.ksm_kept.setdefault(address(e.args.get("mm")), []).append(e.line)
            elif e.function == KSM_REMOVE and e.args.get("mm_users") == "0":
                ksm_removes.setdefault(address(e.args.get("mm")), []).append(e.line)
            elif e.function == MMDROP:
                ix.drop_lines.setdefault(address(e.args.get("mm")), []).append(e.line)
            elif e.function == "mm_init":
                ix.use_mm_init = True
            elif e.function == SWITCH_MM and kv.outside_kind(e, efi) == "idle_task_exit":
                ix.offline_lines.setdefault(e.cpu, []).append(e.line)
            elif e.function == "__khugepaged_exit" and kv.khugepaged_keeps(e):
                ix.thp_kept.setdefault(address(e.args.get("mm")), []).append(e.line)
            elif e.function == SWITCH_MM and kv.outside_kind(e, efi) == "activate_mm":
                # (scoring only: a miss's cause, found afterwards from the probes)
                ix.activations.setdefault(e.pid, []).append(e.line)
                ix.activated[e.line] = address(e.args.get("next"))
        # KSM: a slot taken out just before the exit_mmap marker by ksmd or an unmerge,
        # preempted by the waiting __mmput before its mmdrop() (ksm_unlock_preemptions):
        # kept too, until the remover runs again
        unlocked = ksm_unlock_preemptions(events) if inputs == "markers" and preemptible else {}
        for line, (_, addr, _) in unlocked.items():
            if line not in (kept := ix.ksm_kept.setdefault(addr, [])):
                bisect.insort(kept, line)
        # the releases of the slots KSM kept (ksm_releases, ksmd_releases)
        starts = [line for line, _, _ in ksmd_runs]
        for addr, kept in ix.ksm_kept.items():
            removes = ksm_removes.get(addr, [])
            for line in kept:
                if line in unlocked:
                    continue  # (below)
                after = removes[bisect.bisect_right(removes, line) :]
                ours = [r for r in after if ix.same_life(addr, line, r)]
                ix.ksm_releases.update(ours[-1:])
                if ours:
                    continue
                i = bisect.bisect_right(starts, line)
                if i and ksmd_ends.get(starts[i - 1], line + 1) > line:  # ksmd is running
                    at, run = ksmd_ends.get(starts[i - 1]), ksmd_runs[i - 1]
                elif i < len(starts):
                    at, run = starts[i], ksmd_runs[i]
                else:
                    continue  # ksmd did not run again within the trace
                if at is not None and ix.same_life(addr, line, at):
                    ix.ksmd_releases[at] = (run[2], addr)
        for pid, addr, back in unlocked.values():
            if back is not None:
                ix.ksmd_releases[back] = (pid, addr)
        if inputs == "markers":
            # with the births a fork's flush is known exactly: its first line (where the
            # IPIs went out), not the last own flush before task_newtask (its local part)
            forks, ix.failed_forks, unflushed = marked_fork_flushes(events, ix.use_mm_init)
            hinted = {nt.line: line for line, nt in ix.fork_hints.items()}
            for line, nt in forks.items():
                if nt.line in hinted:
                    del ix.fork_hints[hinted[nt.line]]
                ix.fork_hints[line] = nt
            for nt_line in unflushed:  # (tracepoints alone: an older flush of the parent's)
                hint = ix.fork_hints.get(hinted.get(nt_line, -1))
                if hint is not None and hint.line == nt_line:
                    del ix.fork_hints[hinted[nt_line]]
        return ix
