"""What runs inside the QEMU guest: the kprobe definitions (with this kernel's BTF offsets),
the workload (built static with the host's gcc) and the initramfs that carries them."""

from __future__ import annotations

import gzip
import io
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from activemm.capture.kernel import CaptureError, need

GROUP = "activemm"


def kprobe_definitions(off: dict[str, int]) -> list[str]:
    """The probes of docs/validate.md. `@FINISH_TASK_SWITCH@` is replaced in the guest by the
    symbol's real name (a compiler clone such as finish_task_switch.isra.0)."""

    def task(reg: str, prefix: str) -> str:
        return (
            f"{prefix}pid=+{off['pid']}({reg}):s32 {prefix}flags=+{off['flags']}({reg}):x32 "
            f"{prefix}mm=+{off['mm']}({reg}):x64 {prefix}active_mm=+{off['active_mm']}({reg}):x64 "
            f"{prefix}comm=+{off['comm']}({reg}):string"
        )

    g = GROUP
    return [
        f"p:{g}/mmswitch switch_mm_irqs_off prev=%di:x64 next=%si:x64 tsk=%dx:x64 "
        + task("%dx", "t_"),
        f"p:{g}/lazytlb enter_lazy_tlb mm=%di:x64 tsk=%si:x64 " + task("%si", "t_"),
        f"p:{g}/finish @FINISH_TASK_SWITCH@ prev=%di:x64 " + task("%di", "prev_"),
        f"p:{g}/mmdrop __mmdrop mm=%di:x64",
        f"p:{g}/mmput exit_mmap mm=%di:x64",
        f"r16:{g}/mminit mm_init ret=$retval:x64",
        f"r16:{g}/mmalloc mm_alloc ret=$retval:x64",
        f"p:{g}/dupmm dup_mmap mm=%di:x64 oldmm=%si:x64",
        f"p:{g}/usemm kthread_use_mm mm=%di:x64",
        f"p:{g}/unusemm kthread_unuse_mm mm=%di:x64",
        f"p:{g}/leavemm leave_mm cpu=%di:s32",
    ]


def build_workload(out: Path) -> Path:
    """Compile guest/workload.c into a static binary."""
    gcc = need("gcc", "gcc")
    src = resources.files("activemm.capture") / "guest" / "workload.c"
    binary = out / "workload"
    r = subprocess.run(
        [gcc, "-static", "-O2", "-pthread", "-o", str(binary), "-x", "c", "-"],
        input=src.read_bytes(),
        capture_output=True,
    )
    if r.returncode != 0:
        first = (r.stderr.decode(errors="replace").strip().splitlines() or ["?"])[0]
        if "cannot find -lc" in r.stderr.decode(errors="replace"):
            raise CaptureError("gcc cannot link static programs: `apt-get install libc6-dev`")
        raise CaptureError(f"building the guest workload failed: {first}")
    return binary


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


def build_initramfs(work: Path, kprobes: list[str]) -> Path:
    """busybox, /init, the workload and the kprobe definitions, as a gzipped cpio."""
    busybox = shutil.which("busybox")
    if busybox is None or not _is_static(Path(busybox)):
        raise CaptureError("a static busybox is needed: `apt-get install busybox-static`")
    init = (resources.files("activemm.capture") / "guest" / "init.sh").read_bytes()
    c = Cpio()
    for d in ("bin", "dev", "proc", "sys", "tmp"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.file("bin/busybox", Path(busybox).read_bytes())
    c.symlink("bin/sh", "busybox")
    c.file("init", init)
    c.file("workload", build_workload(work).read_bytes())
    c.file("kprobes", ("\n".join(kprobes) + "\n").encode(), 0o644)
    path = work / "initramfs.cpio.gz"
    path.write_bytes(gzip.compress(c.finish(), compresslevel=1))
    return path


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
