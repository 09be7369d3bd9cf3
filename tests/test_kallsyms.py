"""Kprobe lines printed as addresses (trace-cmd report, perf script) named from a symbol table
(/proc/kallsyms or `trace-cmd report -f`): checked against hand-worked tables and against a
capture's own tracefs text, where the kernel named every probe itself."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest

from activemm.trace import read_trace
from activemm.trace.events import Probe
from activemm.trace.kallsyms import Symbols, SymbolsError

from .helpers import ROOT, cli

CAPTURES = ROOT / "tests" / "data" / "captures"

KALLSYMS = """\
ffffffff81000000 T _text
ffffffff810ada50 t __pfx_switch_mm_irqs_off
ffffffff810ada60 T switch_mm_irqs_off
ffffffff810adf50 T leave_mm
ffffffff82a00000 D init_mm
ffffffffc0402000 t kvm_arch_init_vm\t[kvm]
ffffffffc0402400 t kvm_arch_destroy_vm\t[kvm]
"""


def test_kallsyms_and_trace_cmd_function_lists_name_addresses() -> None:
    """/proc/kallsyms (`ADDR TYPE NAME [MODULE]`) and trace-cmd report -f (`ADDR NAME`): an
    address is named by the last function starting at or before it, with its offset and the
    room up to the next symbol; data symbols are not functions; `__pfx_` padding before a
    function does not hide it."""
    syms = Symbols.parse(KALLSYMS.splitlines(), "kallsyms")
    assert syms.locate(0xFFFFFFFF810ADA64) == ("switch_mm_irqs_off", 4, 0x4F0)
    assert syms.locate(0xFFFFFFFF810ADA60) == ("switch_mm_irqs_off", 0, 0x4F0)
    assert syms.locate(0xFFFFFFFF810ADA55) == ("__pfx_switch_mm_irqs_off", 5, 0x10)
    assert syms.locate(0xFFFFFFFF82A00008)[0] == "leave_mm"  # init_mm is data
    assert syms.locate(0xFFFFFFFFC0402010) == ("kvm_arch_init_vm", 0x10, 0x400)
    assert syms.locate(0xFFFFFFFF80000000) is None
    listed = Symbols.parse(
        ["ffffffff810ada60 switch_mm_irqs_off", "", "ffffffff810adf50 leave_mm"], "-f"
    )
    assert listed.locate(0xFFFFFFFF810ADA70) == ("switch_mm_irqs_off", 0x10, 0x4F0)


def test_unusable_symbol_tables_are_refused_with_the_reason() -> None:
    with pytest.raises(SymbolsError, match=r"syms:2: expected `ADDRESS \[TYPE\] NAME"):
        Symbols.parse(["ffffffff810ada60 T switch_mm_irqs_off", "not a symbol line"], "syms")
    # /proc/kallsyms read by a user without CAP_SYSLOG: every address 0
    zeros = ["0000000000000000 T switch_mm_irqs_off", "0000000000000000 T leave_mm"]
    with pytest.raises(SymbolsError, match="2 symbols at address 0: read /proc/kallsyms as root"):
        Symbols.parse(zeros, "syms")


def test_probe_addresses_are_rewritten_as_tracefs_names_them() -> None:
    """`(%lx)` becomes `(fn+0xoff/0xsize)`; a return probe's `(%lx <- %lx)` (the probed
    function, then the return address) becomes tracefs's `(caller+off/size <- function)`;
    an address below every symbol, and other parentheses, stay as they are."""
    syms = Symbols.parse(KALLSYMS.splitlines(), "kallsyms")
    lines = [
        "  cat-155 [001] 4.3: mmswitch:   (ffffffff810ada64) prev=0x0 next=0x1",
        "  cat-155 [001] 4.3: mmret: (ffffffff810adf50 <- ffffffff810ada70) ret=0x5",
        "  cat-155 [001] 4.3: old: (ffffffff00000001) prev=0x0",
        "  cat-155 [001] 4.3: tlb_flush: pages:1 reason:local mm shootdown (3)",
    ]
    named = list(syms.name_probes(lines))
    assert named[0].endswith(": mmswitch:   (switch_mm_irqs_off+0x4/0x4f0) prev=0x0 next=0x1")
    assert named[1].endswith(": mmret: (switch_mm_irqs_off+0x10/0x4f0 <- leave_mm) ret=0x5")
    assert named[2:] == lines[2:]


def _bare(tracefs: list[str]) -> tuple[list[str], list[str]]:
    """The capture's lines with every kprobe location printed as trace-cmd prints it, at
    made-up function addresses, and a kallsyms of those addresses."""
    spans: dict[str, int] = {}
    for t in tracefs:
        for fn, size in re.findall(r"[(<] ?([\w.]+)\+0x[0-9a-f]+/(0x[0-9a-f]+)", t):
            spans[fn] = int(size, 16)
    for fn in ("mm_init", "mm_alloc", "__kretprobe_trampoline"):
        spans.setdefault(fn, 0x100)
    base = {fn: 0xFFFFFFFF81000000 + i * 0x10000 for i, fn in enumerate(sorted(spans))}
    kallsyms = [f"{a - 16:016x} t __pfx_{fn}" for fn, a in base.items()]
    kallsyms += [f"{a:016x} T {fn}" for fn, a in base.items()]

    def at(fn: str, off: str) -> str:
        return f"{base[fn] + int(off, 16):016x}"

    def probe(m: re.Match[str]) -> str:
        if m["fn"]:  # (caller+off/size <- fn): the function's address first, then the caller's
            caller = at(m["caller"], m["off"]) if m["caller"] else at("__kretprobe_trampoline", "0")
            return f": ({base[m['fn']]:016x} <- {caller}) "
        return f": ({at(m['caller'], m['off'])}) "

    loc = re.compile(
        r": \((?:(?P<caller>[\w.]+)\+(?P<off>0x[0-9a-f]+)/0x[0-9a-f]+|\[unknown/kretprobe'd\])"
        r"(?: <- (?P<fn>\w+))?\) "
    )
    return [loc.sub(probe, t) for t in tracefs], kallsyms


def test_validating_a_trace_whose_probes_name_addresses_with_its_kallsyms(tmp_path: Path) -> None:
    """A capture's probe lines turned into trace-cmd's addresses score exactly as the
    tracefs text the kernel named itself, given the symbols (--kallsyms); without them the
    refusal says to give them."""
    from activemm.validate import validate

    cap = CAPTURES / "linux-6.1-smp2-lazy"
    lines = gzip.decompress((cap / "trace.txt.gz").read_bytes()).decode().splitlines()
    bare, kallsyms = _bare(lines)
    assert sum(a != b for a, b in zip(lines, bare, strict=True)) > 3000
    assert not any(re.search(r": \((?:[\w.]+\+0x|\[unknown)", t) for t in bare)
    trace, syms = tmp_path / "trace.txt", tmp_path / "kallsyms"
    trace.write_text("\n".join(bare) + "\n")
    syms.write_text("\n".join(kallsyms) + "\n")
    (tmp_path / "tasks_start.txt").write_bytes((cap / "tasks_start.txt").read_bytes())
    named = [
        e for e in read_trace(trace, symbols=Symbols.parse(kallsyms, "k")) if isinstance(e, Probe)
    ]
    assert len(named) == sum((": (" in t and "+0x" in t) or "<- " in t for t in lines)
    want = validate(
        cap / "trace.txt.gz", tasks=cap / "tasks_start.txt", preset_name="linux-6.1-x86_64"
    )
    got = validate(trace, preset_name="linux-6.1-x86_64", kallsyms=syms)
    for name in ("context_switches", "mmdrop", "outside_schedule"):
        assert getattr(got, name) == getattr(want, name), name
    assert want.context_switches.total > 1000
    r = cli("validate", str(trace), "--preset", "linux-6.1-x86_64")
    assert r.returncode == 2 and "--kallsyms" in r.stderr and "Traceback" not in r.stderr
    r = cli("validate", str(trace), "--kallsyms", str(tmp_path / "nothing"))
    assert r.returncode == 2 and r.stderr.strip().endswith("nothing: no such file")
    syms.write_text("0000000000000000 T switch_mm_irqs_off\n")
    r = cli("validate", str(trace), "--kallsyms", str(syms))
    assert r.returncode == 2 and "read /proc/kallsyms as root" in r.stderr
