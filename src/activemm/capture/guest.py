"""What runs inside the QEMU guest: the kprobe definitions (with this kernel's BTF offsets),
the workload (built static with the host's gcc) and the initramfs that carries them."""

from __future__ import annotations

import gzip
import io
import lzma
import shutil
import subprocess
from collections.abc import Collection
from importlib import resources
from pathlib import Path

from activemm.capture.kernel import CaptureError, need

GROUP = "activemm"


# Return probes: how many calls of the function may be in flight at once (kretprobe instances:
# under load dozens of tasks sleep in exit_mmap() or mm_init(), and a call that finds none left
# is a missed hit, the kprobe_profile's nmissed). The kernel's limit is 4096
# (KRETPROBE_MAXACTIVE_MAX).
MAXACTIVE = 1024


def kprobe_definitions(
    off: dict[str, int],
    ring: dict[str, int] | None = None,
    oom: dict[str, int] | None = None,
    proc: dict[str, int] | None = None,
    uffd: dict[str, int] | None = None,
    thp: dict[str, int] | None = None,
    modules: Collection[str] = (),
    ksm: dict[str, int] | None = None,
) -> list[str]:
    """The probes of docs/validate.md. `@FINISH_TASK_SWITCH@` is replaced in the guest by the
    symbol's real name (a compiler clone such as finish_task_switch.isra.0). With `ring`
    (io_ring_ctx offsets), the io_uring markers: io_uring_setup, whose io_uring_create()
    mmgrab()s current->mm into ctx->mm_account, and io_destroy_buffers(ctx), which
    io_ring_ctx_free() calls shortly before mmdrop(ctx->mm_account) (both inlined, and
    mm_account is cleared right after the mmdrop). With `oom` (task_struct.signal and
    signal_struct offsets), the OOM killer's: mark_oom_victim(tsk), which mmgrab()s tsk->mm
    into signal->oom_mm when that is still NULL, and __put_task_struct(tsk), whose
    put_signal_struct() frees the signal_struct when sigcnt is 1, mmdrop_async()ing its
    oom_mm. With `proc` (file and seq_file offsets), the /proc/PID file markers:
    proc_mem_open() returning the mm it mmgrab()bed for an open file, and the releases that
    mmdrop() it. With `uffd` (file and userfaultfd_ctx offsets), userfaultfd's:
    new_userfaultfd(), which mmgrab()s current->mm into the new context, and
    userfaultfd_release(), whose userfaultfd_ctx_put() mmdrop()s it. With `thp`
    (khugepaged_offsets), khugepaged's: __khugepaged_exit(mm) with the mm khugepaged's scan
    cursor rests on (`slot` 0: none), and collect_mm_slot() with its slot's mm and mm_users:
    the reference __khugepaged_enter() mmgrab()bed outlives __mmput when the cursor is on
    the exiting mm, and khugepaged drops it on a later pass. For the `modules` loaded
    (capture --module), their functions' markers: binder_linux's (binder_markers) and kvm's
    (kvm_markers). Binder's: binder_alloc_init(alloc), which binder_open() calls and which
    mmgrab()s current->mm into alloc->mm, and binder_alloc_deferred_release(alloc), whose
    end mmdrop()s it (binder_free_proc(), after the file's release: in a kworker's
    binder_deferred_func(), or in a task that put the proc's last temporary reference); the
    `alloc` address pairs the two. With `ksm` (ksm_offsets), KSM's: exit_mmap()'s marker
    also reads the mm's flags, whose MMF_VM_MERGEABLE is still set when __ksm_exit() (run
    just before it by __mmput) left the mm's slot for ksmd, and remove_rmap_item_from_tree()
    names the mm of each rmap_item it takes out, with its mm_users (ksm_markers). Always,
    process_mrelease()'s (mrelease_markers), and mmput()'s return, which follows the end of
    the __mmput() it ran (mmput_async_fn() runs one too, in a kworker, with no such marker;
    a kretprobe on the static __mmput itself is refused with EINVAL on Debian 13's 6.17,
    and PREEMPT_RT builds inline it)."""

    def task(reg: str, prefix: str) -> str:
        return (
            f"{prefix}pid=+{off['pid']}({reg}):s32 {prefix}flags=+{off['flags']}({reg}):x32 "
            f"{prefix}mm=+{off['mm']}({reg}):x64 {prefix}active_mm=+{off['active_mm']}({reg}):x64 "
            f"{prefix}comm=+{off['comm']}({reg}):string"
        )

    g = GROUP
    loaded = {m.replace("-", "_") for m in modules}
    return (
        [
            f"p:{g}/mmswitch switch_mm_irqs_off prev=%di:x64 next=%si:x64 tsk=%dx:x64 "
            + task("%dx", "t_"),
            f"p:{g}/lazytlb enter_lazy_tlb mm=%di:x64 tsk=%si:x64 " + task("%si", "t_"),
            f"p:{g}/finish @FINISH_TASK_SWITCH@ prev=%di:x64 " + task("%di", "prev_"),
            f"p:{g}/mmdrop __mmdrop mm=%di:x64",
            f"p:{g}/mmput exit_mmap mm=%di:x64"
            + (f" flags=+{ksm['flags']}(%di):x64" if ksm else ""),
            f"r{MAXACTIVE}:{g}/mmputdone exit_mmap",
            f"r{MAXACTIVE}:{g}/mmputend mmput",
            f"r{MAXACTIVE}:{g}/mminit mm_init ret=$retval:x64",
            f"r{MAXACTIVE}:{g}/mmalloc mm_alloc ret=$retval:x64",
            f"p:{g}/dupmm dup_mmap mm=%di:x64 oldmm=%si:x64",
            f"p:{g}/usemm kthread_use_mm mm=%di:x64",
            f"p:{g}/unusemm kthread_unuse_mm mm=%di:x64",
            # no argument: leave_mm() acts on the CPU it runs on (the line's CPU column), and
            # later kernels' takes none (`void leave_mm(void)`, 6.12's too): a `cpu=%di` fetch
            # read a stale register there (cpu=67580144)
            f"p:{g}/leavemm leave_mm",
        ]
        + (
            [
                f"p:{g}/uringsetup __x64_sys_io_uring_setup",
                f"p:{g}/uringfree io_destroy_buffers mm=+{ring['mm_account']}(%di):x64",
            ]
            if ring
            else []
        )
        + mrelease_markers(g, off)
        + (oom_markers(g, off, oom) if oom else [])
        + (proc_markers(g, proc) if proc else [])
        + (uffd_markers(g, uffd) if uffd else [])
        + (khugepaged_markers(g, thp) if thp else [])
        + (binder_markers(g) if "binder_linux" in loaded else [])
        + (kvm_markers(g) if "kvm" in loaded else [])
        + (ksm_markers(g, ksm) if ksm else [])
    )


def definitions_for(offsets: dict[str, dict[str, int]], modules: Collection[str] = ()) -> list[str]:
    """kprobe_definitions() for the offsets kernel.probe_offsets() read from a kernel's BTF."""
    o = offsets
    return kprobe_definitions(
        o["task_struct"], o.get("io_ring_ctx"), o.get("oom"), o.get("proc"),
        o.get("userfaultfd"), o.get("khugepaged"), modules, o.get("ksm"),
    )  # fmt: skip


# the filters /init gives two markers that would fire far too often unfiltered
FILTERS = {"uffddup": "octx != 0", "ksmremove": "mm_users == 0"}


def ksm_markers(g: str, ksm: dict[str, int]) -> list[str]:
    """remove_rmap_item_from_tree(rmap_item), with rmap_item->mm and that mm's mm_users: ksmd
    (scan_get_next_rmap_item()) and an unmerge (unmerge_and_remove_all_rmap_items(), a
    write of 2 to /sys/kernel/mm/ksm/run) take out every rmap_item of an exited mm's slot
    (mm_users 0) just before they free the slot and mmdrop() the mm."""
    mm = f"+{ksm['rmap_mm']}(%di)"
    return [
        f"p:{g}/ksmremove remove_rmap_item_from_tree mm={mm}:x64 "
        f"mm_users=+{ksm['mm_users']}({mm}):s32",
    ]


def kvm_markers(g: str) -> list[str]:
    """KVM's, probed once the kvm module is loaded: kvm_create_vm() mmgrab()s current->mm
    into kvm->mm just before it calls kvm_arch_init_vm(kvm), and calls preempt_notifier_inc()
    last, once the VM is made; its error paths after kvm_arch_init_vm() call
    kvm_arch_destroy_vm(kvm) and then mmdrop() the creator's (live) mm. kvm_destroy_vm(), when
    the VM's last reference goes (its fd's and every vCPU fd's), calls kvm_arch_destroy_vm(kvm)
    (the notifier's own reference already dropped by mmu_notifier_unregister()), frees the
    VM, sleeping on the way (SRCU cleanup), and ends with preempt_notifier_dec(),
    hardware_disable_all() (kvm_disable_virtualization() on 6.12) and mmdrop(kvm->mm): the
    return of preempt_notifier_dec() (which may patch a static key first) marks that
    mmdrop(). Only KVM calls those two (kernel/sched/core.c); the `kvm` address pairs the
    first two, the task the last two."""
    return [
        f"p:{g}/kvmgrab kvm_arch_init_vm kvm=%di:x64",
        f"p:{g}/kvmcreated preempt_notifier_inc",
        f"p:{g}/kvmdrop kvm_arch_destroy_vm kvm=%di:x64",
        f"r{MAXACTIVE}:{g}/kvmdone preempt_notifier_dec",
    ]


def binder_markers(g: str) -> list[str]:
    """binder_alloc_init(alloc) and binder_alloc_deferred_release(alloc), functions of the
    binder_linux module (drivers/android/binder_alloc.c): probed after it is loaded. The
    release's mmdrop() of alloc->mm is its last step but a debug print, after it freed the
    proc's buffers and pages (the task may be preempted in between): its return
    (binderdone, paired by the task) marks that mmdrop()."""
    return [
        f"p:{g}/bindergrab binder_alloc_init alloc=%di:x64",
        f"p:{g}/binderdrop binder_alloc_deferred_release alloc=%di:x64",
        f"r{MAXACTIVE}:{g}/binderdone binder_alloc_deferred_release",
    ]


def uffd_markers(g: str, uffd: dict[str, int]) -> list[str]:
    """new_userfaultfd(), userfaultfd_release(file) with the context and its mm, and (with the
    vm_area_struct offsets) dup_userfaultfd(vma), which dup_mmap() calls for every VMA of a
    fork: `mm` is the child's, `octx` the parent VMA's context (copied into the child's VMA
    already), `features` that context's. When octx asked for UFFD_FEATURE_EVENT_FORK, the
    first VMA of each context gets the child a new context that mmgrab()s the child's mm,
    held until the file the monitor reads it as is released."""
    probes = [
        f"p:{g}/uffdnew new_userfaultfd",
        f"p:{g}/uffdrelease userfaultfd_release ctx=+{uffd['private_data']}(%si):x64 "
        f"mm=+{uffd['mm']}(+{uffd['private_data']}(%si)):x64",
    ]
    if {"vm_mm", "vm_userfaultfd_ctx", "features"} <= uffd.keys():
        octx = f"+{uffd['vm_userfaultfd_ctx']}(%di)"
        probes.append(
            f"p:{g}/uffddup dup_userfaultfd mm=+{uffd['vm_mm']}(%di):x64 octx={octx}:x64 "
            f"features=+{uffd['features']}({octx}):x32"
        )
    return probes


def khugepaged_markers(g: str, thp: dict[str, int]) -> list[str]:
    """__khugepaged_exit(mm) and collect_mm_slot(mm_slot), through the static
    khugepaged_scan (a data symbol: `@khugepaged_scan+OFFSET` reads its cursor)."""
    cursor = f"@khugepaged_scan+{thp['scan_slot']}"
    slot_mm = f"+{thp['slot_mm']}(%di)"
    return [
        f"p:{g}/thpexit __khugepaged_exit mm=%di:x64 slot={cursor}:x64 "
        f"slot_mm=+{thp['slot_mm']}({cursor}):x64",
        f"p:{g}/thpcollect collect_mm_slot mm={slot_mm}:x64 "
        f"mm_users=+{thp['mm_users']}({slot_mm}):s32",
    ]


def proc_markers(g: str, proc: dict[str, int]) -> list[str]:
    """proc_mem_open()'s return, and the release of each kind of file that holds its mm:
    file->private_data (mem, environ, auxv, pagemap) or the proc_maps_private behind the
    seq_file (maps, smaps, numa_maps, smaps_rollup)."""
    data = f"+{proc['private_data']}(%si)"
    seq_mm = f"+{proc['mm']}(+{proc['private']}({data}))"
    return [
        f"r{MAXACTIVE}:{g}/procmemopen proc_mem_open ret=$retval:x64",
        f"p:{g}/memrelease mem_release mm={data}:x64",
        f"p:{g}/pagemaprelease pagemap_release mm={data}:x64",
        f"p:{g}/mapsrelease proc_map_release mm={seq_mm}:x64",
        f"p:{g}/rolluprelease smaps_rollup_release mm={seq_mm}:x64",
    ]


def mrelease_markers(g: str, off: dict[str, int]) -> list[str]:
    """process_mrelease(pidfd): pidfd_get_task()'s return in it (the caller field of a
    return probe says which call), with the process found (its leader's pid), whose mm the
    syscall mmgrab()s right after, through find_lock_task_mm() (inlined there: on Debian's
    6.18 a return probe on it never fires from the syscall); and the syscall's return,
    which comes right after its mmdrop(). pidfd_get_task() serves process_madvise() and
    pidfd_getfd() too: the validator reads only the returns to process_mrelease."""
    return [
        f"r{MAXACTIVE}:{g}/mreleasetask pidfd_get_task ret=$retval:x64 "
        f"t_pid=+{off['pid']}($retval):s32",
        f"r{MAXACTIVE}:{g}/mreleasedone __x64_sys_process_mrelease",
    ]


def oom_markers(g: str, off: dict[str, int], oom: dict[str, int]) -> list[str]:
    """mark_oom_victim(tsk) and __put_task_struct(tsk), with tsk->signal's oom_mm and
    sigcnt (nested fetches through task_struct.signal); and a write of
    /proc/PID/oom_score_adj or oom_adj: find_lock_task_mm()'s return (the caller field says
    which call: __set_oom_adj's), with the task's mm and that mm's flags, and the write's
    return, right after __set_oom_adj()'s mmdrop() of the mm it took when MMF_MULTIPROCESS
    was set (oom_score_adj_write and oom_adj_write: __set_oom_adj is a compiler clone,
    __set_oom_adj.isra.0, whose name may change). Without `mm_flags` in `oom`, only the
    first two."""
    signal = f"+{oom['signal']}(%di)"
    oom_mm = f"oom_mm=+{oom['oom_mm']}({signal}):x64"
    task_mm = f"+{off['mm']}($retval)"
    adj = (
        [
            f"r{MAXACTIVE}:{g}/oomadjtask find_lock_task_mm ret=$retval:x64 mm={task_mm}:x64 "
            f"mm_flags=+{oom['mm_flags']}({task_mm}):x64",
            f"r{MAXACTIVE}:{g}/oomscoreadjdone oom_score_adj_write",
            f"r{MAXACTIVE}:{g}/oomadjdone oom_adj_write",
        ]
        if "mm_flags" in oom
        else []
    )
    return [
        f"p:{g}/oomvictim mark_oom_victim {oom_mm} mm=+{off['mm']}(%di):x64 "
        f"t_pid=+{off['pid']}(%di):s32",
        f"p:{g}/putsignal __put_task_struct sigcnt=+{oom['sigcnt']}({signal}):s32 {oom_mm}",
        *adj,
    ]


# vhost-net and what it needs, in load order (the `vhost` workload)
VHOST_MODULES = ("vhost_iotlb", "tun", "tap", "vhost", "vhost_net")


def kernel_modules(tree: Path, names: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """The named modules of a kernel's lib/modules/RELEASE tree, uncompressed (busybox insmod
    takes plain ELF), in the order given; [] when one is missing (a --kernel without its
    modules, or one built in): the workload then says it has no device."""
    if not tree.is_dir():
        return []
    out: list[tuple[str, bytes]] = []
    for name in names:
        path = next(tree.glob(f"kernel/**/{name}.ko*"), None)
        if path is None:
            return []
        data = path.read_bytes()
        if path.suffix == ".xz":
            data = lzma.decompress(data)
        elif path.suffix != ".ko":
            return []  # zstd or gzip: not worth a dependency for one workload
        out.append((name, data))
    return out


def named_modules(tree: Path, names: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """The modules a user asked for (`capture --module`), in that order, uncompressed. A
    module that is not in the kernel's tree (or built in, or compressed with zstd or gzip,
    which busybox insmod cannot load) is an error naming it: the workload would run without
    it and prove nothing."""
    out: list[tuple[str, bytes]] = []
    for name in names:
        found = kernel_modules(tree, (name,)) or kernel_modules(tree, (name.replace("_", "-"),))
        if not found:
            raise CaptureError(
                f"--module {name}: no {name}.ko (plain or xz) in {tree}; a module built into "
                "the kernel needs no --module (see its config-RELEASE)"
            )
        out += found
    return out


def build_workload(out: Path) -> Path:
    """Compile guest/workload.c into a static binary."""
    src = resources.files("activemm.capture") / "guest" / "workload.c"
    return _compile(src.read_bytes(), out / "workload", "the guest workload")


def _compile(source: bytes, binary: Path, what: str) -> Path:
    """gcc -static -O2 -pthread: C source to a static executable for the guest."""
    gcc = need("gcc", "gcc")
    r = subprocess.run(
        [gcc, "-static", "-O2", "-pthread", "-o", str(binary), "-x", "c", "-"],
        input=source,
        capture_output=True,
    )
    if r.returncode != 0:
        stderr = r.stderr.decode(errors="replace")
        if "cannot find -lc" in stderr:
            raise CaptureError("gcc cannot link static programs: `apt-get install libc6-dev`")
        first = next((ln for ln in stderr.splitlines() if "error" in ln), None)
        first = first or (stderr.strip().splitlines() or ["?"])[0]
        raise CaptureError(f"building {what} failed: {first.replace('<stdin>', what)}")
    return binary


def check_program(path: Path) -> None:
    """--program takes a C source (.c) or a static x86-64 executable."""
    if not path.is_file():
        raise CaptureError(f"--program {path}: no such file")
    if path.suffix == ".c":
        return
    head = path.read_bytes()[:64]
    if head[:4] != b"\x7fELF":
        raise CaptureError(f"--program {path}: expected a C source (.c) or an ELF executable")
    if int.from_bytes(head[0x12:0x14], "little") != 0x3E:
        raise CaptureError(f"--program {path}: not an x86-64 executable")
    if not _is_static(path):
        raise CaptureError(
            f"--program {path}: dynamically linked; the guest has no libc: "
            "build it with gcc -static, or pass the .c source"
        )


def build_program(path: Path, work: Path) -> bytes:
    """The user's program for /bin/program: compiled when it is a C source."""
    check_program(path)
    if path.suffix == ".c":
        return _compile(path.read_bytes(), work / "program", path.name).read_bytes()
    return path.read_bytes()


class Cpio:
    """A newc ("070701") cpio archive, the format the kernel unpacks as initramfs."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
        self.ino += 1
        head = b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0"
        self.buf.write(head + b"\0" * (-len(head) % 4))
        self.buf.write(data + b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, 0o40755)

    def file(self, name: str, data: bytes, mode: int = 0o755) -> None:
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o20600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def build_initramfs(
    work: Path,
    kprobes: list[str],
    run: str | None = None,
    program: Path | None = None,
    modules: list[tuple[str, bytes]] | None = None,
    trace_cmd: bool = False,
    perf: bool = False,
) -> Path:
    """busybox, /init, the workload and the kprobe definitions, as a gzipped cpio; with
    `program`, /bin/program; with `run` (or a program alone), /run.sh for /init to run after
    the built-in workload; `modules` in /modules, which /init loads in that order before
    tracing starts; with `trace_cmd`, the host's trace-cmd and the shared libraries it loads
    (/init then also writes the buffers as a trace.dat with `trace-cmd extract`); with
    `perf`, the host's perf and its libraries (/init then also records the same events with
    `perf record -a` while the workload runs)."""
    busybox = shutil.which("busybox")
    if busybox is None or not _is_static(Path(busybox)):
        raise CaptureError("a static busybox is needed: `apt-get install busybox-static`")
    init = (resources.files("activemm.capture") / "guest" / "init.sh").read_bytes()
    c = Cpio()
    for d in ("bin", "dev", "modules", "proc", "sys", "tmp"):
        c.dir(d)
    for i, (name, data) in enumerate(modules or []):
        c.file(f"modules/{i}-{name}.ko", data, 0o644)
    c.chardev("dev/console", 5, 1)
    c.file("bin/busybox", Path(busybox).read_bytes())
    c.symlink("bin/sh", "busybox")
    c.file("init", init)
    c.file("workload", build_workload(work).read_bytes())
    if program is not None:
        c.file("bin/program", build_program(program, work))
    if run is not None or program is not None:
        c.file("run.sh", (f"{run if run is not None else 'program'}\n").encode())
    c.file("kprobes", ("\n".join(kprobes) + "\n").encode(), 0o644)
    tools = [
        *(host_tool_files("trace-cmd", "--trace-dat", "trace-cmd") if trace_cmd else []),
        *(host_tool_files("perf", "--perf-data", "linux-perf") if perf else []),
    ]
    if tools:
        made = {"bin"}
        for name, data in dict(tools).items():
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                if "/".join(parts[:i]) not in made:
                    made.add("/".join(parts[:i]))
                    c.dir("/".join(parts[:i]))
            c.file(name, data)
    path = work / "initramfs.cpio.gz"
    path.write_bytes(gzip.compress(c.finish(), compresslevel=1))
    return path


def host_tool_files(tool: str, option: str, package: str) -> list[tuple[str, bytes]]:
    """The host's `tool` (trace-cmd, perf) as bin/TOOL, and every shared library it loads
    (the dynamic loader included) at the path the loader looks for it, as `ldd` lists
    them; `option` and `package` name what asked for it and where to get it."""
    exe = need(tool, package, option)
    ldd = subprocess.run(["ldd", exe], capture_output=True, text=True)
    if ldd.returncode != 0:
        raise CaptureError(f"ldd {exe} failed: {ldd.stderr.strip() or ldd.returncode}")
    files = [(f"bin/{tool}", Path(exe).read_bytes())]
    for line in ldd.stdout.splitlines():
        # `libtracefs.so.1 => /lib/x86_64-linux-gnu/libtracefs.so.1 (0x...)`, or the loader
        # `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file
        words = line.split()
        path = words[2] if "=>" in words and len(words) > 2 else words[0] if words else ""
        if not path.startswith("/"):
            continue
        files.append((path.lstrip("/"), Path(path).read_bytes()))
    return files


def _is_static(binary: Path) -> bool:
    """No PT_INTERP program header: a static executable."""
    data = binary.read_bytes()[:4096]
    if data[:4] != b"\x7fELF":
        return False
    phoff = int.from_bytes(data[0x20:0x28], "little")
    phentsize = int.from_bytes(data[0x36:0x38], "little")
    phnum = int.from_bytes(data[0x38:0x3A], "little")
    for i in range(phnum):
        at = phoff + i * phentsize
        if int.from_bytes(data[at : at + 4], "little") == 3:  # PT_INTERP
            return False
    return True
