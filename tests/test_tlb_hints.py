"""Replay of what x86's tlb_flush lines tell (trace.hints): TLB flushes of an mm, text_poke()
and EFI calls. Hand-made timelines whose expected costs follow from the kernel's rules
(arch/x86/mm/tlb.c), and the committed captures, whose CR3 loads the kernel counted itself."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from activemm import PRESETS
from activemm.metrics import Metrics
from activemm.trace import read_trace
from activemm.trace.events import MmFlush, TempMmLoads, TlbFlush
from activemm.trace.hints import tlb_hints
from activemm.trace.replay import load_task_snapshot, replay

from .helpers import ROOT, cli, read_lines, replay_lines

CAPTURES = ROOT / "tests" / "data" / "captures"


def line(comm: str, pid: int, cpu: int, ts: float, body: str, flags: str = "d..2.") -> str:
    """A tracefs line with the irq-info column (`h`: in a hardirq)."""
    return f"{comm}-{pid} [{cpu:03d}] {flags} {ts:.6f}: {body}"


def switch(cpu: int, ts: float, prev: tuple[str, int], nxt: tuple[str, int], s: str = "S") -> str:
    (pc, pp), (nc, np) = prev, nxt
    return line(
        pc if pp else "<idle>",
        pp,
        cpu,
        ts,
        f"sched_switch: prev_comm={pc} prev_pid={pp} prev_prio=120 prev_state={s} ==> "
        f"next_comm={nc} next_pid={np} next_prio=120",
    )


def tlb(
    comm: str, pid: int, cpu: int, ts: float, reason: str, flags: str = "d..2.", pages: int = -1
) -> str:
    code = {"flush on task switch": 0, "remote shootdown": 1, "local mm shootdown": 3}
    code["remote ipi send"] = 4
    body = f"tlb_flush: pages:{pages} reason:{reason} ({code[reason]})"
    return line(comm, pid, cpu, ts, body, flags)


IDLE0, IDLE1, APP, THREAD = ("swapper/0", 0), ("swapper/1", 0), ("app", 10), ("app", 11)

# app (pid 10) on CPU 0 makes a thread (11), which runs on CPU 1 and sleeps: CPU 1's idle
# task borrows app's mm lazily.
START = [
    switch(0, 1.0000, IDLE0, APP, "R"),
    line("app", 10, 0, 1.0001, "task_newtask: pid=11 comm=app clone_flags=3d0f00 oom_score_adj=0"),
    switch(1, 1.0002, IDLE1, THREAD, "R"),
    switch(1, 1.0003, THREAD, IDLE1),
]


def _replay(lines: list[str], preset: str = "linux-6.1-x86_64") -> Metrics:
    r = replay_lines(lines, preset, 2)
    assert not any(k.startswith(("refused", "resynchronised")) for k in r.stats.anomalies)
    return r.metrics


def test_a_munmap_flush_reaches_the_lazy_cpu_only_when_page_tables_were_freed() -> None:
    """app unmaps (a full flush with IPIs: CPU 1 is in its mm_cpumask), then its thread runs
    again on CPU 1. native_flush_tlb_multi() IPIs a lazy CPU only when page tables were freed,
    which the trace shows by that CPU's CR3 load of init_mm in a hardirq (flush_tlb_func());
    otherwise CPU 1 is skipped and, its TLB generation stale, switch_mm_irqs_off() reloads
    CR3 with a flush when the thread comes back ("TLB contents went out of date while we were
    in lazy mode")."""
    send = [
        tlb("app", 10, 0, 1.0010, "remote ipi send", "...1."),
        tlb("app", 10, 0, 1.0011, "local mm shootdown"),
    ]
    lazy_ipi = [tlb("<idle>", 0, 1, 1.0012, "flush on task switch", "d.h1.")]
    end = [switch(0, 1.0020, APP, IDLE0), switch(1, 1.0030, IDLE1, THREAD, "R")]
    plain = _replay(START + end)
    skipped = _replay(START + send + end)
    freed = _replay(START + send + lazy_ipi + end)
    assert plain.flush_ipis == skipped.flush_ipis == 0 and freed.flush_ipis == 1
    assert skipped.cr3_loads == plain.cr3_loads + 1  # the stale lazy CPU's reload
    assert skipped.cr3_flushes == plain.cr3_flushes + 1
    assert freed.cr3_loads == plain.cr3_loads + 2  # init_mm in the IPI, app's mm again


def test_a_forks_dup_mmap_flush_is_the_forks_own_not_a_second_one() -> None:
    """dup_mmap() ends with flush_tlb_mm() of the parent's mm; the trace shows it (IPIs to
    CPU 1, where the thread runs: a "remote shootdown" there) before task_newtask. The
    kernel flushed once: the replay sends one IPI, as when the trace has no tlb_flush line
    at all (the model's fork makes the flush), not two."""
    running = [switch(1, 1.0004, IDLE1, THREAD, "R")]
    flush = [
        tlb("app", 10, 0, 1.0010, "remote ipi send", "...1."),
        tlb("app", 10, 0, 1.0011, "local mm shootdown"),
        tlb("app", 11, 1, 1.0012, "remote shootdown", "d.h1."),
    ]
    fork = [line("app", 10, 0, 1.0013, "task_newtask: pid=12 comm=app clone_flags=1200011 x=0")]
    without = _replay(START + running + fork)
    with_lines = _replay(START + running + flush + fork)
    assert without.flush_ipis == with_lines.flush_ipis == 1
    munmap = _replay(START + running + flush)  # the same flush without a fork
    assert munmap.flush_ipis == 1


def test_a_flush_of_another_tasks_mm_is_told_by_the_cpus_it_reached() -> None:
    """A task that flushes an mm it does not run (clear_refs, uprobes, page migration) sends
    IPIs with no local part; the CPUs whose handlers left a line tell which mm: here CPU 1,
    running app's thread. With no such line the mm is unknown and nothing is replayed."""
    running = [switch(1, 1.0004, IDLE1, THREAD, "R"), switch(0, 1.0005, APP, ("reader", 20))]
    send = [tlb("reader", 20, 0, 1.0010, "remote ipi send", "...1.")]
    handled = [tlb("app", 11, 1, 1.0011, "remote shootdown", "d.h1.")]
    went_on = [switch(0, 1.0020, ("reader", 20), IDLE0)]
    assert _replay(START + running + send + handled + went_on).flush_ipis == 1
    assert _replay(START + running + send + went_on).flush_ipis == 0


def test_a_vhost_worker_takes_its_owners_mm_at_its_own_cr3_load() -> None:
    """6.1's vhost worker is a kernel thread named "vhost-<owner pid>" whose vhost_worker()
    begins with kthread_use_mm(dev->mm): its own CR3 load outside a switch. From there it
    runs on the owner's mm like a user task: back on CPU 1 after another process ran there,
    its switch loads CR3 again (the kernel's line says so). Each switch then loads CR3 where
    the kernel's did; without the rule the worker stays a plain kernel thread that borrows
    the other process's mm and loads nothing."""
    qemu, kthreadd, worker, sh = ("qemu", 60), ("kthreadd", 2), ("vhost-60", 61), ("sh", 70)
    lines = [
        switch(0, 1.0000, IDLE0, qemu, "R"),
        tlb("<idle>", 0, 0, 1.0001, "flush on task switch"),
        switch(1, 1.0002, IDLE1, kthreadd, "R"),
        line("kthreadd", 2, 1, 1.0003, "task_newtask: pid=61 comm=kthreadd clone_flags=800711 x=0"),
        switch(1, 1.0004, kthreadd, IDLE1),
        switch(1, 1.0010, IDLE1, worker, "R"),
        tlb("vhost-60", 61, 1, 1.0011, "flush on task switch", "d..1."),  # kthread_use_mm
        switch(1, 1.0012, worker, IDLE1),  # idle borrows qemu's mm: no load
        switch(1, 1.0013, IDLE1, worker, "R"),  # the same mm: no load
        switch(1, 1.0020, worker, sh, "R"),
        tlb("vhost-60", 61, 1, 1.0021, "flush on task switch"),  # sh's mm
        switch(1, 1.0030, sh, worker, "S"),
        tlb("sh", 70, 1, 1.0031, "flush on task switch"),  # qemu's again
        switch(1, 1.0040, worker, IDLE1),
    ]
    r = replay_lines(lines, "linux-6.1-x86_64", 2)
    assert r.stats.tlb["vhost workers' kthread_use_mm"] == 1
    assert r.stats.switches_checked == sum("sched_switch" in x for x in lines) - 1  # (the last)
    assert r.stats.switches_agreeing == r.stats.switches_checked
    assert r.metrics.cr3_loads == sum("flush on task switch" in x for x in lines)


def test_a_flush_ipi_into_a_context_switch_waits_for_its_end() -> None:
    """app frees page tables while its thread runs on CPU 1, which is switching to its idle
    task: the sched_switch there comes after the IPIs went out, the handler's line (a CR3
    load of init_mm in a hardirq: CPU 1 was lazy by then) after it. __schedule() had turned
    interrupts off, so CPU 1 took the IPI at finish_task_switch(), lazy on app's mm: to
    init_mm, and a CR3 load again when the thread comes back; two loads the kernel's lines
    show. Flushed where the IPIs went out, the model's CPU 1 would have run the thread then,
    flushed in place, and loaded nothing."""
    running = [switch(1, 1.0004, IDLE1, THREAD, "R")]
    flush = [
        tlb("app", 10, 0, 1.0010, "remote ipi send", "...1."),
        switch(1, 1.0011, THREAD, IDLE1),  # inside __schedule(): the IPI waits
        tlb("app", 10, 0, 1.0012, "local mm shootdown"),
        tlb("<idle>", 0, 1, 1.0013, "flush on task switch", "d.h1."),  # init_mm
        switch(0, 1.0020, APP, IDLE0),
    ]
    back = [switch(1, 1.0030, IDLE1, THREAD, "R")]
    without = [flush[1], flush[4]]
    r = replay_lines(START + running + flush + back, "linux-6.1-x86_64", 2)
    plain = _replay(START + running + without + back)
    assert r.metrics.cr3_loads - plain.cr3_loads == 2
    assert r.metrics.flush_ipis == 1


def test_a_flush_no_cpu_handled_is_of_the_one_mm_other_cpus_borrow() -> None:
    """Page migration by a kworker flushes a process's mm from a CPU that does not run it:
    IPIs go out ("remote ipi send") to the other CPUs in its mm_cpumask, and a lazy one is
    skipped without a line (native_flush_tlb_multi(): tlb_is_not_lazy), its TLB generation
    left stale, so it reloads CR3 with a flush when the mm's thread comes back. With no
    handler's line, the flushed mm is the one lazily borrowed on the other CPUs when there is
    only one: here app's, on CPU 1. With two different mms borrowed, it is not known and not
    replayed."""
    kworker = ("kworker/u4:1", 30)
    migrate = [
        switch(0, 1.0004, APP, kworker),  # CPU 0's kworker borrows app's mm too
        tlb(*kworker, 0, 1.0010, "remote ipi send", "...1.", pages=1),
        switch(0, 1.0011, kworker, IDLE0, "I"),
    ]
    back = [switch(1, 1.0020, IDLE1, THREAD, "R")]
    plain = _replay([*START, migrate[0], migrate[2], *back])
    r = replay_lines(START + migrate + back, "linux-6.1-x86_64", 2)
    assert r.stats.tlb["flushes of another task's mm"] == 1
    assert r.metrics.cr3_loads == plain.cr3_loads + 1  # CPU 1's stale reload
    assert r.metrics.cr3_flushes == plain.cr3_flushes + 1
    # a third CPU borrows another process's mm: two candidates, nothing replayed
    sh, idle2 = ("sh", 40), ("swapper/2", 0)
    other = [switch(2, 1.00031, idle2, sh, "R"), switch(2, 1.00032, sh, idle2)]
    r = replay_lines(START + other + migrate, "linux-6.1-x86_64", 3)
    assert r.stats.tlb["flushes of an unknown mm (not replayed)"] == 1
    assert r.stats.tlb["flushes of another task's mm"] == 0


def test_a_task_flushing_another_tasks_mm_goes_on_with_it() -> None:
    """A kworker migrating a process's pages flushes that mm again and again. When one of
    its flushes reached no CPU's handler and two mms are lazily borrowed elsewhere, it is of
    the mm its last flush was replayed on: app's here, whose thread took the first one's IPI
    on CPU 1 and then slept, leaving CPU 1 lazy on app's mm with its TLB generation stale,
    so the thread's return there reloads CR3 as the kernel's line says."""
    kworker, sh, idle2 = ("kworker/u8:0", 30), ("sh", 40), ("swapper/2", 0)
    lines = [
        switch(0, 1.0000, IDLE0, APP, "R"),
        tlb("<idle>", 0, 0, 1.00001, "flush on task switch"),
        *START[1:3],
        tlb("<idle>", 0, 1, 1.00021, "flush on task switch"),
        START[3],
        switch(2, 1.0004, idle2, sh, "R"),
        tlb("<idle>", 0, 2, 1.0005, "flush on task switch"),
        switch(2, 1.0006, sh, idle2),  # CPU 2 lazy on sh's mm
        switch(1, 1.0007, IDLE1, THREAD, "R"),
        switch(0, 1.0008, APP, kworker),
        tlb(*kworker, 0, 1.0010, "remote ipi send", "...1.", pages=1),
        tlb("app", 11, 1, 1.0011, "remote shootdown", "d.h1.", pages=1),
        line(*kworker, 0, 1.0012, "sched_process_free: comm=x pid=99 prio=120"),
        switch(1, 1.0013, THREAD, IDLE1),  # CPU 1 lazy on app's mm
        tlb(*kworker, 0, 1.0020, "remote ipi send", "...1.", pages=1),  # no one answers
        switch(0, 1.0021, kworker, IDLE0, "I"),
        switch(1, 1.0030, IDLE1, THREAD, "R"),
        tlb("<idle>", 0, 1, 1.0031, "flush on task switch"),  # stale: a reload
        switch(1, 1.0040, THREAD, IDLE1),
    ]
    r = replay_lines(lines, "linux-6.1-x86_64", 3)
    assert r.stats.tlb["flushes of another task's mm"] == 2
    assert r.stats.switches_agreeing == r.stats.switches_checked


def test_a_local_flush_of_other_pages_is_another_flush() -> None:
    """flush_tlb_func()'s local part traces the pages of its own flush ("local mm shootdown"
    pages:N, or -1 when it flushes all, 0 when already up to date): after a full flush's
    "remote ipi send" (clear_refs of another process's mm) a local pages:1 is a second flush
    of the task's own mm, and the first one had no local part: another task's mm."""
    lines = [
        switch(0, 1.0000, IDLE0, APP, "R"),
        tlb("app", 10, 0, 1.0010, "remote ipi send", "...1."),
        tlb("app", 10, 0, 1.0011, "local mm shootdown", pages=1),
        switch(0, 1.0020, APP, IDLE0),
    ]
    flushes = [e for e in tlb_hints(read_lines(lines)) if isinstance(e, MmFlush)]
    assert [(f.pages, f.foreign) for f in flushes] == [(-1, True), (1, False)]
    same = [*lines[:2], tlb("app", 10, 0, 1.0011, "local mm shootdown"), lines[3]]
    flushes = [e for e in tlb_hints(read_lines(same)) if isinstance(e, MmFlush)]
    assert [(f.pages, f.foreign) for f in flushes] == [(-1, False)]


def test_text_poke_and_efi_calls_from_cr3_loads_in_a_row() -> None:
    """Two CR3 loads in a row by a user task outside a context switch are text_poke()'s
    poking_mm and back; on a lazy CPU it leaves lazy mode first (leave_mm(): three loads),
    while an EFI call from a lazy kworker loads efi_mm and back (two: before 6.15
    efi_enter_mm() does not leave lazy mode, from 6.15 it does). The load right after a
    sched_switch by the task switched *in* is its own, not the switch's (that one is emitted
    by the task switched out)."""
    kworker = ("kworker/1:0", 30)
    poke = [
        line("app", 10, 0, 1.0010, "task_rename: pid=10 oldcomm=app newcomm=app x=0", "....."),
        tlb("app", 10, 0, 1.0011, "flush on task switch", "d..1."),
        tlb("app", 10, 0, 1.0012, "flush on task switch", "d..1."),
    ]
    on_kworker = [switch(1, 1.0010, IDLE1, kworker, "R")]
    three = [tlb(*kworker, 1, 1.0011 + i / 1e5, "flush on task switch", "d..1.") for i in range(3)]
    base = _replay(START)
    assert _replay(START + poke).cr3_loads == base.cr3_loads + 2
    kw = _replay(START + on_kworker)
    assert _replay(START + on_kworker + three).cr3_loads == kw.cr3_loads + 3
    efi = START + on_kworker + three[:2]
    assert _replay(efi).cr3_loads == kw.cr3_loads + 2
    new = "linux-6.17-x86_64"
    assert _replay(efi, new).cr3_loads == _replay(START + on_kworker, new).cr3_loads + 3


def test_hints_keep_every_line_once_and_in_order() -> None:
    """tlb_hints() holds lines back while a flush is unresolved, and puts each MmFlush or
    TempMmLoads in place of the line it began with: every other line comes out once, in the
    order read."""
    path = CAPTURES / "linux-6.1-smp4-flush" / "trace.txt.gz"
    read = list(read_trace(str(path)))
    out = list(tlb_hints(read))
    assert len(out) == len(read)
    assert [e.line for e in out] == [e.line for e in read]
    made = [e for e in out if isinstance(e, MmFlush | TempMmLoads)]
    assert made and all(isinstance(e, TlbFlush) for e in read if e.line in {m.line for m in made})
    assert sum(1 for e in made if isinstance(e, MmFlush) and e.fork) > 100  # its fork churn


def _kernel_cr3_loads(capture: Path) -> int:
    with gzip.open(capture / "trace.txt.gz", "rt") as f:
        return sum(1 for text in f if "tlb_flush:" in text and "flush on task switch" in text)


@pytest.mark.parametrize(
    "name",
    [
        "linux-6.1-smp4-flush",  # munmap from threads across CPUs
        "linux-6.1-smp2-program27",  # static keys flipped: text_poke()
        "linux-6.12-smp3-efivars",  # EFI variable reads and writes: efi_mm
        "linux-6.12-smp3-program29",  # suspend cycles
    ],
)
def test_replayed_cr3_loads_match_the_kernels_count(name: str) -> None:
    """Replayed under its own kernel's preset, a capture makes about the CR3 loads the
    kernel's tlb_flush lines counted ("flush on task switch" is emitted for each): within 3%
    (the rest: the exec and exit windows no scheduler event announces, docs/replay.md)."""
    capture = CAPTURES / name
    preset = "linux-6.12-x86_64" if "6.12" in name else "linux-6.1-x86_64"
    events = read_trace(str(capture / "trace.txt.gz"))
    snapshot = load_task_snapshot(capture / "tasks_start.txt")
    ncpus = int(name.split("-smp")[1].split("-")[0])
    _, replayers = replay(events, [PRESETS[preset]], ncpus, snapshot)
    kernel = _kernel_cr3_loads(capture)
    assert abs(replayers[preset].metrics.cr3_loads - kernel) <= 0.03 * kernel


def test_replay_says_what_the_tlb_flush_lines_gave() -> None:
    """`replay --json` counts the trace's tlb_flush lines and what the replay made of them;
    every fork whose parent has an mm ends dup_mmap() with a full flush of it, so on a capture
    (nothing lost) nearly every process fork is met at its flush. Without tlb_flush lines
    the table says that flushes come only from forks and exits."""
    capture = CAPTURES / "linux-6.1-smp4-flush"
    r = cli("replay", str(capture), "-p", "linux-6.1-x86_64", "--json")
    assert r.returncode == 0, r.stderr
    tlb = json.loads(r.stdout)["tlb_flush"]
    with gzip.open(capture / "trace.txt.gz", "rt") as f:
        text = f.read()
    assert tlb["lines"] == text.count(": tlb_flush:")
    forks = sum(
        1
        for x in text.splitlines()
        if ": task_newtask:" in x and not int(x.split("clone_flags=")[1].split()[0], 16) & 0x100
    )
    assert 0.95 * forks <= tlb["forks at their dup_mmap flush"] <= forks
    assert tlb["flushes"] > 0 and tlb["EFI calls"] == 0
    # the traced kernel's own CR3 loads, one "flush on task switch" line each, and how many
    # context switches the model loads CR3 at as the kernel did: nearly all under the
    # kernel's own preset, far fewer without lazy TLB
    presets = ("linux-6.1-x86_64", "linux-6.17-powerpc-radix", "no-lazy")
    r = cli("replay", str(capture), *(x for p in presets for x in ("-p", p)), "--json")
    configs = json.loads(r.stdout)["configs"]
    traced = configs["linux-6.1-x86_64"]["cr3_as_traced"]
    assert traced["kernel_loads"] == text.count("reason:flush on task switch")
    switches = text.count(": sched_switch:")
    assert switches - 4 <= traced["switches"] <= switches  # (each CPU's last: no line after)
    assert traced["agree_pct"] >= 99
    assert configs["no-lazy"]["cr3_as_traced"]["agree_pct"] < 80
    assert "cr3_as_traced" not in configs["linux-6.17-powerpc-radix"]  # no CR3, no tlb_flush
    r = cli(
        "replay", str(ROOT / "tests" / "data" / "tracefs_tgid.txt.gz"), "-p", "linux-6.1-x86_64"
    )
    assert r.returncode == 0 and "no tlb_flush lines" in " ".join(r.stdout.split())


@pytest.mark.parametrize(
    "name",
    [
        "linux-6.12-smp4-everything-marked",  # exec from a thread: exchange_tids() races
        "linux-6.1-rt-smp2-program23",  # execs preempted anywhere (PREEMPT_RT)
        "linux-6.12-smp3-program12",  # vfork from a thread while a sibling execs
        "linux-6.1-smp2-efivars",  # EFI calls from a kworker
    ],
)
def test_the_tlb_flush_lines_never_make_the_replay_lose_track_of_tasks(name: str) -> None:
    """What the hints replay runs on the task the trace says is current: with the tlb_flush
    lines the replay resynchronises no CPU, refuses no operation and sees no task running
    on two CPUs more often than without them."""
    capture = CAPTURES / name
    preset = "linux-6.12-x86_64" if "6.12" in name else "linux-6.1-x86_64"
    if "-rt-" in name:
        preset += "-rt"
    ncpus = int(name.split("-smp")[1].split("-")[0])
    snapshot = load_task_snapshot(capture / "tasks_start.txt")
    found = []
    for keep in (True, False):
        events = read_trace(str(capture / "trace.txt.gz"))
        kept = (e for e in events if keep or not isinstance(e, TlbFlush))
        _, replayers = replay(kept, [PRESETS[preset]], ncpus, snapshot)
        found.append(replayers[preset].stats.anomalies)
    assert found[0] == found[1]


def test_the_html_report_says_what_the_tlb_flush_lines_gave(tmp_path: Path) -> None:
    capture = CAPTURES / "linux-6.1-smp4-flush"
    out = tmp_path / "report.html"
    r = cli("report", str(capture), "-p", "linux-6.1-x86_64", "-o", str(out))
    assert r.returncode == 0, r.stderr
    replayed = json.loads(cli("replay", str(capture), "-p", "linux-6.1-x86_64", "--json").stdout)
    lines = replayed["tlb_flush"]["lines"]
    assert lines > 0 and f"from {lines:,} tlb_flush lines: flushes: " in out.read_text()


def test_an_exec_runs_at_its_exec_mmap_not_at_sched_process_exec() -> None:
    """exec_mmap() loads the new mm (a CR3 load by the task outside a switch) and
    begin_new_exec() renames the task next; sched_process_exec fires only when
    load_elf_binary() returns. Preempted in between, the task leaves CPU 0's idle task
    borrowing its *new* mm, and its old one, with no user and no lazy holder, is freed at
    once: no zombie. Replayed at sched_process_exec instead, CPU 0 would lazily hold the old
    mm, a zombie."""
    lines = [
        switch(0, 1.0000, IDLE0, APP, "R"),
        tlb("app", 10, 0, 1.0001, "flush on task switch", "d..1."),  # exec_mmap()
        switch(0, 1.0002, APP, IDLE0, "R+"),  # preempted in the old mm's exit_mmap()
        switch(1, 1.0003, IDLE1, APP, "R"),  # and migrated
        tlb("<idle>", 0, 1, 1.0004, "flush on task switch"),  # the switch's own load
        line("app", 10, 1, 1.0005, "task_rename: pid=10 oldcomm=app newcomm=true x=0", "....."),
        line("true", 10, 1, 1.0006, "sched_process_exec: filename=/bin/true pid=10 old_pid=10"),
    ]
    for keep, zombies in ((True, 0), (False, 1)):
        kept = [x for x in lines if keep or "tlb_flush" not in x]
        r = replay_lines(kept, "linux-6.1-x86_64", 2)
        assert r.metrics.summary()["zombies"]["count"] == zombies
        assert (r.m.state.rqs[0].curr.active_mm is r.tasks[10].mm) is keep
    assert r.stats.tlb["execs at their exec_mmap"] == 0  # (the run without the lines)


SOLO, OTHER = ("solo", 30), ("other", 40)


def _exit_window(ipis: bool) -> list[str]:
    """solo, a single-threaded process, exits on CPU 0: exit_mm() leaves the CPU lazy on its
    mm, and exit_mmap()'s final flush (page tables freed) switches the lazy CPU to init_mm: a
    CR3 load by solo outside a switch, after "remote ipi send" and CPU 1's load of init_mm in
    a hardirq when CPU 1, where solo ran before, is lazy on it too (`ipis`). Then solo is
    preempted by other, another process, before sched_process_exit, and comes back: as a
    task without an mm it borrows other's, no CR3 load."""
    before = [
        switch(1, 0.9990, IDLE1, SOLO, "R"),
        tlb("<idle>", 0, 1, 0.9991, "flush on task switch"),  # the switch's own load
        switch(1, 0.9995, SOLO, IDLE1),  # CPU 1 lazy on solo's mm
    ]
    exit_flush = [
        tlb("solo", 30, 0, 1.0010, "remote ipi send", "...1."),
        tlb("<idle>", 0, 1, 1.00102, "flush on task switch", "d.h1."),
    ]
    return [
        *(before if ipis else []),
        switch(0, 1.0000, IDLE0, SOLO, "R"),
        tlb("<idle>", 0, 0, 1.0001, "flush on task switch"),
        *(exit_flush if ipis else []),
        tlb("solo", 30, 0, 1.00104, "flush on task switch"),  # exit_mmap(): to init_mm
        switch(0, 1.0011, SOLO, OTHER, "R+"),  # preempted inside the exit window
        tlb("solo", 30, 0, 1.00111, "flush on task switch"),  # other's mm
        switch(0, 1.0020, OTHER, SOLO, "R+"),  # back: lazy on other's mm
        line("solo", 30, 0, 1.0021, "sched_process_exit: comm=solo pid=30 prio=120"),
        switch(0, 1.0022, SOLO, IDLE0, "Z"),
    ]


@pytest.mark.parametrize("ipis", [False, True])
def test_an_exit_runs_where_exit_mmap_switched_its_lazy_cpu_to_init_mm(ipis: bool) -> None:
    """The kernel's exit_mm() ran before exit_mmap()'s flush found the task's CPU lazy and
    loaded init_mm there (arch/x86/mm/tlb.c: flush_tlb_func() on a lazy CPU). The replay runs
    the exit at that load, so the task preempted after it switches as one without an mm: back
    on CPU 0 it loads nothing, and the replay makes the CR3 loads the kernel's lines show.
    Replayed at sched_process_exit, it would load solo's mm again on the way back."""
    lines = _exit_window(ipis)
    r = replay_lines(lines, "linux-6.1-x86_64", 2)
    assert r.stats.tlb["exits at exit_mmap's flush"] == 1
    kernel = sum("flush on task switch" in x for x in lines)
    assert r.metrics.cr3_loads == kernel
    # switch by switch too: each of solo's switches but the last (whose CPU shows no line
    # after it) loads CR3 where the kernel's did, the one back in from other included
    checked = 5 if ipis else 3
    stats = r.stats
    assert (stats.kernel_cr3_loads, stats.switches_checked) == (kernel, checked)
    assert stats.switches_agreeing == checked
    assert r.metrics.flush_ipis == (1 if ipis else 0)
    # solo's mm outlived its last real user, borrowed by solo itself from exit_mm() to its
    # switch to other (and, with the IPIs, by CPU 1's idle task): one zombie
    assert r.metrics.summary()["zombies"]["count"] == 1
    made = [type(e).__name__ for e in tlb_hints(read_lines(lines))]
    assert ("MmFlush" if ipis else "ExitMmapLoad") in made


def test_a_lone_cr3_load_is_no_exit_when_the_task_renames_execs_or_forks_first() -> None:
    """One CR3 load by a task outside a switch, then (besides its other lines) its rename,
    exec or fork before any exit: still a live user task, not exit_mmap()'s load; it stays
    the plain line. Its sched_process_exit first makes it ExitMmapLoad, however long after."""
    head = [
        switch(0, 1.0000, IDLE0, SOLO, "R"),
        tlb("solo", 30, 0, 1.0010, "flush on task switch"),
        line("solo", 30, 0, 1.0011, "sched_process_free: comm=x pid=99 prio=120"),
        switch(0, 1.0012, SOLO, OTHER, "R+"),
        switch(0, 1.0020, OTHER, SOLO, "R+"),
    ]
    exit_line = line("solo", 30, 0, 1.0031, "sched_process_exit: comm=solo pid=30 prio=120")
    firsts = {
        "rename": line("solo", 30, 0, 1.0030, "task_rename: pid=30 oldcomm=solo newcomm=b x=0"),
        "fork": line("solo", 30, 0, 1.0030, "task_newtask: pid=31 comm=solo clone_flags=11 x=0"),
        "exec": line("solo", 30, 0, 1.0030, "sched_process_exec: filename=/b pid=30 old_pid=30"),
        "exit": exit_line,
    }
    for what, first in firsts.items():
        kinds = [type(e).__name__ for e in tlb_hints(read_lines([*head, first, exit_line]))]
        assert kinds[1] == ("ExitMmapLoad" if what == "exit" else "TlbFlush"), what


# lines of every kind tlb_hints() reads, by any task on any CPU (the idle tasks all pid 0)
_KINDS = [
    "tlb_flush: pages:-1 reason:flush on task switch (0)",
    "tlb_flush: pages:1 reason:flush on task switch (0)",
    "tlb_flush: pages:-1 reason:remote ipi send (4)",
    "tlb_flush: pages:-1 reason:local mm shootdown (3)",
    "tlb_flush: pages:1 reason:local mm shootdown (3)",
    "tlb_flush: pages:-1 reason:remote shootdown (1)",
    "task_rename: pid={p} oldcomm=a newcomm=b oom_score_adj=0",
    "task_newtask: pid={c} comm=a clone_flags=1200011 oom_score_adj=0",
    "sched_switch: prev_comm=a prev_pid={p} prev_prio=120 prev_state=R+ ==> next_comm=b "
    "next_pid={c} next_prio=120",
    "sched_process_exec: filename=/b pid={p} old_pid={p}",
    "sched_process_exit: comm=a pid={p} prio=120",
]


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(range(len(_KINDS))),
            st.integers(0, 2),  # CPU
            st.sampled_from([0, 0, 10, 11]),  # the task (pid 0: that CPU's idle task)
            st.sampled_from(["d..2.", "d.h1.", "d..1."]),
        ),
        max_size=60,
    ),
    st.integers(1, 8),
)
def test_hints_give_back_every_line_once_in_order_whatever_comes(
    lines: list[tuple[int, int, int, str]], horizon: int
) -> None:
    """Whatever the lines, however short the horizon, tlb_hints() gives back one event per
    event read, in the order read (MmFlush, TempMmLoads, ExecMmap and ExitMmapLoad in place
    of the line they began with): nothing is held back for good."""
    read = read_lines(
        [
            line("a", pid, cpu, 1.0 + i / 1e5, _KINDS[k].format(p=pid, c=pid + 20), flags)
            for i, (k, cpu, pid, flags) in enumerate(lines)
        ]
    )
    out = list(tlb_hints(read, horizon))
    assert [e.line for e in out] == [e.line for e in read]


def test_idle_tasks_of_two_cpus_are_two_tasks(tmp_path: Path) -> None:
    """With idle=poll a flush IPI to an idle CPU runs in its polling loop, outside hardirq:
    a CR3 load by "pid 0" outside a switch, on two CPUs at once, then each idle task switches
    out. Every CPU's idle task is pid 0; the hints keep them apart, and every line comes
    back (keyed by pid alone, one CPU's load waited for an exec for good, and the replay
    stopped at it: linux-6.1-smp3-all-idlepoll-threadirqs lost 46,000 of its 55,000
    events)."""
    lines = [
        tlb("<idle>", 0, 0, 1.0000, "flush on task switch", "d..1."),
        tlb("<idle>", 0, 2, 1.0001, "flush on task switch", "d..1."),
        switch(2, 1.0002, ("swapper/2", 0), ("rcu_preempt", 15), "R"),
        switch(0, 1.0003, IDLE0, APP, "R"),
        switch(2, 1.0004, ("rcu_preempt", 15), ("swapper/2", 0), "I"),
        switch(0, 1.0005, APP, IDLE0),
    ]
    path = tmp_path / "trace.txt"
    path.write_text("".join(f"  {x}\n" for x in lines))
    read = list(read_trace(str(path)))
    assert [e.line for e in tlb_hints(read)] == [e.line for e in read]
    assert replay(read, [PRESETS["linux-6.1-x86_64"]], 3)[0] == len(read)


def test_a_stale_mm_cpumask_bit_is_trimmed_once_a_second_on_6_14_and_later() -> None:
    """Since 6.14 a CPU keeps its mm_cpumask bit when it switches to another mm; a flush
    IPIs such a CPU (running another mm, not lazy) only when should_trim_cpumask() is due,
    once a second per mm, and flush_tlb_func() there clears the bit. app's thread ran on
    CPU 1, which now runs another process: of app's flushes at 1.1 s (its first: due),
    1.5 s (within the second: not due) and 2.2 s (due again), the first and the last send
    CPU 1 an IPI on 6.17 (the thread ran there again at 1.2 s, setting the bit anew). 6.1
    clears the bit at the switch: no IPI. powerpc radix trims by a clock of its own (every
    1073rd flush of a CPU), never due here: the once-a-second rule is x86's, no shootdown
    IPI there (app has two threads, so no single-thread trim either)."""
    other = ("other", 20)

    def thread_comes_and_goes(t: float) -> list[str]:
        return [switch(1, t, other, THREAD, "R"), switch(1, t + 0.01, THREAD, other, "R")]

    def munmap(t: float) -> list[str]:
        return [
            tlb("app", 10, 0, t, "remote ipi send", "...1."),
            tlb("app", 10, 0, t + 0.0001, "local mm shootdown"),
            line("app", 10, 0, t + 0.0002, "sched_process_free: comm=x pid=99 prio=120"),
        ]

    lines = [
        *START[:3],
        switch(1, 1.0003, THREAD, other, "R"),
        *munmap(1.1),
        *thread_comes_and_goes(1.2),
        *munmap(1.5),
        *munmap(2.2),
    ]
    assert _replay(lines, "linux-6.17-x86_64").flush_ipis == 2
    assert _replay(lines, "linux-6.1-x86_64").flush_ipis == 0
    assert _replay(lines, "linux-6.17-powerpc-radix").shootdown_ipis == 0
