"""The architecture layer: the hooks the core kernel calls, one module per architecture."""

from __future__ import annotations

from typing import Protocol

from activemm.model.kernel import Kernel
from activemm.model.state import Mm, Rq, Task


class ArchOps(Protocol):
    """The arch hooks, named as in the kernel. Each arch module provides all of them."""

    def cpu_init(self, k: Kernel, rq: Rq) -> None: ...
    def init_new_context(self, k: Kernel, mm: Mm, tsk: Task | None) -> None: ...
    def destroy_context(self, k: Kernel, mm: Mm) -> None: ...
    def enter_lazy_tlb(self, k: Kernel, mm: Mm, tsk: Task) -> None: ...
    def switch_mm_irqs_off(
        self, k: Kernel, prev: Mm | None, next: Mm, tsk: Task | None, via: str
    ) -> None: ...
    def activate_mm(self, k: Kernel, prev: Mm | None, next: Mm) -> None: ...
    def switch_to(self, k: Kernel, prev: Task, next: Task) -> None: ...
    def exit_mmap(self, k: Kernel, mm: Mm) -> None: ...
    def flush_tlb_mm_range(self, k: Kernel, mm: Mm, freed_tables: bool) -> None: ...
    def leave_mm(self, k: Kernel) -> None: ...
    def cpu_disable(self, k: Kernel, cpu: int) -> None: ...
    def adopt_loaded_mm(self, k: Kernel, mm: Mm, tsk: Task) -> None: ...


def arch_for(name: str) -> ArchOps:
    """The module for an architecture name of KernelConfig.arch."""
    from activemm.model.arch import alpha, generic, powerpc, x86

    modules: dict[str, ArchOps] = {
        "generic": generic,
        "x86_64": x86,
        "powerpc": powerpc,
        "alpha": alpha,
    }
    return modules[name]
