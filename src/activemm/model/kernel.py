"""The execution context every model function receives: state, configuration, arch, observers.

`Kernel.cpu` is the CPU whose code is running, as `smp_processor_id()` would say.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from activemm.model.config import KernelConfig
from activemm.model.events import BadAccess, Event
from activemm.model.state import KernelState, Mm

if TYPE_CHECKING:
    from activemm.model.arch import ArchOps


@dataclass(slots=True)
class Operation:
    """One public operation (`schedule(cpu=0, next=bash)`), as observers see it begin and end."""

    index: int
    name: str
    args: dict[str, Any]

    def describe(self) -> str:
        args = ", ".join(f"{k}={_arg(v)}" for k, v in self.args.items())
        return f"{self.name}({args})"


def _arg(v: object) -> str:
    name = getattr(v, "name", None)
    return str(name) if isinstance(name, str) else repr(v) if isinstance(v, str) else str(v)


class Observer:
    """Subclass and override what you need; the model calls these in order."""

    def begin(self, op: Operation, state: KernelState) -> None:
        """Called before the operation changes anything."""

    def event(self, ev: Event) -> None:
        """Called for each event, as it happens."""

    def end(self, op: Operation, state: KernelState) -> None:
        """Called when the operation is complete."""


class Kernel:
    """What a model function needs: `k.state`, `k.config`, `k.arch`, `k.emit`, `k.cpu`."""

    __slots__ = ("arch", "config", "cpu", "observers", "state")

    def __init__(
        self, state: KernelState, config: KernelConfig, arch: ArchOps, observers: list[Observer]
    ) -> None:
        self.state = state
        self.config = config
        self.arch = arch
        self.observers = observers
        self.cpu = 0

    def emit(self, ev: Event) -> None:
        for o in self.observers:
            o.event(ev)

    def bug(self, mutant: str) -> bool:
        """True when the configuration asks for this deliberately broken variant."""
        return mutant in self.config.mutants

    def touch(self, mm: Mm, function: str) -> None:
        """A read of `*mm` by `function`: a use-after-free if the mm was already freed."""
        if mm.freed:
            self.emit(BadAccess(self.cpu, mm, "use-after-free", function))
        elif mm.rcu_cpu is not None:  # PREEMPT_RT: its __mmdrop() is already queued
            self.emit(BadAccess(self.cpu, mm, "use after the final mmdrop", function))
