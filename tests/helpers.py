"""Helpers shared by the tests."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from activemm import Machine, Sanitizer, preset
from activemm.model.config import KernelConfig
from activemm.model.events import Event, MmFreed
from activemm.model.kernel import Observer
from activemm.model.state import Mm
from activemm.trace import read_trace
from activemm.trace.events import TraceEvent
from activemm.trace.readers import ReadStats
from activemm.trace.replay import Replayer, replay

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m activemm ARGS...`, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "activemm", *args], capture_output=True, text=True, timeout=timeout
    )


def machine(config: str | KernelConfig = "linux-6.17-x86_64", cpus: int = 2) -> Machine:
    """A booted machine with a sanitizer attached."""
    cfg = preset(config) if isinstance(config, str) else config
    m = Machine(cfg, [Sanitizer(cfg)])
    m.boot(cpus)
    return m


def with_user(m: Machine, name: str = "app") -> Mm:
    """init runs on CPU 0, execs (mm1) and forks `name` (mm2); returns mm2."""
    m.schedule(0, "init")
    m.exec("init")
    child = m.fork("init", name=name)
    assert child.mm is not None
    return child.mm


def lazy_kworker(m: Machine) -> None:
    """After with_user(): kthreadd runs on CPU 1 and forks the kernel thread kw; app runs on
    CPU 0, then kw, which lazily borrows app's mm (mm2) there."""
    m.schedule(1, "kthreadd")
    m.fork("kthreadd", kind="kthread", name="kw")
    m.schedule(0, "app")
    m.schedule(0, "kw")


def watch_frees(m: Machine) -> list[tuple[str, str]]:
    """A list that fills, from now on, with (mm name, reason) of every __mmdrop in `m`."""
    freed: list[tuple[str, str]] = []

    class Watch(Observer):
        def event(self, ev: Event) -> None:
            if isinstance(ev, MmFreed):
                freed.append((ev.mm.name, ev.reason))

    m.add_observer(Watch())
    return freed


class Events(Observer):
    """Every event a machine emits, in order."""

    def __init__(self) -> None:
        self.seen: list[Event] = []

    def event(self, ev: Event) -> None:
        self.seen.append(ev)

    def of(self, kind: type) -> list:  # type: ignore[type-arg]
        """The events of `kind` seen so far."""
        return [e for e in self.seen if isinstance(e, kind)]

    def take(self, kind: type) -> list:  # type: ignore[type-arg]
        """The events of `kind` seen so far, forgotten once taken."""
        out = self.of(kind)
        self.seen = [e for e in self.seen if not isinstance(e, kind)]
        return out


def read_lines(lines: list[str], stats: ReadStats | None = None) -> list[TraceEvent]:
    """Hand-made tracefs lines, read as a trace file is."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.txt"
        path.write_text("# tracer: nop\n" + "".join(f"  {line}\n" for line in lines))
        return list(read_trace(str(path), stats=stats))


def replay_lines(lines: list[str], preset_name: str, cpus: int) -> Replayer:
    """Replay hand-made tracefs lines under one preset, as `activemm replay` does (with the
    placements its reader keeps); its replayer."""
    stats = ReadStats()
    events = read_lines(lines, stats)
    _, replayers = replay(events, [preset(preset_name)], cpus, placements=stats.placements)
    return replayers[preset_name]
