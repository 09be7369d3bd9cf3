"""`activemm replay --jobs N`: the configurations replayed side by side in N forked processes,
each reading the trace itself (a file can be read twice; standard input cannot, and is
replayed in one process). The models share nothing but the trace, so each worker runs its
share of the configurations exactly as one process would, and sends back only what the
comparison shows: the replay statistics and each configuration's metrics summary.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection, wait
from typing import Any

from activemm.errors import ActiveMmError
from activemm.model.config import KernelConfig
from activemm.trace.events import TraceEvent
from activemm.trace.readers import ReadStats
from activemm.trace.replay import ReplayStats, TaskInfo, replay

# per configuration: the replay statistics and the metrics summary
Outcome = tuple[ReplayStats, dict[str, Any]]  # a configuration's replay statistics, metrics
Outcomes = dict[str, Outcome]  # by configuration label


def outcomes(replayers: dict[str, Any]) -> Outcomes:
    """What the comparison needs of each Replayer."""
    return {name: (r.stats, r.metrics.summary()) for name, r in replayers.items()}


def _worker(
    conn: Connection,
    open_events: Callable[[], tuple[Iterable[TraceEvent], ReadStats]],
    configs: list[KernelConfig],
    args: dict[str, Any],
    counter: Any,
) -> None:
    def tick(n: int) -> None:
        if counter is not None:
            counter.value = n

    try:
        events, read = open_events()
        # the reader fills its placements as it goes, ahead of the switches that need them
        n, replayers = replay(events, configs, progress=tick, placements=read.placements, **args)
        conn.send(("ok", n, (outcomes(replayers), read)))
    except ActiveMmError as e:
        conn.send(("error", str(e), e.exit_code))
    except BaseException:
        conn.send(("crash", traceback.format_exc(), 0))


def replay_parallel(
    open_events: Callable[[], tuple[Iterable[TraceEvent], ReadStats]],
    configs: list[KernelConfig],
    ncpus: int,
    jobs: int,
    snapshot: dict[int, TaskInfo] | None = None,
    sanitize: bool = True,
    costs: dict[str, int] | None = None,
    progress: Callable[[int], None] | None = None,
    sanitize_every: int = 1000,
) -> tuple[int, Outcomes, ReadStats]:
    """replay() with the configurations dealt out to `jobs` forked workers; `open_events`
    opens the trace afresh in each (events and the reader's statistics). Returns (events,
    outcomes, the first worker's reader statistics)."""
    groups = [g for g in (configs[i::jobs] for i in range(jobs)) if g]
    ctx = mp.get_context("fork")
    counter = ctx.Value("q", 0)
    args = {
        "ncpus": ncpus,
        "snapshot": snapshot,
        "sanitize": sanitize,
        "costs": costs,
        "sanitize_every": sanitize_every,
    }
    conns: list[Connection] = []
    procs = []
    for i, group in enumerate(groups):
        ours, theirs = ctx.Pipe(duplex=False)
        p = ctx.Process(
            target=_worker,
            args=(theirs, open_events, group, args, counter if i == 0 else None),
            daemon=True,
        )
        p.start()
        theirs.close()
        conns.append(ours)
        procs.append(p)
    results: dict[int, tuple[Any, ...]] = {}
    try:
        while len(results) < len(conns):
            for ready in wait([c for i, c in enumerate(conns) if i not in results], 0.25):
                i = conns.index(ready)  # type: ignore[arg-type]
                try:
                    results[i] = conns[i].recv()
                except EOFError:
                    raise RuntimeError(f"replay: worker {i} died") from None
            if progress is not None:
                progress(int(counter.value))
    finally:
        for p in procs:
            p.join(timeout=1)
            if p.is_alive():
                p.terminate()
    merged: Outcomes = {}
    n = 0
    read = ReadStats()
    for i in reversed(range(len(conns))):
        kind, a, b = results[i]
        if kind == "error":
            error = ActiveMmError(a)
            error.exit_code = b
            raise error
        if kind == "crash":
            raise RuntimeError(f"replay: worker {i} failed:\n{a}")
        n = a
        merged |= b[0]
        read = b[1]
    return n, {c.label: merged[c.label] for c in configs}, read
