"""Kernel symbols for kprobe lines that name an address.

tracefs prints a kprobe's location through `%pS`: `(switch_mm_irqs_off+0x4/0x470)`, or for a
return probe `(copy_process+0x100f/0x2800 <- mm_init)`. trace-cmd report and perf script
print it through the event's format instead (`kernel/trace/trace_probe.c`
`__set_print_fmt()`): `"(%lx)"` with the probe's address, `"(%lx <- %lx)"` with the probed
function's address and then the return address, the other way round. A symbol table of
the same boot (`/proc/kallsyms`, or the one a trace.dat keeps, `trace-cmd report -f`) turns
those addresses back into the text tracefs would have printed.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

# `(ffffffff810ada64)` or `(ffffffff810c5040 <- ffffffff810c73df)` after the event name
BARE_PROBE = re.compile(r":\s+\((?P<at>[0-9a-f]{8,16})(?: <- (?P<ret>[0-9a-f]{8,16}))?\)")
# /proc/kallsyms `ADDR TYPE NAME [MODULE]`; trace-cmd report -f `ADDR NAME [MODULE]`
SYMBOL_LINE = re.compile(
    r"^\s*(?P<addr>[0-9a-fA-F]{8,16})\s+(?:(?P<type>[a-zA-Z])\s+)?(?P<name>\S+)"
    r"(?:\s+\[(?P<module>[^\]]+)\])?\s*$"
)
# not functions a kprobe lands in: the padding before a function (`__pfx_`), section marks
NOT_A_FUNCTION = re.compile(r"^(?:__pfx_|__cfi_|_text$|_stext$|_etext$|_sinittext$)")


class SymbolsError(ValueError):
    """A symbol table that cannot be used: says which line and why."""


@dataclass
class Symbols:
    """A kernel's symbols by address: `name_of(addr)` is the function holding it."""

    starts: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, lines: Iterable[str], source: str) -> Symbols:
        """Read /proc/kallsyms or `trace-cmd report -f` text (in any order; blank lines
        skipped); a line that is not a symbol is an error naming `source` and the line. A
        table whose addresses are all 0 (kallsyms read without CAP_SYSLOG, kptr_restrict)
        is refused."""
        found: dict[int, str] = {}
        zero = 0
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            m = SYMBOL_LINE.match(line)
            if m is None:
                raise SymbolsError(
                    f"{source}:{n}: expected `ADDRESS [TYPE] NAME [MODULE]` (/proc/kallsyms, or "
                    f"trace-cmd report -f), got {line.strip()[:60]!r}"
                )
            addr = int(m["addr"], 16)
            if addr == 0:
                zero += 1
                continue
            if m["type"] is not None and m["type"] not in "tTwW":
                continue  # data, not code
            name = m["name"]
            if addr not in found or NOT_A_FUNCTION.match(found[addr]):
                found[addr] = name
        if not found:
            raise SymbolsError(
                f"{source}: no function addresses"
                + (
                    f" ({zero} symbols at address 0: read /proc/kallsyms as root, or lower "
                    "kernel.kptr_restrict)"
                    if zero
                    else ""
                )
            )
        starts = sorted(found)
        return cls(starts, [found[a] for a in starts])

    def locate(self, addr: int) -> tuple[str, int, int] | None:
        """(function, offset into it, its size up to the next symbol), or None below the
        first symbol."""
        i = bisect.bisect_right(self.starts, addr) - 1
        if i < 0:
            return None
        size = self.starts[i + 1] - self.starts[i] if i + 1 < len(self.starts) else 0
        return self.names[i], addr - self.starts[i], size

    def _text(self, addr: str) -> str | None:
        at = self.locate(int(addr, 16))
        return None if at is None else f"{at[0]}+{at[1]:#x}/{at[2]:#x}"

    def name_probes(self, lines: Iterable[str]) -> Iterator[str]:
        """The lines, each kprobe location printed as an address rewritten as tracefs prints
        it (`(fn+0xoff/0xsize)`, `(caller+0xoff/0xsize <- fn)`); an address below every
        symbol stays as it is."""
        for line in lines:
            m = BARE_PROBE.search(line) if "(" in line else None
            if m is None:
                yield line
                continue
            at = self._text(m["at"])
            if at is None:
                yield line
                continue
            if m["ret"] is None:
                loc = at
            else:
                caller = self._text(m["ret"])
                if caller is None:
                    yield line
                    continue
                loc = f"{caller} <- {at.partition('+')[0]}"
            yield f"{line[: m.start('at') - 1]}({loc}){line[m.end() :]}"
