"""Score the model against what a real kernel did (`activemm validate`, docs/validate.md)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import replace
from functools import partial
from pathlib import Path

from activemm.errors import ActiveMmError
from activemm.model.config import preset
from activemm.trace.events import Probe, SchedSwitch, TraceEvent
from activemm.trace.kallsyms import Symbols, SymbolsError
from activemm.trace.readers import UNNAMED_PROBE, ReadStats, TraceError, read_trace
from activemm.trace.replay import load_task_snapshot, peek_cpus
from activemm.validate import kernel as kv
from activemm.validate.core import Validator
from activemm.validate.score import Result

INPUTS = ("sched", "markers")
MARKERS = ("enter_lazy_tlb", "switch_mm_irqs_off", "exit_mmap")
MAX_PASSES = 4  # sched inputs: replays that find exit windows after the fact


NO_KERNEL = (
    "the trace does not say which kernel recorded it: give --preset "
    "(linux-6.1-x86_64 or linux-6.12-x86_64, or their -rt flavour on PREEMPT_RT)"
)


def release_version(release: str | None) -> tuple[int, int] | None:
    """(major, minor) of a kernel release string such as 6.17.13+deb13-amd64, if it has one."""
    m = re.match(r"(\d+)\.(\d+)", release or "")
    return None if m is None else (int(m[1]), int(m[2]))


def preset_for(release: str | None) -> str:
    """The preset that models a kernel release string such as 6.1.0-56-amd64 (or Debian's
    PREEMPT_RT flavour, 6.1.0-56-rt-amd64): the 6.1 one before the lazy-TLB helpers (6.4),
    the 6.12 one before x86 kept mm_cpumask bits on switch-away (6.14), the 6.17 one since
    (Debian 13's backports: 6.17.13+deb13-amd64)."""
    version = release_version(release)
    if version is None:
        raise ActiveMmError(NO_KERNEL)
    name = (
        "linux-6.1-x86_64"
        if version < (6, 4)
        else "linux-6.12-x86_64"
        if version < (6, 14)
        else "linux-6.17-x86_64"
    )
    return f"{name}-rt" if re.search(r"-rt\b", release or "") else name


RT_THREAD = "ktimers/"  # a per-CPU thread only PREEMPT_RT kernels have


def preset_from_probes(events: Iterable[object]) -> str | None:
    """Which of Debian's kernels recorded a trace that comes without metadata, from where
    its kprobes on switch_mm_irqs_off landed: at +0x0 on 6.1, at +0x4 on 6.12 and 6.17,
    whose functions start with an ENDBR64 instruction (IBT) the probe is placed after
    (reference, real-kernel-capture.md); 6.17 (6.16 and later) when exec's activate_mm()
    hook (no task, not to init_mm) has a `prev`, which 6.9 to 6.15 pass as NULL; their
    PREEMPT_RT flavour when the trace switches to a ktimers/N thread (kernel/softirq.c
    runs timer softirqs there only with CONFIG_PREEMPT_RT). None when the offsets say
    neither."""
    offsets: set[int | None] = set()
    rt = activate_prev = False
    for e in events:
        if isinstance(e, Probe) and e.function == "switch_mm_irqs_off":
            offsets.add(e.offset)
            activate_prev = activate_prev or (
                kv.address(e.args.get("tsk")) == 0
                and kv.address(e.args.get("prev")) != 0
                and not kv.is_init_mm(kv.address(e.args.get("next")))
            )
        elif isinstance(e, SchedSwitch) and not rt:
            rt = e.next_comm.startswith(RT_THREAD) or e.prev_comm.startswith(RT_THREAD)
    kernels: dict[int | None, str] = {0: "linux-6.1-x86_64", 4: "linux-6.12-x86_64"}
    base = kernels.get(offsets.pop()) if len(offsets) == 1 else None
    if base is None:
        return None
    if base == "linux-6.12-x86_64" and activate_prev:
        base = "linux-6.17-x86_64"
    return base + "-rt" if rt else base


TRACE_NAMES = (
    "trace.txt.gz", "trace.txt", "trace.txt.xz", "trace.txt.zst", "trace.gz", "trace", "trace.dat",
    "perf.data", "perf.data.gz",
)  # fmt: skip
TASKS_NAMES = ("tasks_start.txt", "tasks_start")
KALLSYMS_NAME = "kallsyms.txt"  # the recording boot's symbols, beside a capture's trace


def capture_meta(directory: Path) -> dict[str, object] | None:
    """A capture directory's meta.json (None without one)."""
    meta = directory / "meta.json"
    if not meta.exists():
        return None
    try:
        value = json.loads(meta.read_text())
    except (json.JSONDecodeError, OSError) as e:
        raise ActiveMmError(f"{meta}: unreadable capture metadata: {e}") from None
    if not isinstance(value, dict):
        raise ActiveMmError(f"{meta}: unreadable capture metadata: not a JSON object")
    return value


def _release(directory: Path) -> str | None:
    """The kernel release a capture directory records: meta.json's "kernel", or a
    `release X` line of a plain meta file (what the guest itself writes)."""
    meta = capture_meta(directory)
    if meta is not None:
        value = meta.get("kernel")
        return value if isinstance(value, str) else None
    for name in ("meta", "meta.txt"):
        plain = directory / name
        if plain.is_file():
            m = re.search(r"^release (\S+)", plain.read_text(errors="replace"), re.M)
            if m:
                return m[1]
    return None


def _missed_hits(meta: dict[str, object] | None) -> dict[str, int]:
    """Probes that missed hits while the capture ran (meta.json's kprobe_missed, which
    `activemm capture` takes from kprobe_profile: a probe hit inside another probe's
    handler, or a return probe out of instances): those events are not in the trace."""
    missed = meta.get("kprobe_missed") if meta is not None else None
    if not isinstance(missed, dict):
        return {}
    return {name: n for name, n in missed.items() if isinstance(n, int) and n > 0}


def dropped_events(meta: dict[str, object] | None) -> dict[int, int]:
    """CPU -> the events its ring buffer dropped while recording, full (meta.json's
    ring_buffer: each per_cpu/cpuN/stats, as `activemm capture` and the recording script of
    `activemm probes --script` save them). A buffer that does not overwrite drops every event
    after it fills, unannounced in the text: that CPU's trace just ends."""
    stats = meta.get("ring_buffer") if meta is not None else None
    if not isinstance(stats, dict):
        return {}
    dropped: dict[int, int] = {}
    for name, s in stats.items():
        n = s.get("dropped_events") if isinstance(s, dict) else None
        cpu = str(name).removeprefix("cpu")
        if isinstance(n, int) and n > 0 and cpu.isdigit():
            dropped[int(cpu)] = n
    return dropped


def full_buffer_cut(events: Iterable[TraceEvent], dropped: dict[int, int]) -> float | None:
    """Where the trace stops being whole: the last event of the first CPU whose ring buffer
    filled (`dropped`, dropped_events()). Past it that CPU's events are missing while the
    others' go on, and replaying them would blame the model (or the metrics) for what the
    trace lost. None when no CPU dropped events, or none of those has a line."""
    last: dict[int, float] = {}
    if dropped:
        for e in events:
            if e.cpu in dropped:
                last[e.cpu] = e.ts
    return min(last.values()) if last else None


def dropped_list(dropped: dict[int, int]) -> str:
    """dropped_events() as the messages name them: `CPU 0 237,218, CPU 1 24,929`."""
    return ", ".join(f"CPU {cpu} {n:,}" for cpu, n in sorted(dropped.items()))


def full_buffer_note(cut: float, dropped: dict[int, int]) -> str:
    """The anomaly that counts the events after `cut` left out (full_buffer_cut)."""
    return (
        f"events after {cut:.6f} left out: a ring buffer filled and dropped events while "
        f"recording ({dropped_list(dropped)}; meta.json), so the trace is whole only up to there"
    )


def _kernel_args(meta: dict[str, object] | None) -> list[str]:
    """The parameters `capture --kernel-args` added to the guest's command line."""
    return str((meta or {}).get("kernel_args") or "").split()


PREEMPT_MODES = ("none", "voluntary", "full", "lazy")  # the kernel's preempt= choices


def preempt_mode(meta: dict[str, object] | None) -> str:
    """The preemption the capture's kernel ran with, as setup_preempt_mode() sets it: the
    last preempt= on the command line that sched_dynamic_mode() knows (none, voluntary, full;
    lazy since 6.13, CONFIG_PREEMPT_LAZY), one it does not know being ignored; else its
    config's default (meta.json's preempt_default, "lazy" on Debian 13's 6.17); else
    "voluntary" (Debian 12's kernels, a bare trace)."""
    version = release_version(str((meta or {}).get("kernel") or ""))
    lazy = version is None or version >= (6, 13)
    known = {mode for mode in PREEMPT_MODES if lazy or mode != "lazy"}
    args = [w.split("=", 1)[1] for w in _kernel_args(meta) if w.startswith("preempt=")]
    modes = [str((meta or {}).get("preempt_default")), *args]
    return next((mode for mode in reversed(modes) if mode in known), "voluntary")


def fully_preemptible(meta: dict[str, object] | None) -> bool:
    """Whether the capture's kernel could be preempted anywhere preemption is on: preempt=full
    or preempt=lazy (preempt_mode); PREEMPT_RT is told by its preset."""
    return preempt_mode(meta) in ("full", "lazy")


def kvm_pv_tlb_flush(meta: dict[str, object] | None) -> bool:
    """Whether the capture's guest ran under KVM with KVM's paravirtual TLB flush: meta.json's
    accel "kvm" with a cpu that leaves kvm-pv-tlb-flush on (before 2026-12-05 `capture` did,
    with `-cpu host`), and no `nopv` on the command line (which keeps the kernel from
    detecting KVM at all); or, from `probes --script`, kvm_pv_tlb_flush true (the kernel's
    boot log says "KVM setup pv remote TLB flush"). kvm_flush_tlb_multi() then skips the
    vCPUs the host has preempted (the host flushes them when it enters them again): such a
    lazy CPU stays on the mm, and when is the host scheduler's, not in the trace."""
    meta = meta or {}
    if meta.get("kvm_pv_tlb_flush") is True:  # `probes --script`: its boot said so
        return True
    cpu = str(meta.get("cpu") or "").split(",")
    if meta.get("accel") != "kvm" or "nopv" in _kernel_args(meta):
        return False
    return not {"kvm-pv-tlb-flush=off", "-kvm-pv-tlb-flush"} & set(cpu)


KVM_PV_TLB_FLUSH_NOTE = (
    "recorded under KVM with its paravirtual TLB flush on (meta.json's cpu has no "
    "kvm-pv-tlb-flush=off): kvm_flush_tlb_multi() sends no flush IPI to a vCPU the host has "
    "preempted, so a lazy CPU the model drops to init_mm on a flush may have stayed on the mm "
    "(record again with `activemm capture`, which turns it off, or boot the guest with nopv)"
)


def rcu_offloaded(meta: dict[str, object] | None) -> bool:
    """Whether the capture's kernel was booted with every CPU's RCU callbacks offloaded to
    rcuop threads (`capture --kernel-args rcu_nocbs=all`): the model's
    RCU_NOCB_CPU_DEFAULT_ALL. (A list of CPUs offloads only those, which the model cannot
    say: taken as not offloaded.)"""
    return "rcu_nocbs=all" in _kernel_args(meta)


def rcuop_everywhere(events: Iterable[object], ncpus: int) -> bool:
    """Whether the trace shows an rcuop/N thread for each of its `ncpus` CPUs: every CPU's
    RCU callbacks offloaded (rcu_nocbs=all, or CONFIG_RCU_NOCB_CPU_DEFAULT_ALL), which a
    trace without a capture's metadata says only so."""
    seen = {
        comm
        for e in events
        if isinstance(e, SchedSwitch)
        for comm in (e.prev_comm, e.next_comm)
        if comm.startswith("rcuop/")
    }
    return ncpus > 0 and all(f"rcuop/{cpu}" in seen for cpu in range(ncpus))


def locate(trace: Path, tasks: Path | None) -> tuple[Path, Path | None, str | None]:
    """A capture directory stands for its trace (trace.txt.gz...), its task snapshot
    (tasks_start.txt) and its metadata (meta.json); a trace file inside a capture directory
    finds them beside it."""
    if not trace.exists():
        raise ActiveMmError(f"{trace}: no such file or directory")
    directory = trace if trace.is_dir() else trace.parent
    release = _release(directory)
    if tasks is None:
        tasks = next((directory / n for n in TASKS_NAMES if (directory / n).is_file()), None)
    if trace.is_dir():
        found = [trace / n for n in TRACE_NAMES if (trace / n).is_file()]
        if not found:
            raise ActiveMmError(
                f"{trace}: a capture directory holds its trace as {' or '.join(TRACE_NAMES[:2])}"
                "; none here"
            )
        trace = found[0]
    return trace, tasks, release


def _symbols(path: Path) -> Symbols:
    """A symbol table file (--kallsyms), or an error naming it and what was expected."""
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            return Symbols.parse(f, str(path))
    except FileNotFoundError:
        raise ActiveMmError(f"--kallsyms {path}: no such file") from None
    except OSError as e:
        raise ActiveMmError(f"--kallsyms {path}: cannot read it ({e.strerror})") from None
    except SymbolsError as e:
        raise ActiveMmError(f"--kallsyms {e}") from None


def _report_done(say: Callable[[str], None], step: str, total: int, done: int) -> None:
    say(f"{step}: {done:,} of {total:,} events")


def validate(
    trace: Path,
    tasks: Path | None = None,
    preset_name: str | None = None,
    inputs: str | None = None,
    mutants: list[str] | None = None,
    kernel_args: str | None = None,
    progress: Callable[[str], None] | None = None,
    kallsyms: Path | None = None,
) -> Result:
    """Replay `trace` through the model and score it against the trace's kprobe lines, under
    `preset_name` (default: the capture's kernel, from its metadata or else from where its
    kprobes landed) with `mutants`. `kernel_args`: the recorded kernel's command-line
    parameters (preempt=, rcu_nocbs=all), in place of those of the capture's metadata (a
    trace recorded elsewhere has none). `progress` hears what is being done (reading, each
    replay's events so far). `kallsyms`: the recording boot's symbols, naming the kprobe
    locations trace-cmd report and perf script text print as addresses (a trace.dat names
    them from its own; a capture's perf.data finds the kallsyms.txt beside it)."""
    say = progress or (lambda _msg: None)
    for word in (kernel_args or "").split():
        mode = word.removeprefix("preempt=")
        if mode != word and mode not in PREEMPT_MODES:
            raise ActiveMmError(
                f"--kernel-args: {word}: expected preempt= one of {', '.join(PREEMPT_MODES)}"
            )
    path, tasks, release = locate(trace, tasks)
    if kallsyms is None and (path.parent / KALLSYMS_NAME).is_file():
        kallsyms = path.parent / KALLSYMS_NAME  # (activemm capture --perf-data writes it)
    symbols = _symbols(kallsyms) if kallsyms is not None else None
    say(f"reading {path}")
    stats = ReadStats()
    meta = capture_meta(path.parent)
    read = list(read_trace(str(path), stats=stats, symbols=symbols))
    dropped = dropped_events(meta)
    cut = full_buffer_cut(read, dropped)
    kept = read if cut is None else [e for e in read if e.ts <= cut]
    events, recovered = kv.recover_births(kept)
    probes: set[str] = set()
    for e in events:
        if not isinstance(e, Probe):
            continue
        if lacking := kv.missing_args(e):
            problem = (
                f"without {', '.join(n + '=' for n in lacking)}: expected the reference's "
                "arguments (docs/validate.md, recording on your own machine)"
            )
        elif bad := kv.malformed_args(e):
            problem = (
                f"with {', '.join(bad)}: expected a hex pointer (0x...) or a number as the "
                "reference's fetch types print them"
            )
        else:
            probes.add(e.function)
            continue
        raise TraceError(
            str(path), e.line, f"a {e.function} probe line {problem}; a line cut short or edited?"
        )
    hooks = ("switch_mm_irqs_off", "enter_lazy_tlb", "finish_task_switch")
    if missing := [h for h in hooks if h not in probes]:
        unnamed = stats.unknown[UNNAMED_PROBE]
        raise ActiveMmError(
            f"{path}: no kprobes on "
            + (f"{', '.join(missing[:-1])} and {missing[-1]}" if missing[1:] else missing[0])
            + (f" (of {', '.join(hooks[:2])} and {hooks[2]})" if len(missing) < 3 else "")
            + "; nothing to score the model against (record with `activemm capture`, "
            "docs/validate.md)"
            + (
                f"; {unnamed} probe lines name an address, not a function, as trace-cmd "
                "report and perf script print kprobes: give the recording boot's symbols "
                "(--kallsyms, a copy of its /proc/kallsyms; a trace.dat keeps them unless "
                "its kallsyms read as zeros, a perf.data keeps none), or the tracefs text "
                "(/sys/kernel/tracing/trace)"
                if unnamed
                else ""
            )
        )
    if inputs is None:
        inputs = "markers" if set(MARKERS) <= probes else "sched"
    if inputs not in INPUTS:
        raise ActiveMmError(f"--inputs {inputs}: expected sched or markers")
    if preset_name:
        chosen, how = preset_name, "--preset"
    elif release:
        chosen, how = preset_for(release), f"the capture's kernel {release}"
    else:
        inferred = preset_from_probes(events)
        if inferred is None:
            raise ActiveMmError(f"{path}: {NO_KERNEL}")
        chosen = inferred
        how = "inferred: no metadata; switch_mm_irqs_off probed at " + (
            "+0x0 (Debian's 6.1)"
            if inferred.startswith("linux-6.1-")
            else "+0x4 (6.12, IBT)"
            if inferred.startswith("linux-6.12-")
            else "+0x4 (IBT), exec's activate_mm with a prev (6.16 and later)"
        )
        if inferred.endswith("-rt"):
            how += f"; {RT_THREAD}N threads ran (PREEMPT_RT)"
    if kernel_args is not None:
        meta = {**(meta or {}), "kernel_args": kernel_args}
    cfg = preset(chosen)
    ncpus, _ = peek_cpus(iter(events), stats=stats)
    if cfg.PREEMPT_RT and (rcu_offloaded(meta) or rcuop_everywhere(events, ncpus)):
        cfg = replace(cfg, RCU_NOCB_CPU_DEFAULT_ALL=True)
    if mutants:
        cfg = cfg.with_mutants(*mutants)
    snapshot = load_task_snapshot(tasks) if tasks else None
    # The sanitizer watches real presets; an ablation or a mutant is broken on purpose and
    # is only scored.
    sanitize = not cfg.mutants and cfg.lazy_tlb
    exits: dict[int, int] = {}
    preemption = "rt" if cfg.PREEMPT_RT else preempt_mode(meta)
    preemptible = cfg.PREEMPT_RT or fully_preemptible(meta)
    efi_workers: set[int] = set()
    late: dict[int, int] = {}
    for n in range(MAX_PASSES):
        step = "replaying" if n == 0 else f"replaying again (pass {n + 1}: exit windows found)"
        say(f"{step}: {len(events):,} events")
        result = Result(
            str(trace), cfg.name, inputs, release, preset_from=how, preemption=preemption
        )
        v = Validator(
            events, cfg, ncpus, snapshot, inputs, result, sanitize, exits, preemptible,
            efi_workers, late, stats.placements,
        )  # fmt: skip
        v.run(partial(_report_done, say, step, len(events)))
        if not v.found_exits and v.efi_workers <= efi_workers and not v.found_late:
            break
        # with tracepoints only, exit windows show after the fact (validate/windows.py), and
        # which kernel thread makes EFI calls: replay again, running those exits where they
        # happened and that thread's earlier calls as EFI calls
        exits |= v.found_exits
        efi_workers |= v.efi_workers
        late |= v.found_late  # (a later switch in for the same exit replaces the earlier)
    result.exit_points = exits
    if recovered:
        result.anomalies["birth without its mm_init return (taken from mm_alloc/dup_mmap)"] += (
            recovered
        )
    if cut is not None:
        result.anomalies[full_buffer_note(cut, dropped)] += len(read) - len(kept)
    if meta is not None and meta.get("trace_reset") is True:
        result.anomalies[
            "ring buffers reset while recording (a trace event removed): what came before the "
            "reset is not in the trace"
        ] += 1
    if kvm_pv_tlb_flush(meta):
        result.anomalies[KVM_PV_TLB_FLUSH_NOTE] += 1
    for name, n in _missed_hits(meta).items():
        if name == "putsignal" and "mark_oom_victim" not in probes:
            # __put_task_struct() matters only as the put of an OOM victim's signal->oom_mm
            name += ": no OOM victim in this trace, so none of them mattered"
        result.anomalies[f"kprobe hits missed while recording ({name})"] += n
    return result
