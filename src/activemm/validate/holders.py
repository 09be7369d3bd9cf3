"""References to an mm held outside the scheduler, which no scheduler event shows: io_uring's
ctx->mm_account, a userfaultfd's ctx->mm, binder's alloc->mm, KVM's kvm->mm, the OOM killer's
signal->oom_mm, an open /proc/PID file's, process_mrelease()'s and __set_oom_adj()'s (a
syscall's own, dropped before it returns), and khugepaged's and KSM's mm_slot references
that outlive __mmput(). Each is a list of holders per mm address: the model takes a
holder's reference (mmgrab) where its marker shows the kernel path that took it and drops it
(mmdrop) where the path that releases it ran, and the scorer places a kernel __mmdrop after
such a release at that release's point. A mixin of the Validator (core.py),
which owns the state besides these lists; MarkerSteps (markers.py) builds on it."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from activemm.errors import OperationError
from activemm.model import Machine
from activemm.model.state import Mm
from activemm.trace.events import Probe, SchedSwitch, TraceEvent
from activemm.trace.replay import Replayer
from activemm.validate import kernel as kv
from activemm.validate.kernel import BINDER_RELEASE, KSM_REMOVE, KSMD, address
from activemm.validate.score import Result

if TYPE_CHECKING:
    from activemm.validate.index import TraceIndex

# the smallest ERR_PTR(): a pointer return at or above it is an error (-MAX_ERRNO..-1)
ERR_PTR_MIN = (1 << 64) - 4095

# the writes of /proc/PID files that run __set_oom_adj(): their returns follow its mmdrop()
OOM_ADJ_WRITES = ("oom_score_adj_write", "oom_adj_write")
# the releases of /proc/PID files whose open took an mm with proc_mem_open()
PROC_RELEASES = ("mem_release", "pagemap_release", "proc_map_release", "smaps_rollup_release")
UFFD_FEATURE_EVENT_FORK = 1 << 1  # include/uapi/linux/userfaultfd.h


@dataclass
class Context:
    """The trace event the model is being driven by."""

    kind: str = "boot"  # switch | exec | exit | fork | marker | resync ...
    line: int = 0
    cpu: int = 0
    pid: int = 0


class HolderSteps:
    """The references held outside the scheduler; the Validator provides the state below."""

    m: Machine
    replayer: Replayer
    result: Result
    inputs: str
    ctx: Context
    index: TraceIndex  # the trace's lines by CPU, pid and mm address
    addr: dict[int, int]  # model mm id -> kernel address
    live: dict[int, Mm]  # kernel address -> the model mm of the life in progress
    anchor: dict[int, tuple[object, ...]]  # CPU -> where a kernel __mmdrop there would be
    mmput_open: dict[int, int]  # mm address -> pid running its exit_mmap
    # pid -> the release it is in (its point, the mm address whose mmdrop() follows, and
    # its marker's line)
    releasing: dict[int, tuple[str, int, int]]
    # exit_mmap marker line -> (line, pid) of the proc_mem_open() returns whose file's
    # reference that __mmput came after (markers.proc_opens_around_mmput)
    proc_ahead: dict[int, list[tuple[int, int]]]

    def _a(self, mm: Mm | None) -> int:
        """The kernel address the model mm is bound to (0 for NULL, -1 when unbound)."""
        if mm is None:
            return 0
        return self.addr.get(mm.id, -1)

    def _holders_begin(self, events: list[TraceEvent]) -> None:
        """No reference held yet: the holders of each kind, by mm address."""
        self.rings: dict[int, list[str]] = {}  # io_uring rings' ctx->mm_account
        self.oom_mms: dict[int, list[str]] = {}  # signal->oom_mm of OOM victims
        self.proc_files: dict[int, list[str]] = {}  # open /proc/PID files
        # a syscall's own reference, taken and dropped before it returns (process_mrelease(),
        # __set_oom_adj()): the holders by mm address, and by pid the one a task is in
        # (its point, the mm address, the holder)
        self.in_syscall: dict[int, list[str]] = {}
        self.in_syscall_of: dict[int, tuple[str, int, str]] = {}
        self.uffds: dict[int, list[str]] = {}  # userfaultfd contexts' ctx->mm
        # a forked mm's address -> the fork-event contexts dup_userfaultfd() made for it
        # (by parent context), taken when its fork is done (task_newtask)
        self.uffd_forks: dict[int, dict[int, Probe]] = {}
        self.binders: dict[int, list[str]] = {}  # binder procs' alloc->mm
        self.binder_allocs: dict[int, int] = {}  # binder_alloc address -> its mm's address
        # captures with the return of binder_alloc_deferred_release() (binderdone), right
        # after its mmdrop(): pid in that release -> the mm address and the model's holder
        self.binder_returns = any(
            isinstance(e, Probe) and e.function == BINDER_RELEASE and e.returned for e in events
        )
        self.binder_ending: dict[int, tuple[int, str | None]] = {}
        self.kvms: dict[int, list[str]] = {}  # KVM VMs' kvm->mm
        self.kvm_vms: dict[int, int] = {}  # struct kvm address -> its mm's address
        self.kvm_creating: dict[int, int] = {}  # pid -> the VM its kvm_create_vm() makes
        self.kvm_destroying: dict[int, int] = {}  # pid -> the VM its kvm_destroy_vm() frees
        self.thp_slots: dict[int, list[str]] = {}  # khugepaged's mm_slot reference
        self.ksm_slots: dict[int, list[str]] = {}  # KSM's mm_slot reference
        self.async_drops: dict[int, int] = {}  # mm address -> pid whose mmdrop_async() ran
        # exit_mmap and __khugepaged_exit markers that keep a reference (index.ksm_kept,
        # thp_kept) the model took ahead (an exec's old mm)
        self.taken_ahead: set[int] = set()

    def _holder_probe(self, p: Probe) -> bool:
        """Follow `p` if it marks a kernel path that takes or releases a reference held
        outside the scheduler (a reference's marker is followed with markers only; where a
        release's mmdrop() comes, both modes); False when it marks none of them."""
        f = p.function
        if f == "__x64_sys_io_uring_setup" and self.inputs == "markers":
            self._refusable(self._ring_setup, p)
        elif f == "io_destroy_buffers" and self.inputs == "markers":
            self._refusable(self._ring_free, p)
        elif f == "proc_mem_open" and p.returned and self.inputs == "markers":
            self._refusable(self._proc_open, p)
        elif f in PROC_RELEASES:
            self._release(p, self.proc_files, "proc_release")
        elif f == "pidfd_get_task" and p.returned and "process_mrelease" in (p.caller or ""):
            self._refusable(self._mrelease_grab, p)
        elif f == "__x64_sys_process_mrelease" and p.returned:
            self._syscall_drop(p, "process_mrelease")
        elif f == "find_lock_task_mm" and p.returned and kv.sets_oom_adj(p):
            self._refusable(self._oom_adj_grab, p)
        elif f in OOM_ADJ_WRITES and p.returned:
            self._syscall_drop(p, "__set_oom_adj")
        elif f == "new_userfaultfd" and self.inputs == "markers":
            self._refusable(self._uffd_new, p)
        elif f == "dup_userfaultfd" and self.inputs == "markers":
            self._uffd_dup(p)
        elif f == "userfaultfd_release":  # userfaultfd_ctx_put() mmdrop()s ctx->mm
            self._uffd_abandoned(p)
            self._release(p, self.uffds, "uffd_release")
        elif f == "binder_alloc_init":
            self._binder_open(p)
        elif f == BINDER_RELEASE and p.returned:
            self._binder_released(p)
        elif f == BINDER_RELEASE:
            self._binder_release(p)
        elif f == "kvm_arch_init_vm":
            self._kvm_create(p)
        elif f == "preempt_notifier_inc":
            self._kvm_created(p)
        elif f == "kvm_arch_destroy_vm":
            self._kvm_destroy(p)
        elif f == "preempt_notifier_dec" and p.returned:
            self._kvm_destroyed(p)
        elif f == "__khugepaged_exit" and self.inputs == "markers":
            self._refusable(self._thp_exit, p)
        elif f == "collect_mm_slot" and p.args.get("mm_users") == "0":
            self._release(p, self.thp_slots, "khugepaged")  # the slot goes, and its mmdrop()
        elif f == KSM_REMOVE and p.line in self.index.ksm_releases:
            self._release(p, self.ksm_slots, "ksm")  # the slot goes, and its mmdrop()
        elif f == "mark_oom_victim" and self.inputs == "markers":
            self._refusable(self._oom_victim, p)
        elif f == "__put_task_struct" and self.inputs == "markers":
            self._refusable(self._put_signal, p)
        else:
            return False
        return True

    def _grab_held(
        self, held: dict[int, list[str]], mm: Mm, holder: str, p: TraceEvent, learned: str
    ) -> None:
        """A reference no scheduler event shows, taken where marker `p` ran (`learned` says
        what it is): the model takes it, as `holder`, listed under mm's address in `held`."""
        self.ctx = Context(p.function if isinstance(p, Probe) else "exec", p.line, p.cpu, p.pid)
        self.m.mmgrab(mm, holder, p.cpu)
        held.setdefault(self.addr.get(mm.id, -1), []).append(holder)
        self.result.learned[learned] += 1

    def _kept_ahead(self, mm: Mm | None, ev: TraceEvent) -> None:
        """An exec's __mmput of its old mm (the exec puts its last real user), which the
        model runs at once: a reference that outlives that __mmput but shows only at a
        marker later in it is taken now, not at the marker, by which time the model would
        have freed the mm. Two such: khugepaged's when its scan cursor rests on the mm (a
        __khugepaged_exit marker that keeps it follows, before that address's next
        __mmdrop), and KSM's when __ksm_exit() left the mm's slot for ksmd (the exit_mmap
        marker that follows finds MMF_VM_MERGEABLE)."""
        if mm is None or (addr := self.addr.get(mm.id)) is None:
            return
        for kept, held, holder, marker in (
            (self.index.thp_kept, self.thp_slots, "khugepaged", "__khugepaged_exit marker"),
            (self.index.ksm_kept, self.ksm_slots, "KSM", "exit_mmap marker's flags"),
        ):
            lines = kept.get(addr, [])
            i = bisect.bisect_right(lines, ev.line)
            if i == len(lines) or not self.index.same_life(addr, ev.line, line := lines[i]):
                continue
            self.taken_ahead.add(line)
            learned = f"{holder}'s reference outliving an exec's __mmput ({marker})"
            self._grab_held(held, mm, f"{holder}'s mm_slot (line {line})", ev, learned)

    def _refusable(self, fn: Any, *args: Any) -> None:
        """A marker asks for something the model's state does not allow (it lost track of
        the trace): count it, as the replay does, and go on."""
        try:
            fn(*args)
        except OperationError as e:
            self.result.anomalies[f"refused: {str(e).split(':')[0]}"] += 1

    def _drop_held(self, held: dict[int, list[str]], addr: int, point: str, p: Probe) -> bool:
        """The kernel path `point` drops one of the references `held` lists for the mm at
        `addr`: so does the model, there. False when it holds none."""
        holder = self._holder_of(held, addr)
        if holder is None:
            return False
        self._drop_holder(held, addr, holder, point, p)
        return True

    def _drop_holder(
        self, held: dict[int, list[str]], addr: int, holder: str, point: str, p: Probe
    ) -> None:
        """The kernel path `point` (its marker `p`) drops `holder`, one of the references
        `held` lists for the mm at `addr`: so does the model, there."""
        held[addr].remove(holder)
        self.ctx = Context(point, p.line, p.cpu, p.pid)
        self.m.mmdrop(holder, p.cpu)

    def _release_returned(self, p: Probe, point: str) -> None:
        """p.pid's release at `point` returned, right after its mmdrop(): a kernel __mmdrop
        by that task from here on is not that release's (its mmdrop() was not the last)."""
        if self.releasing.get(p.pid, ("",))[0] == point:
            del self.releasing[p.pid]

    def _holder_of(self, held: dict[int, list[str]], addr: int) -> str | None:
        """One of the references `held` lists for the mm at `addr`, or None: only a
        reference to the life of the address a model mm stands for now (one left over from
        an earlier life, after the model lost track, is not this one)."""
        mm = self.live.get(addr)
        of_mm = {h.name for h in self.m.state.holders if h.mm is mm}
        return next((h for h in held.get(addr, []) if h in of_mm), None)

    def _grab_current(self, held: dict[int, list[str]], what: str, marker: str, p: Probe) -> None:
        """Marker `p` is a kernel path that mmgrab()s current->mm (`what` holds it), a
        reference no scheduler event shows. The model takes it."""
        t = self.m.state.rqs[p.cpu].curr
        if t.mm is None or t.pf_kthread:
            return
        holder = f"{what} of pid {p.pid} (line {p.line})"
        self._grab_held(held, t.mm, holder, p, f"{what} ({marker} marker)")

    def _ring_setup(self, p: Probe) -> None:
        """io_uring_setup() entered: io_uring_create() mmgrab()s current->mm into the new
        ring's ctx->mm_account."""
        self._grab_current(self.rings, "io_uring ctx->mm_account", "io_uring_setup", p)

    def _uffd_new(self, p: Probe) -> None:
        """new_userfaultfd() entered (the userfaultfd() syscall, or /dev/userfaultfd on
        6.12): it mmgrab()s current->mm into the new context's ctx->mm, held until the
        file's last reference goes (fs/userfaultfd.c)."""
        self._grab_current(self.uffds, "userfaultfd ctx->mm", "new_userfaultfd", p)

    def _uffd_dup(self, p: Probe) -> None:
        """dup_userfaultfd(vma) during a fork's dup_mmap: when the parent VMA's context
        (`octx`) asked for UFFD_FEATURE_EVENT_FORK, the first VMA of each such context gets
        the child its own context, which mmgrab()s the child's mm (`mm`) until the file the
        monitor receives it as is released (fs/userfaultfd.c). The reference is taken when
        the fork is done, at its task_newtask (_uffd_fork_grabs): the fork may wait for the
        monitor until then, and give the context up (_uffd_abandoned)."""
        octx = address(p.args.get("octx"))
        if octx == 0 or not int(p.args.get("features") or "0", 0) & UFFD_FEATURE_EVENT_FORK:
            return
        self.uffd_forks.setdefault(address(p.args.get("mm")), {}).setdefault(octx, p)

    def _uffd_fork_grabs(self, child_pid: int) -> None:
        """The fork of child_pid is done (task_newtask): the fork-event contexts made for the
        child's mm, not abandoned meanwhile (_uffd_abandoned), hold it; so does the model."""
        child = self.replayer.tasks.get(child_pid)
        mm = child.mm if child is not None else None
        if mm is None or mm.freed:
            return
        for p in self.uffd_forks.pop(self._a(mm), {}).values():
            holder = f"userfaultfd fork-event ctx->mm (line {p.line})"
            learned = "userfaultfd ctx->mm of a fork event (dup_userfaultfd marker)"
            self._grab_held(self.uffds, mm, holder, p, learned)

    def _uffd_abandoned(self, p: Probe) -> None:
        """userfaultfd_release() of a context (`ctx`) while forks it sent fork events for
        wait for its monitor: userfaultfd_event_wait_completion() gives up and puts the
        child's new context in the forking task (an mmdrop() of the child's mm, never its
        last: the child's own reference stands), so the fork-event contexts of forks not
        replayed yet are not taken. (A monitor that read the event just before the release
        delivered the context; that order no input shows.)"""
        ctx = address(p.args.get("ctx"))
        for addr in [a for a, made in self.uffd_forks.items() if ctx in made]:
            del self.uffd_forks[addr][ctx]
            if not self.uffd_forks[addr]:
                del self.uffd_forks[addr]
            self.result.learned["userfaultfd fork event abandoned (userfaultfd_release)"] += 1

    def _release(
        self, p: Probe, held: dict[int, list[str]], point: str, addr: int | None = None
    ) -> None:
        """A file's release (`p`) whose mmdrop() of the reference its open took (the mm at
        `addr`, by default the `mm` argument) follows: a kernel __mmdrop next on this CPU is
        at `point`; with markers the model drops one of the references `held` lists there
        too."""
        if addr is None:
            addr = address(p.args.get("mm"))
        self._open_release(p, point, addr)
        if self.inputs == "markers":
            self._refusable(self._drop_held, held, addr, point, p)

    def _object_grab(
        self,
        p: Probe,
        key: str,
        pairs: dict[int, int],
        held: dict[int, list[str]],
        what: str,
        marker: str,
    ) -> None:
        """A module's marker `p` (of the kernel path `marker`) of a kernel object (its
        address the `key` argument) that mmgrab()s current->mm for the object's life: the
        object's address is paired with the mm's, and with markers the model takes the
        reference (`what` holds it)."""
        t = self.m.state.rqs[p.cpu].curr
        if self.replayer.tasks.get(p.pid) is not t or t.mm is None or t.pf_kthread:
            return
        pairs[address(p.args.get(key))] = self._a(t.mm)
        if self.inputs == "markers":
            self._refusable(self._grab_current, held, what, marker, p)

    def _object_release(
        self, p: Probe, obj: int, pairs: dict[int, int], held: dict[int, list[str]], point: str
    ) -> None:
        """A module's marker `p` of the teardown of the object at `obj`, paired by
        _object_grab: an mmdrop() of the mm it took follows (at `point`)."""
        addr = pairs.pop(obj, None)
        if addr is not None:
            self._release(p, held, point, addr)

    def _binder_open(self, p: Probe) -> None:
        """binder_alloc_init(alloc) entered (binder_open(), drivers/android/binder.c): it
        mmgrab()s current->mm into alloc->mm, held until the proc's deferred release, after
        the file's last reference went. With markers the model takes it."""
        self._object_grab(
            p, "alloc", self.binder_allocs, self.binders, "binder alloc->mm", "binder_open"
        )

    def _binder_release(self, p: Probe) -> None:
        """binder_alloc_deferred_release(alloc) entered (binder_free_proc(), once the file's
        release queued the proc's teardown: in a kworker's binder_deferred_func(), or in a
        task that put the proc's last temporary reference): its end mmdrop()s alloc->mm, the
        mm its binder_alloc_init() took (paired by the alloc address), after freeing the
        proc's buffers and pages under alloc->mutex (whose mutex_lock() may reschedule: the
        task can be preempted in between). With the function's return marked too
        (binderdone), the model's mmdrop() waits for it (_binder_released); without, it is
        here."""
        alloc = address(p.args.get("alloc"))
        if not self.binder_returns:
            self._object_release(p, alloc, self.binder_allocs, self.binders, "binder_release")
            return
        addr = self.binder_allocs.pop(alloc, None)
        if addr is None:
            return
        self._open_release(p, "binder_release", addr)
        self.binder_ending[p.pid] = (addr, self._holder_of(self.binders, addr))

    def _binder_released(self, p: Probe) -> None:
        """binder_alloc_deferred_release() returned, right after its mmdrop() of alloc->mm
        (only a debug print in between): the model drops the reference there, by the
        holder's name (the kernel's __mmdrop, when that mmdrop() was the last, came before
        this marker and ended the address's life)."""
        addr, holder = self.binder_ending.pop(p.pid, (0, None))
        self._release_returned(p, "binder_release")
        if holder is None or holder not in self.binders.get(addr, []) or self.inputs != "markers":
            return
        self._refusable(self._drop_holder, self.binders, addr, holder, "binder_release", p)

    def _kvm_create(self, p: Probe) -> None:
        """kvm_arch_init_vm(kvm) entered (kvm_create_vm(), virt/kvm/kvm_main.c, under the
        KVM_CREATE_VM ioctl): kvm_create_vm() has just mmgrab()bed current->mm into kvm->mm,
        held until kvm_destroy_vm(). With markers the model takes it. The create is under
        way until this task's preempt_notifier_inc() (_kvm_created)."""
        self._object_grab(p, "kvm", self.kvm_vms, self.kvms, "KVM kvm->mm", "kvm_create_vm")
        self.kvm_creating[p.pid] = address(p.args.get("kvm"))

    def _kvm_created(self, p: Probe) -> None:
        """preempt_notifier_inc() entered: kvm_create_vm()'s last step, the VM is made."""
        self.kvm_creating.pop(p.pid, None)

    def _kvm_destroy(self, p: Probe) -> None:
        """kvm_arch_destroy_vm(kvm) entered. In a create under way (its error path), the
        mmdrop() of the creator's mm follows at once; from kvm_destroy_vm() (the VM's last
        reference put: its fd's or a vCPU fd's release, or the exit_files() of a task
        holding one), it comes after the VM is freed, marked by the return of this task's
        preempt_notifier_dec() (_kvm_destroyed)."""
        kvm = address(p.args.get("kvm"))
        if self.kvm_creating.get(p.pid) == kvm:
            del self.kvm_creating[p.pid]
            self._object_release(p, kvm, self.kvm_vms, self.kvms, "kvm_destroy_vm")
        else:
            self.kvm_destroying[p.pid] = kvm

    def _kvm_destroyed(self, p: Probe) -> None:
        """preempt_notifier_dec() returned, in kvm_destroy_vm() right before
        hardware_disable_all() and the mmdrop() of kvm->mm (paired by the task with the
        kvm_arch_destroy_vm() it ran first)."""
        kvm = self.kvm_destroying.pop(p.pid, None)
        if kvm is not None:
            self._object_release(p, kvm, self.kvm_vms, self.kvms, "kvm_destroy_vm")

    def _thp_exit(self, p: Probe) -> None:
        """__khugepaged_exit(mm), early in __mmput (mm/khugepaged.c): the reference
        __khugepaged_enter() mmgrab()bed when the mm first had a region fit for huge pages is
        dropped right there, unless khugepaged's scan cursor rests on this mm (`slot_mm`):
        then it stays until a later pass of khugepaged finds mm_users at 0
        (collect_mm_slot). Only then does the model take it: taken at __khugepaged_enter and
        dropped here, it would change no count anyone sees (__mmput's own reference on
        mm_count outlasts it)."""
        addr = address(p.args.get("mm"))
        if not kv.khugepaged_keeps(p) or p.line in self.taken_ahead:
            return
        mm = self.live.get(addr)
        if mm is None or mm.freed:
            return
        holder = f"khugepaged's mm_slot (line {p.line})"
        learned = "khugepaged's reference outliving __mmput (__khugepaged_exit marker)"
        self._grab_held(self.thp_slots, mm, holder, p, learned)

    def _ksm_exit(self, p: Probe) -> None:
        """exit_mmap(mm) finds MMF_VM_MERGEABLE still set (kv.ksm_keeps): __ksm_exit(), run
        just before by __mmput (mm/ksm.c), left the mm's slot on ksmd's list, and with it
        the reference __ksm_enter() mmgrab()bed when the mm first had a mergeable region
        (or was forked from one that had). ksmd's scan, or an unmerge, takes the slot out
        and mmdrop()s the mm once it finds mm_users at 0, right after removing the slot's
        last rmap_item (the remove_rmap_item_from_tree marker in self.index.ksm_releases; with
        none in the trace, the model holds it past the end, as the kernel does when ksmd
        stops with the slot on its list). Only then does the model take it: taken at
        __ksm_enter and dropped at __ksm_exit, it would change no count anyone sees.
        Also when ksmd or an unmerge, having taken the slot out, was preempted before its
        mmdrop() by this very __mmput, whatever the flag reads
        (markers.ksm_unlock_preemptions): the remover drops it when it next runs."""
        mm = self.live.get(address(p.args.get("mm")))
        if p.line in self.taken_ahead or mm is None or mm.freed:
            return
        holder = f"KSM's mm_slot (line {p.line})"
        learned = "KSM's reference outliving __mmput (exit_mmap marker's flags)"
        self._grab_held(self.ksm_slots, mm, holder, p, learned)

    def _ring_free(self, p: Probe) -> None:
        """io_destroy_buffers(ctx): io_ring_ctx_free() is about to mmdrop(ctx->mm_account)
        (the `mm` argument): the model drops the ring's reference there."""
        if self._drop_held(self.rings, address(p.args.get("mm")), "io_ring_ctx_free", p):
            self._open_release(p, "io_ring_ctx_free")

    def _ksmd_release(self, ev: SchedSwitch) -> None:
        """ksmd switched in after an exit_mmap that found KSM keeping the mm, with no
        rmap_item of it left to remove (or switched out, running when it was kept): its
        scan_get_next_rmap_item() takes the slot out and mmdrop()s the mm (mm/ksm.c), with
        no marker of its own; the model drops KSM's reference there."""
        pid, addr = self.index.ksmd_releases[ev.line]
        p = Probe(ev.line, ev.cpu, ev.ts, pid, KSMD, None, KSM_REMOVE, {"mm": f"{addr:#x}"})
        self._release(p, self.ksm_slots, "ksm")

    def _open_release(self, p: Probe, point: str, addr: int | None = None) -> None:
        """Task p.pid is in a release at `point` whose mmdrop() of the mm at `addr` (by
        default the `mm` argument) follows: a kernel __mmdrop next on this CPU, or later by
        this task wherever it ran meanwhile, is at that point. An __mmput of that mm this
        task ran is over by then (no release runs inside one: exit_mmap()'s fput()s are
        deferred), whose own mmdrop() was not the last (a KVM VM's fd closed by exit_files()
        after exit_mm())."""
        if addr is None:
            addr = address(p.args.get("mm"))
        self.anchor[p.cpu] = (point, p.pid)
        self.releasing[p.pid] = (point, addr, p.line)
        if self.mmput_open.get(addr) == p.pid:
            del self.mmput_open[addr]

    def _oom_victim(self, p: Probe) -> None:
        """mark_oom_victim(tsk) entered: when tsk->signal->oom_mm is still NULL (the `oom_mm`
        argument) it becomes tsk->mm and is mmgrab()bed, a reference for the signal_struct's
        life that no scheduler event shows. The model takes it."""
        mm = self.live.get(address(p.args.get("mm")))
        if address(p.args.get("oom_mm")) != 0 or mm is None or mm.freed:
            return
        holder = f"signal->oom_mm of pid {p.args.get('t_pid')} (line {p.line})"
        self._grab_held(
            self.oom_mms, mm, holder, p, "OOM victim's signal->oom_mm (mark_oom_victim marker)"
        )

    def _put_signal(self, p: Probe) -> None:
        """__put_task_struct(tsk) with tsk->signal->sigcnt at 1: put_signal_struct() frees the
        signal_struct, whose free_signal_struct() mmdrop_async()s its oom_mm. The model drops
        the reference there; when it is the last, the kernel's __mmdrop runs a little later
        in a kworker (mmdrop_async_fn)."""
        addr = address(p.args.get("oom_mm"))
        if p.args.get("sigcnt") == "1" and self._drop_held(self.oom_mms, addr, "mmdrop_async", p):
            self.async_drops[addr] = p.pid

    def _proc_open(self, p: Probe) -> None:
        """proc_mem_open() returned the mm it mmgrab()bed for a /proc/PID file being opened
        (mem, environ, auxv, maps, smaps, pagemap...): held until the file's release, a
        reference no scheduler event shows. The model takes it."""
        mm = self.live.get(address(p.args.get("ret")))
        if mm is None or mm.freed or p.line in self.taken_ahead:
            return  # NULL, an error, an mm the model does not know, or taken already
        holder = f"/proc file opened by pid {p.pid} (line {p.line})"
        self._grab_held(
            self.proc_files, mm, holder, p, "open /proc/PID file (proc_mem_open marker)"
        )

    def _proc_open_ahead(self, p: Probe, addr: int) -> None:
        """exit_mmap marker `p` is an __mmput that came after the mmgrab() of a /proc file
        whose proc_mem_open() returns only later (proc_opens_around_mmput: its own mmput()
        ran this __mmput, or it was preempted before returning while the last user put the
        mm): the model takes each such file's reference now, before that __mmput, and not
        at the return."""
        mm = self.live.get(addr)
        if mm is None or mm.freed:
            return
        for opened, pid in self.proc_ahead[p.line]:
            self.taken_ahead.add(opened)
            holder = f"/proc file opened by pid {pid} (line {opened})"
            learned = (
                "open /proc/PID file whose mm_access() reference was the last (ahead)"
                if pid == p.pid
                else "open /proc/PID file returning after the mm's __mmput (ahead)"
            )
            self._grab_held(self.proc_files, mm, holder, p, learned)

    def _mrelease_grab(self, p: Probe) -> None:
        """pidfd_get_task() returned to process_mrelease() the process (its leader's pid,
        `t_pid`) whose mm the syscall mmgrab()s next (mm/oom_kill.c), the mm of a thread of
        it that has one (find_lock_task_mm()): when the victim's whole exit runs meanwhile,
        the syscall's mmdrop() is the last. Which mm that is, is the model's: its task of
        that process still with an mm (an error, or no thread with an mm left: nothing
        taken)."""
        if not 0 < address(p.args.get("ret")) < ERR_PTR_MIN:
            return
        leader = self.replayer.tasks.get(int(p.args.get("t_pid") or "0", 0))
        if leader is None or leader.pf_kthread:
            return
        group = (t for t in self.m.state.tasks if t.tgid == leader.tgid)
        mm = next((t.mm for t in group if t.mm is not None and not t.mm.freed), None)
        if mm is not None:
            what = "process_mrelease()"
            learned = "process_mrelease's mmgrab (pidfd_get_task marker)"
            self._syscall_grab(p, "process_mrelease", mm, what, learned)

    def _oom_adj_grab(self, p: Probe) -> None:
        """find_lock_task_mm() returned to __set_oom_adj() (a write of /proc/PID/oom_score_adj
        or oom_adj) a thread of the process with its mm (`mm`), which has MMF_MULTIPROCESS
        (kv.sets_oom_adj: processes of their own share it, clone(CLONE_VM) without
        CLONE_THREAD or CLONE_VFORK): fs/proc/base.c mmgrab()s it, walks every process to
        give those sharing it the same value, and mmdrop()s it before the write returns;
        when the mm's last users exit and its lazy CPUs let go during the walk, that
        mmdrop() is the last."""
        mm = self.live.get(address(p.args.get("mm")))
        if mm is not None and not mm.freed:
            what = "__set_oom_adj()"
            learned = "__set_oom_adj's mmgrab of an mm processes share (find_lock_task_mm marker)"
            self._syscall_grab(p, "__set_oom_adj", mm, what, learned)

    def _syscall_grab(self, p: Probe, point: str, mm: Mm, what: str, learned: str) -> None:
        """Task p.pid, in the syscall path `point`, mmgrab()s `mm` (`what` holds it) and
        mmdrop()s it before it returns (_syscall_drop): a kernel __mmdrop of it by this task
        from here is at `point`; with markers the model takes the reference. (A task is in
        one syscall at a time: one it was still in returned unseen, a return probe's missed
        hit, and is dropped first.)"""
        addr = self.addr.get(mm.id)
        if addr is None:
            return
        if p.pid in self.in_syscall_of:
            self._syscall_drop(p, self.in_syscall_of[p.pid][0])
        holder = f"{what} of pid {p.pid} (line {p.line})"
        self.in_syscall_of[p.pid] = (point, addr, holder)
        self.releasing[p.pid] = (point, addr, p.line)
        if self.inputs == "markers":
            self._grab_held(self.in_syscall, mm, holder, p, learned)

    def _syscall_drop(self, p: Probe, point: str) -> None:
        """The syscall path `point` of task p.pid returned, right after its mmdrop() of the
        mm it took (_syscall_grab): the model drops it there (by the holder's name: the
        kernel's __mmdrop, when that mmdrop() was the last, came before this marker and
        ended the address's life)."""
        taken = self.in_syscall_of.get(p.pid)
        if taken is None or taken[0] != point:
            return
        del self.in_syscall_of[p.pid]
        _, addr, holder = taken
        self._release_returned(p, point)
        if self.inputs == "markers" and holder in self.in_syscall.get(addr, []):
            self._refusable(self._drop_holder, self.in_syscall, addr, holder, point, p)
