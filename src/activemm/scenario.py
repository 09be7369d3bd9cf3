"""Scenario files: a TOML list of model operations, run step by step.

    title = "The zombie mm"
    cpus = 2                      # boot(2) is step 0
    preset = "linux-6.17-x86_64"  # optional; `activemm run --preset` overrides

    [[step]]
    op = "schedule"
    cpu = 0
    next = "init"
    note = "init runs on CPU 0"
    expect = { "mm1.mm_count" = 1, "cpu0.curr" = "init" }

`expect` keys: `mmN.mm_users|mm_count|status|global_asid|asid_transition|cpumask`,
`TASK.mm|active_mm|state`, `cpuN.curr|active_mm|loaded_mm|lazy|is_lazy|asid|prev_mm|online`
(`lazy`: the current task borrows its active_mm; `is_lazy`: x86's per-CPU lazy TLB flag; `asid`:
x86's loaded_mm_asid; `global_asid`: x86 INVLPGB's, 0 for none; `cpumask`: mm_cpumask as a list
of CPUs). Expectations are checked when the run's
preset is in `expect_presets` (default: the scenario's preset), because counts legitimately
differ between configurations (lazy users hold no mm_count under MMU_LAZY_TLB_SHOOTDOWN).

An optional `[config]` table sets the sizes and thresholds a preset fixes as the kernel does
(`nr_dyn_asids`, `alpha_max_asn`, `global_asid_threshold`: model.config.KNOBS), e.g. to reach
INVLPGB global ASIDs with two CPUs; `activemm run --set NAME=N` overrides it.
"""

from __future__ import annotations

import inspect
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from activemm.errors import ActiveMmError, ExpectationFailed, ScenarioError
from activemm.model import DEFAULT_PRESET, KernelConfig, Machine, Observer, Operation
from activemm.model.config import KNOBS, PRESETS, knob_problem
from activemm.model.events import Event
from activemm.model.state import KernelState

OPS = (
    "schedule",
    "fork",
    "failed_fork",
    "exec",
    "resume_exec",
    "failed_exec",
    "exit",
    "kthread_use_mm",
    "kthread_unuse_mm",
    "mmget_not_zero",
    "mmput",
    "mmgrab",
    "mmdrop",
    "flush_tlb_mm_range",
    "leave_mm",
    "text_poke",
    "efi_call",
    "cpu_down",
    "cpu_up",
    "tick_do_update_jiffies64",
)


@dataclass
class Step:
    op: str
    args: dict[str, Any]
    note: str = ""
    expect: dict[str, Any] = field(default_factory=dict)
    expect_presets: list[str] | None = None


@dataclass
class Scenario:
    title: str
    cpus: int
    steps: list[Step]
    path: str = "<scenario>"
    description: str = ""
    preset: str | None = None
    rest_init: bool = True
    expect_presets: list[str] | None = None
    mutants: list[str] = field(default_factory=list)
    knobs: dict[str, int] = field(default_factory=dict)  # the [config] table

    def to_toml(self) -> str:
        """The scenario as a file `activemm run` reads (used for counterexamples)."""
        out = [f"title = {_toml(self.title)}"]
        if self.description:
            out.append(f"description = {_toml(self.description)}")
        out.append(f"cpus = {self.cpus}")
        if self.preset:
            out.append(f"preset = {_toml(self.preset)}")
        if not self.rest_init:
            out.append("rest_init = false")
        if self.mutants:
            out.append(f"mutants = [{', '.join(_toml(m) for m in self.mutants)}]")
        if self.knobs:
            out += ["", "[config]", *(f"{k} = {_toml(v)}" for k, v in self.knobs.items())]
        for s in self.steps:
            out.append("")
            out.append("[[step]]")
            out.append(f"op = {_toml(s.op)}")
            out += [f"{k} = {_toml(v)}" for k, v in s.args.items()]
            if s.note:
                out.append(f"note = {_toml(s.note)}")
        return "\n".join(out) + "\n"


def _toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    text = str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def load(path: str | Path) -> Scenario:
    """Read a scenario file; ScenarioError (file, step, problem) on anything wrong."""
    p = str(path)
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScenarioError("no such file", path=p) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScenarioError(f"cannot read: {e}", path=p) from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"not valid TOML: {e}", path=p) from None
    return parse(data, p)


def parse(data: dict[str, Any], path: str = "<scenario>") -> Scenario:
    known = {
        "title",
        "description",
        "cpus",
        "preset",
        "rest_init",
        "expect_presets",
        "step",
        "mutants",
        "config",
    }
    unknown = sorted(set(data) - known)
    if unknown:
        raise ScenarioError(f"unknown top-level key {unknown[0]!r}", path=path)
    cpus = data.get("cpus", 2)
    if not isinstance(cpus, int) or isinstance(cpus, bool) or not 1 <= cpus <= 64:
        raise ScenarioError("cpus must be an integer from 1 to 64", path=path)
    raw_steps = data.get("step", [])
    if not isinstance(raw_steps, list):
        raise ScenarioError("[[step]] must be an array of tables", path=path)
    steps = [_parse_step(s, path, i) for i, s in enumerate(raw_steps, start=1)]
    knobs = data.get("config", {})
    if not isinstance(knobs, dict):
        raise ScenarioError("[config] must be a table of settings", path=path)
    for name, value in knobs.items():
        if (problem := knob_problem(name, value)) is not None:
            raise ScenarioError(f"[config]: {problem}", path=path)
    return Scenario(
        title=str(data.get("title", Path(path).stem)),
        description=str(data.get("description", "")),
        cpus=cpus,
        steps=steps,
        path=path,
        preset=data.get("preset"),
        rest_init=bool(data.get("rest_init", True)),
        expect_presets=data.get("expect_presets"),
        mutants=[str(m) for m in data.get("mutants", [])],
        knobs=dict(knobs),
    )


def _parse_step(raw: object, path: str, index: int) -> Step:
    if not isinstance(raw, dict):
        raise ScenarioError("a step must be a table", path=path, step=index)
    raw = dict(raw)
    op = raw.pop("op", None)
    if op not in OPS:
        raise ScenarioError(
            f"unknown operation {op!r}; expected one of: {', '.join(OPS)}", path=path, step=index
        )
    note = str(raw.pop("note", ""))
    expect = raw.pop("expect", {})
    expect_presets = raw.pop("expect_presets", None)
    if not isinstance(expect, dict):
        raise ScenarioError("expect must be a table", path=path, step=index)
    sig = inspect.signature(getattr(Machine, op))
    params = {n: p for n, p in sig.parameters.items() if n != "self"}
    for name, value in raw.items():
        if name not in params:
            raise ScenarioError(
                f"{op} takes no {name!r}; it takes: {', '.join(params)}", path=path, step=index
            )
        ann = str(params[name].annotation)
        if ann == "int" and (not isinstance(value, int) or isinstance(value, bool)):
            raise ScenarioError(f"{op}: {name} must be an integer", path=path, step=index)
        if ann in ("bool", "bool | None") and not isinstance(value, bool):
            raise ScenarioError(f"{op}: {name} must be true or false", path=path, step=index)
        if ann == "float" and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise ScenarioError(f"{op}: {name} must be a number", path=path, step=index)
    missing = [
        n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in raw
    ]
    if missing:
        raise ScenarioError(f"{op} needs {', '.join(missing)}", path=path, step=index)
    return Step(op, raw, note, expect, expect_presets)


@dataclass
class StepResult:
    index: int
    operation: str
    note: str
    events: list[Event]
    state: KernelState


class Recorder(Observer):
    """Collects the events of the current operation."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def begin(self, op: Operation, state: KernelState) -> None:
        self.events = []

    def event(self, ev: Event) -> None:
        self.events.append(ev)


def run(
    scenario: Scenario, config: KernelConfig, observers: list[Observer] | None = None
) -> Iterator[StepResult]:
    """Run a scenario, yielding after each step (step 0 is the boot). Model errors become
    ScenarioErrors naming the file and step; sanitizer Violations propagate as they are."""
    rec = Recorder()
    machine = Machine(config, [*(observers or []), rec])
    machine.boot(scenario.cpus, rest_init=scenario.rest_init)
    yield StepResult(0, f"boot(ncpus={scenario.cpus})", "", rec.events, machine.state)
    check_presets = scenario.expect_presets or [scenario.preset or DEFAULT_PRESET]
    # expectations hold for the scenario's own sizes and thresholds (its [config] table)
    base = PRESETS.get(config.name, config)
    same_knobs = all(
        getattr(config, name) == scenario.knobs.get(name, getattr(base, name)) for name in KNOBS
    )
    for i, step in enumerate(scenario.steps, start=1):
        method: Callable[..., Any] = getattr(machine, step.op)
        rec.events = []  # (an operation the model does not record, like a tick, has none)
        try:
            method(**step.args)
        except ActiveMmError as e:
            raise ScenarioError(str(e), path=scenario.path, step=i) from None
        desc = ", ".join(f"{k}={v}" for k, v in step.args.items())
        yield StepResult(i, f"{step.op}({desc})", step.note, rec.events, machine.state)
        if config.name in (step.expect_presets or check_presets) and same_knobs:
            check_expect(machine, step.expect, scenario.path, i)


def probe(machine: Machine, key: str) -> object:
    """The value an `expect` key names, rendered as a scenario would write it."""
    obj, _, attr = key.rpartition(".")
    if obj.startswith("cpu") and obj[3:].isdigit():
        rq = machine.rq(int(obj[3:]))
        values: dict[str, object] = {
            "curr": rq.curr.comm,
            "active_mm": rq.curr.active_mm.name if rq.curr.active_mm else "none",
            "loaded_mm": rq.tlb.loaded_mm.name,
            "lazy": rq.curr.mm is None,
            "is_lazy": rq.tlb.is_lazy,  # x86 cpu_tlbstate_shared.is_lazy
            "asid": rq.tlb.loaded_mm_asid,  # x86 cpu_tlbstate.loaded_mm_asid
            "prev_mm": rq.prev_mm.name if rq.prev_mm else "none",
            "online": rq.online,
        }
    elif obj == "init_mm" or (obj.startswith("mm") and obj[2:].isdigit()):
        mm = machine.mm(obj)
        values = {
            "mm_users": mm.mm_users,
            "mm_count": mm.mm_count,
            "status": mm.status,
            "global_asid": mm.context.global_asid,  # x86 INVLPGB
            "asid_transition": mm.context.asid_transition,
            "cpumask": sorted(mm.mm_cpumask),  # mm_cpumask(mm), as a list of CPUs
        }
    else:
        t = machine.task(obj)
        values = {
            "mm": t.mm.name if t.mm else "none",
            "active_mm": t.active_mm.name if t.active_mm else "none",
            "state": t.state.value,
        }
    if attr not in values:
        raise ActiveMmError(f"cannot check {key!r}: {obj} has {', '.join(values)}")
    return values[attr]


def check_expect(machine: Machine, expect: dict[str, Any], path: str, step: int) -> None:
    for key, want in expect.items():
        try:
            got = probe(machine, key)
        except ActiveMmError as e:
            raise ScenarioError(str(e), path=path, step=step) from None
        if got != want and str(got) != str(want):
            raise ExpectationFailed(f"{path}: step {step}: expected {key} = {want}, got {got}")
