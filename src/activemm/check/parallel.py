"""The breadth-first search of check/explore.py spread over worker processes
(`activemm explore --jobs N`).

This process explores the first layers itself, until the frontier holds a few dozen states
per worker, then forks the workers, each taking every N-th state of that frontier. From then
on every worker keeps the states it finds. Layer by layer, each expands its share and sends
this process every child whose canonical key it had not seen, as (key, parent key,
operation): keys and operations only, never states. This process keeps the first of each
key, then tells each worker which of its children make the next frontier, and every worker
which keys are now known. States, transitions, depth and completeness are what one process
finds; which parent a state found by two workers in one layer is recorded under (and so which
of several equally short counterexamples is reported) depends on which worker got there first.

Workers are forked, never spawned: canonical keys are Python hashes, and forked processes
share the hash seed.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import pickle
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any

from activemm.check.explore import Node, Search, children, has_moves

PREFIX = 64  # frontier states per worker before the work is shared out
CHUNK = 2_000  # children per message, so that progress moves within a layer


def _expand(conn: Connection, search: Search, mine: list[Node]) -> None:
    """A worker: per layer, receive (the keys of its children to keep, every key accepted in
    the last layer); send ("chunk"|"done", transitions, cut short, pickled items), an item
    being (key, parent key, op) for a child, (None, parent key, op, kind) for a violation.
    The items stay pickled until the layer ends (_settle)."""
    known = set(search.parent)
    # the children of this layer, by key; those at the depth bound are looked at when found
    # and kept as None (their states are never expanded)
    found: dict[int, Node | None] = {n.key: n for n in mine}
    config, limits, san = search.config, search.limits, search.san

    def seen(key: int) -> bool:
        return key in known or key in found

    while (msg := conn.recv()) is not None:
        keep, accepted = msg
        known.update(accepted)
        frontier = [n for k in keep if (n := found[k]) is not None]
        found.clear()
        items: list[tuple[Any, ...]] = []
        transitions, cut = 0, False
        for node in frontier:
            if node.depth >= search.depth:  # only at the start (a bound of 0 operations)
                cut = cut or has_moves(config, limits, san, node)
                continue
            leaves = node.depth + 1 >= search.depth
            for c in children(config, limits, san, node, search.symmetry, seen):
                transitions += 1
                if c.violation is not None:
                    items.append((None, node.key, c.op, c.violation.kind))
                elif c.node is not None:
                    if leaves:
                        # (a state another worker keeps instead has the same moves)
                        cut = cut or has_moves(config, limits, san, c.node)
                        found[c.key] = None
                    else:
                        found[c.key] = c.node
                    items.append((c.key, node.key, c.op))
            if len(items) >= CHUNK:
                conn.send(("chunk", transitions, cut, pickle.dumps(items)))
                items, transitions = [], 0
        conn.send(("done", transitions, cut, pickle.dumps(items)))


def _worker(conn: Connection, search: Search, mine: list[Node]) -> None:
    try:
        _expand(conn, search, mine)
    except BaseException:
        conn.send(("error", 0, False, traceback.format_exc()))


def explore_parallel(search: Search, frontier: list[Node], jobs: int) -> None:
    """Go on with `search` from `frontier` with `jobs` worker processes (raises Stop as
    Search.layer does)."""
    while frontier and len(frontier) < PREFIX * jobs:
        frontier = search.layer(frontier)
    if not frontier:
        return
    ctx = mp.get_context("fork")
    conns: list[Connection] = []
    procs = []
    for w in range(jobs):
        ours, theirs = ctx.Pipe()
        p = ctx.Process(target=_worker, args=(theirs, search, frontier[w::jobs]), daemon=True)
        p.start()
        theirs.close()
        conns.append(ours)
        procs.append(p)
    keep = [[n.key for n in frontier[w::jobs]] for w in range(jobs)]
    accepted: list[int] = []
    layer = frontier[0].depth
    try:
        while any(keep):
            for conn, mine in zip(conns, keep, strict=True):
                conn.send((mine, accepted))
            chunks: list[list[bytes]] = [[] for _ in range(jobs)]
            running = set(range(jobs))
            while running:
                for ready in wait([conns[w] for w in running]):
                    w = next(w for w in running if conns[w] is ready)
                    try:
                        kind, transitions, cut, blob = conns[w].recv()
                    except EOFError:
                        raise RuntimeError(f"explore: worker {w} died") from None
                    if kind == "error":
                        raise RuntimeError(f"explore: worker {w} failed:\n{blob}")
                    search.result.transitions += transitions
                    if cut:
                        search.result.complete = False
                    chunks[w].append(blob)
                    if kind == "done":
                        running.discard(w)
                    search.tick(layer)
            keep, accepted = _settle(search, chunks, layer)
            layer += 1
    finally:
        for conn in conns:
            with contextlib.suppress(BrokenPipeError, OSError):
                conn.send(None)
        for p in procs:
            p.join(timeout=1)
            if p.is_alive():
                p.terminate()


def _settle(
    search: Search, chunks: list[list[bytes]], layer: int
) -> tuple[list[list[int]], list[int]]:
    """The end of a layer: the new states, each kept by one of the workers that found it
    (the one keeping the fewest), and the violations, in worker order: the run does
    not depend on timing, and the work stays shared. The parent of a state is the one its
    keeper found it from: a counterexample's operations name that worker's tasks. Returns
    the keys each worker keeps, and all of them."""
    jobs = len(chunks)
    finders: dict[int, int] = {}  # new key -> bit mask of the workers that found it
    for w, blobs in enumerate(chunks):
        for blob in blobs:
            for item in pickle.loads(blob):
                if item[0] is not None and item[0] not in search.parent:
                    finders[item[0]] = finders.get(item[0], 0) | 1 << w
    # a state only one worker found stays there; the others go to the finder that keeps the
    # fewest so far
    owner: dict[int, int] = {}
    owned = [0] * jobs
    for key, mask in finders.items():
        if mask & (mask - 1) == 0:
            owner[key] = mask.bit_length() - 1
            owned[owner[key]] += 1
    for key, mask in finders.items():
        if key not in owner:
            w = min((v for v in range(jobs) if mask >> v & 1), key=owned.__getitem__)
            owner[key] = w
            owned[w] += 1
    keep: list[list[int]] = [[] for _ in range(jobs)]
    accepted: list[int] = []
    for w, blobs in enumerate(chunks):
        for blob in blobs:
            for item in pickle.loads(blob):
                key = item[0]
                if key is None:
                    search.violation(item[1], item[2], item[3], layer + 1)
                elif owner.get(key) == w and search.accept(key, item[1], item[2], layer + 1):
                    keep[w].append(key)
                    accepted.append(key)
    return keep, accepted
