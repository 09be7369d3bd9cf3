"""The `activemm` command."""

from __future__ import annotations

import json
import os
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from activemm import __version__
from activemm import scenario as scen
from activemm.capture import WORKLOADS
from activemm.errors import ActiveMmError
from activemm.model.config import (
    DEFAULT_PRESET,
    MUTANTS,
    PRESETS,
    KernelConfig,
    knob_problem,
    preset,
)
from activemm.report.steps import step_json, step_view
from activemm.sanitizer import Sanitizer, Violation

if TYPE_CHECKING:
    from collections.abc import Iterator

    from rich.progress import Progress

    from activemm.trace.events import TraceEvent
    from activemm.trace.parallel import Outcomes
    from activemm.trace.readers import ReadStats
    from activemm.trace.replay import TaskInfo

app = typer.Typer(
    help="activemm: the Linux kernel's active_mm / lazy-TLB scheme, executable and checked.\n\n"
    "Start with `activemm demo`, then `activemm run examples/04_zombie_mm.toml`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # help paragraphs reflow to the terminal's width
)
out = Console()
err = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        out.print(f"activemm {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print activemm's version and exit.",
        ),
    ] = False,
) -> None:
    pass


PresetOpt = Annotated[
    str | None,
    typer.Option("--preset", "-p", help="Kernel configuration (see `activemm presets`)."),
]
MutantOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--mutant", "-m", help="Break one kernel rule on purpose (see `activemm mutants`)."
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="NAME=N",
        help="Set one of the sizes a preset fixes as the kernel does: nr_dyn_asids (x86 ASID "
        "slots, 6), alpha_max_asn (127), global_asid_threshold (x86 INVLPGB: a global ASID "
        "for an mm running on more CPUs than this, 3; lower it to reach them with 2 CPUs).",
    ),
]


# `replay` shares the configurations between processes by default above this size on disk
AUTO_JOBS_BYTES = 8 << 20

# mutants whose broken path `explore` offers only with an option
MUTANT_NEEDS = {
    "text-poke-no-leave-mm": "--text-poke",
    "fork-cleanup-no-mmput": "--failures",
    "bprm-no-mmput": "--failures",
}


def resolve_config(
    name: str | None,
    mutants: list[str] | None = None,
    fallback: str | None = None,
    knobs: dict[str, int] | None = None,
    settings: list[str] | None = None,
) -> KernelConfig:
    """The preset (`name`, else a scenario's `fallback`, else the default) with `mutants`,
    a scenario's [config] `knobs` and the command line's `--set NAME=N` `settings` (which
    win over the knobs)."""
    cfg = preset(name or fallback or DEFAULT_PRESET)
    if mutants:
        cfg = cfg.with_mutants(*mutants)
    chosen: dict[str, object] = dict(knobs or {}) | parse_settings(settings)
    return cfg.with_knobs(chosen) if chosen else cfg


def parse_settings(settings: list[str] | None, option: str = "--set ") -> dict[str, object]:
    """`--set NAME=N` options as {NAME: N}; one-line errors (naming `option`) for anything
    else."""
    chosen: dict[str, object] = {}
    for item in settings or []:
        key, eq, value = item.partition("=")
        if not eq or not value.strip().lstrip("-").isdigit():
            raise ActiveMmError(f"{option}{item}: expected NAME=N with N a whole number")
        if (problem := knob_problem(key.strip(), int(value))) is not None:
            raise ActiveMmError(f"{option}{item}: {problem}")
        chosen[key.strip()] = int(value)
    return chosen


def replay_columns(specs: list[str], settings: list[str] | None) -> list[tuple[str, KernelConfig]]:
    """`replay`'s columns: each `-p PRESET[:NAME=N,...]` as (the spec, its configuration),
    with its own settings and the `--set` ones that apply to it (knob_applies; its own win).
    One-line errors for a setting that applies to none of the presets, one of a column's
    own that does not apply to it, and the same configuration twice."""
    wanted = parse_settings(settings)
    used: set[str] = set()
    columns: list[tuple[str, KernelConfig]] = []
    for spec in specs:
        name, _, own_text = spec.partition(":")
        cfg = preset(name.strip())
        own = parse_settings(own_text.split(",") if own_text else [], f"-p {name}:")
        for knob in own:
            if not cfg.knob_applies(knob):
                raise ActiveMmError(f"-p {spec}: {knob} does not apply to {cfg.name}")
        mine = {k: v for k, v in wanted.items() if cfg.knob_applies(k)}
        used |= set(mine)
        chosen = mine | own
        cfg = cfg.with_knobs(chosen) if chosen else cfg
        key = name.strip() if not own else f"{name.strip()}:{own_text}"
        if any(c.label == cfg.label for _, c in columns):
            raise ActiveMmError(f"-p {spec}: the same configuration as another -p ({cfg.label})")
        columns.append((key, cfg))
    for knob in wanted:
        if knob not in used:
            raise ActiveMmError(
                f"--set {knob}: applies to none of the presets compared "
                f"({', '.join(c.name for _, c in columns)})"
            )
    return columns


def _comparison(
    trace: str,
    events: int,
    read: ReadStats,
    columns: list[tuple[str, KernelConfig]],
    replayed: list[KernelConfig],
    outcomes: Outcomes,
) -> dict[str, Any]:
    """The JSON object of `replay` and `report`: each column (replay_columns) by its name,
    with the settings that differ from its preset, against the no-lazy baseline among the
    `replayed` configurations (a column, or one added unseen)."""
    from activemm.report.compare import BASELINE, comparison

    baseline = next(c.label for c in replayed if c.name == BASELINE)
    shown = {key: outcomes[cfg.label] for key, cfg in columns}
    result = comparison(trace, events, read, shown, outcomes[baseline])
    for key, cfg in columns:
        if knobs := cfg.knobs():
            result["configs"][key]["settings"] = knobs
    return result


def _spinner(quiet: bool) -> Progress:
    """A spinner on stderr with what long work is doing, gone when it is done; shown only
    on a terminal, and not with --json."""
    from rich.progress import Progress, SpinnerColumn, TextColumn

    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        console=err,
        disable=not err.is_terminal or quiet,
        transient=True,
    )


def _open_trace(
    trace: str, tasks: Path | None, fmt: str | None = None, lenient: bool = False
) -> tuple[str, Iterator[TraceEvent], int, ReadStats, dict[int, TaskInfo] | None]:
    """What replay, report and timeline read: the trace's events (a capture directory stands
    for its trace and task snapshot), its CPU count, the reader's statistics, the snapshot."""
    from activemm.trace.readers import ReadStats, read_trace
    from activemm.trace.replay import load_task_snapshot, peek_cpus

    cut: float | None = None
    dropped: dict[int, int] = {}
    if trace != "-" and Path(trace).is_dir():
        from activemm.validate import (
            capture_meta,
            dropped_events,
            full_buffer_cut,
            full_buffer_note,
            locate,
        )

        path, tasks, _ = locate(Path(trace), tasks)
        trace = str(path)
        # a ring buffer that filled: the trace is whole only up to where that CPU's ends
        if dropped := dropped_events(capture_meta(path.parent)):
            cut = full_buffer_cut(read_trace(trace, fmt=fmt, lenient=lenient), dropped)
    snapshot = load_task_snapshot(tasks) if tasks else None
    stats = ReadStats()
    events = read_trace(trace, fmt=fmt, lenient=lenient, stats=stats)
    if cut is not None:
        events = _up_to(events, cut, full_buffer_note(cut, dropped), stats)
    ncpus, events = peek_cpus(events, stats=stats)
    return trace, events, ncpus, stats, snapshot


def _up_to(
    events: Iterator[TraceEvent], cut: float, why: str, stats: ReadStats
) -> Iterator[TraceEvent]:
    """The events up to `cut`; those after it are counted in stats.left_out as `why`."""
    for e in events:
        if e.ts <= cut:
            yield e
        else:
            stats.left_out[why] += 1


def _run(sc: scen.Scenario, cfg: KernelConfig, as_json: bool, quiet: bool, sanitize: bool) -> None:
    observers = [Sanitizer(cfg)] if sanitize else []
    if not as_json and not quiet:
        out.print(f"[bold]{sc.title}[/bold]  [dim]({sc.path}, preset {cfg.label})[/dim]")
        if sc.description:
            out.print(sc.description.strip())
    steps = 0
    try:
        for r in scen.run(sc, cfg, list(observers)):
            steps += 1
            if as_json:
                sys.stdout.write(json.dumps(step_json(r, cfg)) + "\n")
            elif not quiet:
                out.print(step_view(r, cfg))
    except Violation as v:
        if as_json:
            sys.stdout.write(
                json.dumps(
                    {
                        "violation": {
                            "kind": v.kind,
                            "message": v.message,
                            "operation": v.operation,
                            "history": v.history,
                            "events": v.events,
                        }
                    }
                )
                + "\n"
            )
        err.print(v.report(), highlight=False, markup=False)
        raise typer.Exit(1) from None
    if not as_json:
        out.print(f"[green]ok[/green]: {steps - 1} steps, sanitizer clean ({cfg.label})")


@app.command()
def run(
    file: Annotated[Path, typer.Argument(help="A scenario file (TOML), e.g. examples/*.toml.")],
    preset_name: PresetOpt = None,
    mutant: MutantOpt = None,
    settings: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per step.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the verdict.")] = False,
    no_sanitize: Annotated[bool, typer.Option("--no-sanitize", help="Skip the checks.")] = False,
) -> None:
    """Run a scenario file step by step, with the sanitizer checking every step.

    Each step shows each CPU's task, active_mm (lazy or not) and hardware mm, each mm's
    mm_users / mm_count / state, and the events. Exit status 1 on a violation."""
    sc = scen.load(file)
    mutants = [*sc.mutants, *(mutant or [])]
    cfg = resolve_config(preset_name, mutants, sc.preset, sc.knobs, settings)
    _run(sc, cfg, as_json, quiet, not no_sanitize)


@app.command()
def demo(
    preset_name: PresetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per step.")] = False,
) -> None:
    """Act out the seed note (Linus, 1999): the zombie mm, start to finish.

    Boot on init_mm, a kernel thread borrowing a user mm, the real user exiting on another CPU,
    and the zombie mm freed when its last lazy user switches away."""
    text = resources.files("activemm").joinpath("scenarios/seed.toml").read_text("utf-8")
    sc = scen.parse(__import__("tomllib").loads(text), "seed.toml (built in)")
    _run(sc, resolve_config(preset_name, None, sc.preset, sc.knobs), as_json, False, True)


@app.command()
def presets(
    name: Annotated[str | None, typer.Argument(help="Show every option of this preset.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List the kernel configurations, or show one in full."""
    if name:
        opts = preset(name).options()
        if as_json:
            sys.stdout.write(json.dumps(opts) + "\n")
            return
        t = Table(title=name, show_header=False)
        for k, v in opts.items():
            t.add_row(k, str(v))
        out.print(t)
        return
    if as_json:
        sys.stdout.write(json.dumps({n: p.options() for n, p in PRESETS.items()}) + "\n")
        return
    t = Table(title="presets (default: " + DEFAULT_PRESET + ")")
    t.add_column("name", style="bold")
    t.add_column("summary")
    for n, p in PRESETS.items():
        t.add_row(n, p.summary)
    out.print(t)


@app.command()
def explore(
    cpus: Annotated[int, typer.Option(help="CPUs.", min=1, max=4)] = 2,
    processes: Annotated[int, typer.Option(help="fork() of new processes allowed.", min=0)] = 1,
    threads: Annotated[int, typer.Option(help="clone(CLONE_VM) threads allowed.", min=0)] = 1,
    kthreads: Annotated[int, typer.Option(help="Kernel threads kthreadd may create.", min=0)] = 1,
    execs: Annotated[
        int, typer.Option(help="execve() calls allowed (init's first included).", min=0)
    ] = 1,
    holders: Annotated[int, typer.Option(help="External mmget/mmput holders at once.", min=0)] = 1,
    depth: Annotated[
        int,
        typer.Option(help="Longest operation sequence from boot; 0: until exhausted.", min=0),
    ] = 8,
    preset_name: PresetOpt = None,
    mutant: MutantOpt = None,
    settings: SetOpt = None,
    hotplug: Annotated[bool, typer.Option("--hotplug", help="Also cpu_down/cpu_up.")] = False,
    text_poke: Annotated[
        bool, typer.Option("--text-poke", help="Also x86 text_poke (poking_mm) on any CPU.")
    ] = False,
    efi: Annotated[
        bool,
        typer.Option(
            "--efi",
            help="Also x86 EFI runtime calls (efi_mm; before 6.15 the caller's active_mm "
            "for the call) by a kernel thread on any CPU.",
        ),
    ] = False,
    failures: Annotated[
        bool,
        typer.Option(
            "--failures",
            help="Also the error paths: fork() failing after copy_mm(), execve() failing "
            "after alloc_bprm() (no budget spent).",
        ),
    ] = False,
    exec_preemption: Annotated[
        bool,
        typer.Option(
            "--exec-preemption",
            help="Also (PREEMPT_RT presets) an exec preempted inside exec_mmap() before "
            "activate_mm(), its CPU left on the old page tables until resume_exec().",
        ),
    ] = False,
    no_flushes: Annotated[
        bool, typer.Option("--no-flushes", help="No TLB flushes / leave_mm.")
    ] = False,
    trim: Annotated[
        bool,
        typer.Option(
            "--trim",
            help="Also flushes at which the arch's occasional mm_cpumask trim is due (x86 "
            "6.14+: once a second, stale CPUs IPIed; powerpc radix: every 1073rd flush of a "
            "CPU, lazy users moved to init_mm).",
        ),
    ] = False,
    no_symmetry: Annotated[
        bool, typer.Option("--no-symmetry", help="Disable symmetry reduction.")
    ] = False,
    keep_going: Annotated[
        bool, typer.Option("--keep-going", help="One counterexample per kind of violation.")
    ] = False,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            "-j",
            help="Worker processes sharing each layer (0: one per CPU). The same verdicts and "
            "counterexample lengths; state counts can differ by a few per ten thousand.",
            min=0,
        ),
    ] = 1,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the (first) counterexample scenario here."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON summary object.")] = False,
) -> None:
    """Explore every interleaving of a small system; print the shortest counterexample.

    Breadth first from boot, symmetry reduced, the sanitizer checking every state. A violation
    yields the shortest counterexample as a scenario that `activemm run` replays. Exit status
    0: none found; 1: found."""
    from activemm.check.explore import Result
    from activemm.check.explore import explore as run_explore
    from activemm.check.ops import Limits
    from activemm.fileio import write_atomic

    cfg = resolve_config(preset_name, mutant, settings=settings)
    given = {"--text-poke": text_poke, "--failures": failures}
    for name in sorted(cfg.mutants):
        flag = MUTANT_NEEDS.get(name)
        if flag is not None and not given[flag]:
            err.print(
                f"note: mutant {name} breaks a path explored only with {flag}", highlight=False
            )
    if cfg.invlpgb and cfg.global_asid_threshold >= cpus:
        err.print(
            f"note: no mm gets an INVLPGB global ASID on {cpus} CPUs (one must run on more "
            f"than {cfg.global_asid_threshold}): --set global_asid_threshold={cpus - 1} or "
            "lower reaches them",
            highlight=False,
        )
    elif "invlpgb-no-transition-ipi" in cfg.mutants and not cfg.invlpgb:
        err.print(
            "note: mutant invlpgb-no-transition-ipi breaks a path of INVLPGB presets only "
            "(-p linux-6.17-x86_64-invlpgb)",
            highlight=False,
        )
    limits = Limits(
        max_tasks=processes + threads + kthreads + 2,
        max_holders=holders,
        processes=processes,
        threads=threads,
        kthreads=kthreads,
        execs=execs,
        holders=holders > 0,
        grabs=False,
        flushes=not no_flushes,
        hotplug=hotplug,
        text_poke=text_poke,
        efi=efi,
        failures=failures,
        exec_preemption=exec_preemption,
        trim=trim,
    )
    if exec_preemption and not cfg.PREEMPT_RT:
        err.print(
            f"note: --exec-preemption explores nothing more under {cfg.name}: only PREEMPT_RT "
            f"lets exec_mmap() be preempted (try linux-6.1-x86_64-rt)",
            highlight=False,
        )
    show = err.is_terminal and not as_json
    shown = [0.0]

    def progress(r: Result, d: int) -> None:
        if r.seconds - shown[0] >= 0.5:
            shown[0] = r.seconds
            rate = r.states / r.seconds if r.seconds else 0.0
            err.print(
                f"\r  states {r.states:>9,}  transitions {r.transitions:>10,}  depth {d:>3}  "
                f"{rate:>8,.0f} states/s",
                end="",
                highlight=False,
            )

    result = run_explore(
        cfg,
        cpus,
        limits,
        depth=depth or 10_000,
        symmetry=not no_symmetry,
        keep_going=keep_going,
        progress=progress if show else None,
        jobs=jobs or os.cpu_count() or 1,
    )
    if show:
        err.print()
    summary = result.to_dict() | {
        "preset": cfg.name,
        "mutants": sorted(cfg.mutants),
        "settings": cfg.knobs(),
        "symmetry": not no_symmetry,
        "bound": {
            "cpus": cpus,
            "processes": processes,
            "threads": threads,
            "kthreads": kthreads,
            "execs": execs,
            "holders": holders,
            "depth": depth,
            "flushes": not no_flushes,
            "hotplug": hotplug,
            "text_poke": text_poke,
            "efi": efi,
            "failures": failures,
            "exec_preemption": exec_preemption,
            "trim": trim,
        },
        "jobs": jobs or os.cpu_count() or 1,
    }
    cex = result.violations[0].scenario(cfg, cpus) if result.violations else None
    if output is not None and cex is not None:
        write_atomic(output, cex.to_toml())
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        t = Table(title=f"explore ({cfg.label})", show_header=False)
        for key in ("states", "transitions", "max_depth", "exhausted", "seconds"):
            t.add_row(key, str(summary[key]))
        t.add_row("violations", str(len(result.violations)))
        out.print(t)
        for v in result.violations:
            err.print(v.report, highlight=False, markup=False)
        if cex is not None and output is None:
            out.print("# the shortest counterexample, as a scenario (activemm run FILE):")
            sys.stdout.write(cex.to_toml())
        elif cex is not None:
            out.print(f"counterexample written to {output}")
    if result.violations:
        raise typer.Exit(1)


@app.command()
def replay(
    trace: Annotated[
        str,
        typer.Argument(
            help="Trace: tracefs/trace-cmd text, perf script, trace.dat, perf.data; "
            ".gz/.xz/.zst; - = stdin; or a capture directory (activemm capture)."
        ),
    ],
    preset_names: Annotated[
        list[str] | None,
        typer.Option(
            "--preset",
            "-p",
            help="Configuration to compare (repeat). PRESET:NAME=N[,NAME=N] is a column with "
            "settings of its own (see --set), beside the preset's: -p linux-6.17-x86_64 -p "
            "linux-6.17-x86_64:nr_dyn_asids=1. Default: linux-6.17-x86_64, "
            "linux-6.17-powerpc-radix, no-lazy.",
        ),
    ] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="NAME=N",
            help="Set a size the presets fix as the kernel does, in each preset it applies "
            "to: nr_dyn_asids (x86 ASID slots, 6: what would 12 save? 1: a CPU without PCID, "
            "every CR3 load flushes), alpha_max_asn (127), global_asid_threshold (x86 "
            "INVLPGB presets, 3).",
        ),
    ] = None,
    tasks: Annotated[
        Path | None,
        typer.Option(
            "--tasks", help="Task snapshot: /proc/PID/task/TID/stat lines (see docs/replay.md)."
        ),
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format", help="ftrace, perf, tracedat, perfdata or perfetto (default: detected)."
        ),
    ] = None,
    cpus: Annotated[
        int | None,
        typer.Option(help="CPUs of the traced machine (default: from the trace).", min=1, max=4096),
    ] = None,
    costs: Annotated[
        Path | None, typer.Option("--costs", help="TOML overriding the cycle cost table.")
    ] = None,
    lenient: Annotated[
        bool, typer.Option("--lenient", help="Skip malformed lines, counting them.")
    ] = False,
    no_sanitize: Annotated[bool, typer.Option("--no-sanitize", help="Faster, unchecked.")] = False,
    sanitize_every: Annotated[
        int,
        typer.Option(
            "--sanitize-every",
            min=1,
            help="Check every invariant every N operations (bad accesses: always at once).",
        ),
    ] = 1000,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs",
            "-j",
            min=0,
            help="Processes sharing the configurations, each reading the trace (0: one per "
            "CPU, at most one per configuration). Default: 0 for a trace file over "
            f"{AUTO_JOBS_BYTES >> 20} MB, else 1. Standard input: always 1.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the JSON here (whole or not at all)."),
    ] = None,
) -> None:
    """Replay a real scheduler trace under several configurations, side by side.

    Context switches by case, address-space loads and what lazy TLB saved, mm_count atomics
    (same-CPU vs cross-CPU), shootdown and flush IPIs, zombie mms, and a cost estimate.
    Record x86's tlb:tlb_flush too and the replay makes the trace's TLB flushes, text_poke()s
    and EFI calls as well, and runs each exec where exec_mmap() ran and each exit where
    exit_mmap() found its CPU lazy (without it: only forks' and exits' flushes, execs and
    exits at their sched_process_* tracepoints; docs/replay.md). The traced kernel's own CR3
    loads are in those lines too: the row "switches loading as traced (%)" says how often
    each x86 column loaded CR3 at a context switch as that kernel did."""
    from activemm.fileio import write_atomic
    from activemm.metrics import load_costs
    from activemm.report.compare import BASELINE, table, tlb_summary
    from activemm.trace.parallel import outcomes as collect
    from activemm.trace.parallel import replay_parallel
    from activemm.trace.replay import replay as run_replay

    specs = preset_names or ["linux-6.17-x86_64", "linux-6.17-powerpc-radix", BASELINE]
    columns = replay_columns(specs, settings)
    configs = [cfg for _, cfg in columns]
    hidden = []
    if all(cfg.name != BASELINE for cfg in configs):  # (x86: it takes the x86 settings too)
        base = preset(BASELINE)
        mine = {k: v for k, v in parse_settings(settings).items() if base.knob_applies(k)}
        hidden = [base.with_knobs(mine) if mine else base]
    cost_table = load_costs(costs)
    trace, events, ncpus, stats, snapshot = _open_trace(trace, tasks, fmt, lenient)
    ncpus = cpus or ncpus
    with _spinner(as_json) as bar:
        job = bar.add_task("replaying", total=None)

        def tick(n: int) -> None:
            bar.update(job, description=f"replaying: {n:,} events")

        if jobs is None:  # worth the forks and the second reading on big traces only
            jobs = 0 if trace != "-" and Path(trace).stat().st_size > AUTO_JOBS_BYTES else 1
        workers = 1 if trace == "-" else min(jobs or os.cpu_count() or 1, len(configs + hidden))
        if workers > 1:

            def reopen() -> tuple[Iterator[TraceEvent], ReadStats]:
                _, evs, _, read, _ = _open_trace(trace, None, fmt, lenient)
                return evs, read

            n, outcomes, stats = replay_parallel(
                reopen,
                configs + hidden,
                ncpus,
                workers,
                snapshot,
                sanitize=not no_sanitize,
                costs=cost_table,
                progress=tick,
                sanitize_every=sanitize_every,
            )
        else:
            n, replayers = run_replay(
                events,
                configs + hidden,
                ncpus,
                snapshot,
                sanitize=not no_sanitize,
                costs=cost_table,
                progress=tick,
                sanitize_every=sanitize_every,
                placements=stats.placements,
            )
            outcomes = collect(replayers)
    result = _comparison(trace, n, stats, columns, configs + hidden, outcomes) | {"jobs": workers}
    if output is not None:
        write_atomic(output, json.dumps(result, indent=1) + "\n")
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        out.print(table(result))
        a = {k: v for k, v in result["anomalies"].items() if v}
        tk = result["tasks"]
        out.print(
            f"tasks before the trace: {tk['from_snapshot']} from the snapshot, "
            f"{tk['guessed_kernel_threads']} guessed kernel threads, "
            f"{tk['guessed_user_tasks']} guessed user tasks"
        )
        out.print(tlb_summary(result))
        if a:
            out.print("anomalies: " + ", ".join(f"{k}: {v:,}" for k, v in sorted(a.items())))


@app.command()
def timeline(
    source: Annotated[
        str,
        typer.Argument(
            help="A scenario (.toml), a trace (any format replay reads) or a capture directory."
        ),
    ],
    preset_name: PresetOpt = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The trace-event JSON to write.")
    ] = Path("timeline.json"),
    tasks: Annotated[
        Path | None, typer.Option("--tasks", help="Task snapshot for a trace.")
    ] = None,
) -> None:
    """Write a Chrome/Perfetto timeline (JSON) of a scenario or a trace.

    Open it in ui.perfetto.dev or chrome://tracing: per CPU the running task and its active_mm
    (lazy spans marked), each mm's mm_users/mm_count as counters, and instants for frees,
    zombie births, IPIs, CR3 loads."""
    from activemm.fileio import write_atomic
    from activemm.report.timeline import Timeline
    from activemm.trace.replay import replay as run_replay

    if source.endswith(".toml"):
        sc = scen.load(source)
        cfg = resolve_config(preset_name, sc.mutants, sc.preset, sc.knobs)
        tl = Timeline(step_clock=True)
        for _ in scen.run(sc, cfg, [tl, Sanitizer(cfg)]):
            pass
    else:
        cfg = resolve_config(preset_name)
        tl = Timeline()
        _, events, ncpus, stats, snap = _open_trace(source, tasks)
        run_replay(events, [cfg], ncpus, snap, extra={cfg.label: [tl]}, placements=stats.placements)
    doc = tl.document()
    write_atomic(output, json.dumps(doc))
    out.print(
        f"{len(doc['traceEvents']):,} trace events written to {output} ({cfg.name}); "
        "open it in https://ui.perfetto.dev or chrome://tracing"
    )


@app.command()
def explain(
    file: Annotated[Path, typer.Argument(help="A scenario file, e.g. examples/04_zombie_mm.toml.")],
    preset_name: PresetOpt = None,
    step: Annotated[int | None, typer.Option("--step", help="Show only this step.", min=0)] = None,
) -> None:
    """Step through a scenario, explaining each operation in kernel terms.

    The kernel path taken, the kernel's own comment for the context-switch case that applies,
    and the before/after of every field that changed. On a terminal, Enter goes on and q
    quits; otherwise every step is printed."""
    from activemm.report.explain import explain_step, snapshot

    sc = scen.load(file)
    cfg = resolve_config(preset_name, sc.mutants, sc.preset, sc.knobs)
    interactive = out.is_terminal and sys.stdin.isatty() and step is None
    before: dict[tuple[str, str], object] = {}
    out.print(f"[bold]{sc.title}[/bold]  [dim]({cfg.label})[/dim]")
    for r in scen.run(sc, cfg, [Sanitizer(cfg)]):
        after = snapshot(r.state)
        name = "boot" if r.index == 0 else sc.steps[r.index - 1].op
        if step is None or step == r.index:
            out.print(explain_step(r.index, name, r.operation, r.note, r.events, before, after))
            last = r.index >= len(sc.steps)
            if interactive and not last and input("Enter: next, q: quit ").strip() == "q":
                return
        before = after
    if step is not None and step > len(sc.steps):
        raise ActiveMmError(f"{file}: there is no step {step} (the scenario has {len(sc.steps)})")


@app.command()
def report(
    trace: Annotated[str, typer.Argument(help="A trace, as for `activemm replay`.")],
    preset_names: Annotated[
        list[str] | None,
        typer.Option(
            "--preset",
            "-p",
            help="Configuration (repeat); PRESET:NAME=N[,NAME=N] with settings of its own, "
            "as for replay.",
        ),
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="The HTML file.")] = Path(
        "report.html"
    ),
    png: Annotated[Path | None, typer.Option("--png", help="Also write the plots here.")] = None,
    tasks: Annotated[Path | None, typer.Option("--tasks", help="Task snapshot.")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="Trace format.")] = None,
) -> None:
    """Write a self-contained HTML report of a trace, with plots.

    No network needed to view it: the comparison table of `activemm replay`, plots (switch
    cases, mm_count atomics same-CPU vs cross-CPU, zombie lifetimes, lazy time per CPU, a
    per-CPU active_mm timeline) and the trace's anomalies."""
    from activemm.fileio import write_atomic
    from activemm.report.compare import BASELINE
    from activemm.report.html import plots, render
    from activemm.report.timeline import Timeline
    from activemm.trace.parallel import outcomes as collect
    from activemm.trace.replay import replay as run_replay

    columns = replay_columns(
        preset_names or ["linux-6.17-x86_64", "linux-6.17-powerpc-radix"], None
    )
    configs = [cfg for _, cfg in columns]
    if all(cfg.name != BASELINE for cfg in configs):
        configs.append(preset(BASELINE))
    trace, events, ncpus, stats, snapshot = _open_trace(trace, tasks, fmt)
    tl = Timeline()
    first = configs[0].label
    n, replayers = run_replay(
        events, configs, ncpus, snapshot, extra={first: [tl]}, placements=stats.placements
    )
    tl.document()  # closes the open spans
    result = _comparison(trace, n, stats, columns, configs, collect(replayers))
    images = plots({key: replayers[cfg.label].metrics for key, cfg in columns}, tl, columns[0][0])
    if png is not None:
        png.mkdir(parents=True, exist_ok=True)
        for fname, data in images.items():
            write_atomic(png / fname, data)
    write_atomic(output, render(result, images))
    out.print(f"report written to {output}" + (f", plots to {png}/" if png else ""))


@app.command()
def capture(
    output: Annotated[Path, typer.Option("--output", "-o", help="New directory for the capture.")],
    smp: Annotated[int, typer.Option("--smp", min=1, max=16, help="Guest CPUs.")] = 2,
    workload: Annotated[
        str | None,
        typer.Option(
            "--workload",
            "-w",
            help=", ".join(n for n in WORKLOADS if n not in ("all", "parallel"))
            + " (several: comma-separated), all (one after another), parallel (all at once) or "
            "none; docs/validate.md says what each exercises. Default: all, or none with --run "
            "or --program.",
        ),
    ] = None,
    run: Annotated[
        str | None,
        typer.Option(
            "--run",
            help="Your own workload: a busybox sh command line run in the guest (after the "
            "built-in workload, if one is named), e.g. 'for i in 1 2 3; do ls /proc >/dev/null "
            "& done; wait'.",
        ),
    ] = None,
    program: Annotated[
        Path | None,
        typer.Option(
            "--program",
            help="A C source (built with gcc -static) or a static x86-64 executable, installed "
            "as /bin/program in the guest; run as `program` unless --run says otherwise.",
        ),
    ] = None,
    module: Annotated[
        list[str] | None,
        typer.Option(
            "--module",
            help="Load this module of the kernel's package in the guest before the workload "
            "(busybox insmod, no parameters; repeat for several, in load order), e.g. brd "
            "for RAM disks to swap on, or irqbypass, kvm, ccp, kvm-amd with --cpu max for "
            "KVM virtual machines in the guest (TCG emulates AMD SVM). binder_linux and kvm "
            "add their own markers.",
        ),
    ] = None,
    scale: Annotated[
        int,
        typer.Option(
            "--scale",
            min=1,
            max=50,
            help="Repeat the built-in workload's counts x N (your own program takes its "
            "arguments from --run 'program ARGS').",
        ),
    ] = 1,
    kernel_args: Annotated[
        str,
        typer.Option(
            "--kernel-args",
            help="More kernel command-line parameters for the guest, e.g. 'preempt=full' "
            "(Debian's kernels boot preempt=voluntary; full lets the kernel be preempted "
            "anywhere interrupts and preemption are enabled) or 'preempt=none', or, with a "
            "PREEMPT_RT kernel, 'rcu_nocbs=all' (every CPU's RCU callbacks, which free mms on "
            "RT, run in rcuop/N threads, batched lazily on 6.12-rt).",
        ),
    ] = "",
    release: Annotated[
        str,
        typer.Option(
            "--kernel-release",
            help="Debian 12's kernel generation: 6.1 or 6.12, or their PREEMPT_RT flavour "
            "6.1-rt or 6.12-rt (linux-image-rt-amd64), or their cloud flavour 6.1-cloud or "
            "6.12-cloud (linux-image-cloud-amd64: a configuration for virtual machines, few "
            "modules); or 6.16, 6.17 or 6.18 (6.18-rt, 6.18-cloud...): Debian 13's backports, "
            "downloaded over HTTP from trixie-backports (ACTIVEMM_DEBIAN_MIRROR to use "
            "another mirror); 6.18 is a long-term kernel.",
        ),
    ] = "6.1",
    kernel: Annotated[
        Path | None,
        typer.Option(
            "--kernel",
            help="Use this kernel instead: a vmlinuz-RELEASE with its config-RELEASE beside "
            "it (an unpacked Debian linux-image package).",
        ),
    ] = None,
    accel: Annotated[
        str,
        typer.Option(
            "--accel",
            help="auto (KVM, falling back to TCG), kvm or tcg. A guest that crashes under TCG "
            "is recorded once more with TCG single-threaded (one host thread for every vCPU).",
        ),
    ] = "auto",
    cpu: Annotated[
        str,
        typer.Option(
            "--cpu",
            help="QEMU's CPU model (its -cpu, e.g. max or Skylake-Server; `qemu-system-x86_64 "
            "-cpu help` lists them), recorded in meta.json. Default: host with KVM (the "
            "host's PCID included: switch_mm_irqs_off() then keeps each mm's TLB entries "
            "under an ASID), QEMU's qemu64 with TCG (QEMU 7.2's TCG has no PCID, whatever "
            "the model). With KVM, kvm-pv-tlb-flush=off is added unless the model names it: "
            "KVM's paravirtual flush skips vCPUs the host preempted, which the guest's "
            "trace cannot show.",
        ),
    ] = "",
    firmware: Annotated[
        str,
        typer.Option(
            "--firmware",
            help="bios (QEMU's SeaBIOS, booting the kernel's ELF image) or uefi (OVMF, "
            "Debian's ovmf package, booting its EFI stub): with uefi the kernel has EFI "
            "runtime services, whose calls (efivarfs: --module efivarfs) switch the calling "
            "kworker to efi_mm and back. Recorded in meta.json.",
        ),
    ] = "bios",
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            min=10,
            help="Seconds the guest may run; a workload still running then is stopped, and "
            "the guest's console (DIR.console.log) shows where each of its tasks waited.",
        ),
    ] = 300.0,
    allow_lost: Annotated[
        bool,
        typer.Option(
            "--allow-lost",
            help="Keep a trace whose ring buffers lost events or were reset, or whose "
            "hooks or mm birth/death probes missed hits (kprobe_profile).",
        ),
    ] = False,
    memory: Annotated[
        int,
        typer.Option(
            "--memory",
            min=0,
            help="Guest memory in MiB (0: 256, and 64 per CPU besides its ring buffer). "
            "Linux turns transparent huge pages (and khugepaged) off below about 512 MiB: "
            "give 1024 for a workload about huge pages.",
        ),
    ] = 0,
    buffer_mb: Annotated[
        int,
        typer.Option(
            "--buffer-mb",
            min=0,
            help="Each guest CPU's trace ring buffer in MiB (0: 16, and per --scale step of "
            "a built-in workload 3.5 more with 1 or 2 CPUs, 1.5 with 3, less with more). "
            "Events are never overwritten: a trace that overran its buffer is refused "
            "(--allow-lost keeps it); give more for a long --program.",
        ),
    ] = 0,
    trace_dat: Annotated[
        bool,
        typer.Option(
            "--trace-dat",
            help="Also write DIR/trace.dat: the same ring buffers read by trace-cmd extract in "
            "the guest (the host's trace-cmd and its libraries go into the initramfs), with "
            "the kernel's symbols, as `trace-cmd record` would have written them; `activemm "
            "validate DIR/trace.dat` reads it (it needs trace-cmd).",
        ),
    ] = False,
    perf_data: Annotated[
        bool,
        typer.Option(
            "--perf-data",
            help="Also record the same events with `perf record -a` while the workload runs "
            "(the host's perf and its libraries go into the initramfs) and write "
            "DIR/perf.data and DIR/kallsyms.txt (the guest's symbols, which a perf.data "
            "lacks); `activemm validate DIR/perf.data` reads them (it needs perf).",
        ),
    ] = False,
) -> None:
    """Record what a real Linux kernel does with active_mm, in a QEMU guest.

    Boots a stock Debian kernel (downloaded with apt-get download, or over HTTP from
    trixie-backports for 6.16 to 6.18; unpacked, nothing installed) with a busybox initramfs,
    puts kprobes on switch_mm_irqs_off, enter_lazy_tlb, finish_task_switch, __mmdrop,
    exit_mmap, mm_init... (task_struct offsets from the
    kernel's BTF), runs the workload and writes to DIR: trace.txt.gz (tracefs text),
    tasks_start.txt / tasks_end.txt (the task snapshot for --tasks), meta.json and
    workload.log. Then: `activemm validate DIR`. Your own workload: --program (a C file or a
    static binary) and/or --run (a shell command line), with --module for a module of the
    kernel's package it needs (brd: RAM disks to swap on). Needs qemu-system-x86,
    busybox-static, gcc, libc6-dev (docs/validate.md)."""
    import time as _time

    from activemm.capture.kernel import RELEASES, fetch, image_from_path
    from activemm.capture.run import CORE_PROBES, CaptureOptions, check_options, ring_buffer_mb
    from activemm.capture.run import capture as run_capture
    from activemm.validate import dropped_events, dropped_list

    if accel not in ("auto", "kvm", "tcg"):
        raise ActiveMmError(f"--accel {accel}: expected auto, kvm or tcg")
    if kernel is None and release not in RELEASES:
        raise ActiveMmError(f"--kernel-release {release}: expected one of {', '.join(RELEASES)}")
    t0 = _time.monotonic()

    def progress(msg: str) -> None:
        if err.is_terminal:
            err.print(f"[dim]{_time.monotonic() - t0:6.1f}s[/dim] {msg}")

    if workload is None:
        workload = "none" if run is not None or program is not None else "all"
    opts = CaptureOptions(
        output, smp, workload, scale, accel, memory, timeout, allow_lost, run=run,
        program=program, modules=tuple(module or ()), kernel_args=" ".join(kernel_args.split()),
        cpu=cpu, firmware=firmware, buffer_mb=buffer_mb, trace_dat=trace_dat, perf_data=perf_data,
    )  # fmt: skip
    check_options(opts)
    progress("fetching the kernel" if kernel is None else f"using {kernel}")
    image = image_from_path(kernel) if kernel else fetch(release)
    meta = run_capture(image, opts, progress)
    if meta.get("workload_status") not in (0, None):
        err.print(
            f"[yellow]warning:[/yellow] the workload exited with status "
            f"{meta['workload_status']} (see {output}/workload.log)"
        )
    missed = meta.get("kprobe_missed")
    if isinstance(missed, dict) and missed:
        core = {name for name in missed if name in CORE_PROBES}  # kept by --allow-lost
        err.print(
            f"[yellow]warning:[/yellow] {'' if core else 'marker '}kprobes missed hits while "
            "recording ("
            + ", ".join(f"{name} {n}" for name, n in sorted(missed.items()))
            + "): kept in meta.json; activemm validate lists them among the anomalies"
            + (" (events it scores are missing: --allow-lost kept them)" if core else ""),
            highlight=False,
        )
    if dropped := dropped_events(meta):
        err.print(
            f"[yellow]warning:[/yellow] ring buffers full: they dropped events ("
            f"{dropped_list(dropped)}), kept by --allow-lost; activemm validate scores the "
            "trace up to where the first full CPU's ends (a larger --buffer-mb than "
            f"{ring_buffer_mb(opts)} records it all)",
            highlight=False,
        )
    if meta.get("trace_reset"):
        err.print(
            "[yellow]warning:[/yellow] the ring buffers were reset during the workload (a "
            "trace event removed), kept by --allow-lost: the trace lacks what came before",
            highlight=False,
        )
    rb = meta["ring_buffer"]
    entries = sum(s.get("entries", 0) for s in rb.values()) if isinstance(rb, dict) else 0
    single = meta.get("qemu_accel") == "tcg,thread=single"  # a crash's retry
    out.print(
        f"captured {entries} events from Linux {meta['kernel']} ({smp} CPUs, "
        f"{'tcg single-threaded' if single else meta['accel']}, "
        f"workload {_workload_label(workload, run, program)}) in "
        f"{_time.monotonic() - t0:.1f}s -> {output}/"
    )


@app.command()
def probes(
    btf_file: Annotated[
        Path,
        typer.Option(
            "--btf",
            help="The kernel's BTF: /sys/kernel/btf/vmlinux of the kernel you will record "
            "(CONFIG_DEBUG_INFO_BTF), or a vmlinux with a .BTF section.",
        ),
    ] = Path("/sys/kernel/btf/vmlinux"),
    kallsyms: Annotated[
        Path,
        typer.Option(
            "--kallsyms",
            help="Where finish_task_switch's real name is read (a compiler clone such as "
            "finish_task_switch.isra.0; names read without root too). --script reads it "
            "where it runs.",
        ),
    ] = Path("/proc/kallsyms"),
    module: Annotated[
        list[str] | None,
        typer.Option(
            "--module",
            help="binder_linux or kvm: add the markers of that module's functions (it must "
            "be loaded before the probes are defined). Repeat for both.",
        ),
    ] = None,
    script: Annotated[
        bool,
        typer.Option(
            "--script",
            help="Print a whole recording script instead: `sudo sh record.sh DIR COMMAND...` "
            "sets up the tracepoints and these probes in a tracefs instance of its own, "
            "records while COMMAND runs and writes DIR for `activemm validate DIR`.",
        ),
    ] = False,
    group: Annotated[
        str, typer.Option("--group", help="The kprobe event group (and tracefs instance).")
    ] = "activemm",
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to FILE (whole or not at all), not stdout."),
    ] = None,
) -> None:
    """Print the kprobes activemm validate reads, with this kernel's offsets.

    The task_struct fields the probes fetch (pid, flags, mm, active_mm, comm) and the
    markers' (io_uring, OOM, /proc files, userfaultfd, khugepaged, KSM) move from build to
    build: they are read from the kernel's BTF, as `activemm capture` reads them for its
    guest. Without --script the output is kprobe_events lines (`#` lines are comments the
    kernel skips); define them one at a time, since a kernel lacking a function (dup_mmap
    is inlined on 6.12) refuses its line and a write of several stops there. With
    --script, a POSIX sh script that does all of it, records while your command runs and
    cleans up after itself (docs/validate.md, "Recording on your own machine")."""
    import re as _re

    from activemm.capture import guest
    from activemm.capture.kernel import probe_offsets, read_btf
    from activemm.capture.script import recording_script
    from activemm.fileio import write_atomic

    if not _re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", group):
        raise ActiveMmError(f"--group {group}: expected a name of letters, digits and _")
    unknown = sorted({m.replace("-", "_") for m in module or ()} - {"binder_linux", "kvm"})
    if unknown:
        raise ActiveMmError(f"--module {unknown[0]}: expected binder_linux or kvm")
    offsets = probe_offsets(read_btf(btf_file))
    definitions = guest.definitions_for(offsets, module or ())
    source = f"the kernel whose BTF is {btf_file}"
    if script:
        text = recording_script(definitions, source, group)
    else:
        fts = _finish_task_switch(kallsyms)
        lines = [
            f"# activemm's kprobes for {source}, finish_task_switch as {kallsyms} names it",
            *(
                d.replace("@FINISH_TASK_SWITCH@", fts).replace(
                    f":{guest.GROUP}/", f":{group}/"
                )
                for d in definitions
            ),
            *(f"# then: echo '{rule}' > events/{group}/{ev}/filter" for ev, rule in
              guest.FILTERS.items()),
        ]  # fmt: skip
        text = "\n".join(lines) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        write_atomic(output, text)
        err.print(f"wrote {output}", highlight=False)


def _finish_task_switch(kallsyms: Path) -> str:
    """finish_task_switch's name in a kallsyms (a clone's `.isra.0` suffix and all)."""
    import re as _re

    try:
        text = kallsyms.read_text(errors="replace")
    except OSError as e:
        raise ActiveMmError(f"--kallsyms {kallsyms}: cannot read it ({e.strerror})") from None
    m = _re.search(r"^\S+ [tT] (finish_task_switch(?:\.\S*)?)$", text, _re.M)
    if m is None:
        raise ActiveMmError(f"--kallsyms {kallsyms}: no finish_task_switch in it")
    return m[1]


def _workload_label(workload: str, run: str | None, program: Path | None) -> str:
    parts = [] if workload == "none" else [workload]
    if program is not None:
        parts.append(program.name)
    if run is not None:
        parts.append(repr(run) if len(run) <= 40 else repr(run[:37] + "..."))
    return " + ".join(parts)


@app.command()
def validate(
    trace: Annotated[
        Path,
        typer.Argument(
            help="A capture directory (from `activemm capture`), a tracefs text trace with "
            "the kprobe lines of docs/validate.md (.gz/.xz/.zst), a trace.dat of trace-cmd "
            "record (its kprobe addresses named from the symbols it keeps), or a perf.data of "
            "perf record -a (read through perf script; give --kallsyms)."
        ),
    ],
    tasks: Annotated[
        Path | None,
        typer.Option("--tasks", help="Task snapshot (default: the capture's tasks_start.txt)."),
    ] = None,
    preset_name: PresetOpt = None,
    mutant_names: MutantOpt = None,
    inputs: Annotated[
        str | None,
        typer.Option(
            "--inputs",
            help="What the model may read: sched (tracepoints only) or markers (plus the "
            "exit_mm/exec_mmap/exit_mmap marker probes; the default when present).",
        ),
    ] = None,
    kernel_args: Annotated[
        str | None,
        typer.Option(
            "--kernel-args",
            help="The recorded kernel's command line, or the parameters of it that matter: "
            "preempt=full or lazy (a fully preemptible kernel; Debian's boot voluntary) and, "
            "on PREEMPT_RT, rcu_nocbs=all. A capture's meta.json says it by itself; for a "
            'trace recorded elsewhere pass "$(cat /proc/cmdline)", or preempt=MODE with '
            "the mode /sys/kernel/debug/sched/preempt shows in parentheses.",
        ),
    ] = None,
    kallsyms: Annotated[
        Path | None,
        typer.Option(
            "--kallsyms",
            help="The recording boot's /proc/kallsyms (read as root), or `trace-cmd report "
            "-f` of its trace.dat: names the kprobe locations trace-cmd report, perf "
            "script and a perf.data print as addresses, `(ffffffff810ada64)`, where tracefs prints "
            "`(switch_mm_irqs_off+0x4/0x470)`.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Score the model's predictions against what a real kernel did with active_mm.

    Replays the trace through the model and compares, for every context switch, the mm hook
    the kernel called (switch_mm_irqs_off or enter_lazy_tlb) with its arguments and
    prev->active_mm afterwards; every __mmdrop (which mm, at which point); and the hooks
    outside schedule (exec's activate_mm, exit_mm's enter_lazy_tlb, flushes to init_mm).
    The preset follows the capture's kernel (linux-6.1-x86_64, linux-6.12-x86_64, or for
    6.14 and later linux-6.17-x86_64): from its meta.json, or for a bare trace from where
    its kprobes landed (+0x0 on Debian's 6.1, +0x4 past ENDBR on 6.12 and 6.17, told apart
    by exec's hook, which has a prev since 6.16). With tracepoints only (--inputs sched),
    exit windows show in the CR3 loads: a user task whose exit_mmap switched its lazy CPU
    to init_mm has run exit_mm (before its last preemption between its last sign of an mm
    and that switch, when little of exit_mmap was left to run from there), and one switched
    in without the CR3 load its mm needs shows it after the fact (the trace is replayed
    again with its exit_mm where it ran; from 6.16, where sched_process_exit comes first,
    one switched in with a CR3 load had not run it yet); a CPU whose idle task switches out
    while its last traced switch went to its stopper thread was offline in between. On
    PREEMPT_RT kernels (the -rt presets), with markers, an exec preempted inside
    exec_mmap() before activate_mm() shows as a preemption with migration disabled (the
    irq-flags column) whose activate_mm then loads no CR3: the model runs that exec in two
    steps (docs/validate.md).

    Exit status: 0 all matched, 1 something did not, 2 unusable input."""
    from activemm.validate import validate as run_validate

    with _spinner(as_json) as bar:
        job = bar.add_task("validating", total=None)
        result = run_validate(
            trace,
            tasks,
            preset_name,
            inputs,
            mutants=mutant_names,
            kernel_args=kernel_args,
            progress=lambda msg: bar.update(job, description=msg),
            kallsyms=kallsyms,
        )
    if result.preset_from.startswith("inferred"):
        err.print(f"activemm: preset {result.preset} ({result.preset_from}); --preset overrides")
    if as_json:
        sys.stdout.write(json.dumps(result.as_dict()) + "\n")
    else:
        preemption = "" if result.preemption == "voluntary" else f", preempt={result.preemption}"
        t = Table(
            title=f"validate {result.trace}: preset {result.preset}, inputs {result.inputs}"
            + preemption
        )
        t.add_column("what")
        t.add_column("matched", justify="right")
        t.add_column("total", justify="right")
        t.add_column("%", justify="right")
        for name, score in (
            ("context switches", result.context_switches),
            ("__mmdrop", result.mmdrop),
            ("outside schedule", result.outside_schedule),
        ):
            pct = 100.0 * score.matched / score.total if score.total else 100.0
            style = "green" if score.matched == score.total else "red"
            t.add_row(name, str(score.matched), str(score.total), f"[{style}]{pct:.2f}[/{style}]")
        out.print(t)
        if result.causes:
            c = Table(title="mismatches by cause")
            c.add_column("count", justify="right")
            c.add_column("cause")
            for cause, n in result.causes.most_common():
                c.add_row(str(n), cause)
            out.print(c)
        if result.mismatches:
            shown = result.mismatches[:SHOWN_MISMATCHES]
            first = Table(
                title=f"the first {len(shown)} of {result.mismatch_count} mismatches "
                f"(--json: the first {len(result.mismatches)} in full)"
            )
            first.add_column("line", justify="right")
            first.add_column("what")
            for column in ("model", "kernel"):  # an address cut short would say nothing
                first.add_column(column, overflow="fold")
            first.add_column("cause")
            for m in shown:
                first.add_row(
                    str(m["line"]),
                    m["group"],
                    _fields(m["predicted"]),
                    _fields(m["kernel"]),
                    f"[italic]{escape(m['cause'])}[/italic]",
                )
            out.print(first, highlight=False)
        if result.learned:
            learned = ", ".join(f"{n} {what}" for what, n in result.learned.items())
            out.print(f"[dim]learned from the trace: {learned}[/dim]")
        if result.anomalies:
            odd = ", ".join(f"{what}: {n:,}" for what, n in sorted(result.anomalies.items()))
            out.print(f"[dim]anomalies of the trace: {odd}[/dim]", highlight=False)
    if not (
        result.context_switches.matched == result.context_switches.total
        and result.mmdrop.matched == result.mmdrop.total
    ):
        raise typer.Exit(1)


SHOWN_MISMATCHES = 10  # validate's text summary; --json keeps score.MAX_MISMATCHES


def _fields(d: dict[str, Any]) -> str:
    """A mismatch's side, one `name=value` per line (a list: its items joined by a space;
    None: `-`), for validate's table."""

    def value(v: Any) -> str:
        if v is None:
            return "-"
        return " ".join(map(str, v)) if isinstance(v, list | tuple) else str(v)

    return escape("\n".join(f"{k}={value(v)}" for k, v in d.items()))


@app.command()
def mutants() -> None:
    """List the deliberately broken kernel variants (`--mutant NAME`)."""
    t = Table(title="mutants")
    t.add_column("name", style="bold")
    t.add_column("what is broken")
    for n, d in MUTANTS.items():
        t.add_row(n, d)
    out.print(t)


def main() -> None:
    """Entry point: user mistakes become one line on stderr and exit status 2."""
    try:
        app()
    except ActiveMmError as e:
        sys.stderr.write(f"activemm: error: {e}\n")
        sys.exit(e.exit_code)
    except BrokenPipeError:
        sys.exit(0)


if __name__ == "__main__":
    main()
