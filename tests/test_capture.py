"""activemm capture: the pieces that need no QEMU, and one real capture (CI runs it)."""

from __future__ import annotations

import base64
import bz2
import functools
import gzip
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lz4.block
import pytest
import zstandard

from activemm.capture import WORKLOADS, guest, run
from activemm.capture.kernel import (
    CaptureError,
    KernelImage,
    default_preemption,
    extract_vmlinux,
    struct_offsets,
)
from activemm.trace.events import TraceEvent

from .helpers import cli


def _btf(types: list[bytes], strings: list[str]) -> bytes:
    """Raw BTF (include/uapi/linux/btf.h): header, type section, string section."""
    strtab = b"\0" + b"".join(s.encode() + b"\0" for s in strings)
    body = b"".join(types)
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(body), len(body), len(strtab))
    return header + body + strtab


def _off(strings: list[str], name: str) -> int:
    return 1 + sum(len(s) + 1 for s in strings[: strings.index(name)])


def test_btf_offsets_look_through_anonymous_members() -> None:
    names = ["int", "pid", "flags", "task_struct", "mm", "active_mm", "comm", "char"]
    o = lambda n: _off(names, n)  # noqa: E731
    info = lambda kind, vlen: (kind << 24) | vlen  # noqa: E731
    types = [
        struct.pack("<IIII", o("int"), info(1, 0), 4, 32),  # 1: int
        # 2: an anonymous struct { int pid; int flags; }
        struct.pack("<III", 0, info(4, 2), 8)
        + struct.pack("<III", o("pid"), 1, 0)
        + struct.pack("<III", o("flags"), 1, 32),
        struct.pack("<III", 0, info(2, 0), 1),  # 3: int *
        # 4: struct task_struct { long x; struct {...}; int *mm; int *active_mm; char comm[16]; }
        struct.pack("<III", o("task_struct"), info(4, 4), 48)
        + struct.pack("<III", 0, 2, 64)
        + struct.pack("<III", o("mm"), 3, 128)
        + struct.pack("<III", o("active_mm"), 3, 192)
        + struct.pack("<III", o("comm"), 1, 256),
    ]
    got = struct_offsets(_btf(types, names), "task_struct", guest_fields := ("pid", "flags", "mm",
                         "active_mm", "comm"))  # fmt: skip
    assert got == {"pid": 8, "flags": 12, "mm": 16, "active_mm": 24, "comm": 32}
    with pytest.raises(CaptureError, match="no member"):
        struct_offsets(_btf(types, names), "task_struct", (*guest_fields, "missing"))


def _task_btf() -> bytes:
    """Raw BTF of a kernel whose task_struct has pid at 8, flags 12, mm 16, active_mm 24 and
    comm 32, and nothing the markers need."""
    names = ["int", "pid", "flags", "task_struct", "mm", "active_mm", "comm"]
    o = lambda n: _off(names, n)  # noqa: E731
    info = lambda kind, vlen: (kind << 24) | vlen  # noqa: E731
    return _btf(
        [
            struct.pack("<IIII", o("int"), info(1, 0), 4, 32),  # 1: int
            struct.pack("<III", o("task_struct"), info(4, 5), 48)
            + b"".join(struct.pack("<III", o(n), 1, bits) for n, bits in
                       (("pid", 64), ("flags", 96), ("mm", 128), ("active_mm", 192),
                        ("comm", 256))),
        ],
        names,
    )  # fmt: skip


def test_probes_prints_the_kprobes_with_the_kernels_offsets(tmp_path: Path) -> None:
    """`activemm probes`: the kprobe_events lines of docs/validate.md with the offsets of the
    given kernel's BTF and finish_task_switch's clone name from its kallsyms, no marker
    whose structs that BTF lacks; --script: a shell script (sh -n parses it) that defines
    the same probes, the core ones marked so; errors are one line each."""
    btf, syms = tmp_path / "btf", tmp_path / "kallsyms"
    btf.write_bytes(_task_btf())
    syms.write_text("ffffffff81000000 T _text\nffffffff81114d40 t finish_task_switch.isra.0\n")
    r = cli("probes", "--btf", str(btf), "--kallsyms", str(syms), "--group", "mine")
    assert r.returncode == 0, r.stderr
    defs = [line for line in r.stdout.splitlines() if not line.startswith("#")]
    assert defs[0] == (
        "p:mine/mmswitch switch_mm_irqs_off prev=%di:x64 next=%si:x64 tsk=%dx:x64 "
        "t_pid=+8(%dx):s32 t_flags=+12(%dx):x32 t_mm=+16(%dx):x64 t_active_mm=+24(%dx):x64 "
        "t_comm=+32(%dx):string"
    )
    assert defs[2].startswith("p:mine/finish finish_task_switch.isra.0 prev=%di:x64 prev_pid=+8")
    assert not any("io_destroy_buffers" in d or "mark_oom_victim" in d for d in defs)
    r = cli("probes", "--btf", str(btf), "--script", "-o", str(tmp_path / "record.sh"))
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "record.sh").read_text()
    assert subprocess.run(["sh", "-n", str(tmp_path / "record.sh")]).returncode == 0
    assert "core p:activemm/mmswitch switch_mm_irqs_off prev=%di:x64" in text
    assert "core p:activemm/finish @FINISH_TASK_SWITCH@ prev=%di:x64" in text
    assert "marker p:activemm/leavemm leave_mm" in text
    for args, error in [
        (["--btf", str(syms)], "expected raw BTF"),
        (["--btf", str(tmp_path / "none")], "cannot read the kernel's BTF"),
        (["--btf", str(btf), "--kallsyms", str(btf)], "no finish_task_switch in it"),
        (["--btf", str(btf), "--group", "a/b"], "--group a/b: expected a name"),
        (["--btf", str(btf), "--module", "brd"], "--module brd: expected binder_linux or kvm"),
    ]:
        r = cli("probes", *args)
        assert r.returncode == 2 and error in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_ksm_offsets_read_either_name_of_the_rmap_item() -> None:
    """KSM's markers need mm_struct.flags and .mm_users, and the rmap_item's mm: the struct
    is ksm_rmap_item since 6.1, rmap_item before; a kernel with neither gets no KSM markers."""
    from activemm.capture import kernel

    def btf_with(item: str | None) -> bytes:
        names = ["int", "mm_struct", "mm_users", "flags", "mm", *([item] if item else [])]
        o = lambda n: _off(names, n)  # noqa: E731
        info = lambda kind, vlen: (kind << 24) | vlen  # noqa: E731
        types = [
            struct.pack("<IIII", o("int"), info(1, 0), 4, 32),  # 1: int
            # 2: struct mm_struct { int mm_users; int pad; long flags; }
            struct.pack("<III", o("mm_struct"), info(4, 2), 16)
            + struct.pack("<III", o("mm_users"), 1, 0)
            + struct.pack("<III", o("flags"), 1, 64),
        ]
        if item:  # 3: struct ITEM { long next; long anon_vma; struct mm_struct *mm; }
            types.append(struct.pack("<III", o(item), info(4, 1), 24)
                         + struct.pack("<III", o("mm"), 1, 128))  # fmt: skip
        return _btf(types, names)

    for item in ("ksm_rmap_item", "rmap_item"):
        assert kernel.ksm_offsets(btf_with(item)) == {"mm_users": 0, "flags": 8, "rmap_mm": 16}
    assert kernel.ksm_offsets(btf_with(None)) == {}


def _structs_btf(structs: dict[str, list[tuple[str, int]]]) -> bytes:
    """Raw BTF of `structs`: name -> [(member, byte offset)], every member an int."""
    members = sorted({m for ms in structs.values() for m, _ in ms} - set(structs))
    names = ["int", *structs, *members]
    info = lambda kind, vlen: (kind << 24) | vlen  # noqa: E731
    types = [struct.pack("<IIII", _off(names, "int"), info(1, 0), 4, 32)]  # 1: int
    for name, ms in structs.items():
        types.append(
            struct.pack("<III", _off(names, name), info(4, len(ms)), 8 * len(ms) + 64)
            + b"".join(struct.pack("<III", _off(names, m), 1, 8 * off) for m, off in ms)
        )
    return _btf(types, names)


def test_proc_and_khugepaged_offsets_follow_their_structs_into_6_18() -> None:
    """The /proc markers find a maps file's mm in proc_maps_private.mm, which 6.18 moved
    into its lock_ctx (struct proc_maps_locking_ctx); khugepaged's cursor and
    collect_mm_slot() point to a khugepaged_mm_slot whose first member is the mm_slot, and
    since 6.18 to the mm_slot itself. On 6.18's layout (Debian's 6.18.15, whose BTF gave no
    /proc or khugepaged markers before) both are found through the new structs."""
    from activemm.capture import kernel

    common = {"file": [("private_data", 24)], "seq_file": [("private", 112)]}
    old = _structs_btf({**common, "proc_maps_private": [("inode", 0), ("mm", 16)]})
    assert kernel.proc_offsets(old) == {"private_data": 24, "private": 112, "mm": 16}
    new = _structs_btf(
        {
            **common,
            "proc_maps_private": [("inode", 0), ("lock_ctx", 112)],
            "proc_maps_locking_ctx": [("mm", 0), ("locked_vma", 8)],
        }
    )
    assert kernel.proc_offsets(new) == {"private_data": 24, "private": 112, "mm": 112}
    assert kernel.proc_offsets(_structs_btf(common)) == {}

    thp = {
        "khugepaged_scan": [("mm_head", 0), ("mm_slot", 16)],
        "mm_slot": [("hash", 0), ("mm", 32)],
        "mm_struct": [("mm_users", 132)],
    }
    wrapped = _structs_btf({**thp, "khugepaged_mm_slot": [("slot", 8)]})
    assert kernel.khugepaged_offsets(wrapped) == {"scan_slot": 16, "slot_mm": 40, "mm_users": 132}
    bare = _structs_btf(thp)  # 6.18: no khugepaged_mm_slot
    assert kernel.khugepaged_offsets(bare) == {"scan_slot": 16, "slot_mm": 32, "mm_users": 132}
    assert kernel.khugepaged_offsets(_structs_btf({"mm_slot": [("mm", 32)]})) == {}


def _lz4_legacy(data: bytes) -> bytes:
    """What the kernel's build does for CONFIG_KERNEL_LZ4 (`lz4 -l -9`, then size_append):
    the legacy magic, 8 MiB blocks each after its 4-byte compressed size, then the
    uncompressed size."""
    out = [struct.pack("<I", 0x184C2102)]
    for i in range(0, len(data), 8 << 20):
        block = lz4.block.compress(data[i : i + (8 << 20)], store_size=False)
        out += [struct.pack("<I", len(block)), block]
    return b"".join(out) + struct.pack("<I", len(data))


_COMPRESS = {
    "xz": lzma.compress,
    "zstd": zstandard.ZstdCompressor().compress,
    "lz4": _lz4_legacy,
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "lzma": lambda data: lzma.compress(data, format=lzma.FORMAT_ALONE, preset=9),  # lzma -9
}


@pytest.mark.parametrize("compress", sorted(_COMPRESS))
def test_the_vmlinux_inside_a_bzimage_is_found(compress: str) -> None:
    """Every compression a bzImage may hold but LZO (Debian: xz, zstd, and lz4 for the
    cloud-amd64 6.1 kernel); past false starts (a magic in the setup code) and the trailer.
    The lz4 images span two of the format's 8 MiB blocks, the last one short or full."""
    size = (9 << 20) if compress == "lz4" else 10240
    elf = (b"\x7fELF\x02\x01" + bytes(range(256)) * (size // 256 + 1))[:size]
    packed = _COMPRESS[compress](elf)
    false_starts = b"\xfd7zXZ\x00junk\x02\x21\x4c\x18\xff\xff\x00\x00BZhjunk\x1f\x8b\x08junk"
    bzimage = b"MZ" + false_starts + b"\x00" * 1000 + packed + b"trailer" * 10
    assert extract_vmlinux(bzimage) == elf
    if compress == "lz4":  # an image of whole blocks: the appended size follows a full one
        elf = (elf * 2)[: 16 << 20]
        assert extract_vmlinux(b"MZ" + _lz4_legacy(elf) + b"trailer") == elf
    with pytest.raises(CaptureError):
        extract_vmlinux(b"MZ" + b"\x00" * 5000)


@pytest.mark.parametrize(
    ("release", "package"),
    [
        ("6.1", "linux-image-6.1.0-57-amd64"),
        ("6.1-rt", "linux-image-6.1.0-57-rt-amd64"),
        ("6.1-cloud", "linux-image-6.1.0-57-cloud-amd64"),
        ("6.12", "linux-image-6.12.117+deb12-amd64-unsigned"),
        ("6.12-rt", "linux-image-6.12.117+deb12-rt-amd64-unsigned"),
        ("6.12-cloud", "linux-image-6.12.117+deb12-cloud-amd64-unsigned"),
    ],
)
def test_each_kernel_release_names_the_newest_package_of_its_flavour(
    release: str, package: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--kernel-release: 6.1's package is what the flavour's meta-package depends on; 6.12's
    the newest by version number (6.12.117 after 6.12.99, which sorts first as text) among
    the packages apt knows, from apt-cache as Debian 12's apt prints it."""
    from activemm.capture import kernel

    packages = [f"linux-image-6.12.{n}+deb12-{f}-unsigned" for n in (99, 117)
                for f in ("amd64", "rt-amd64", "cloud-amd64")]  # fmt: skip

    def apt_cache(cmd: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        if cmd[1] == "depends":
            flavour = cmd[2].removeprefix("linux-image-")
            out = f"{cmd[2]}\n  Depends: linux-image-6.1.0-57-{flavour}\n"
        else:
            out = "".join(f"{p} - Linux 6.12\n" for p in packages if re.match(cmd[3], p))
        return subprocess.CompletedProcess(cmd, 0, out, "")

    monkeypatch.setattr(kernel, "need", lambda tool, package: tool)
    monkeypatch.setattr(kernel.subprocess, "run", apt_cache)
    assert kernel.debian_package(release) == package
    with pytest.raises(CaptureError, match=re.escape("expected one of 6.1, 6.12,")):
        kernel.debian_package("6.6")


def _ship(name: str, data: bytes) -> str:
    b64 = base64.b64encode(gzip.compress(data)).decode()
    lines = [b64[i : i + 76] for i in range(0, len(b64), 76)]
    return f"=== BEGIN {name}\r\n" + "\r\n".join(lines) + f"\r\n=== END {name}\r\n"


def test_the_serial_stream_is_decoded_and_damage_is_refused() -> None:
    text = "noise\n" + _ship("meta", b"release 6.1\n") + _ship("trace", b"x" * 5000) + "=== DONE\n"
    got = run.decode_serial(text)
    assert got.done and got.files == {"meta": b"release 6.1\n", "trace": b"x" * 5000}
    with pytest.raises(CaptureError, match="damaged"):
        run.decode_serial("=== BEGIN trace\nnot base64 gzip!\n=== END trace\n")


def test_firmware_escapes_before_the_first_marker_are_skipped() -> None:
    """OVMF leaves terminal escapes on the second serial port with no newline after them
    (seen booting 6.17 with --firmware uefi): the guest's first marker shares their line."""
    escapes = "\x1b[2J\x1b[01;01H\x1b[=3h\x1b[2J\x1b[01;01H"
    text = escapes + _ship("meta", b"release 6.17\n") + _ship("trace", b"y" * 300) + "=== DONE\n"
    got = run.decode_serial(text)
    assert got.done and got.files == {"meta": b"release 6.17\n", "trace": b"y" * 300}


def test_ring_buffer_stats_as_tracefs_prints_them() -> None:
    meta = (
        "stats cpu0 entries: 19527 overrun: 0 commit overrun: 0 bytes: 1316812 "
        "oldest event ts:     6.463599 now ts:     9.871176 dropped events: 3 read events: 0 \n"
    )
    s = run.ring_buffer_stats(meta)["cpu0"]
    assert (s["entries"], s["overrun"], s["dropped_events"], s["bytes"]) == (19527, 0, 3, 1316812)


def test_a_workload_out_of_time_is_named_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A guest whose workload outlives --timeout is powered off by its own watchdog (init.sh
    says so on the console): the error says the workload ran out of time and what to do,
    not that QEMU could not run the guest, and keeps the console beside the output."""
    console_text = (
        "ACTIVEMM: booted 6.1.0-57-amd64 cpus=2\nACTIVEMM: workload parallel scale 10\n"
        f"{run.WATCHDOG}\n[ 2003.494125] reboot: Power down\n"
    )

    def fake_qemu(*args: object) -> list[str]:  # (image, initrd, opts, accel, console, ship)
        return ["sh", "-c", f"printf '%s' '{console_text}' > {args[4]}"]

    monkeypatch.setattr(run, "qemu_command", fake_qemu)
    monkeypatch.setattr(run, "accelerators", lambda choice: ["tcg"])
    opts = run.CaptureOptions(tmp_path / "out", timeout=30)
    image = KernelImage("6.1.0-57-amd64", tmp_path / "vmlinuz", tmp_path / "vmlinux", tmp_path)
    with pytest.raises(CaptureError) as e:
        run.boot(image, tmp_path / "initrd", opts, tmp_path, lambda msg: None)
    message = str(e.value)
    assert message.startswith("the workload did not end within --timeout 30 s")
    assert "--scale" in message and "QEMU could not run" not in message
    assert f"{tmp_path / 'out.console.log'}, shows the workload's last output" in message
    assert (tmp_path / "out.console.log").read_text() == console_text


def _stat(tid: int, comm: str, state: str, flags: int) -> str:
    """A /proc/PID/task/TID/stat line as fs/proc/array.c's do_task_stat() prints it (the
    fields after flags cut short)."""
    return f"{tid} ({comm}) {state} 1 {tid} {tid} 0 -1 {flags} 120 0 0 0 3 4\n"


@pytest.mark.skipif(not shutil.which("busybox"), reason="needs busybox (the guest's shell)")
def test_the_watchdog_lists_where_the_workloads_tasks_wait(tmp_path: Path) -> None:
    """init.sh's tasks_waiting, run by busybox sh as in the guest on a made-up /proc: every
    task but kernel threads (PF_KTHREAD 0x200000), with its state, comm (spaces and
    parentheses kept) and wait channel, and the kernel stack of one in D."""
    tasks = [  # pid, tid, comm, state, flags, wchan, stack
        (1, 1, "init", "S", 0x400100, "do_wait", None),
        (2, 2, "kthreadd", "S", 0x208040, "kthreadd", None),
        (40, 41, "work (a) b", "D", 0x400040, "folio_wait_bit", "[<0>] folio_wait_bit\n"),
        (40, 40, "work", "R", 0x400000, "0", None),
    ]
    for pid, tid, comm, state, flags, wchan, stack in tasks:
        d = tmp_path / str(pid) / "task" / str(tid)
        d.mkdir(parents=True)
        (d / "stat").write_text(_stat(tid, comm, state, flags))
        (d / "wchan").write_text(wchan)
        if stack:
            (d / "stack").write_text(stack)
    init = (Path(guest.__file__).parent / "guest" / "init.sh").read_text()
    start = init.index("tasks_waiting() {")
    function = init[start : init.index("\n}\n", start) + 3]
    out = subprocess.run(
        ["busybox", "sh", "-c", function + 'tasks_waiting "$1"', "sh", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.splitlines() == [  # in the order of the glob, the stack under its task
        "1 S init do_wait",
        "40 R work 0",
        "41 D work (a) b folio_wait_bit",
        "    [<0>] folio_wait_bit",
    ]


def test_kprobe_profile_as_tracefs_prints_it() -> None:
    """kernel/trace/trace_kprobe.c's probes_profile_seq_show(): "%-44s %15lu %15lu" (event,
    hits, missed), read from the guest's meta file where init.sh prefixed each line."""
    meta = (
        "release 6.1.0-57-amd64\n"
        f"kprobe_profile {'mminit':<44} {12345:>15} {1:>15}\n"
        f"kprobe_profile {'mmswitch':<44} {99:>15} {0:>15}\n"
        "stats cpu0 entries: 1 overrun: 0\n"
    )
    profile = run.kprobe_profile(meta)
    assert profile == {
        "mminit": {"hits": 12345, "missed": 1},
        "mmswitch": {"hits": 99, "missed": 0},
    }
    # a birth lost (mm_init's return probe) loses the capture; a marker's miss does not
    assert run.lost_probe_hits(profile) == {"mminit": 1}
    marker = {"putsignal": {"hits": 674, "missed": 2}, "mmdrop": {"hits": 760, "missed": 0}}
    assert run.lost_probe_hits(marker) == {}
    named = {d.split()[0].split("/")[1] for d in guest.kprobe_definitions(
        {"pid": 1, "flags": 2, "mm": 3, "active_mm": 4, "comm": 5})}  # fmt: skip
    assert named >= run.CORE_PROBES  # every core probe is one the capture defines


def test_the_docs_probe_table_names_every_probe_the_capture_can_define() -> None:
    """docs/validate.md's probe table lists, in its first column, every event the capture
    can define (every marker set: offsets for all, binder_linux and kvm loaded), and no
    other."""
    fields = (
        "pid flags mm active_mm comm mm_account signal sigcnt oom_mm private private_data "
        "features vm_mm vm_userfaultfd_ctx scan_slot slot_mm mm_users rmap_mm mm_flags"
    )
    every = dict.fromkeys(fields.split(), 8)  # every field any probe reads
    defs = guest.kprobe_definitions(
        every, every, every, every, every, every, ("binder_linux", "kvm"), every
    )
    defined = {d.split()[0].split("/")[1] for d in defs}
    docs = (Path(__file__).parents[1] / "docs" / "validate.md").read_text()
    rows = [line.split("|")[1] for line in docs.splitlines() if line.startswith("   | `")]
    documented = {name for cell in rows for name in re.findall(r"`([a-z]+)`", cell)}
    assert defined == documented, defined ^ documented


def test_kprobes_carry_this_kernels_offsets() -> None:
    defs = guest.kprobe_definitions({"pid": 2416, "flags": 44, "mm": 2272, "active_mm": 2280,
                                     "comm": 2976})  # fmt: skip
    mmswitch = next(d for d in defs if " switch_mm_irqs_off " in d)
    assert "t_pid=+2416(%dx):s32" in mmswitch and "t_mm=+2272(%dx):x64" in mmswitch
    assert any(d.startswith("r") and " mm_init " in d for d in defs)
    assert (
        f"r{guest.MAXACTIVE}:activemm/mmputdone exit_mmap" in defs
    )  # __mmput's end: exit_mmap returning
    assert f"r{guest.MAXACTIVE}:activemm/mmputend mmput" in defs  # and mmput returning
    assert not any("io_destroy_buffers" in d for d in defs)  # no io_ring_ctx in the BTF
    ring = guest.kprobe_definitions({"pid": 1, "flags": 2, "mm": 3, "active_mm": 4, "comm": 5},
                                    {"mm_account": 984})  # fmt: skip
    assert "p:activemm/uringfree io_destroy_buffers mm=+984(%di):x64" in ring
    assert any(" __x64_sys_io_uring_setup" in d for d in ring)
    assert not any("oom_mm" in d for d in ring)  # no signal_struct offsets given
    oom = guest.kprobe_definitions({"pid": 1, "flags": 2, "mm": 3, "active_mm": 4, "comm": 5},
                                   None, {"signal": 3072, "sigcnt": 0, "oom_mm": 1032})  # fmt: skip
    # the signal_struct is reached through task_struct.signal: a nested fetch
    assert (
        "p:activemm/putsignal __put_task_struct sigcnt=+0(+3072(%di)):s32 "
        "oom_mm=+1032(+3072(%di)):x64" in oom
    )
    victim = next(d for d in oom if " mark_oom_victim " in d)
    assert "oom_mm=+1032(+3072(%di)):x64" in victim and "mm=+3(%di):x64" in victim
    assert not any("find_lock_task_mm" in d for d in oom)  # no mm_struct.flags offset given
    adj = guest.kprobe_definitions({"pid": 1, "flags": 2, "mm": 3, "active_mm": 4, "comm": 5},
                                   None, {"signal": 3072, "sigcnt": 0, "oom_mm": 1032,
                                          "mm_flags": 904})  # fmt: skip
    # __set_oom_adj's find_lock_task_mm(): the task returned, its mm and that mm's flags
    assert (
        f"r{guest.MAXACTIVE}:activemm/oomadjtask find_lock_task_mm ret=$retval:x64 "
        "mm=+3($retval):x64 mm_flags=+904(+3($retval)):x64" in adj
    )
    assert f"r{guest.MAXACTIVE}:activemm/oomscoreadjdone oom_score_adj_write" in adj
    uffd = guest.kprobe_definitions({"pid": 1, "flags": 2, "mm": 3, "active_mm": 4, "comm": 5},
                                    uffd={"private_data": 200, "mm": 120})  # fmt: skip
    # userfaultfd_release(inode, file): file->private_data is the context, ctx->mm its mm
    assert (
        "p:activemm/uffdrelease userfaultfd_release ctx=+200(%si):x64 mm=+120(+200(%si)):x64"
        in uffd
    )
    assert "p:activemm/uffdnew new_userfaultfd" in uffd
    assert not any("dup_userfaultfd" in d for d in uffd)  # no vm_area_struct offsets given
    task = {"pid": 1, "flags": 2, "mm": 3, "active_mm": 4, "comm": 5}
    offsets = {"private_data": 200, "mm": 120, "features": 24, "vm_mm": 64,
               "vm_userfaultfd_ctx": 176}  # fmt: skip
    forks = guest.kprobe_definitions(task, uffd=offsets)
    # dup_userfaultfd(vma): the child's mm, the context its VMA came with, and its features
    assert (
        "p:activemm/uffddup dup_userfaultfd mm=+64(%di):x64 octx=+176(%di):x64 "
        "features=+24(+176(%di)):x32" in forks
    )
    assert not any("userfaultfd" in d for d in oom)
    thp = guest.kprobe_definitions(task, thp={"scan_slot": 16, "slot_mm": 32, "mm_users": 84})
    # the cursor is read through the static khugepaged_scan: its mm_slot, then that slot's mm
    assert (
        "p:activemm/thpexit __khugepaged_exit mm=%di:x64 slot=@khugepaged_scan+16:x64 "
        "slot_mm=+32(@khugepaged_scan+16):x64" in thp
    )
    assert "p:activemm/thpcollect collect_mm_slot mm=+32(%di):x64 mm_users=+84(+32(%di)):s32" in thp
    assert not any("khugepaged" in d for d in uffd)
    # binder's functions exist only once binder_linux is loaded (capture --module)
    binder = guest.kprobe_definitions(task, modules=("binder_linux",))
    assert "p:activemm/bindergrab binder_alloc_init alloc=%di:x64" in binder
    assert "p:activemm/binderdrop binder_alloc_deferred_release alloc=%di:x64" in binder
    # (its return marks the mmdrop() at its end, after the proc's pages were freed)
    assert f"r{guest.MAXACTIVE}:activemm/binderdone binder_alloc_deferred_release" in binder
    assert not any("binder" in d for d in thp)
    # and KVM's once kvm is (kvm_arch_init_vm/kvm_arch_destroy_vm, paired by the kvm address,
    # preempt_notifier_inc/the return of preempt_notifier_dec by the task), whichever
    # spelling the module is named with
    kvm = guest.kprobe_definitions(task, modules=("irqbypass", "kvm", "ccp", "kvm-amd"))
    assert "p:activemm/kvmgrab kvm_arch_init_vm kvm=%di:x64" in kvm
    assert "p:activemm/kvmcreated preempt_notifier_inc" in kvm
    assert "p:activemm/kvmdrop kvm_arch_destroy_vm kvm=%di:x64" in kvm
    assert f"r{guest.MAXACTIVE}:activemm/kvmdone preempt_notifier_dec" in kvm
    assert not any("kvm" in d for d in binder) and not any("binder" in d for d in kvm)
    # KSM: exit_mmap's marker reads mm->flags (MMF_VM_MERGEABLE after __ksm_exit), and
    # remove_rmap_item_from_tree names each rmap_item's mm with that mm's mm_users
    ksm = guest.kprobe_definitions(task, ksm={"flags": 904, "mm_users": 84, "rmap_mm": 16})
    assert "p:activemm/mmput exit_mmap mm=%di:x64 flags=+904(%di):x64" in ksm
    assert (
        "p:activemm/ksmremove remove_rmap_item_from_tree mm=+16(%di):x64 "
        "mm_users=+84(+16(%di)):s32" in ksm
    )
    assert "p:activemm/mmput exit_mmap mm=%di:x64" in thp  # without KSM: the mm alone
    assert not any("remove_rmap_item_from_tree" in d for d in thp)


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio not installed")
def test_the_initramfs_is_a_cpio_the_tools_read(tmp_path: Path) -> None:
    c = guest.Cpio()
    c.dir("bin")
    c.file("bin/hello", b"hello\n")
    c.symlink("bin/sh", "hello")
    c.chardev("dev/console", 5, 1)
    archive = tmp_path / "a.cpio"
    archive.write_bytes(c.finish())
    listing = subprocess.run(
        ["cpio", "-itv"], stdin=archive.open("rb"), capture_output=True, text=True, check=True
    ).stdout
    assert "bin/hello" in listing and "bin/sh -> hello" in listing and "dev/console" in listing


def test_every_workload_is_built_and_documented() -> None:
    """The names `-w` takes (WORKLOADS) are those guest/workload.c runs, in its order, and
    the rows of docs/validate.md's workload table."""
    root = Path(__file__).resolve().parent.parent
    source = (root / "src" / "activemm" / "capture" / "guest" / "workload.c").read_text()
    built = re.findall(r'^    \{"(\w+)", w_\w+, "', source, flags=re.MULTILINE)
    assert built == [n for n in WORKLOADS if n not in ("all", "parallel")]
    docs = (root / "docs" / "validate.md").read_text()
    table = docs.split("### Workloads", 1)[1].split("\n\n", 2)[1]
    rows = {m for line in table.splitlines() for m in re.findall(r"`(\w+)`", line.split("|")[1])}
    assert rows == set(WORKLOADS)


def test_capture_refuses_a_full_directory_and_unknown_workloads(tmp_path: Path) -> None:
    image = KernelImage("6.1.0-0-amd64", tmp_path, tmp_path, tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(CaptureError, match="not empty"):
        run.capture(image, run.CaptureOptions(out=tmp_path / "full"))
    with pytest.raises(CaptureError, match="unknown workload"):
        run.capture(image, run.CaptureOptions(out=tmp_path / "new", workload="threads,bogus"))
    # hotplug takes the last CPU offline (CPU 0 stays): with one CPU it could do nothing
    one_cpu = run.CaptureOptions(out=tmp_path / "new", smp=1, workload="zombie,hotplug")
    with pytest.raises(CaptureError, match=r"hotplug with --smp 1: .* --smp 2 or more"):
        run.capture(image, one_cpu)
    run.check_options(run.CaptureOptions(out=tmp_path / "new", smp=1, workload="all"))
    # 4 CPUs' ring buffers (16 MiB each) and their bookkeeping need 256 + 4 * 80 MiB
    with pytest.raises(CaptureError, match="--memory 512: expected at least 576 MiB"):
        run.capture(image, run.CaptureOptions(out=tmp_path / "new", smp=4, memory_mb=512))


def test_a_guest_whose_watchdog_never_fires_is_stopped_with_what_to_try(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A guest that booted and then neither finished its workload nor powered off at its own
    watchdog (--timeout, in guest time: 8 CPUs under TCG on a 2-CPU host ran too slowly for
    it to fire) is stopped by the host, and the failure says so and what to try. Here a
    shell stands for QEMU: it writes the boot line to the console and sleeps."""
    console, ship = tmp_path / "console.log", tmp_path / "ship.txt"
    monkeypatch.setattr(run, "WATCHDOG_GRACE", 0.2)
    opts = run.CaptureOptions(out=tmp_path / "cap", smp=8, timeout=0.2)
    boot = f"echo 'ACTIVEMM: booted 6.1.0-0-rt-amd64 cpus=8' > {console}"
    cmd = ["sh", "-c", f"{boot}; exec sleep 30"]
    started = time.monotonic()
    result = run._run_guest(cmd, console, ship, "tcg", opts, lambda msg: None)
    assert time.monotonic() - started < 10  # stopped, not waited for
    assert isinstance(result, str) and result.startswith("tcg: timed out in the workload")
    assert "watchdog (--timeout 0.2 s) did not power it off" in result
    assert f"TCG runs 8 CPUs on this machine's {os.cpu_count()}" in result
    assert "smaller --smp" in result


def test_your_own_workload_is_checked_before_anything_boots(tmp_path: Path) -> None:
    image = KernelImage("6.1.0-0-amd64", tmp_path, tmp_path, tmp_path)

    def refused(match: str, **kw: object) -> None:
        with pytest.raises(CaptureError, match=match):
            run.capture(image, run.CaptureOptions(out=tmp_path / "new", **kw))  # type: ignore[arg-type]

    refused("nothing to run", workload="none")
    refused("empty", workload="none", run="  ")
    # --scale repeats the built-in workloads; /bin/program gets no arguments from it
    refused(
        r"--scale 2 multiplies the built-in .* --run 'program ARGS'",
        workload="none",
        run="program",
        scale=2,
    )
    refused("no such file", program=tmp_path / "missing.c")
    (tmp_path / "notes.txt").write_text("hello")
    refused("C source", program=tmp_path / "notes.txt")
    if shutil.which("gcc"):
        dynamic = tmp_path / "dyn"
        src = tmp_path / "dyn.c"
        src.write_text("int main(void) { return 0; }\n")
        subprocess.run(["gcc", "-o", str(dynamic), str(src)], check=True)
        refused("dynamically linked", program=dynamic)
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(
    not (shutil.which("busybox") and shutil.which("gcc") and shutil.which("cpio")),
    reason="needs busybox, gcc and cpio",
)
def test_your_own_program_and_command_line_go_into_the_initramfs(tmp_path: Path) -> None:
    src = tmp_path / "mine.c"
    src.write_text('#include <stdio.h>\nint main(void) { puts("mine"); return 0; }\n')
    initrd = guest.build_initramfs(tmp_path, ["p:x y"], run="program & program; wait", program=src)
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(
        ["cpio", "-id", "--quiet"], input=gzip.decompress(initrd.read_bytes()), cwd=root, check=True
    )
    assert (root / "run.sh").read_text() == "program & program; wait\n"
    mine = subprocess.run([str(root / "bin" / "program")], capture_output=True, text=True)
    assert mine.stdout == "mine\n"  # built static from the source, runs anywhere
    alone = guest.build_initramfs(tmp_path, ["p:x y"], program=src)
    listing = subprocess.run(
        ["cpio", "-it", "--quiet"],
        input=gzip.decompress(alone.read_bytes()),
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert "run.sh" in listing.split()  # a program alone is the workload: /run.sh runs it
    broken = tmp_path / "broken.c"
    broken.write_text("int main(void) { return nope; }\n")
    with pytest.raises(CaptureError, match=r"building broken\.c failed: .*nope"):
        guest.build_initramfs(tmp_path, ["p:x y"], program=broken)


@pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc")
@pytest.mark.parametrize("name", ["mixed.c", "readers.c"])
def test_the_example_workloads_build_for_the_guest(tmp_path: Path, name: str) -> None:
    """examples/workloads/*.c, as docs/validate.md tells to pass them to --program."""
    src = Path(__file__).resolve().parent.parent / "examples" / "workloads" / name
    binary = guest.build_program(src, tmp_path)
    target = tmp_path / "program"
    target.write_bytes(binary)
    assert binary[:4] == b"\x7fELF" and guest._is_static(target)


def test_the_sweep_example_reports_a_capture_that_failed(tmp_path: Path) -> None:
    """examples/workloads/sweep.py runs activemm capture and validate per kernel and CPU
    count: a capture that cannot start (here a --program that does not exist, refused before
    any download, or an unknown built-in workload) is a row of the table with capture's own
    message, and exit status 1; no workload at all is a usage error (2)."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "examples" / "workloads" / "sweep.py"
    missing = tmp_path / "missing.c"
    r = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "out"), "--program", str(missing),
         "--smp", "2", "--kernels", "6.12"],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "300"},
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert "6.12-smp2" in r.stdout and "capture failed" in r.stdout
    assert "missing.c" in r.stdout
    r = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "builtin"), "-w", "bogus", "--smp", "2",
         "--kernels", "6.1"],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "300"},
    )  # fmt: skip
    assert r.returncode == 1 and "6.1-smp2" in r.stdout and "unknown workload" in r.stdout
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "again")], capture_output=True)
    assert r.returncode == 2 and b"give --program, --run or -w" in r.stderr


QEMU_READY = all(shutil.which(t) for t in ("qemu-system-x86_64", "busybox", "gcc", "apt-get"))


@pytest.mark.capture
@pytest.mark.skipif(
    not QEMU_READY and not os.environ.get("CI"),
    reason="needs qemu-system-x86, busybox-static and gcc (CI installs them)",
)
def test_capture_then_validate_end_to_end(tmp_path: Path) -> None:
    """Boot Debian's 6.1 kernel with 2 CPUs, record a workload, score the model on it. With
    --module brd the guest has RAM disks (the kernel's module, loaded before the workload)."""
    from typer.testing import CliRunner

    from activemm.cli import app
    from activemm.validate import score, validate

    out = tmp_path / "cap"
    ram = "test -b /dev/ram0 && echo ram0 is a block device"
    args = ["capture", "-o", str(out), "--smp", "2", "-w", "zombie,vfork", "--module", "brd"]
    r = CliRunner().invoke(app, [*args, "--run", ram])
    assert r.exit_code == 0, r.output
    assert (out / "trace.txt.gz").exists() and (out / "tasks_start.txt").exists()
    assert "ram0 is a block device" in (out / "workload.log").read_text()
    assert json.loads((out / "meta.json").read_text())["modules"] == ["brd"]
    result = validate(out)
    assert result.context_switches.total > 100
    assert result.context_switches.matched == result.context_switches.total
    # the one __mmdrop miss the inputs allow here: a __mmput racing the last lazy user
    missed = [m for m in result.mismatches if m["group"] == "mmdrop"]
    assert all(m["cause"] == score.RACE for m in missed), missed
    assert result.mmdrop.matched >= result.mmdrop.total - 2


def _as_read(event: TraceEvent) -> dict[str, Any]:
    """An event's fields but its line (trace-cmd report numbers lines its own way) and the
    tgid column (trace-cmd report has none); a string argument the probe could not fetch
    (tracefs `(fault)`, trace-cmd empty) and a return address in the kretprobe trampoline
    (tracefs `[unknown/kretprobe'd]`, trace-cmd its symbol) said one way."""
    d = {k: v for k, v in asdict(event).items() if k not in ("line", "tgid")}
    if isinstance(d.get("args"), dict):
        d["args"] = {k: "" if v == "(fault)" else v for k, v in d["args"].items()}
    caller = d.get("caller") or ""
    if caller == "[unknown/kretprobe'd]" or caller.endswith("_trampoline"):
        d["caller"] = "kretprobe trampoline"
    return {"kind": type(event).__name__, **d}


@pytest.mark.capture
@pytest.mark.skipif(
    not (QEMU_READY and shutil.which("trace-cmd")) and not os.environ.get("CI"),
    reason="needs qemu-system-x86, busybox-static, gcc and trace-cmd (CI installs them)",
)
def test_capture_trace_dat_is_read_and_scored_as_its_tracefs_text(tmp_path: Path) -> None:
    """--trace-dat: the guest's ring buffers also read by trace-cmd extract, the trace.dat a
    user of trace-cmd record has. Read through trace-cmd report (kprobe addresses named from
    the symbols the file keeps, irq flags from its latency layout), it gives the events the
    kernel's own tracefs text gives, field for field, and the model scores the same on it."""
    from typer.testing import CliRunner

    from activemm.cli import app
    from activemm.trace import read_trace
    from activemm.validate import validate

    out = tmp_path / "cap"
    args = ["capture", "-o", str(out), "--smp", "2", "-w", "zombie,threads", "--trace-dat"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    text = [_as_read(e) for e in read_trace(out / "trace.txt.gz")]
    dat = [_as_read(e) for e in read_trace(out / "trace.dat")]
    assert len(text) > 3000
    assert sum(e["kind"] == "Probe" for e in dat) > 1000
    assert [i for i, (a, b) in enumerate(zip(text, dat, strict=True)) if a != b][:5] == []
    assert any(e["kind"] == "TlbFlush" and e["hardirq"] for e in dat)
    for inputs in ("markers", "sched"):
        want, got = validate(out, inputs=inputs), validate(out / "trace.dat", inputs=inputs)
        for name in ("context_switches", "mmdrop", "outside_schedule"):
            assert getattr(got, name) == getattr(want, name), (inputs, name)


def _stretch(part: list[dict[str, Any]], whole: list[dict[str, Any]]) -> tuple[int, int]:
    """How `part` (one CPU's perf samples) sits in `whole` (that CPU's tracefs events) at
    its best: (events of the one not in the other, over the run of `whole` of part's length
    from where it starts, and events of `part` out of place there). Runs are tried from each
    place where one of part's first three events stands, two either way: an interrupt
    between a probe's two writers can swap the events at either end."""
    key = functools.partial(json.dumps, sort_keys=True, default=str)
    firsts = [key(e) for e in part[:3]]
    starts = {
        i + d
        for i, e in enumerate(whole)
        if key(e) in firsts
        for d in range(-2, 3)
        if 0 <= i + d <= len(whole) - len(part)
    }
    mine = Counter(map(key, part))
    best = (len(part) * 2, len(part))
    for at in sorted(starts):
        run = whole[at : at + len(part)]
        theirs = Counter(map(key, run))
        apart = sum(((mine - theirs) + (theirs - mine)).values())
        best = min(best, (apart, sum(a != b for a, b in zip(run, part, strict=True))))
    return best


def _as_perf_read(event: TraceEvent) -> dict[str, Any]:
    """An event's fields as both perf and tracefs record them: not its time (perf's clock is
    not the trace_clock), comm (perf names a task from its own records: swapper where tracefs
    says <idle>) or tgid, nor a probe's preempt depth (perf script prints its own irq-flags
    layout, which the reader does not take for tracefs' five columns); and the task fields of
    a hook called with no task (exec's activate_mm(): tracefs stores zeros for the faulting
    fetches, perf whatever its buffer held)."""
    d = {k: v for k, v in _as_read(event).items() if k not in ("ts", "comm", "preempt_depth")}
    args = d.get("args")
    if isinstance(args, dict) and args.get("tsk") == "0x0":
        d["args"] = {k: v for k, v in args.items() if not k.startswith("t_")}
    return d


@pytest.mark.capture
@pytest.mark.skipif(
    not (QEMU_READY and shutil.which("perf")) and not os.environ.get("CI"),
    reason="needs qemu-system-x86, busybox-static, gcc and perf (CI installs them)",
)
def test_capture_perf_data_records_what_tracefs_records(tmp_path: Path) -> None:
    """--perf-data: `perf record -a` of the same events (each with the capture's filter),
    enabled once perf is set up and stopped after the workload. Each CPU's samples, read
    through perf script with their irq flags, are the kernel's own tracefs events of that
    CPU over a stretch of it, event for event, in the same order but where an interrupt
    came in between a probe's two writers (a kprobe on a function's first instruction goes
    through ftrace with interrupts on: tracefs had a dup_mmap hit before an RCU softirq's
    sched_process_free events, perf after them, once in six runs), at most one event in a
    hundred, and where that happened at either end of perf's stretch, at most four events
    on one side only (CI met it once on a CPU's first or last event); the model, given
    the guest's symbols from kallsyms.txt beside it, matches every switch, __mmdrop and
    hook on it with markers."""
    from typer.testing import CliRunner

    from activemm.cli import app
    from activemm.trace import read_trace
    from activemm.trace.kallsyms import Symbols
    from activemm.validate import validate

    out = tmp_path / "cap"
    args = ["capture", "-o", str(out), "--smp", "2", "-w", "zombie,threads", "--perf-data"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert (out / "kallsyms.txt").stat().st_size > 0
    text = [_as_perf_read(e) for e in read_trace(out / "trace.txt.gz")]
    symbols = Symbols.parse((out / "kallsyms.txt").read_text().splitlines(), "kallsyms.txt")
    perf = [_as_perf_read(e) for e in read_trace(out / "perf.data", symbols=symbols)]
    assert sum(e["kind"] == "Probe" for e in perf) > 1000
    assert any(e["kind"] == "TlbFlush" and e["hardirq"] for e in perf)
    for cpu in (0, 1):
        mine = [e for e in perf if e["cpu"] == cpu]
        kernel = [e for e in text if e["cpu"] == cpu]
        apart, moved = _stretch(mine, kernel)
        assert apart <= 4 and moved <= len(mine) // 100, (cpu, apart, moved)
    result = validate(out / "perf.data", inputs="markers")
    for name in ("context_switches", "mmdrop", "outside_schedule"):
        got = getattr(result, name)
        assert got.matched == got.total > 0, (name, result.mismatches[:3])


@pytest.mark.capture
@pytest.mark.skipif(
    not QEMU_READY and not os.environ.get("CI"),
    reason="needs qemu-system-x86, busybox-static and gcc (CI installs them)",
)
def test_the_recording_script_records_what_validate_scores(tmp_path: Path) -> None:
    """`activemm probes --script` for Debian's 6.1 (offsets from its BTF) run in a guest by
    busybox sh, in a tracefs instance of its own while the capture records too (probes of
    another group): it defines its probes, records a workload, writes what validate reads
    (a bare directory: trace, task snapshot, meta.json with the kernel, its command line and
    the ring buffers' stats), and removes its probes and instance; the model scores on it as
    on a capture."""
    from typer.testing import CliRunner

    from activemm.capture.kernel import fetch
    from activemm.cli import app
    from activemm.validate import score, validate

    image = fetch("6.1")
    script = tmp_path / "record.sh"
    r = CliRunner().invoke(app, ["probes", "--btf", str(image.vmlinux), "--script", "--group",
                                 "mine", "-o", str(script)])  # fmt: skip
    assert r.exit_code == 0, r.output
    run_line = (
        f"cat > /tmp/record.sh <<'SCRIPT'\n{script.read_text()}SCRIPT\n"
        "BUFFER_KB=4096 sh /tmp/record.sh /tmp/rec -- /workload zombie,vfork,threads 1 >/dev/null\n"
        'echo "=== status $?"\n'
        'for f in meta.json tasks_start.txt kprobes.txt; do echo "=== $f"; cat /tmp/rec/$f; done\n'
        'echo "=== trace.txt"; gzip -dc /tmp/rec/trace.txt.gz\n'
        'echo "=== left"; grep -c mine/ /sys/kernel/tracing/kprobe_events; '
        "ls /sys/kernel/tracing/instances\n"
    )
    out = tmp_path / "cap"
    r = CliRunner().invoke(app, ["capture", "-o", str(out), "--smp", "2", "--run", run_line])
    assert r.exit_code == 0, r.output
    log = (out / "workload.log").read_text()
    parts = dict(re.findall(r"^=== (\S+)\n(.*?)(?=^=== |\Z)", log, re.M | re.S))
    assert log.count("=== status 0") == 1, log[-2000:]
    # no probe of its group left, no instance (then /init's own last line)
    assert parts["left"].startswith("0\nworkload exit status 0"), parts["left"]
    rec = tmp_path / "rec"
    rec.mkdir()
    for name in ("meta.json", "tasks_start.txt", "trace.txt"):
        (rec / name).write_text(parts[name])
    meta = json.loads(parts["meta.json"])
    assert meta["kernel"] == image.release and "console=" in meta["kernel_args"]
    # each CPU's ring buffer stats, none full: validate cuts a trace where a full one ends
    assert set(meta["ring_buffer"]) == {"cpu0", "cpu1"}, meta
    assert all(s == {"overrun": 0, "dropped_events": 0} for s in meta["ring_buffer"].values())
    assert meta["kvm_pv_tlb_flush"] is False  # TCG: the kernel found no KVM to flush through
    assert "mine/mmswitch switch_mm_irqs_off" in parts["kprobes.txt"]
    result = validate(rec)
    assert result.preset == "linux-6.1-x86_64" and result.inputs == "markers"
    assert result.context_switches.total > 100
    assert result.context_switches.matched == result.context_switches.total
    missed = [m for m in result.mismatches if m["group"] == "mmdrop"]
    assert all(m["cause"] == score.RACE for m in missed), missed
    assert result.outside_schedule.matched == result.outside_schedule.total


FAKE_QEMU = r"""#!/usr/bin/env python3
# A stand-in for qemu-system-x86_64: the first boot panics, the second ships a capture.
import base64, gzip, os, sys
args = sys.argv[1:]
if "--version" in args:
    print("QEMU emulator version 0.0 (fake)")
    sys.exit(0)
files = [a[5:] for a in args if a.startswith("file:")]
console, ship = files
count = os.path.join(os.environ["FAKE_QEMU_DIR"], "runs")
runs = int(open(count).read()) if os.path.exists(count) else 0
open(count, "w").write(str(runs + 1))
with open(os.path.join(os.environ["FAKE_QEMU_DIR"], "accels"), "a") as f:
    f.write(args[args.index("-accel") + 1] + "\n")
first = os.environ.get("FAKE_QEMU_FIRST", "panic")
if runs == 0 and first == "panic":
    open(console, "w").write("[    2.0] Kernel panic - not syncing: Fatal exception in interrupt\n")
    sys.exit(0)
if runs == 0 and first == "oops-running":  # an oopsed kernel thread: the guest runs on
    open(console, "w").write("ACTIVEMM: booted\n[    5.5] BUG: kernel NULL pointer dereference\n")
    import time
    time.sleep(30)
    open(os.path.join(os.environ["FAKE_QEMU_DIR"], "ran-on"), "w").write("the guest ran on\n")
    sys.exit(0)
def block(name, data):
    b64 = base64.b64encode(gzip.compress(data)).decode()
    return f"=== BEGIN {name}\n{b64}\n=== END {name}\n"
meta = b"release 6.1.0-0-amd64\ncpus 2\nfinish_task_switch finish_task_switch.isra.0\n"
overrun = b"5" if first == "overrun" else b"0"
dropped = b"7" if first == "dropped" else b"0"  # a full buffer that does not overwrite
meta += (b"stats cpu0 entries: 3 overrun: " + overrun
         + b" commit overrun: 0 bytes: 10 dropped events: " + dropped + b"\n")
# the ring buffer size init.sh asked for, as much of it as the guest's memory allowed
asked = [w for w in args[args.index("-append") + 1].split() if w.startswith("activemm.buffer_kb=")]
kb = min(int(asked[0].split("=")[1]), int(os.environ.get("FAKE_QEMU_MAX_KB", "10000000")))
meta += f"buffer_size_kb {kb}\n".encode()
if (first == "missed" and runs == 0) or first == "always-missed":
    meta += b"kprobe_profile mmswitch 99 1\n"
trace = b"# tracer: nop\n"
if first != "reset":  # "reset": the workload removed a trace event, emptying the buffers
    trace += b"   init-1 (1) [000] ..... 5.0: tracing_mark_write: activemm trace start\n"
failed = b""
if first == "insmod":  # what init.sh writes: insmod's reason, then the kernel's last line
    failed = b"insmod /modules/0-brd.ko: can't insert '/modules/0-brd.ko': No such device"
    failed += b" (brd: no disk)\n"
if first == "no-lazytlb":  # (Linux 7.2 inlines x86's enter_lazy_tlb())
    failed = b"p:activemm/lazytlb enter_lazy_tlb mm=%di:x64\np:activemm/ksm x y\n"
out = "".join(block(n, d) for n, d in [("meta", meta), ("kprobes", b"p:x y\n"),
    ("kprobes.failed", failed), ("workload.log", b"workload exit status 0\n"),
    ("tasks_start", b""), ("tasks_end", b""), ("trace", trace)]) + "=== DONE\n"
if first == "uefi":  # OVMF's terminal escapes left on the port, no newline after them
    out = "\x1b[2J\x1b[01;01H\x1b[=3h" + out
if first == "no-meta":  # its first line garbled on the way
    out = out.replace("=== BEGIN meta", "=?= BEGIN meta", 1)
open(ship, "w").write(out)
oops = "[    8.5] Oops: 0010 [#1] PREEMPT SMP NOPTI\n" if runs == 0 and first == "oops" else ""
open(console, "w").write(f"ACTIVEMM: booted\n{oops}ACTIVEMM: workload done\nACTIVEMM: shipped\n")
"""


def _fake_qemu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: str, ring: dict[str, int] | None = None
) -> KernelImage:
    """FAKE_QEMU on PATH in place of qemu-system-x86_64 (its first run ends as `first` says),
    BTF offsets made up (none for the OOM and /proc markers): the image to capture with."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "qemu-system-x86_64"
    fake.write_text(FAKE_QEMU)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_QEMU_DIR", str(tmp_path))
    monkeypatch.setenv("FAKE_QEMU_FIRST", first)
    monkeypatch.setattr(run, "btf", lambda image: b"")
    task = {"pid": 1, "flags": 2, "mm": 3, "active_mm": 4, "comm": 5}
    monkeypatch.setattr(run, "probe_offsets", lambda data: {"task_struct": task,
                                                            "io_ring_ctx": ring or {}})  # fmt: skip
    return KernelImage("6.1.0-0-amd64", tmp_path, tmp_path, tmp_path)


@pytest.mark.skipif(
    not (shutil.which("busybox") and shutil.which("gcc")), reason="needs busybox and gcc"
)
@pytest.mark.parametrize("first", ["panic", "oops", "oops-running"])
def test_a_guest_that_crashes_gets_one_more_try(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: str
) -> None:
    """A panic while booting, or an oops in the workload even though the trace arrived: the
    first run is no ground truth, the second (clean) one is kept. A guest whose oops left it
    running (a kernel thread died, the kernel did not panic) is stopped as soon as its
    console shows it, not left to run until its watchdog. The retry runs TCG with one host
    thread for every vCPU (no vCPU runs kernel text another is patching as it was before),
    and meta.json says so."""
    image = _fake_qemu(tmp_path, monkeypatch, first, ring={"mm_account": 984})
    said: list[str] = []
    meta = run.capture(image, run.CaptureOptions(out=tmp_path / "cap", accel="tcg"), said.append)
    assert (tmp_path / "runs").read_text() == "2"
    assert (tmp_path / "accels").read_text().split() == ["tcg,thread=multi", "tcg,thread=single"]
    assert not (tmp_path / "ran-on").exists()
    assert any("again, one host thread for every vCPU" in s for s in said)
    assert meta["kernel"] == "6.1.0-0-amd64" and meta["workload_status"] == 0
    assert (meta["accel"], meta["qemu_accel"]) == ("tcg", "tcg,thread=single")
    if first == "oops":  # the command's summary says how the kept recording ran
        from typer.testing import CliRunner

        from activemm.capture import kernel
        from activemm.cli import app

        monkeypatch.setattr(kernel, "fetch", lambda release: image)
        (tmp_path / "runs").unlink()
        args = ["capture", "-o", str(tmp_path / "cap2"), "--accel", "tcg"]
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, r.output
        assert "(2 CPUs, tcg single-threaded, workload" in " ".join(r.output.split())
    assert sorted(p.name for p in (tmp_path / "cap").iterdir()) == [
        "meta.json", "tasks_end.txt", "tasks_start.txt", "trace.txt.gz", "workload.log"
    ]  # fmt: skip


@pytest.mark.skipif(
    not (shutil.which("busybox") and shutil.which("gcc")), reason="needs busybox and gcc"
)
def test_a_recording_whose_hooks_missed_hits_is_made_once_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A core probe that missed a hit loses the recording: the guest records once more, and
    the second is kept; missed in all three recordings, one clear error and no capture,
    unless --allow-lost (then the first is kept, marked)."""
    image = _fake_qemu(tmp_path, monkeypatch, "missed")
    said: list[str] = []
    meta = run.capture(image, run.CaptureOptions(out=tmp_path / "cap", accel="tcg"), said.append)
    assert (tmp_path / "runs").read_text() == "2"
    assert any("missed hits (mmswitch 1): recording again" in s for s in said)
    assert meta["kprobe_missed"] == {}
    monkeypatch.setenv("FAKE_QEMU_FIRST", "always-missed")
    (tmp_path / "runs").unlink()
    missed = r"missed hits \(mmswitch 1\) in each of 3 recordings"
    with pytest.raises(run.CaptureError, match=missed):
        run.capture(image, run.CaptureOptions(out=tmp_path / "cap2", accel="tcg"), print)
    assert (tmp_path / "runs").read_text() == "3" and not (tmp_path / "cap2").exists()
    (tmp_path / "runs").unlink()
    opts = run.CaptureOptions(out=tmp_path / "cap3", accel="tcg", allow_lost=True)
    meta = run.capture(image, opts, print)
    assert (tmp_path / "runs").read_text() == "1" and meta["kprobe_missed"] == {"mmswitch": 1}


@pytest.mark.skipif(
    not (shutil.which("busybox") and shutil.which("gcc")), reason="needs busybox and gcc"
)
def test_an_output_directory_filled_meanwhile_keeps_the_capture_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """-o names an empty directory, and something writes into it while the guest runs: one
    clear error, and the capture is kept whole beside it rather than lost."""
    image = _fake_qemu(tmp_path, monkeypatch, "none")
    out = tmp_path / "cap"
    out.mkdir()

    def meddle(_msg: str) -> None:
        (out / "someone-elses").write_text("x")

    with pytest.raises(run.CaptureError, match="wrote into it while the guest ran") as e:
        run.capture(image, run.CaptureOptions(out=out, accel="tcg"), meddle)
    kept = Path(str(e.value).rsplit("kept in ", 1)[1])
    assert sorted(p.name for p in kept.iterdir()) == [
        "meta.json", "tasks_end.txt", "tasks_start.txt", "trace.txt.gz", "workload.log"
    ]  # fmt: skip
    assert [p.name for p in out.iterdir()] == ["someone-elses"]


@pytest.mark.skipif(
    not (shutil.which("busybox") and shutil.which("gcc")), reason="needs busybox and gcc"
)
def test_a_shipment_with_firmware_escapes_is_read_and_one_missing_its_meta_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """UEFI firmware's escapes before the guest's first marker (6.17 under OVMF) cost
    nothing; a shipment whose meta did not arrive is one clear error naming it, and nothing
    is written."""
    image = _fake_qemu(tmp_path, monkeypatch, "uefi")
    meta = run.capture(image, run.CaptureOptions(out=tmp_path / "cap", accel="tcg"))
    assert meta["kernel"] == "6.1.0-0-amd64" and (tmp_path / "cap" / "meta.json").is_file()
    monkeypatch.setenv("FAKE_QEMU_FIRST", "no-meta")
    missing = re.escape("did not arrive whole (its meta missing; ")
    with pytest.raises(run.CaptureError, match=missing):
        run.capture(image, run.CaptureOptions(out=tmp_path / "cap2", accel="tcg"))
    assert not (tmp_path / "cap2").exists()


@pytest.mark.skipif(
    not (shutil.which("busybox") and shutil.which("gcc")), reason="needs busybox and gcc"
)
def test_a_trace_whose_buffers_were_reset_is_refused_unless_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A workload that removes a trace event (a uprobe of its own) resets every ring buffer:
    the trace arrives without its start marker, its beginning gone, while the buffer stats
    show no loss. Refused like lost events; kept with --allow-lost, and marked so."""
    image = _fake_qemu(tmp_path, monkeypatch, "reset")
    with pytest.raises(run.CaptureError, match="ring buffers were reset"):
        run.capture(image, run.CaptureOptions(out=tmp_path / "cap", accel="tcg"), print)
    assert not (tmp_path / "cap").exists()
    opts = run.CaptureOptions(out=tmp_path / "cap", accel="tcg", allow_lost=True)
    meta = run.capture(image, opts, print)
    assert meta["trace_reset"] is True and meta["lost_events"] is True
    assert json.loads((tmp_path / "cap" / "meta.json").read_text())["trace_reset"] is True


def test_ring_buffers_grow_with_the_scale_and_the_guest_memory_with_them() -> None:
    """Each CPU's ring buffer: 16 MiB at --scale 1 (and for --workload none), the guest's
    memory then 256 + 80 MiB per CPU as always; at --scale N room for the busiest CPU's share
    of what the built-in workloads write (measured at --scale 50: on 6.12 with 4 CPUs 68 MiB
    in all, 26 MiB on one; on 6.1 with 2, 167 MiB on one); --buffer-mb decides otherwise."""

    def sized(**kw: Any) -> tuple[int, int]:
        opts = run.CaptureOptions(out=Path("cap"), **kw)
        return run.ring_buffer_mb(opts), run.min_memory_mb(opts.smp, run.ring_buffer_mb(opts))

    for smp in (1, 2, 4, 16):
        assert sized(smp=smp) == (16, 256 + 80 * smp)
        assert sized(smp=smp, scale=50, workload="none")[0] == 16
        by_scale = [sized(smp=smp, scale=n)[0] for n in range(1, 51)]
        assert by_scale == sorted(by_scale)
    assert sized(smp=2, scale=50)[0] >= 167 + 16 and sized(smp=4, scale=50)[0] >= 26 * 2
    assert [sized(smp=n, scale=50)[0] for n in (1, 2, 3, 4, 8, 16)] == sorted(
        (sized(smp=n, scale=50)[0] for n in (1, 2, 3, 4, 8, 16)), reverse=True
    )
    assert sized(smp=2, scale=50, buffer_mb=200) == (200, 256 + 2 * (64 + 200))
    with pytest.raises(CaptureError, match=r"--memory 600: expected at least 800 MiB .* 72 MiB"):
        run.check_options(run.CaptureOptions(out=Path("cap"), smp=4, scale=50, memory_mb=600))
    # more than the machine has: refused before anything boots, not a QEMU failure later
    host = run.host_memory_mb()
    assert host > 0
    too_big = (host - 256) // 2  # two CPUs' buffers: beyond the host by about 128 MiB
    need = 256 + 2 * (64 + too_big)
    assert need > host
    with pytest.raises(CaptureError, match=rf"need {need} MiB .* has {host} MiB: give a smaller"):
        run.check_options(run.CaptureOptions(out=Path("cap"), buffer_mb=too_big))
    run.check_options(run.CaptureOptions(out=Path("cap"), buffer_mb=too_big - 64))


@pytest.mark.skipif(
    not (shutil.which("busybox") and shutil.which("gcc")), reason="needs busybox and gcc"
)
def test_ring_buffers_too_small_or_not_allocated_refuse_the_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guest is asked for ring buffers of ring_buffer_mb() on its command line; a guest
    that overran them, or could not allocate them (it has less), gives one clear error
    naming --buffer-mb, and no capture. The size is in meta.json."""
    image = _fake_qemu(tmp_path, monkeypatch, "overrun")
    with pytest.raises(CaptureError, match=r"lost events on cpu0 .* 16 MiB; give a larger "):
        run.capture(image, run.CaptureOptions(out=tmp_path / "cap", accel="tcg"), print)
    assert not (tmp_path / "cap").exists()
    monkeypatch.setenv("FAKE_QEMU_FIRST", "none")
    monkeypatch.setenv("FAKE_QEMU_MAX_KB", str(40 * 1024))
    opts = run.CaptureOptions(out=tmp_path / "cap", accel="tcg", buffer_mb=48)
    with pytest.raises(CaptureError, match=r"a ring buffer of 48 MiB \(it has 40 MiB\)"):
        run.capture(image, opts, print)
    assert not (tmp_path / "cap").exists()
    opts = run.CaptureOptions(out=tmp_path / "cap", accel="tcg", buffer_mb=40)
    assert run.capture(image, opts, print)["buffer_mb"] == 40


@pytest.mark.skipif(
    not (shutil.which("busybox") and shutil.which("gcc")), reason="needs busybox and gcc"
)
def test_a_capture_whose_buffers_filled_is_refused_or_kept_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A guest ring buffer that filled dropped the events after it (they are not in the
    trace): `activemm capture` refuses the trace in one line, exit status 2; with
    --allow-lost it keeps it and warns, naming the CPU, what it dropped and what validate
    does with such a trace."""
    from typer.testing import CliRunner

    from activemm.capture import kernel
    from activemm.cli import app

    image = _fake_qemu(tmp_path, monkeypatch, "dropped")
    monkeypatch.setattr(kernel, "fetch", lambda release: image)
    args = ["capture", "-o", str(tmp_path / "cap"), "--accel", "tcg"]
    r = CliRunner().invoke(app, args)  # (main() prints it as one line, exit status 2)
    assert isinstance(r.exception, CaptureError) and r.exception.exit_code == 2
    assert "lost events on cpu0 (ring buffer full)" in str(r.exception)
    assert not (tmp_path / "cap").exists()
    r = CliRunner().invoke(app, [*args, "--allow-lost"])
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert "ring buffers full: they dropped events (CPU 0 7), kept by --allow-lost" in said
    assert "scores the trace up to where the first full CPU's ends" in said
    meta = json.loads((tmp_path / "cap" / "meta.json").read_text())
    assert meta["ring_buffer"]["cpu0"]["dropped_events"] == 7 and meta["lost_events"] is True


def test_modules_asked_for_come_in_order_or_the_capture_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--module NAME ships that module of the kernel's tree (plain or xz, a dash for an
    underscore as file names have it) in the order given; one missing, a name that is not
    one, or one the guest's insmod refused: a clear error, no capture."""
    import lzma

    tree = tmp_path / "lib" / "modules" / "6.12.0-1-amd64"
    (tree / "kernel/drivers/block/zram").mkdir(parents=True)
    (tree / "kernel/mm").mkdir(parents=True)
    (tree / "kernel/drivers/block/zram/zram.ko.xz").write_bytes(lzma.compress(b"\x7fELF zram"))
    (tree / "kernel/mm/zsmalloc.ko").write_bytes(b"\x7fELF zsmalloc")
    (tree / "kernel/drivers/block/brd-x.ko").write_bytes(b"\x7fELF brd-x")
    mods = guest.named_modules(tree, ("zsmalloc", "zram", "brd_x"))
    assert mods == [("zsmalloc", b"\x7fELF zsmalloc"), ("zram", b"\x7fELF zram"),
                    ("brd-x", b"\x7fELF brd-x")]  # fmt: skip
    with pytest.raises(CaptureError, match=r"--module loop: no loop\.ko"):
        guest.named_modules(tree, ("zram", "loop"))
    with pytest.raises(CaptureError, match="expected a module name"):
        run.check_options(run.CaptureOptions(out=tmp_path / "cap", modules=("../evil",)))
    if not (shutil.which("busybox") and shutil.which("gcc")):
        return
    image = _fake_qemu(tmp_path, monkeypatch, "insmod")
    monkeypatch.setattr(guest, "named_modules", lambda tree, names: [("brd", b"\x7fELF")])
    opts = run.CaptureOptions(out=tmp_path / "cap", accel="tcg", modules=("brd",))
    with pytest.raises(
        CaptureError,
        match="--module brd: insmod failed in the guest: can't "
        r"insert '/modules/0-brd.ko': No such device \(brd: no disk\) \(does",
    ):
        run.capture(image, opts, print)
    assert not (tmp_path / "cap").exists()


@pytest.mark.skipif(
    not (shutil.which("busybox") and shutil.which("gcc")), reason="needs busybox and gcc"
)
def test_a_kernel_refusing_a_probe_the_scores_rest_on_gives_no_capture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel with no enter_lazy_tlb() to probe (Debian's Linux 7.2 inlines x86's) records
    no hook for half the context switches, nothing validate could score: one error naming
    the function, and no capture. (A marker refused, a function this kernel lacks, is only
    listed in meta.json's kprobes_refused.)"""
    image = _fake_qemu(tmp_path, monkeypatch, "no-lazytlb")
    with pytest.raises(CaptureError, match=r"refused the kprobe on enter_lazy_tlb, which the"):
        run.capture(image, run.CaptureOptions(out=tmp_path / "cap", accel="tcg"), print)
    assert not (tmp_path / "cap").exists()


def test_the_vhost_modules_come_uncompressed_in_load_order(tmp_path: Path) -> None:
    """Debian 12's 6.1 ships plain .ko files, its 6.12 .ko.xz; busybox insmod takes plain ELF.
    A tree missing one of them gives none (the workload then says it has no device)."""
    import lzma

    tree = tmp_path / "lib" / "modules" / "6.12.0-1-amd64"
    for i, name in enumerate(guest.VHOST_MODULES):
        d = tree / "kernel" / ("drivers/net" if name in ("tun", "tap") else "drivers/vhost")
        d.mkdir(parents=True, exist_ok=True)
        body = f"\x7fELF {name}".encode()
        if i % 2:
            (d / f"{name}.ko.xz").write_bytes(lzma.compress(body))
        else:
            (d / f"{name}.ko").write_bytes(body)
    mods = guest.kernel_modules(tree, guest.VHOST_MODULES)
    assert [n for n, _ in mods] == list(guest.VHOST_MODULES)
    assert all(data == f"\x7fELF {n}".encode() for n, data in mods)
    image = KernelImage("6.12.0-1-amd64", tmp_path / "boot" / "vmlinuz-6.12.0-1-amd64", tmp_path,
                        tmp_path)  # fmt: skip
    assert image.modules == tree
    next(tree.glob("kernel/**/tap.ko*")).unlink()
    assert guest.kernel_modules(tree, guest.VHOST_MODULES) == []
    assert guest.kernel_modules(tmp_path / "nowhere", guest.VHOST_MODULES) == []


def test_a_merged_usr_package_has_its_modules_found(tmp_path: Path) -> None:
    """Debian 13's image packages (6.17, 6.18 from trixie-backports) ship their modules in
    usr/lib/modules/RELEASE, beside boot/vmlinuz-RELEASE; sid's keep vmlinuz in that very
    directory. --module brd found none there and said brd was built in (it is a module,
    brd.ko.xz)."""
    import lzma

    release = "6.17.13+deb13-amd64"
    tree = tmp_path / "usr" / "lib" / "modules" / release
    (tree / "kernel/drivers/block").mkdir(parents=True)
    (tree / "kernel/drivers/block/brd.ko.xz").write_bytes(lzma.compress(b"\x7fELF brd"))
    image = KernelImage(release, tmp_path / "boot" / f"vmlinuz-{release}", tmp_path, tmp_path)
    assert image.modules == tree
    assert guest.named_modules(image.modules, ("brd",)) == [("brd", b"\x7fELF brd")]
    sid = KernelImage(release, tree / "vmlinuz", tmp_path, tmp_path)
    assert sid.modules == tree
    bare = KernelImage(release, tmp_path / "a" / "b" / "vmlinuz", tmp_path, tmp_path)
    assert bare.modules == tmp_path / "a" / "lib" / "modules" / release  # (none: in errors)


def test_kernel_parameters_asked_for_reach_the_guests_command_line(tmp_path: Path) -> None:
    """--kernel-args words go on the guest's command line (preempt=full boots Debian's
    PREEMPT_DYNAMIC kernels fully preemptible); a word that is no parameter, or one the
    capture sets itself (its console, /init's workload parameters), is refused before
    anything boots."""
    image = KernelImage("6.1.0-0-amd64", tmp_path / "vmlinuz", tmp_path, tmp_path)
    opts = run.CaptureOptions(out=tmp_path / "cap", kernel_args="preempt=full nosmt")
    run.check_options(opts)
    for bad, why in (
        ("console=tty0", "set by the capture itself"),
        ("activemm.workload=none", "set by the capture itself"),
        ("rdinit=/bin/sh", "set by the capture itself"),
        ("preempt=full;reboot", "not a kernel parameter"),
        ("'quoted'", "not a kernel parameter"),
    ):
        with pytest.raises(CaptureError, match=f"--kernel-args: .*{why}"):
            run.check_options(run.CaptureOptions(out=tmp_path / "cap", kernel_args=bad))
    assert not (tmp_path / "cap").exists()
    if not shutil.which("qemu-system-x86_64"):
        return
    cmd = run.qemu_command(image, tmp_path / "initrd", opts, "tcg", tmp_path / "c", tmp_path / "s")
    words = cmd[cmd.index("-append") + 1].split()
    assert words[-2:] == ["preempt=full", "nosmt"]
    assert "activemm.workload=all" in words  # the capture's own are still there


def test_cpu_model_asked_for_reaches_qemu(tmp_path: Path) -> None:
    """--cpu is QEMU's -cpu: under TCG only when asked (QEMU's default otherwise), with KVM
    instead of `host`, with KVM's paravirtual TLB flush off unless --cpu names it; what is no
    model word is refused before anything boots."""
    image = KernelImage("6.1.0-0-amd64", tmp_path / "vmlinuz", tmp_path, tmp_path)

    def cpu_of(opts: run.CaptureOptions, accel: str) -> str | None:
        cmd = run.qemu_command(image, tmp_path / "i", opts, accel, tmp_path / "c", tmp_path / "s")
        return cmd[cmd.index("-cpu") + 1] if "-cpu" in cmd else None

    if shutil.which("qemu-system-x86_64"):
        plain = run.CaptureOptions(out=tmp_path / "cap")
        asked = run.CaptureOptions(out=tmp_path / "cap", cpu="max,-pku")
        own = run.CaptureOptions(out=tmp_path / "cap", cpu="host,kvm-pv-tlb-flush=on")
        assert cpu_of(plain, "tcg") is None
        # KVM's paravirtual TLB flush skips vCPUs the host preempted: off unless asked for
        assert cpu_of(plain, "kvm") == "host,kvm-pv-tlb-flush=off"
        assert cpu_of(asked, "tcg") == "max,-pku"
        assert cpu_of(asked, "kvm") == "max,-pku,kvm-pv-tlb-flush=off"
        assert cpu_of(own, "kvm") == "host,kvm-pv-tlb-flush=on"
    # what meta.json records as cpu
    assert run.cpu_model("", "tcg") == "qemu64"
    assert run.cpu_model("", "kvm") == "host,kvm-pv-tlb-flush=off"
    for bad in ("max -smp 4", "max;reboot", "'max'"):
        with pytest.raises(CaptureError, match=r"--cpu .*expected a QEMU CPU model"):
            run.check_options(run.CaptureOptions(out=tmp_path / "cap", cpu=bad))
    assert not (tmp_path / "cap").exists()


def test_uefi_firmware_boots_the_efi_stub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--firmware uefi: QEMU gets OVMF as its -bios and the kernel's bzImage (its EFI stub;
    the ELF vmlinux boots by PVH under SeaBIOS only); without OVMF, one line naming the
    Debian package, before anything boots; any other word is refused."""
    image = KernelImage("6.1.0-0-amd64", tmp_path / "vmlinuz", tmp_path / "vmlinux", tmp_path)
    fd = tmp_path / "OVMF.fd"
    fd.write_bytes(b"")
    monkeypatch.setattr(run, "OVMF", (str(tmp_path / "missing.fd"), str(fd)))
    opts = run.CaptureOptions(out=tmp_path / "cap", firmware="uefi")
    run.check_options(opts)
    if shutil.which("qemu-system-x86_64"):
        cmd = run.qemu_command(image, tmp_path / "i", opts, "tcg", tmp_path / "c", tmp_path / "s")
        assert cmd[cmd.index("-bios") + 1] == str(fd)
        assert cmd[cmd.index("-kernel") + 1] == str(image.vmlinuz)
        plain = run.CaptureOptions(out=tmp_path / "cap")
        cmd = run.qemu_command(image, tmp_path / "i", plain, "tcg", tmp_path / "c", tmp_path / "s")
        assert "-bios" not in cmd and cmd[cmd.index("-kernel") + 1] == str(image.vmlinux)
    monkeypatch.setattr(run, "OVMF", (str(tmp_path / "missing.fd"),))
    with pytest.raises(CaptureError, match=r"--firmware uefi needs OVMF: `apt-get install ovmf`"):
        run.check_options(opts)
    with pytest.raises(CaptureError, match=r"--firmware 'efi': expected bios or uefi"):
        run.check_options(run.CaptureOptions(out=tmp_path / "cap", firmware="efi"))
    assert not (tmp_path / "cap").exists()


@pytest.mark.skipif(
    not (shutil.which("busybox") and shutil.which("gcc")), reason="needs busybox and gcc"
)
def test_meta_records_the_cpu_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """meta.json says which CPU model the guest had: the one asked for, else QEMU's qemu64
    under TCG (a capture without PCID)."""
    image = _fake_qemu(tmp_path, monkeypatch, "clean")
    plain = run.capture(image, run.CaptureOptions(out=tmp_path / "a", accel="tcg"), print)
    asked = run.CaptureOptions(out=tmp_path / "b", accel="tcg", cpu="Skylake-Server")
    assert plain["cpu"] == "qemu64"
    assert run.capture(image, asked, print)["cpu"] == "Skylake-Server"
    assert json.loads((tmp_path / "b" / "meta.json").read_text())["cpu"] == "Skylake-Server"


def test_perf_data_without_perf_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--perf-data puts the host's perf into the guest: without one, the package to install,
    before anything is downloaded or booted; and room in the guest for perf's buffers and a
    perf.data as large as the ring buffers' events (a perf sample is about 2.5 times the
    bytes of its ring-buffer event, measured on a recording of unseen44.c)."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(CaptureError, match=r"--perf-data needs perf: `apt-get install linux-perf`"):
        run.check_options(run.CaptureOptions(out=tmp_path / "cap", perf_data=True))
    for smp in (1, 2, 4):
        plain, perf = run.min_memory_mb(smp, 16), run.min_memory_mb(smp, 16, perf_data=True)
        assert perf - plain >= smp * (run.PERF_MB + 16 * 5 // 2)


@pytest.mark.parametrize(
    ("lines", "mode"),
    [
        # Debian 12's 6.1/6.12, Debian 13's 6.17 (PREEMPT_DYNAMIC: the boot default is the
        # one chosen), their RT flavour (PREEMPT_RT=y comes with PREEMPT_LAZY unset)
        (["CONFIG_PREEMPT_VOLUNTARY=y", "# CONFIG_PREEMPT is not set"], "voluntary"),
        (["# CONFIG_PREEMPT_VOLUNTARY is not set", "CONFIG_PREEMPT_LAZY=y",
          "CONFIG_PREEMPT_DYNAMIC=y", "CONFIG_PREEMPT_COUNT=y"], "lazy"),
        (["CONFIG_PREEMPT_RT=y", "CONFIG_PREEMPT_COUNT=y"], "rt"),
        (["CONFIG_PREEMPT=y", "CONFIG_PREEMPT_RCU=y"], "full"),
        (["CONFIG_PREEMPT_NONE=y"], "none"),
        (["CONFIG_HZ=250"], None),
    ],
)  # fmt: skip
def test_the_kernels_default_preemption_comes_from_its_config(
    lines: list[str], mode: str | None, tmp_path: Path
) -> None:
    """capture records in meta.json the preemption model the kernel boots with when no
    preempt= is given (validate then knows a 6.17 is fully preemptible): the one of
    CONFIG_PREEMPT_{NONE,VOLUNTARY,,LAZY,RT} set to y; CONFIG_PREEMPT_COUNT and friends say
    nothing. None without a config."""
    config = tmp_path / "config-6.17.13+deb13-amd64"
    config.write_text("\n".join(["CONFIG_X86_64=y", *lines, "CONFIG_KPROBES=y"]) + "\n")
    assert default_preemption(config) == mode
    assert default_preemption(tmp_path / "missing") is None


_POOL = "pool/main/l/linux-signed-amd64"
_INDEX = f"""\
Package: linux-image-amd64
Version: 6.17.13-1~bpo13+1
Filename: {_POOL}/linux-image-amd64_6.17.13-1~bpo13+1_amd64.deb

Package: linux-image-6.17.8+deb13-amd64
Version: 6.17.8-1~bpo13+1
Filename: {_POOL}/linux-image-6.17.8+deb13-amd64_6.17.8-1~bpo13+1_amd64.deb

Package: linux-image-6.17.13+deb13-amd64
Source: linux-signed-amd64 (6.17.13+1~bpo13+1)
Version: 6.17.13-1~bpo13+1
Filename: {_POOL}/linux-image-6.17.13+deb13-amd64_6.17.13-1~bpo13+1_amd64.deb

Package: linux-image-6.17.13+deb13-amd64-dbg
Version: 6.17.13-1~bpo13+1
Filename: pool/main/l/linux/linux-image-6.17.13+deb13-amd64-dbg_6.17.13-1~bpo13+1_amd64.deb

Package: linux-image-6.17.13+deb13-rt-amd64
Version: 6.17.13-1~bpo13+1
Filename: {_POOL}/linux-image-6.17.13+deb13-rt-amd64_6.17.13-1~bpo13+1_amd64.deb
"""


def test_each_backported_generation_takes_its_own_newest_image() -> None:
    """trixie-backports holds several generations at once (6.16 to 7.3 on 2026-12-04): each
    --kernel-release takes the newest image of its own, versions compared as numbers (6.18.15
    after 6.18.5), never a later generation's. Debian 13's 7.x images hold no vmlinuz and have
    no enter_lazy_tlb() to probe: not offered."""
    from activemm.capture import kernel

    def stanza(version: str, flavour: str = "amd64") -> str:
        name = f"linux-image-{version}+deb13-{flavour}"
        return f"Package: {name}\nVersion: {version}-1~bpo13+1\nFilename: {_POOL}/{name}.deb\n"

    versions = ["6.16.3", "6.16.12", "6.18.5", "6.18.15", "6.18.9", "7.3.4"]
    packages = "\n".join(
        [stanza(v) for v in versions]
        + [stanza("6.18.12", "rt-amd64"), stanza("6.18.5", "rt-amd64")]
    ).encode()
    assert kernel.backports_package("6.16", packages)[0] == "linux-image-6.16.12+deb13-amd64"
    assert kernel.backports_package("6.18", packages)[0] == "linux-image-6.18.15+deb13-amd64"
    assert kernel.backports_package("6.18-rt", packages)[0] == "linux-image-6.18.12+deb13-rt-amd64"
    for generation in ("6.16", "6.17", "6.18"):
        assert {generation, f"{generation}-rt", f"{generation}-cloud"} <= set(kernel.RELEASES)
    with pytest.raises(CaptureError, match=r"unknown kernel release '7\.3': expected one of 6\.1,"):
        kernel.fetch("7.3")


def _kernel_deb(tmp_path: Path, release: str) -> Path:
    """A kernel image package as the archive has it: boot/vmlinuz-RELEASE (not a real
    bzImage) and config-RELEASE (PREEMPT_LAZY, as Debian 13's)."""
    tree = tmp_path / "pkg"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: linux-image-{release}\nVersion: 6.17.13-1~bpo13+1\nArchitecture: amd64\n"
        "Maintainer: test <t@example.org>\nDescription: test\n"
    )
    (tree / "boot").mkdir()
    (tree / "boot" / f"vmlinuz-{release}").write_bytes(b"bzImage")
    (tree / "boot" / f"config-{release}").write_text("CONFIG_PREEMPT_LAZY=y\n")
    deb = tmp_path / "k.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(deb)],
                   check=True, capture_output=True)  # fmt: skip
    return deb


def test_a_backported_kernel_is_the_newest_image_of_its_flavour(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--kernel-release 6.17: Debian 13's backport, which a Debian 12 host's apt does not
    know. The newest signed image of the flavour asked for is taken from trixie-backports'
    package index (not the meta-package, not the -dbg one, not an older build), downloaded
    and unpacked like apt-get's; offline, the newest one unpacked before is used, and with
    none the error says how to do without. A flavour the index lacks is named."""
    from activemm.capture import kernel

    packages = _INDEX.encode()
    assert kernel.backports_package("6.17", packages) == (
        "linux-image-6.17.13+deb13-amd64",
        f"{_POOL}/linux-image-6.17.13+deb13-amd64_6.17.13-1~bpo13+1_amd64.deb",
    )
    assert kernel.backports_package("6.17-rt", packages)[0] == "linux-image-6.17.13+deb13-rt-amd64"
    with pytest.raises(CaptureError, match=r"no linux-image-6\.17\.\*-cloud-amd64 in trixie-b"):
        kernel.backports_package("6.17-cloud", packages)
    release = "6.17.13+deb13-amd64"
    deb = _kernel_deb(tmp_path, release)
    asked: list[str] = []

    def http_get(url: str) -> bytes:
        asked.append(url)
        if url.endswith("/dists/trixie-backports/main/binary-amd64/Packages.xz"):
            return lzma.compress(packages)
        if url.endswith(".deb"):
            return deb.read_bytes()
        raise AssertionError(url)

    monkeypatch.setattr(kernel, "_http_get", http_get)
    monkeypatch.setenv("ACTIVEMM_DEBIAN_MIRROR", "http://mirror.example/debian/")
    cache = tmp_path / "cache"
    work = cache / f"linux-image-{release}"
    work.mkdir(parents=True)
    (work / f"vmlinux-{release}").write_bytes(b"ELF")  # (extract_vmlinux has its own tests)
    image = kernel.fetch("6.17", cache)
    assert image.release == release and image.vmlinuz.read_bytes() == b"bzImage"
    assert kernel.default_preemption(image.config) == "lazy"
    assert (
        asked[0]
        == "http://mirror.example/debian/dists/trixie-backports/main/binary-amd64/Packages.xz"
    )
    assert asked[1].startswith(f"http://mirror.example/debian/{_POOL}/")
    assert list(work.glob("*.deb")) == [] and list(work.glob("*.part")) == []

    def offline(url: str) -> bytes:
        raise CaptureError(f"cannot download {url}: no network")

    monkeypatch.setattr(kernel, "_http_get", offline)
    (cache / "linux-image-6.17.20+deb13-amd64").mkdir()  # a download cut short: not unpacked
    assert kernel.fetch("6.17", cache).release == release  # the one unpacked before
    with pytest.raises(CaptureError, match="no network"):
        kernel.fetch("6.17-rt", cache)  # none unpacked before


def test_two_captures_that_need_one_kernel_take_turns_to_fetch_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two captures started at once on a machine that lacks their kernel (a sweep run in
    parallel, the test suite's workers): the second waits while the first downloads and
    unpacks it, then finds it whole. The package is downloaded once, and nothing
    half-written is left beside the kernel."""
    from activemm.capture import kernel

    release = "6.17.13+deb13-amd64"
    deb = _kernel_deb(tmp_path, release)
    debs: list[str] = []

    def http_get(url: str) -> bytes:
        if url.endswith("/Packages.xz"):
            return lzma.compress(_INDEX.encode())
        debs.append(url)
        time.sleep(0.3)  # a slow download: the other capture looks meanwhile
        return deb.read_bytes()

    monkeypatch.setattr(kernel, "_http_get", http_get)
    monkeypatch.setattr(kernel, "extract_vmlinux", lambda data: b"ELF")
    cache = tmp_path / "cache"
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda _: kernel.fetch("6.17", cache), range(2))
    assert first == second and first.vmlinux.read_bytes() == b"ELF"
    assert first.vmlinuz.read_bytes() == b"bzImage"
    assert len(debs) == 1
    work = cache / f"linux-image-{release}"
    assert sorted(p.name for p in work.iterdir()) == ["root", f"vmlinux-{release}"]
