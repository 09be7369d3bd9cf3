"""activemm: the Linux kernel's active_mm / lazy-TLB scheme, executable, checkable, measurable."""

from activemm.model import DEFAULT_PRESET, MUTANTS, PRESETS, KernelConfig, Machine, preset
from activemm.sanitizer import Sanitizer, Violation

__all__ = [
    "DEFAULT_PRESET",
    "MUTANTS",
    "PRESETS",
    "KernelConfig",
    "Machine",
    "Sanitizer",
    "Violation",
    "preset",
]
__version__ = "0.1.0"
