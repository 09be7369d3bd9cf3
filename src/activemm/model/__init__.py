"""The model: Linux's mm / active_mm scheme, file by file as in the kernel."""

from activemm.model.config import DEFAULT_PRESET, MUTANTS, PRESETS, KernelConfig, preset
from activemm.model.kernel import Observer, Operation
from activemm.model.machine import Machine

__all__ = [
    "DEFAULT_PRESET",
    "MUTANTS",
    "PRESETS",
    "KernelConfig",
    "Machine",
    "Observer",
    "Operation",
    "preset",
]
