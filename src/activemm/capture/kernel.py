"""Fetch a stock Debian kernel without installing it (`apt-get download` + `dpkg-deb -x`),
extract the uncompressed vmlinux (for a fast PVH boot and for its BTF), and read the
`task_struct` member offsets the kprobes fetch from its BTF."""

from __future__ import annotations

import bz2
import fcntl
import lzma
import os
import re
import shutil
import struct
import subprocess
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import cast

import lz4.block
import zstandard

from activemm.errors import ActiveMmError
from activemm.fileio import write_atomic

# -rt: the PREEMPT_RT flavour (rt-amd64); -cloud: the cloud-amd64 flavour. 6.1 and 6.12 are
# Debian 12's (apt-get download); 6.16, 6.17 and 6.18 (LTS) Debian 13's backports, fetched
# from trixie-backports. (Its 7.x image packages hold no vmlinuz, and x86's enter_lazy_tlb()
# is no function there to probe: not offered.)
BACKPORTS = dict.fromkeys(("6.16", "6.17", "6.18"), "trixie-backports")  # -> the Debian suite
RELEASES = tuple(
    f"{generation}{flavour}"
    for flavour in ("", "-rt", "-cloud")
    for generation in ("6.1", "6.12", *BACKPORTS)
)
MIRROR = "http://deb.debian.org/debian"  # ACTIVEMM_DEBIAN_MIRROR overrides
TASK_FIELDS = ("pid", "flags", "mm", "active_mm", "comm")


class CaptureError(ActiveMmError):
    """Capture cannot go on: a missing tool, a kernel that cannot be fetched or booted."""


def need(tool: str, package: str, option: str | None = None) -> str:
    """The path of `tool`, or a one-line error naming the Debian package that provides it
    (and the `option` that asked for it)."""
    path = shutil.which(tool)
    if path is None and option is not None:
        raise CaptureError(f"{option} needs {tool}: `apt-get install {package}`")
    if path is None:
        raise CaptureError(f"{tool} not found: install it with `apt-get install {package}`")
    return path


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "activemm" / "kernels"


@dataclass(frozen=True)
class KernelImage:
    release: str  # e.g. "6.1.0-56-amd64"
    vmlinuz: Path
    vmlinux: Path  # the uncompressed ELF, booted with PVH
    config: Path

    @property
    def modules(self) -> Path:
        """lib/modules/RELEASE of the unpacked package, or usr/lib/modules/RELEASE where the
        package ships a merged /usr (Debian 13's; its sid images keep vmlinuz in that very
        directory); the first of those that exists (none may, for --kernel)."""
        root = self.vmlinuz.parent.parent
        candidates = [
            root / "lib" / "modules" / self.release,
            root / "usr" / "lib" / "modules" / self.release,
        ]
        if self.vmlinuz.parent.name == self.release:
            candidates.append(self.vmlinuz.parent)
        return next((c for c in candidates if c.is_dir()), candidates[0])


def debian_package(generation: str) -> str:
    """The Debian 12 package name of the newest kernel of `generation`: 6.1 or 6.12, their
    PREEMPT_RT flavour (6.1-rt, 6.12-rt: rt-amd64) or their cloud flavour (6.1-cloud,
    6.12-cloud: cloud-amd64, a smaller configuration for virtual machines)."""
    if generation not in RELEASES:
        raise CaptureError(
            f"unknown kernel release {generation!r}: expected one of {', '.join(RELEASES)}"
        )
    apt_cache = need("apt-cache", "apt")
    base, _, variant = generation.partition("-")
    flavour = f"{variant}-amd64" if variant else "amd64"
    if base == "6.1":
        out = subprocess.run(
            [apt_cache, "depends", f"linux-image-{flavour}"], capture_output=True, text=True
        ).stdout
        m = re.search(rf"Depends: (linux-image-6\.1\.\S+-{flavour})$", out, re.M)
    else:
        out = subprocess.run(
            [
                apt_cache,
                "search",
                "--names-only",
                rf"^linux-image-6\.12\.[0-9]+\+deb[0-9]+-{flavour}-unsigned$",
            ],
            capture_output=True,
            text=True,
        ).stdout
        names = sorted(
            (line.split()[0] for line in out.splitlines() if line.strip()),
            key=lambda n: [int(x) for x in re.findall(r"\d+", n)],
        )
        m = re.match(r"(.*)", names[-1]) if names else None
    if m is None:
        raise CaptureError(
            f"no Debian package of Linux {generation} known to apt: run `apt-get update` "
            "(Debian 12 ships linux-image-6.1.*-amd64 and linux-image-6.12.*-amd64-unsigned, "
            "and their -rt-amd64 and -cloud-amd64 flavours)"
        )
    return m[1]


def _mirror() -> str:
    return (os.environ.get("ACTIVEMM_DEBIAN_MIRROR") or MIRROR).rstrip("/")


def _http_get(url: str) -> bytes:
    """The body at `url`; a CaptureError naming the URL when it cannot be had."""
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return cast(bytes, r.read())
    except (OSError, ValueError) as e:
        raise CaptureError(
            f"cannot download {url}: {e} (without network, fetch the kernel package "
            "yourself, unpack it with dpkg-deb -x and give --kernel)"
        ) from None


def backports_package(generation: str, packages: bytes) -> tuple[str, str]:
    """The newest signed kernel image of `generation` (6.18, 6.18-rt, 6.18-cloud...) in a
    Debian suite's Packages index (`packages`, uncompressed): its package name and its path
    in the archive (Filename). The image package holds vmlinuz, config and modules."""
    base, _, variant = generation.partition("-")
    flavour = f"{variant}-amd64" if variant else "amd64"
    wanted = re.compile(rf"linux-image-{re.escape(base)}\.\d+\+deb\d+-{flavour}")
    found: list[tuple[list[int], str, str]] = []
    for stanza in packages.decode(errors="replace").split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", stanza, re.M))
        name, filename = fields.get("Package", ""), fields.get("Filename")
        if wanted.fullmatch(name) and filename:
            version = [int(x) for x in re.findall(r"\d+", fields.get("Version", ""))]
            found.append((version, name, filename))
    if not found:
        raise CaptureError(
            f"no linux-image-{base}.*-{flavour} in {BACKPORTS[base]}'s package index: "
            "Debian may have moved on (give --kernel with an unpacked kernel package)"
        )
    _, name, filename = max(found)
    return name, filename


def _backport(generation: str, cache: Path) -> tuple[str, str | None]:
    """The newest kernel package of `generation` in its backports suite: its name and its
    path in the archive. Offline, the newest one unpacked in `cache` before (no path)."""
    base = generation.partition("-")[0]
    index = f"{_mirror()}/dists/{BACKPORTS[base]}/main/binary-amd64/Packages.xz"
    try:
        packages = lzma.decompress(_http_get(index))
    except CaptureError:
        variant = generation.partition("-")[2]
        flavour = f"{variant}-amd64" if variant else "amd64"
        pattern = re.compile(rf"linux-image-{re.escape(base)}\.\d+\+deb\d+-{flavour}")
        cached = [
            d.name
            for d in cache.glob("linux-image-*")
            if pattern.fullmatch(d.name) and (d / "root").is_dir()  # (unpacked whole)
        ]
        if not cached:
            raise
        return max(cached, key=lambda n: [int(x) for x in re.findall(r"\d+", n)]), None
    except lzma.LZMAError as e:
        raise CaptureError(f"{index}: not an xz-compressed package index ({e})") from None
    return backports_package(generation, packages)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if need be) for the block: two captures
    that need one kernel not yet in the cache (a sweep run in parallel, the test suite's
    workers) take turns, the second finding it unpacked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def _download(filename: str, work: Path) -> Path:
    """Download `filename` (a path in the archive) into `work`, whole or not at all."""
    deb = work / filename.rsplit("/", 1)[-1]
    write_atomic(deb, _http_get(f"{_mirror()}/{filename}"))
    return deb


def fetch(generation: str, cache: Path | None = None) -> KernelImage:
    """Download (once) and unpack the Debian kernel of `generation`; nothing is installed.
    Debian 12's generations come through `apt-get download`, 6.16 to 6.18 over HTTP from
    Debian 13's backports (a Debian 12 host's apt does not know that suite)."""
    cache = cache or cache_dir()
    backport = generation.partition("-")[0] in BACKPORTS
    if backport and generation not in RELEASES:
        raise CaptureError(
            f"unknown kernel release {generation!r}: expected one of {', '.join(RELEASES)}"
        )
    filename: str | None = None
    if backport:
        package, filename = _backport(generation, cache)
    else:
        package = debian_package(generation)
    with _locked(cache / f"{package}.lock"):
        return _unpacked(package, filename, cache / package)


def _unpacked(package: str, filename: str | None, work: Path) -> KernelImage:
    """`package` unpacked under `work` (downloaded first, from `filename` in the archive or
    with apt-get download, unless that was done before), with its vmlinux extracted."""
    boot = work / "root" / "boot"
    if not boot.is_dir():
        work.mkdir(parents=True, exist_ok=True)
        dpkg_deb = need("dpkg-deb", "dpkg")
        # (with those of a download killed midway: write_atomic's hidden temporary files)
        for stale in [*work.glob("*.deb"), *work.glob(".*.deb.*")]:
            stale.unlink()
        if filename is not None:
            debs = [_download(filename, work)]
        else:
            apt_get = need("apt-get", "apt")
            r = subprocess.run(
                [apt_get, "download", package], cwd=work, capture_output=True, text=True
            )
            debs = list(work.glob("*.deb"))
            if r.returncode != 0 or not debs:
                last = (r.stderr.strip().splitlines() or ["no output"])[-1]
                raise CaptureError(f"apt-get download {package} failed: {last}")
        tmp = work / "root.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run([dpkg_deb, "-x", str(debs[0]), str(tmp)], check=True)
        tmp.rename(work / "root")
        debs[0].unlink()
    vmlinuz = next(boot.glob("vmlinuz-*"), None)
    if vmlinuz is None:
        raise CaptureError(f"{boot}: the package holds no vmlinuz")
    release = vmlinuz.name.removeprefix("vmlinuz-")
    vmlinux = work / f"vmlinux-{release}"
    if not vmlinux.exists():
        write_atomic(vmlinux, extract_vmlinux(vmlinuz.read_bytes()))
    return KernelImage(release, vmlinuz, vmlinux, boot / f"config-{release}")


def image_from_path(path: Path) -> KernelImage:
    """A kernel given with --kernel: an unpacked Debian package tree or a vmlinuz-RELEASE
    beside its config-RELEASE."""
    vmlinuz = path if path.is_file() else next(path.glob("**/vmlinuz-*"), None)
    if vmlinuz is None or not vmlinuz.is_file():
        raise CaptureError(f"{path}: expected a vmlinuz-RELEASE file or a directory holding one")
    release = vmlinuz.name.removeprefix("vmlinuz-")
    config = vmlinuz.with_name(f"config-{release}")
    if not config.exists():
        raise CaptureError(f"{config}: missing (needed beside {vmlinuz.name})")
    vmlinux = cache_dir() / f"vmlinux-{release}"
    if not vmlinux.exists():
        vmlinux.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(vmlinux, extract_vmlinux(vmlinuz.read_bytes()))
    return KernelImage(release, vmlinuz, vmlinux, config)


def default_preemption(config: Path) -> str | None:
    """The preemption model a kernel boots with when its command line chooses none, from its
    config-RELEASE: "rt" (PREEMPT_RT), "lazy" (PREEMPT_LAZY, the default of Debian 13's
    6.17), "full" (PREEMPT), "voluntary" (PREEMPT_VOLUNTARY, Debian 12's 6.1 and 6.12) or
    "none"; None when the config cannot be read or says none of them."""
    try:
        text = config.read_text(errors="replace")
    except OSError:
        return None
    chosen = set(re.findall(r"^CONFIG_PREEMPT(_RT|_LAZY|_VOLUNTARY|_NONE|)=y$", text, re.M))
    for option, mode in (("_RT", "rt"), ("_LAZY", "lazy"), ("", "full"),
                         ("_VOLUNTARY", "voluntary"), ("_NONE", "none")):  # fmt: skip
        if option in chosen:
            return mode
    return None


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF inside a bzImage: find the compressed payload by its magic and decompress it
    (what scripts/extract-vmlinux does), for every compression the kernel offers but LZO:
    Debian's amd64 and rt-amd64 kernels use xz (6.1) or zstd (6.12), its cloud-amd64 6.1
    kernel lz4."""
    for magic, decompress in _PAYLOADS:
        start = bzimage.find(magic)
        while start >= 0:
            try:
                data = decompress(bzimage[start:])
            except (lzma.LZMAError, zstandard.ZstdError, lz4.block.LZ4BlockError, zlib.error,
                    OSError, EOFError, ValueError):  # fmt: skip
                data = b""
            if data.startswith(b"\x7fELF"):
                return data
            start = bzimage.find(magic, start + 1)
    raise CaptureError(
        "no gzip, bzip2, lzma, xz, lz4 or zstd compressed ELF found in the kernel image"
        " (LZO-compressed kernels are not supported)"
    )


def _unxz(data: bytes) -> bytes:
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)


def _unlzma(data: bytes) -> bytes:
    return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data)


def _unzstd(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def _gunzip(data: bytes) -> bytes:
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)


def _bunzip2(data: bytes) -> bytes:
    return bz2.BZ2Decompressor().decompress(data)


_LZ4_LEGACY = 0x184C2102
_LZ4_BLOCK = 8 << 20  # LZ4_DEFAULT_UNCOMPRESSED_CHUNK_SIZE


def _unlz4(data: bytes) -> bytes:
    """The legacy LZ4 format of `lz4 -l` that the kernel's build uses (lib/decompress_unlz4.c
    reads it): after the magic, blocks of a 4-byte little-endian compressed size and the
    compressed bytes, each decompressing to 8 MiB but the last, which is shorter (what
    follows it in a bzImage, the appended image size, is not a block, and is not read as one
    after a short block)."""
    out: list[bytes] = []
    pos = 4
    while pos + 4 <= len(data):
        (size,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if size == _LZ4_LEGACY:  # concatenated archives repeat the magic
            continue
        try:
            block = lz4.block.decompress(data[pos : pos + size], uncompressed_size=_LZ4_BLOCK)
        except lz4.block.LZ4BlockError:
            if not out:
                raise
            break  # an image of whole blocks: the appended size came next
        out.append(block)
        pos += size
        if len(block) < _LZ4_BLOCK:
            break
    return b"".join(out)


# Each compression's magic (scripts/extract-vmlinux's), the ones Debian uses first.
_PAYLOADS: tuple[tuple[bytes, Callable[[bytes], bytes]], ...] = (
    (b"\xfd7zXZ\x00", _unxz),
    (b"\x28\xb5\x2f\xfd", _unzstd),
    (struct.pack("<I", _LZ4_LEGACY), _unlz4),
    (b"\x1f\x8b\x08", _gunzip),
    (b"BZh", _bunzip2),
    (b"\x5d\x00\x00\x00", _unlzma),
)


# -- BTF --------------------------------------------------------------------------------------

# Extra bytes after the 12-byte btf_type, per kind (include/uapi/linux/btf.h), as
# (fixed, per vlen entry).
_BTF_EXTRA = {
    1: (4, 0), 2: (0, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 7: (0, 0),
    8: (0, 0), 9: (0, 0), 10: (0, 0), 11: (0, 0), 12: (0, 0), 13: (0, 8), 14: (4, 0),
    15: (0, 12), 16: (0, 0), 17: (4, 0), 18: (0, 0), 19: (0, 12),
}  # fmt: skip
_STRUCT, _UNION = 4, 5


def elf_section(elf: bytes, name: str) -> bytes:
    """The contents of section `name` of a 64-bit little-endian ELF."""
    if elf[:6] != b"\x7fELF\x02\x01":
        raise CaptureError("not a 64-bit little-endian ELF")
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def header(i: int) -> tuple[int, int, int]:
        sh_name, _t, _f, _a, off, size = struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize)
        return sh_name, off, size

    _, stroff, _ = header(shstrndx)
    for i in range(shnum):
        sh_name, off, size = header(i)
        end = elf.index(b"\0", stroff + sh_name)
        if elf[stroff + sh_name : end].decode() == name:
            return elf[off : off + size]
    raise CaptureError(f"the kernel has no {name} section (CONFIG_DEBUG_INFO_BTF=y is needed)")


_BtfTypes = dict[int, tuple[int, int, list[tuple[int, int, int]]]]


@cache
def _btf_types(btf: bytes) -> tuple[int, _BtfTypes]:
    """Raw BTF's string section offset and type table, parsed once per BTF (each
    struct_offsets() call reads it): type id -> (kind, name_off, [(member name_off, type
    id, bit offset)])."""
    magic, _v, _f, hdr_len, type_off, type_len, str_off, _str_len = struct.unpack_from(
        "<HBBIIIII", btf, 0
    )
    if magic != 0xEB9F:
        raise CaptureError("bad BTF magic")
    types: _BtfTypes = {}
    pos, end, tid = hdr_len + type_off, hdr_len + type_off + type_len, 1
    while pos < end:
        name_off, info, _size = struct.unpack_from("<III", btf, pos)
        kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
        fixed, per = _BTF_EXTRA.get(kind, (0, 0))
        members_: list[tuple[int, int, int]] = []
        if kind in (_STRUCT, _UNION):
            for i in range(vlen):
                m_name, m_type, m_off = struct.unpack_from("<III", btf, pos + 12 + 12 * i)
                members_.append((m_name, m_type, m_off & 0xFFFFFF if kflag else m_off))
        types[tid] = (kind, name_off, members_)
        pos += 12 + fixed + per * vlen
        tid += 1
    return hdr_len + str_off, types


def struct_offsets(btf: bytes, struct_name: str, members: tuple[str, ...]) -> dict[str, int]:
    """Byte offsets of `members` of `struct struct_name` in raw BTF, looking through
    anonymous struct/union members (randomized_struct_fields, struct_group)."""
    strings, types = _btf_types(btf)

    def name(off: int) -> str:
        return btf[strings + off : btf.index(b"\0", strings + off)].decode()

    def search(type_id: int, base: int, found: dict[str, int]) -> None:
        for m_name, m_type, bit_off in types[type_id][2]:
            if m_name == 0 and types.get(m_type, (0,))[0] in (_STRUCT, _UNION):
                search(m_type, base + bit_off, found)
            elif m_name and name(m_name) in members and name(m_name) not in found:
                found[name(m_name)] = (base + bit_off) // 8

    for type_id, (kind, name_off, mems) in types.items():
        if kind == _STRUCT and mems and name(name_off) == struct_name:
            found: dict[str, int] = {}
            search(type_id, 0, found)
            missing = [m for m in members if m not in found]
            if missing:
                raise CaptureError(f"struct {struct_name} has no member {', '.join(missing)}")
            return found
    raise CaptureError(f"no struct {struct_name} in the kernel's BTF")


@cache
def btf(image: KernelImage) -> bytes:
    """The kernel's BTF (the .BTF section, about 4 MB, of a vmlinux of tens of megabytes),
    read once per image: task_offsets() and ring_offsets() both need it."""
    return elf_section(image.vmlinux.read_bytes(), ".BTF")


def task_offsets(data: bytes) -> dict[str, int]:
    """`task_struct` member offsets of this kernel build, from its BTF (`data`, raw)."""
    return struct_offsets(data, "task_struct", TASK_FIELDS)


def oom_offsets(data: bytes) -> dict[str, int]:
    """`task_struct.signal` ("signal"), the `signal_struct` members `oom_mm` and `sigcnt`,
    and `mm_struct.flags` ("mm_flags"): mark_oom_victim() mmgrab()s the victim's mm into
    signal->oom_mm, and free_signal_struct() mmdrop_async()s it when __put_task_struct()
    puts the last sigcnt; __set_oom_adj() mmgrab()s the mm of the process whose
    oom_score_adj is written while it has MMF_MULTIPROCESS. {} when the BTF lacks one (an
    OOM killer without oom_mm)."""
    try:
        signal = struct_offsets(data, "task_struct", ("signal",))
        flags = struct_offsets(data, "mm_struct", ("flags",))["flags"]
        return {
            **signal,
            **struct_offsets(data, "signal_struct", ("oom_mm", "sigcnt")),
            "mm_flags": flags,
        }
    except CaptureError:
        return {}


def proc_offsets(data: bytes) -> dict[str, int]:
    """`file.private_data`, `seq_file.private` and `proc_maps_private.mm`: where the release
    of a /proc/PID/{mem,environ,auxv,pagemap} file finds the mm proc_mem_open() mmgrab()bed
    (private_data itself), and that of maps, smaps, numa_maps and smaps_rollup (through the
    seq_file). Since 6.18 that mm is in the private data's `lock_ctx`
    (`proc_maps_locking_ctx.mm`, per-VMA locking's context). {} when the BTF lacks one."""
    try:
        found = {
            **struct_offsets(data, "file", ("private_data",)),
            **struct_offsets(data, "seq_file", ("private",)),
        }
        try:
            return {**found, **struct_offsets(data, "proc_maps_private", ("mm",))}
        except CaptureError:
            ctx = struct_offsets(data, "proc_maps_private", ("lock_ctx",))["lock_ctx"]
            mm = struct_offsets(data, "proc_maps_locking_ctx", ("mm",))["mm"]
            return {**found, "mm": ctx + mm}
    except CaptureError:
        return {}


def uffd_offsets(data: bytes) -> dict[str, int]:
    """`file.private_data` and `userfaultfd_ctx.mm`: where userfaultfd_release() finds the
    mm new_userfaultfd() mmgrab()bed for the file; with `vm_area_struct.vm_mm`,
    `vm_area_struct.vm_userfaultfd_ctx` (whose `ctx` is its first member) and
    `userfaultfd_ctx.features` too, where dup_userfaultfd() finds the context a forked VMA
    came with and whether it asked for fork events. {} when the BTF lacks the first two (a
    kernel without userfaultfd)."""
    try:
        found = {
            **struct_offsets(data, "file", ("private_data",)),
            **struct_offsets(data, "userfaultfd_ctx", ("mm",)),
        }
    except CaptureError:
        return {}
    try:
        found.update(struct_offsets(data, "userfaultfd_ctx", ("features",)))
        found.update(struct_offsets(data, "vm_area_struct", ("vm_mm", "vm_userfaultfd_ctx")))
    except CaptureError:
        pass  # the fork marker is left out
    return found


def ksm_offsets(data: bytes) -> dict[str, int]:
    """`mm_struct.flags` and `mm_struct.mm_users`, and `ksm_rmap_item.mm`: whether KSM's
    reference to an exiting mm outlives its __mmput (MMF_VM_MERGEABLE still set once
    __ksm_exit() has run: the mm's slot has rmap_items or ksmd's cursor rests on it, and
    ksmd or an unmerge drops it later), and whose rmap_items remove_rmap_item_from_tree()
    takes out, with that mm's users (0: the removal of an exited mm's slot). {} when the BTF
    lacks one (a kernel without KSM). The struct is `rmap_item` before 6.1."""
    try:
        mm = struct_offsets(data, "mm_struct", ("flags", "mm_users"))
    except CaptureError:
        return {}
    for item in ("ksm_rmap_item", "rmap_item"):
        try:
            return {**mm, "rmap_mm": struct_offsets(data, item, ("mm",))["mm"]}
        except CaptureError:
            continue
    return {}


def khugepaged_offsets(data: bytes) -> dict[str, int]:
    """Where khugepaged keeps the mm its scan cursor rests on (`khugepaged_scan.mm_slot`,
    then the `mm` of that slot: khugepaged_mm_slot begins with its mm_slot) and
    `mm_struct.mm_users`: __khugepaged_exit() leaves khugepaged's reference to an exiting mm
    for khugepaged itself when the cursor is on it, and collect_mm_slot() drops it once
    mm_users is 0. Since 6.18 the cursor and collect_mm_slot() have the mm_slot itself
    (no khugepaged_mm_slot around it). {} when the BTF lacks one (no transparent huge
    pages)."""
    try:
        try:
            slot = struct_offsets(data, "khugepaged_mm_slot", ("slot",))
        except CaptureError:
            slot = {"slot": 0}
        return {
            "scan_slot": struct_offsets(data, "khugepaged_scan", ("mm_slot",))["mm_slot"],
            "slot_mm": slot["slot"] + struct_offsets(data, "mm_slot", ("mm",))["mm"],
            "mm_users": struct_offsets(data, "mm_struct", ("mm_users",))["mm_users"],
        }
    except CaptureError:
        return {}


def ring_offsets(data: bytes) -> dict[str, int]:
    """`io_ring_ctx` offset of `mm_account` (the mm io_uring_create() mmgrab()s); {} for a
    kernel without io_uring."""
    try:
        return struct_offsets(data, "io_ring_ctx", ("mm_account",))
    except CaptureError:
        return {}


def probe_offsets(data: bytes) -> dict[str, dict[str, int]]:
    """Every offset the probes fetch through, from a kernel's raw BTF, by what it belongs to
    (meta.json's `btf_offsets`); {} for the markers of a subsystem the kernel lacks."""
    return {
        "task_struct": task_offsets(data),
        "io_ring_ctx": ring_offsets(data),
        "oom": oom_offsets(data),
        "proc": proc_offsets(data),
        "userfaultfd": uffd_offsets(data),
        "khugepaged": khugepaged_offsets(data),
        "ksm": ksm_offsets(data),
    }


BTF_MAGIC = b"\x9f\xeb"  # 0xeB9F, little-endian


def read_btf(path: Path) -> bytes:
    """A kernel's raw BTF from `path`: /sys/kernel/btf/vmlinux itself, or the .BTF section
    of a vmlinux (ELF); anything else is an error naming the file."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CaptureError(f"{path}: cannot read the kernel's BTF ({e.strerror})") from None
    if data[:4] == b"\x7fELF":
        try:
            return elf_section(data, ".BTF")
        except CaptureError as e:
            raise CaptureError(f"{path}: {e}") from None
    if data[:2] != BTF_MAGIC:
        raise CaptureError(
            f"{path}: expected raw BTF (/sys/kernel/btf/vmlinux, a kernel built with "
            "CONFIG_DEBUG_INFO_BTF) or a vmlinux with a .BTF section"
        )
    return data
