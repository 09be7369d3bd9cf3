"""The side-by-side comparison of configurations replaying one trace."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from activemm.trace.parallel import Outcome, Outcomes
from activemm.trace.readers import ReadStats
from activemm.trace.replay import TLB_KINDS

BASELINE = "no-lazy"


def comparison(
    trace: str, events: int, read: ReadStats, shown: Outcomes, base: Outcome
) -> dict[str, Any]:
    """The JSON object of `activemm replay --json`, from the replay statistics and metrics
    summary (trace/parallel.py: outcomes()) of each configuration `shown`, by its column's
    name, and of the no-lazy baseline `base`."""
    stats = next(iter(shown.values()))[0]
    anomalies: dict[str, int] = dict(stats.anomalies)
    anomalies |= {
        "bad_lines": read.bad_lines,
        "lost_markers": read.lost_markers,
        "unknown_events": sum(read.unknown.values()),
    }
    anomalies |= read.left_out
    configs: dict[str, Any] = {}
    for name, (st, summary) in shown.items():
        s = dict(summary)
        s["cr3_loads_avoided_vs_no_lazy"] = base[1]["cr3_loads"] - s["cr3_loads"]
        if st.tlb["lines"] and st.switches_checked:  # the traced kernel's own CR3 loads
            s["cr3_as_traced"] = {
                "kernel_loads": st.kernel_cr3_loads,
                "switches": st.switches_checked,
                "agree": st.switches_agreeing,
                "agree_pct": round(100 * st.switches_agreeing / st.switches_checked, 2),
            }
        configs[name] = s
    return {
        "trace": trace,
        "format": read.fmt,
        "events": events,
        "lines": read.lines,
        "unknown_events": dict(read.unknown),
        "anomalies": anomalies,
        "tasks": {
            "from_snapshot": stats.from_snapshot,
            "guessed_kernel_threads": stats.guessed_kthreads,
            "guessed_user_tasks": stats.guessed_user,
        },
        "tlb_flush": {k: stats.tlb[k] for k in TLB_KINDS},
        "configs": configs,
    }


def tlb_summary(result: dict[str, Any]) -> str:
    """One sentence on what the trace's tlb_flush lines gave the replay (its JSON's
    "tlb_flush"), or that it had none."""
    tlb = result["tlb_flush"]
    if not tlb["lines"]:
        return (
            "no tlb_flush lines: TLB flushes only where forks and exits make them "
            "(record tlb:tlb_flush too, docs/replay.md)"
        )
    made = ", ".join(f"{k}: {v:,}" for k, v in tlb.items() if v and k != "lines")
    traced = next(
        (c["cr3_as_traced"] for c in result["configs"].values() if "cr3_as_traced" in c), None
    )
    kernel = (
        f'; the traced kernel loaded CR3 {traced["kernel_loads"]:,} times ("switches loading '
        "as traced\": how often a column's switch loaded CR3 as the kernel's did)"
        if traced
        else ""
    )
    return f"from {tlb['lines']:,} tlb_flush lines: {made or 'nothing'}{kernel}"


ROWS: list[tuple[str, tuple[str, ...]]] = [
    ("switches kernel->kernel", ("switches", "kernel->kernel")),
    ("switches user->kernel", ("switches", "user->kernel")),
    ("switches kernel->user", ("switches", "kernel->user")),
    ("switches user->user", ("switches", "user->user")),
    ("  of which within one mm", ("switches", "user->user same mm")),
    ("switch_mm calls", ("switch_mm",)),
    ("address-space loads (CR3)", ("cr3_loads",)),
    ("  with TLB flush", ("cr3_flushes",)),
    ("  avoided vs no-lazy", ("cr3_loads_avoided_vs_no_lazy",)),
    ("  switches loading as traced (%)", ("cr3_as_traced", "agree_pct")),
    ("lazy mm_count atomics, same CPU", ("lazy_mm_count_ops", "local")),
    ("lazy mm_count atomics, cross-CPU", ("lazy_mm_count_ops", "remote")),
    ("shootdown IPIs", ("shootdown_ipis",)),
    ("flush IPIs", ("flush_ipis",)),
    ("broadcast flushes (INVLPGB)", ("broadcast_flushes",)),
    ("  mms given a global ASID", ("global_asids",)),
    ("frees left to RCU (PREEMPT_RT)", ("rcu_deferred_frees",)),
    ("zombie mms", ("zombies", "count")),
    ("  median lifetime (µs)", ("zombies", "median_lifetime_us")),
    ("  max lifetime (µs)", ("zombies", "max_lifetime_us")),
    ("estimated cost (cycles)*", ("cost_cycles",)),
]


def _get(d: dict[str, Any], path: tuple[str, ...]) -> Any:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _cell(v: Any) -> str:
    return "-" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:,.1f}"


def table(result: dict[str, Any]) -> Table:
    t = Table(
        title=f"{result['trace']}: {result['events']:,} events ({result['format']})",
        caption="* an estimate from the cost table (docs/replay.md), not a measurement",
    )
    rows = []
    for label, path in ROWS:
        values = [_get(c, path) for c in result["configs"].values()]
        if any(v is not None for v in values):
            rows.append([label, *(_cell(v) for v in values)])
    # On a narrow terminal the preset names fold; a label or a number never does (a folded
    # label reads as a row of its own, a folded number as two numbers).
    t.add_column("", no_wrap=True)
    for i, (name, cfg) in enumerate(result["configs"].items(), 1):
        settings = "".join(f"\n{k}={v}" for k, v in cfg.get("settings", {}).items())
        widest = max((len(r[i]) for r in rows), default=1)
        preset = name.partition(":")[0]  # (a column of its own settings: -p PRESET:NAME=N)
        t.add_column(preset + settings, justify="right", overflow="fold", min_width=widest)
    for r in rows:
        t.add_row(*r)
    return t
