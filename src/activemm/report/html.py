"""A self-contained HTML report of a replay: the comparison table, plots drawn with
matplotlib and embedded as PNG data (no network needed to view it), and the trace's anomalies.
The same plots can be written as PNG files for papers and mailing-list posts."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from activemm.metrics import Metrics
from activemm.report.compare import ROWS, _get, tlb_summary
from activemm.report.timeline import Timeline

CASES = ("kernel->kernel", "user->kernel", "kernel->user", "user->user")


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plot_switches(metrics: dict[str, Metrics]) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = list(metrics)
    width = 0.8 / max(len(names), 1)
    for i, (name, m) in enumerate(metrics.items()):
        xs = [j + i * width for j in range(len(CASES))]
        ax.bar(xs, [m.switches.get(c, 0) for c in CASES], width, label=name)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(CASES))], CASES)
    ax.set_ylabel("context switches")
    ax.set_title("context switches by case")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_atomics(metrics: dict[str, Metrics]) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = list(metrics)
    local = [m.lazy_local for m in metrics.values()]
    remote = [m.lazy_remote for m in metrics.values()]
    ax.bar(names, local, label="same CPU")
    ax.bar(names, remote, bottom=local, label="cross-CPU (cache line moves)")
    ax.set_ylabel("mm_count atomics for lazy users")
    ax.set_title("lazy-TLB reference counting")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    return _png(fig)


def plot_zombies(metrics: dict[str, Metrics]) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    any_data = False
    for name, m in metrics.items():
        lives = [x * 1e6 for x in m.zombie_lifetimes()]
        if lives:
            any_data = True
            ax.hist(lives, bins=30, alpha=0.6, label=f"{name} ({len(lives)})")
    ax.set_xlabel("zombie lifetime: address space torn down -> mm freed (µs)")
    ax.set_ylabel("mms")
    ax.set_title("zombie mm lifetimes")
    if any_data:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no zombie mm in any configuration", ha="center", transform=ax.transAxes)
    return _png(fig)


def plot_lazy_time(metrics: dict[str, Metrics]) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    first = next(iter(metrics.values()))
    cpus = sorted(first.lazy_time)
    ax.bar([f"CPU {c}" for c in cpus], [first.lazy_time[c] * 1e3 for c in cpus])
    ax.set_ylabel("ms running a task without an mm")
    ax.set_title(f"lazy time per CPU ({next(iter(metrics))})")
    return _png(fig)


def plot_timeline(tl: Timeline, name: str) -> bytes:
    """Per-CPU Gantt chart of the first configuration's active_mm track: lazy spans in
    orange, user mms in blue, init_mm in grey."""
    spans = [e for e in tl.events if e["ph"] == "X" and e["tid"] % 2 == 1]
    cpus = sorted({e["tid"] // 2 for e in spans})
    t0 = min((e["ts"] for e in spans), default=0.0)
    fig, ax = plt.subplots(figsize=(9, 0.5 + 0.45 * max(len(cpus), 1)))
    for e in spans:
        label = e["name"]
        color = (
            "#bbbbbb"
            if "init_mm" in label
            else "#f28e2b"
            if label.startswith("lazy")
            else ("#4e79a7")
        )
        ax.broken_barh(
            [((e["ts"] - t0) / 1e3, max(e["dur"], 1e-3) / 1e3)],
            (e["tid"] // 2 - 0.4, 0.8),
            facecolors=color,
        )
    ax.set_yticks(cpus, [f"CPU {c}" for c in cpus])
    ax.set_xlabel("ms since the first event")
    ax.set_title(f"active_mm per CPU ({name}): blue own mm, orange lazily borrowed, grey init_mm")
    return _png(fig)


def plots(metrics: dict[str, Metrics], tl: Timeline | None, first: str) -> dict[str, bytes]:
    out = {
        "switch_cases.png": plot_switches(metrics),
        "mm_count_atomics.png": plot_atomics(metrics),
        "zombie_lifetimes.png": plot_zombies(metrics),
        "lazy_time_per_cpu.png": plot_lazy_time(metrics),
    }
    if tl is not None:
        out["timeline.png"] = plot_timeline(tl, first)
    return out


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1.5em 0; } img { max-width: 100%; }
.note { color: #666; font-size: 90%; }
"""


def render(result: dict[str, Any], images: dict[str, bytes]) -> str:
    """The report as one HTML document."""
    e = html.escape
    head = "".join(f"<th>{e(n)}</th>" for n in result["configs"])
    rows = []
    for label, path in ROWS:
        vals = [_get(c, path) for c in result["configs"].values()]
        if all(v is None for v in vals):
            continue
        cells = "".join(
            f"<td>{'-' if v is None else e(f'{v:,}' if isinstance(v, int) else str(v))}</td>"
            for v in vals
        )
        rows.append(f"<tr><td>{e(label)}</td>{cells}</tr>")
    anomalies = (
        "".join(f"<li>{e(k)}: {v:,}</li>" for k, v in sorted(result["anomalies"].items()) if v)
        or "<li>none</li>"
    )
    figs = "".join(
        f'<figure><img alt="{e(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(data).decode()}"><figcaption>{e(name)}</figcaption></figure>'
        for name, data in images.items()
    )
    t = result["tasks"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>activemm report: {e(result["trace"])}</title>
<style>{CSS}</style></head><body>
<h1>activemm: {e(result["trace"])}</h1>
<p>{result["events"]:,} events ({e(result["format"] or "?")}), replayed under
{len(result["configs"])} configurations. Tasks before the trace: {t["from_snapshot"]} from the
snapshot, {t["guessed_kernel_threads"]} guessed kernel threads, {t["guessed_user_tasks"]}
guessed user tasks; {e(tlb_summary(result))}.</p>
<table id="comparison"><tr><th></th>{head}</tr>{"".join(rows)}</table>
<p class="note">* The cost is an estimate from a cost table (docs/replay.md), not a
measurement.</p>
<h2>Plots</h2>{figs}
<h2>Anomalies of the trace</h2><ul id="anomalies">{anomalies}</ul>
</body></html>
"""
