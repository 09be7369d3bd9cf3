"""Reading kernel scheduler traces: typed events streamed from tracefs text, trace-cmd report,
perf script, a trace.dat (through trace-cmd), compressed or from standard input."""

from activemm.trace.events import (
    HotplugStep,
    LostEvents,
    NewTask,
    Probe,
    ProcessExec,
    ProcessExit,
    ProcessFork,
    ProcessFree,
    SchedSwitch,
    TaskRename,
    TlbFlush,
    TraceEvent,
)
from activemm.trace.readers import TraceError, read_trace

__all__ = [
    "HotplugStep",
    "LostEvents",
    "NewTask",
    "Probe",
    "ProcessExec",
    "ProcessExit",
    "ProcessFork",
    "ProcessFree",
    "SchedSwitch",
    "TaskRename",
    "TlbFlush",
    "TraceError",
    "TraceEvent",
    "read_trace",
]
