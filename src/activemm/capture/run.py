"""`activemm capture`: boot the kernel in QEMU (KVM when it works, else TCG), follow the guest
on its console, decode what it ships on the second serial port, and write the capture
directory whole or not at all."""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from activemm.capture import WORKLOADS, guest, script
from activemm.capture.kernel import (
    CaptureError,
    KernelImage,
    btf,
    default_preemption,
    need,
    probe_offsets,
)
from activemm.trace import readers

# the probed functions the scores rest on (script.CORE, finish_task_switch by its name)
CORE_FUNCTIONS = frozenset(
    "finish_task_switch" if f == "@FINISH_TASK_SWITCH@" else f for f in script.CORE
)
BOOT_TIMEOUT_KVM = 45.0  # a broken KVM can hang silently in the decompressor
Progress = Callable[[str], None]


@dataclass
class CaptureOptions:
    out: Path
    smp: int = 2
    workload: str = "all"
    scale: int = 1
    accel: str = "auto"  # auto | kvm | tcg
    memory_mb: int = 0  # 0: enough for the ring buffers
    timeout: float = 300.0  # the guest's watchdog; the host waits a little longer
    allow_lost: bool = False
    keep_work: bool = False
    run: str | None = None  # a busybox sh command line run after the built-in workload
    program: Path | None = None  # a C source or static executable, /bin/program in the guest
    modules: tuple[str, ...] = ()  # the kernel's modules to load first (--module), in order
    kernel_args: str = ""  # more kernel command-line parameters (--kernel-args)
    cpu: str = ""  # QEMU's -cpu model (--cpu); "": host with KVM, QEMU's default with TCG
    firmware: str = "bios"  # bios (QEMU's SeaBIOS) | uefi (OVMF: EFI runtime services)
    buffer_mb: int = 0  # each CPU's ring buffer; 0: sized from --scale (ring_buffer_mb)
    trace_dat: bool = False  # also write the buffers as trace.dat (trace-cmd extract)
    perf_data: bool = False  # also record the events with perf record -a (perf.data)


@dataclass
class Shipped:
    files: dict[str, bytes] = field(default_factory=dict)
    done: bool = False


def decode_serial(text: str) -> Shipped:
    """The guest's shipping format: `=== BEGIN name`, base64 of gzip, `=== END name`, ...,
    `=== DONE`. Carriage returns (the tty's onlcr) are ignored, and so is what comes before a
    marker on its line: UEFI firmware (OVMF) leaves terminal escapes on the port, with no
    newline, before the guest writes its first marker. (No base64 line holds "=== ".)"""
    out = Shipped()
    name: str | None = None
    chunks: list[str] = []
    for raw in text.splitlines():
        line = raw.strip("\r\n ")
        if (marker := line.find("=== ")) > 0:
            line = line[marker:]
        if line.startswith("=== BEGIN "):
            name, chunks = line[10:], []
        elif line.startswith("=== END ") and name is not None:
            try:
                out.files[name] = gzip.decompress(base64.b64decode("".join(chunks)))
            except (binascii.Error, OSError, EOFError) as e:
                raise CaptureError(f"the guest's {name} arrived damaged: {e}") from None
            name = None
        elif line == "=== DONE":
            out.done = True
        elif name is not None:
            chunks.append(line)
    return out


def ring_buffer_stats(meta: str) -> dict[str, dict[str, int]]:
    """`stats cpuN entries: 1 overrun: 0 ...` lines of the guest's meta file."""
    stats: dict[str, dict[str, int]] = {}
    for line in meta.splitlines():
        if line.startswith("stats "):
            _, cpu, rest = line.split(" ", 2)
            stats[cpu] = {
                k.strip().replace(" ", "_"): int(v)
                for k, v in re.findall(r"([a-z ]+):\s*(\d+)(?:\s|$)", rest)
            }
    return stats


# The probes whose every hit the scores rest on: the hooks the model is scored against and the
# births and deaths that bind its mms to addresses. A miss of one of these loses an event as
# surely as a full ring buffer, and the capture is refused (unless --allow-lost). The other
# probes are markers of when a path ran (the OOM killer's signal, io_uring, /proc files,
# userfaultfds, khugepaged): their misses are recorded (meta.json's kprobe_missed) and
# reported by validate among the trace's anomalies. __put_task_struct, run from RCU softirqs
# that can land inside another probe's handler, misses a hit or two in most captures.
CORE_PROBES = frozenset(
    {"mmswitch", "lazytlb", "finish", "mmdrop", "mmput", "mmputdone", "mminit", "mmalloc",
     "dupmm", "usemm", "unusemm", "leavemm"}
)  # fmt: skip


def lost_probe_hits(profile: dict[str, dict[str, int]]) -> dict[str, int]:
    """The misses of a kprobe_profile that lose the capture: those of CORE_PROBES."""
    return {n: p["missed"] for n, p in profile.items() if p["missed"] and n in CORE_PROBES}


def _counts(hits: dict[str, int]) -> str:
    """Missed hits per probe, as the messages name them: `mmswitch 1, mmdrop 2`."""
    return ", ".join(f"{name} {n}" for name, n in sorted(hits.items()))


def kprobe_profile(meta: str) -> dict[str, dict[str, int]]:
    """`kprobe_profile EVENT HITS MISSED` lines of the guest's meta file (tracefs's
    kprobe_profile): per probe, its hits and the hits it missed (a return probe out of
    instances, a probe hit inside another probe's handler): events lost as surely as a
    full ring buffer's."""
    profile: dict[str, dict[str, int]] = {}
    for line in meta.splitlines():
        fields = line.split()
        if (
            len(fields) == 4
            and fields[0] == "kprobe_profile"
            and all(f.isdigit() for f in fields[2:])
        ):
            profile[fields[1]] = {"hits": int(fields[2]), "missed": int(fields[3])}
    return profile


def accelerators(choice: str) -> list[str]:
    if choice == "tcg":
        return ["tcg"]
    kvm_ok = os.access("/dev/kvm", os.R_OK | os.W_OK)
    if choice == "kvm":
        if not kvm_ok:
            raise CaptureError("--accel kvm: /dev/kvm is missing or not accessible")
        return ["kvm"]
    return ["kvm", "tcg"] if kvm_ok else ["tcg"]


PV_TLB_FLUSH_OFF = "kvm-pv-tlb-flush=off"


def cpu_model(cpu: str, accel: str) -> str:
    """QEMU's -cpu for this accelerator: --cpu, else `host` with KVM and `qemu64` with TCG.
    With KVM, KVM's paravirtual TLB flush is turned off unless --cpu names it: a guest that
    has it flushes through kvm_flush_tlb_multi() (arch/x86/kernel/kvm.c), which sends no IPI
    to a vCPU the host has preempted (the host flushes that vCPU's TLB when it next enters
    it), so a lazy CPU whose vCPU was preempted never switches to init_mm on that flush: a
    choice made by the host's scheduler, which nothing in the guest records. Without it the
    guest flushes as on hardware, native_flush_tlb_multi(), the flush the model mirrors.
    (TCG offers no KVM paravirtual features.)"""
    if accel != "kvm":
        return cpu or "qemu64"
    model = cpu or "host"
    return model if "kvm-pv-tlb-flush" in model else f"{model},{PV_TLB_FLUSH_OFF}"


def qemu_accel(accel: str, single: bool = False) -> str:
    """QEMU's -accel for an accelerator: multi-threaded TCG (a host thread per vCPU), or
    with `single` one host thread that runs every vCPU in turn (boot(): a crash's retry)."""
    if accel == "kvm":
        return "kvm"
    return "tcg,thread=single" if single else "tcg,thread=multi"


def qemu_command(
    image: KernelImage,
    initrd: Path,
    opts: CaptureOptions,
    accel: str,
    console: Path,
    ship: Path,
    single: bool = False,
) -> list[str]:
    memory = guest_memory_mb(opts)
    append = (
        f"console=ttyS0 panic=-1 loglevel=4 mitigations=off activemm.workload={opts.workload} "
        f"activemm.scale={opts.scale} activemm.timeout={int(opts.timeout)} "
        f"activemm.buffer_kb={ring_buffer_mb(opts) * 1024} activemm.perf_mb={PERF_MB}"
    )
    if opts.kernel_args:
        append += " " + opts.kernel_args
    if re.search(r"-rt\b", image.release):
        # PREEMPT_RT threads every interrupt handler; under TCG the serial port's thread can
        # lag its interrupt so far that the spurious-IRQ detector disables IRQ 3 ("nobody
        # cared"), and the trace then crawls out of ttyS1 by polling
        append += " noirqdebug"
    cmd = [
        need("qemu-system-x86_64", "qemu-system-x86"),
        "-nodefaults", "-display", "none", "-no-reboot", "-monitor", "none",
        "-smp", str(opts.smp), "-m", str(memory),
        "-initrd", str(initrd), "-append", append,
        "-serial", f"file:{console}", "-serial", f"file:{ship}",
    ]  # fmt: skip
    if opts.firmware == "uefi":
        # OVMF starts the kernel's EFI stub (the bzImage; the ELF vmlinux boots by PVH only)
        cmd += ["-bios", str(ovmf()), "-kernel", str(image.vmlinuz)]
    else:
        cmd += ["-kernel", str(image.vmlinux)]
    cmd += ["-accel", qemu_accel(accel, single)]
    if accel == "kvm":
        cmd += ["-cpu", cpu_model(opts.cpu, accel)]
    elif opts.cpu:
        cmd += ["-cpu", opts.cpu]
    return cmd


def boot(
    image: KernelImage, initrd: Path, opts: CaptureOptions, work: Path, progress: Progress
) -> tuple[str, str, str, dict[str, float]]:
    """Run the guest to its poweroff. Returns (QEMU's -accel, console text, shipped text,
    timings). Tries each accelerator in turn; a KVM that aborts or hangs before the guest
    says it booted is abandoned for TCG. A guest that crashes under TCG (QEMU 7.2's TCG now
    and then panics or oopses a stock kernel) gets one more try, in TCG's single-threaded
    mode: most of those crashes are an "Oops: int3" where a vCPU ran kernel text another
    vCPU had just patched (text_poke_bp(): a static key flipped) as it was before the patch,
    which multi-threaded TCG lets happen and one host thread running the vCPUs in turn does
    not, and a retry in the same mode met the same oops every time (six recordings). A
    guest that oopsed is never taken as ground truth, even when its trace arrived, and is
    stopped as soon as its console shows the oops (_run_guest)."""
    failures: list[str] = []
    consoles: list[Path] = []
    attempts = [(accel, n) for accel in accelerators(opts.accel) for n in range(TRIES[accel])]
    for accel, n in attempts:
        if n and not failures[-1].startswith(f"{accel}: crashed"):
            continue  # retry only a guest that crashed (TCG's emulation, not the kernel)
        console, ship = work / f"console-{accel}-{n}.log", work / f"ship-{accel}-{n}.txt"
        single = accel == "tcg" and n > 0
        cmd = qemu_command(image, initrd, opts, accel, console, ship, single)
        again = " (again, one host thread for every vCPU)" if single else ""
        progress(f"booting Linux {image.release} with {accel.upper()}, {opts.smp} CPUs{again}")
        result = _run_guest(cmd, console, ship, accel, opts, progress)
        if isinstance(result, tuple):
            return (qemu_accel(accel, single), *result[1:])
        failures.append(result)
        if console.exists() and console.stat().st_size:
            consoles.append(console)
        progress(f"{accel.upper()} failed ({result[len(accel) + 2 :][:80]})")
    kept = shows = ""
    if consoles:
        target = opts.out.with_name(opts.out.name + ".console.log")
        shutil.copyfile(consoles[-1], target)
        kept = f" (the guest's console: {target})"
        shows = (
            f" (the guest's console, {target}, shows the workload's last output and where "
            "each of its tasks waited)"
        )
    if failures[-1].endswith(OUT_OF_TIME):
        raise CaptureError(
            f"the workload did not end within --timeout {opts.timeout:g} s: the guest's "
            f"watchdog powered it off, no trace kept{shows}; give a longer --timeout or a "
            "smaller --scale"
        )
    raise CaptureError("QEMU could not run the guest: " + "; ".join(failures) + kept)


TRIES = {"kvm": 1, "tcg": 2}
# A recording whose core probes missed hits is made again, up to three in all: such misses
# are timing (a flush IPI's hook inside another probe's handler); two in a row happened to 2
# of 22 captures of a sweep (2026-12-07), whose next recordings were whole.
RECORDINGS = 3
WATCHDOG = "ACTIVEMM: watchdog: the guest ran out of time"  # guest/init.sh's say()
WATCHDOG_GRACE = 60.0  # seconds the host waits for the guest's watchdog past --timeout
OUT_OF_TIME = "the workload ran out of time"
CRASH_MARKS = ("Kernel panic", "BUG:", "Oops:", "general protection fault")


def _run_guest(
    cmd: list[str], console: Path, ship: Path, accel: str, opts: CaptureOptions, progress: Progress
) -> tuple[str, str, str, dict[str, float]] | str:
    """One QEMU run: the boot's result, or a one-line failure starting with `accel: `."""
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen: set[str] = set()
    deadline = t0 + (BOOT_TIMEOUT_KVM if accel == "kvm" else 240.0)
    timed_out = ""
    try:
        while proc.poll() is None:
            time.sleep(0.2)
            text = console.read_text(errors="replace") if console.exists() else ""
            for key, msg in (
                ("ACTIVEMM: booted", "workload running"),
                ("ACTIVEMM: workload done", "shipping the trace"),
            ):
                if key in text and key not in seen:
                    seen.add(key)
                    timings[key.split(": ")[1]] = time.monotonic() - t0
                    progress(msg)
                    deadline = time.monotonic() + opts.timeout + WATCHDOG_GRACE
            if time.monotonic() > deadline:
                timed_out = "before the guest booted" if not seen else "in the workload"
                break
            if any(k in text for k in CRASH_MARKS):
                # an oops in a kernel thread leaves the guest running (only a panic ends
                # it, panic=-1) until its watchdog: it is no ground truth, stop it now
                break
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    qemu_out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    text = console.read_text(errors="replace") if console.exists() else ""
    # A guest kernel that oopsed is no ground truth, even when its trace arrived.
    panic = [line for line in text.splitlines() if any(k in line for k in CRASH_MARKS)]
    if panic:
        when = "while booting" if "ACTIVEMM: booted" not in text else "in the workload"
        return f"{accel}: crashed {when}: {panic[0].strip()[:240]}"
    if "ACTIVEMM: shipped" in text:
        timings["poweroff"] = time.monotonic() - t0
        return accel, text, ship.read_text(errors="replace"), timings
    if WATCHDOG in text:  # the guest ran: its workload did not end in time
        return f"{accel}: {OUT_OF_TIME}"
    if timed_out == "in the workload":  # the guest's own watchdog should have fired by now
        slow = (
            f"; TCG runs {opts.smp} CPUs on this machine's {os.cpu_count()}"
            if accel == "tcg"
            else ""
        )
        return (
            f"{accel}: timed out in the workload, and the guest's own watchdog (--timeout "
            f"{opts.timeout:g} s) did not power it off: it hung, or ran too slowly{slow} "
            "(try a smaller --smp or a longer --timeout)"
        )
    if timed_out:
        return f"{accel}: timed out {timed_out}"
    last = (qemu_out.strip().splitlines() or text.strip().splitlines() or ["no output"])[-1]
    return f"{accel}: {last.strip()[:300]}"


BUFFER_MB = 16  # each CPU's ring buffer at --scale 1
# What the built-in workloads write per --scale step on their busiest CPU (measured, -w all
# --scale 50): with 1 or 2 CPUs up to 3.4 MiB (6.1 with 2: 167 MiB on CPU 0, where two of the
# munmap workload's touchers yield to each other for its whole run), with more about 1.4 MiB
# in all, the busiest CPU taking under 40% of it (6.12 with 4: 68 MiB, 26 on one CPU)
CROWDED_MB_PER_SCALE = 3.5  # 1 or 2 CPUs
BUFFER_MB_PER_SCALE = 1.5  # 3 CPUs; 3/N of it with N more


def ring_buffer_mb(opts: CaptureOptions) -> int:
    """Each guest CPU's ring buffer in MiB: --buffer-mb, or else 16 MiB plus room for the
    busiest CPU's share of what the built-in workload writes at --scale."""
    if opts.buffer_mb:
        return opts.buffer_mb
    if opts.workload == "none":
        return BUFFER_MB
    if opts.smp <= 2:
        per_step = CROWDED_MB_PER_SCALE
    else:
        per_step = BUFFER_MB_PER_SCALE * min(1.0, 3 / opts.smp)
    return BUFFER_MB + math.ceil(per_step * (opts.scale - 1))


PERF_MB = 8  # --perf-data: each CPU's perf mmap buffer


def perf_losses(out: Path, data: bytes) -> dict[str, int]:
    """What perf record lost in the guest (`perf report --stats` of its perf.data)."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "perf.data").write_bytes(data)
        try:
            return readers.perf_losses(
                str(out / "perf.data"),
                need("perf", "linux-perf", "--perf-data"),
                Path(tmp) / "perf.data",
            )
        except readers.TraceError as e:
            raise CaptureError(str(e)) from None


def min_memory_mb(
    smp: int, buffer_mb: int = BUFFER_MB, trace_dat: bool = False, perf_data: bool = False
) -> int:
    """Guest memory that leaves room for every CPU's ring buffer of `buffer_mb` MiB (and the
    buffers' own bookkeeping) besides the workload; with `trace_dat`, room in /tmp for a
    trace.dat of full buffers and the kernel's symbols too; with `perf_data`, for perf and
    its libraries, its buffers and a perf.data of as many events (a perf sample takes about
    2.5 times the bytes of its ring-buffer event)."""
    least = 256 + (64 + buffer_mb * (2 if trace_dat else 1)) * smp + (48 if trace_dat else 0)
    return least + ((PERF_MB + buffer_mb * 5 // 2) * smp + 80 if perf_data else 0)


def guest_memory_mb(opts: CaptureOptions) -> int:
    """The guest's memory: --memory, or 0 for the least its CPUs' ring buffers leave room in."""
    return opts.memory_mb or min_memory_mb(
        opts.smp, ring_buffer_mb(opts), opts.trace_dat, opts.perf_data
    )


def host_memory_mb() -> int:
    """This machine's physical memory in MiB (what QEMU's guest RAM comes out of)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20


def check_options(opts: CaptureOptions) -> None:
    """Refuse what cannot work before anything is downloaded or booted."""
    buffer = ring_buffer_mb(opts)
    least = min_memory_mb(opts.smp, buffer, opts.trace_dat, opts.perf_data)
    if opts.memory_mb and opts.memory_mb < least:
        raise CaptureError(
            f"--memory {opts.memory_mb}: expected at least {least} MiB with {opts.smp} CPUs "
            f"(their ring buffers of {buffer} MiB), or 0 for that"
        )
    wanted, host = guest_memory_mb(opts), host_memory_mb()
    if wanted > host:
        raise CaptureError(
            f"the guest would need {wanted} MiB ({opts.smp} CPUs, ring buffers of {buffer} MiB "
            f"each) and this machine has {host} MiB: give a smaller --buffer-mb, --memory, "
            "--scale or --smp"
        )
    if opts.trace_dat:
        need("trace-cmd", "trace-cmd", "--trace-dat")
    if opts.perf_data:
        need("perf", "linux-perf", "--perf-data")
    out = opts.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CaptureError(f"{out}: exists and is not empty; choose another -o or remove it")
    if not out.parent.is_dir():
        raise CaptureError(f"{out}: directory {out.parent} does not exist")
    names = opts.workload.split(",")
    single = [n for n in WORKLOADS if n not in ("all", "parallel")]
    unknown = [n for n in names if n not in WORKLOADS and n != "none"]
    if unknown or (len(names) > 1 and {"all", "parallel", "none"} & set(names)):
        raise CaptureError(
            f"unknown workload {opts.workload!r}: expected all, parallel, none, or one or more "
            f"(comma-separated) of {', '.join(single)}"
        )
    if "hotplug" in names and opts.smp < 2:
        raise CaptureError(
            f"--workload hotplug with --smp {opts.smp}: it takes the last CPU offline and back, "
            "and CPU 0 stays: give --smp 2 or more"
        )
    if opts.workload == "none" and opts.run is None and opts.program is None:
        raise CaptureError("--workload none leaves nothing to run: give --run or --program")
    if opts.workload == "none" and opts.scale != 1:
        raise CaptureError(
            f"--scale {opts.scale} multiplies the built-in workloads' counts, and --workload "
            "none runs none: give your program its own arguments with --run 'program ARGS'"
        )
    if opts.run is not None and not opts.run.strip():
        raise CaptureError("--run: the command line is empty")
    if opts.cpu and not re.fullmatch(r"[\w.+=,-]+", opts.cpu):
        raise CaptureError(
            f"--cpu {opts.cpu!r}: expected a QEMU CPU model with optional +feature/-feature "
            "words, e.g. max or host,-pcid (`qemu-system-x86_64 -cpu help` lists the models)"
        )
    if opts.firmware not in ("bios", "uefi"):
        raise CaptureError(f"--firmware {opts.firmware!r}: expected bios or uefi")
    if opts.firmware == "uefi":
        ovmf()
    if opts.program is not None:
        guest.check_program(opts.program)
    for name in opts.modules:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise CaptureError(f"--module {name!r}: expected a module name, such as brd or zram")
    check_kernel_args(opts.kernel_args)


# The parameters the capture sets itself: the guest's console and panic behaviour, the
# workload's parameters for /init, and rdinit/init (the busybox /init runs the workload).
OWN_KERNEL_ARGS = ("console", "panic", "activemm.", "rdinit", "init")


def check_kernel_args(args: str) -> None:
    """--kernel-args: plain `name` or `name=value` words that leave the capture's own alone."""
    for word in args.split():
        name = word.split("=", 1)[0]
        if not re.fullmatch(r"[A-Za-z0-9_.,:/+-]+(=[^\s\"'`$;&|<>]*)?", word):
            raise CaptureError(
                f"--kernel-args: {word!r} is not a kernel parameter (expected name or "
                "name=value, e.g. preempt=full)"
            )
        if any(
            name == own or (own.endswith(".") and name.startswith(own)) for own in OWN_KERNEL_ARGS
        ):
            raise CaptureError(
                f"--kernel-args: {name} is set by the capture itself (the guest's console, "
                "panic and /init run the workload and ship the trace); leave it out"
            )


def capture(
    image: KernelImage, opts: CaptureOptions, progress: Progress = lambda _msg: None
) -> dict[str, object]:
    """Record one capture into opts.out. Returns the metadata written."""
    check_options(opts)
    out = opts.out
    offsets = probe_offsets(btf(image))
    kprobes = guest.definitions_for(offsets, opts.modules)
    work = Path(tempfile.mkdtemp(prefix="activemm-capture-"))
    try:
        progress("building the initramfs (busybox, workload, kprobes)")
        names = set(opts.workload.split(","))
        modules = (
            guest.kernel_modules(image.modules, guest.VHOST_MODULES)
            if names & {"vhost", "all", "parallel"}
            else []
        )
        modules += guest.named_modules(image.modules, opts.modules)
        initrd = guest.build_initramfs(
            work, kprobes, run=opts.run, program=opts.program, modules=modules,
            trace_cmd=opts.trace_dat, perf=opts.perf_data,
        )  # fmt: skip
        # A core probe that missed a hit (one that fired inside another probe's handler, on
        # a vCPU the host had stalled) loses the recording, not the workload: another one.
        for recording in range(RECORDINGS):
            accel, console, shipped_text, timings = boot(image, initrd, opts, work, progress)
            shipped = decode_serial(shipped_text)
            missing = sorted({"meta", "trace"} - shipped.files.keys())
            if not shipped.done or missing:
                what = " and ".join(f"its {name}" for name in missing) or "its files"
                tail = " / ".join(console.strip().splitlines()[-3:])
                raise CaptureError(
                    f"the guest's trace did not arrive whole ({what} missing; console: {tail})"
                )
            meta_text = shipped.files["meta"].decode(errors="replace")
            profile = kprobe_profile(meta_text)
            core = lost_probe_hits(profile)
            if not core or opts.allow_lost or recording == RECORDINGS - 1:
                break
            progress(f"the guest's kprobes missed hits ({_counts(core)}): recording again")
        got = re.search(r"^buffer_size_kb (\d+)", meta_text, re.M)
        if got and int(got[1]) < ring_buffer_mb(opts) * 1024:
            raise CaptureError(
                f"the guest could not give each CPU a ring buffer of {ring_buffer_mb(opts)} MiB "
                f"(it has {int(got[1]) // 1024} MiB): give more --memory, or a smaller "
                "--buffer-mb"
            )
        stats = ring_buffer_stats(meta_text)
        lost = {
            cpu: s for cpu, s in stats.items() if s.get("overrun", 0) or s.get("dropped_events", 0)
        }
        if lost and not opts.allow_lost:
            raise CaptureError(
                f"the guest lost events on {', '.join(sorted(lost))} (ring buffer full): "
                f"each CPU had {ring_buffer_mb(opts)} MiB; give a larger --buffer-mb, use a "
                "smaller --scale, or --allow-lost to keep the trace anyway"
            )
        missed = {name: p["missed"] for name, p in profile.items() if p["missed"]}
        if core and not opts.allow_lost:
            raise CaptureError(
                f"the guest's kprobes missed hits ({_counts(core)}) in each of {RECORDINGS} "
                "recordings: a return probe out of instances, or a probe hit inside another's "
                "handler; record again, or --allow-lost to keep the trace anyway"
            )
        # Removing a trace event (a kprobe or uprobe deleted by the workload) resets every
        # ring buffer: what came before is gone, the start marker with it.
        reset = b"activemm trace start" not in shipped.files["trace"]
        if reset and not opts.allow_lost:
            raise CaptureError(
                "the guest's ring buffers were reset during the workload (the trace lacks its "
                "start marker; removing a kprobe or uprobe event does that): keep the workload "
                "from removing trace events, or --allow-lost to keep the trace anyway"
            )
        if opts.trace_dat and "trace.dat" not in shipped.files:
            why = shipped.files.get("trace-cmd.log", b"").decode(errors="replace").strip()
            raise CaptureError(
                "trace-cmd extract failed in the guest: "
                + (why.splitlines()[-1] if why else "it left no message")
            )
        perf_log = shipped.files.get("perf.log", b"").decode(errors="replace")
        # (perf record ends on the SIGINT it was sent by raising it again: 128 + 2)
        recorded = re.search(r"^perf record exit status (0|130)$", perf_log, re.M)
        if opts.perf_data and not (recorded and "perf.data" in shipped.files):
            said = [
                line.strip()
                for line in perf_log.splitlines()
                if line.strip() and not line.startswith("perf record exit status")
            ]
            raise CaptureError(
                "perf record failed in the guest: "
                + (" / ".join(said[-3:]) if said else "it left no message")
            )
        perf_lost = perf_losses(opts.out, shipped.files["perf.data"]) if opts.perf_data else {}
        if any(perf_lost.values()) and not opts.allow_lost:
            raise CaptureError(
                f"perf record lost events in the guest ({_counts(perf_lost)}): record again, "
                "or --allow-lost to keep the capture anyway"
            )
        release = re.search(r"^release (\S+)", meta_text, re.M)
        fts = re.search(r"^finish_task_switch (\S+)", meta_text, re.M)
        failed = [
            line
            for line in shipped.files.get("kprobes.failed", b"").decode().splitlines()
            if line.strip()
        ]
        refused_core = [
            words[1]
            for line in failed
            if line.startswith(("p:", "r"))
            and len(words := line.split()) > 1
            and words[1].split(".")[0] in CORE_FUNCTIONS
        ]
        if refused_core:
            raise CaptureError(
                f"Linux {release[1] if release else image.release} refused the kprobe on "
                f"{', '.join(refused_core)}, which the scores rest on (not a function of its "
                "own in this build: inlined or renamed?); nothing it records could be "
                "validated (see /sys/kernel/tracing/available_filter_functions in the guest)"
            )
        wanted = {m.replace("-", "_") for m in opts.modules}
        for line in failed:
            asked = re.fullmatch(r"insmod /modules/\d+-(\S+)\.ko(?:: (.*))?", line.strip())
            if asked and asked.group(1).replace("-", "_") in wanted:
                why = f": {asked.group(2)}" if asked.group(2) else ""
                raise CaptureError(
                    f"--module {asked.group(1)}: insmod failed in the guest{why} (does it "
                    "need another module loaded first? give them in load order)"
                )
        status = re.search(
            r"workload exit status (\d+)", shipped.files.get("workload.log", b"").decode()
        )
        kind = accel.split(",")[0]  # kvm or tcg, whatever QEMU's -accel said besides
        meta: dict[str, object] = {
            "kernel": release[1] if release else image.release,
            "cpus": opts.smp,
            "memory_mb": guest_memory_mb(opts),
            "buffer_mb": ring_buffer_mb(opts),
            "workload": opts.workload,
            "run": opts.run,
            "program": opts.program.name if opts.program else None,
            "modules": list(opts.modules),
            "kernel_args": opts.kernel_args,
            # what it runs with when kernel_args choose no preempt= (its config's choice)
            "preempt_default": default_preemption(image.config),
            "workload_status": int(status[1]) if status else None,
            "scale": opts.scale,
            "accel": kind,
            "qemu_accel": accel,  # tcg,thread=single: a crash's retry (boot())
            "cpu": cpu_model(opts.cpu, kind),
            "firmware": opts.firmware,
            "btf_offsets": offsets,
            "finish_task_switch": fts[1] if fts else None,
            "kprobes": shipped.files.get("kprobes", b"").decode().splitlines(),
            "kprobes_refused": failed,
            "ring_buffer": stats,
            "kprobe_profile": profile,
            "kprobe_missed": missed,
            "lost_events": bool(lost) or reset or bool(core),
            "trace_reset": reset,
            **({"perf_lost": perf_lost} if opts.perf_data else {}),
            "seconds": {k: round(v, 2) for k, v in timings.items()},
            "qemu": subprocess.run(
                [cmd_qemu(), "--version"], capture_output=True, text=True
            ).stdout.splitlines()[0],
        }
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            (tmp / "trace.txt.gz").write_bytes(gzip.compress(shipped.files["trace"], 9))
            (tmp / "tasks_start.txt").write_bytes(shipped.files.get("tasks_start", b""))
            (tmp / "tasks_end.txt").write_bytes(shipped.files.get("tasks_end", b""))
            (tmp / "workload.log").write_bytes(shipped.files.get("workload.log", b""))
            if opts.trace_dat:
                (tmp / "trace.dat").write_bytes(shipped.files["trace.dat"])
            if opts.perf_data:
                (tmp / "perf.data").write_bytes(shipped.files["perf.data"])
                (tmp / "kallsyms.txt").write_bytes(shipped.files.get("kallsyms", b""))
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
            umask = os.umask(0)
            os.umask(umask)
            tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; a normal directory is 0777 - umask
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            if out.exists():
                out.rmdir()
            tmp.rename(out)
        except OSError as e:
            raise CaptureError(
                f"{out}: cannot take the capture ({e.strerror}): something wrote into it while "
                f"the guest ran; the capture is kept in {tmp}"
            ) from None
        return meta
    finally:
        if opts.keep_work:
            progress(f"work files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


OVMF = ("/usr/share/ovmf/OVMF.fd", "/usr/share/qemu/OVMF.fd", "/usr/share/OVMF/OVMF.fd")


def ovmf() -> Path:
    """The OVMF firmware image for --firmware uefi (Debian's ovmf package)."""
    for path in OVMF:
        if Path(path).is_file():
            return Path(path)
    raise CaptureError("--firmware uefi needs OVMF: `apt-get install ovmf`")


def cmd_qemu() -> str:
    return need("qemu-system-x86_64", "qemu-system-x86")
