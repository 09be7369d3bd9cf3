"""Per-step views of a run: the CPUs, the mms and the events, as rich tables or JSON."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from activemm.model.config import KernelConfig
from activemm.model.events import Event, MmFreed
from activemm.model.state import KernelState, Mm
from activemm.scenario import StepResult


def _name(mm: Mm | None) -> str:
    return str(mm) if mm is not None else "-"


def cpu_rows(state: KernelState, config: KernelConfig) -> list[dict[str, Any]]:
    rows = []
    for rq in state.rqs:
        cur = rq.curr
        row: dict[str, Any] = {
            "cpu": rq.cpu,
            "online": rq.online,
            "curr": cur.name,
            "active_mm": cur.active_mm.name if cur.active_mm else None,
            "lazy": cur.mm is None,
            "loaded_mm": rq.tlb.loaded_mm.name,
            "prev_mm": rq.prev_mm.name if rq.prev_mm else None,
        }
        if config.arch == "x86_64":
            row |= {"asid": rq.tlb.loaded_mm_asid, "is_lazy": rq.tlb.is_lazy}
        if config.arch == "alpha":
            row |= {
                "pcb_ptbr": cur.pcb.ptbr.name if cur.pcb.ptbr else None,
                "pcb_asn": cur.pcb.asn,
            }
        rows.append(row)
    return rows


def mm_rows(state: KernelState, config: KernelConfig, events: list[Event]) -> list[dict[str, Any]]:
    just_freed = {ev.mm.id for ev in events if isinstance(ev, MmFreed)}
    rows = []
    for mm in state.mms:
        if mm.freed and mm.id not in just_freed:
            continue
        row: dict[str, Any] = {
            "mm": mm.name,
            "owner": mm.owner,
            "mm_users": mm.mm_users,
            "mm_count": mm.mm_count,
            "status": mm.status,
            "mm_cpumask": sorted(mm.mm_cpumask),
        }
        if config.arch == "x86_64":
            row["tlb_gen"] = mm.context.tlb_gen
        rows.append(row)
    return rows


def step_json(r: StepResult, config: KernelConfig) -> dict[str, Any]:
    return {
        "step": r.index,
        "op": r.operation,
        "note": r.note,
        "preset": config.name,
        "events": [e.to_dict() for e in r.events],
        "cpus": cpu_rows(r.state, config),
        "mms": mm_rows(r.state, config, r.events),
    }


def step_view(r: StepResult, config: KernelConfig) -> Panel:
    index, operation, note, events, state = r.index, r.operation, r.note, r.events, r.state
    cpus = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("CPU", "current", "active_mm", "hardware (loaded_mm)", "rq->prev_mm"):
        cpus.add_column(col)
    extra = config.arch in ("x86_64", "alpha")
    if extra:
        cpus.add_column("ASID / lazy" if config.arch == "x86_64" else "PCB ptbr / asn")
    for rq in state.rqs:
        cur = rq.curr
        if not rq.online:
            cpus.add_row(str(rq.cpu), Text("offline", style="dim"), "", "", "", *([""] * extra))
            continue
        active = _name(cur.active_mm)
        active_text = Text(f"lazy: {active}", style="yellow") if cur.mm is None else Text(active)
        cells: list[str | Text] = [
            str(rq.cpu),
            cur.name,
            active_text,
            _name(rq.tlb.loaded_mm),
            _name(rq.prev_mm),
        ]
        if config.arch == "x86_64":
            cells.append(f"{rq.tlb.loaded_mm_asid} / {'lazy' if rq.tlb.is_lazy else '-'}")
        elif config.arch == "alpha":
            cells.append(f"{_name(cur.pcb.ptbr)} / {cur.pcb.asn}")
        cpus.add_row(*cells)
    mms = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("mm", "mm_users", "mm_count", "state", "mm_cpumask"):
        mms.add_column(col)
    style = {"live": "", "zombie": "bold magenta", "rcu-queued": "magenta", "freed": "red"}
    for row in mm_rows(state, config, events):
        mms.add_row(
            f"{row['mm']} ({row['owner']})" if row["mm"] != "init_mm" else "init_mm",
            str(row["mm_users"]),
            str(row["mm_count"]),
            Text(row["status"], style=style[row["status"]]),
            ",".join(map(str, row["mm_cpumask"])) or "-",
        )
    evs = Text("\n".join("  " + e.describe() for e in events) or "  (no events)", style="dim")
    title = f"step {index}: {operation}"
    parts: list[Any] = []
    if note:
        parts.append(Text(note, style="italic cyan"))
    parts += [cpus, Text(""), mms, Text("events:", style="bold"), evs]
    return Panel(Group(*parts), title=title, title_align="left")
