"""Bounded exhaustive exploration: every interleaving of model operations from boot, breadth
first, states hashed in canonical form (with symmetry reduction), the sanitizer checking every
state. A violation yields the shortest counterexample as a scenario `activemm run` replays."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from activemm.check.canonical import canonical
from activemm.check.ops import Limits, Op, apply, describe, enabled
from activemm.model import Machine
from activemm.model.config import KernelConfig
from activemm.model.state import KernelState, clone_state
from activemm.sanitizer import Sanitizer, Violation
from activemm.scenario import Scenario, Step


@dataclass
class Counterexample:
    kind: str
    message: str
    ops: list[Op]
    report: str

    def scenario(self, config: KernelConfig, cpus: int) -> Scenario:
        base = config.name if config.name in _preset_names() else None
        steps = [Step(name, dict(args)) for name, args in self.ops]
        if steps:
            steps[-1].note = f"{self.kind}: {self.message}"
        return Scenario(
            title=f"counterexample: {self.kind}",
            description=f"Found by activemm explore ({len(self.ops)} steps, shortest).",
            cpus=cpus,
            steps=steps,
            preset=base,
            mutants=sorted(config.mutants),
            knobs=config.knobs() if base else {},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "message": self.message,
            "depth": len(self.ops),
            "ops": [describe(o) for o in self.ops],
        }


def _preset_names() -> set[str]:
    from activemm.model.config import PRESETS

    return set(PRESETS)


@dataclass
class Result:
    states: int = 0
    transitions: int = 0
    max_depth: int = 0
    complete: bool = True  # False when the depth bound cut exploration short
    violations: list[Counterexample] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "states": self.states,
            "transitions": self.transitions,
            "max_depth": self.max_depth,
            "exhausted": self.complete,
            "violations": [v.to_dict() for v in self.violations],
            "seconds": round(self.seconds, 3),
        }


@dataclass
class Node:
    state: KernelState
    forks: dict[str, int]
    key: int
    depth: int


Progress = Callable[[Result, int], None]
NEVER = 1 << 62  # Sanitizer(every=NEVER): no state checks at the end of operations


@dataclass
class Child:
    """One transition out of a node: a new state (`node`), a state already seen (`node` None),
    or a violation."""

    op: Op
    key: int = 0
    node: Node | None = None
    violation: Violation | None = None


def state_key(state: KernelState, forks: dict[str, int], symmetry: bool, alpha: bool) -> int:
    """The hash of a state's canonical form with its fork budgets spent."""
    return hash((canonical(state, symmetry, alpha), tuple(sorted(forks.items()))))


def children(
    config: KernelConfig,
    limits: Limits,
    san: Sanitizer,
    node: Node,
    symmetry: bool,
    seen: Callable[[int], bool],
) -> Iterator[Child]:
    """Every operation enabled at `node`, applied to a copy of its state. A state whose key
    `seen` knows is not checked again: a state equal in canonical form to one already checked
    breaks the same invariants (the form is isomorphism-invariant, and so are they). Bad
    accesses are reported the moment they happen, in `apply`."""
    alpha = config.arch == "alpha"
    m = Machine.from_state(config, node.state, [san])
    for o in enabled(m, limits, node.forks):
        child = Machine.from_state(config, clone_state(node.state, prune=True), [san])
        forks = node.forks
        counted = dict(o[1])["kind"] if o[0] == "fork" else o[0]
        if counted in ("process", "thread", "vfork", "kthread", "exec"):
            forks = {**forks, counted: forks.get(counted, 0) + 1}
        try:
            apply(child, o)
            key = state_key(child.state, forks, symmetry, alpha)
            if seen(key):
                yield Child(o, key)
                continue
            san.check_now(child.state)
        except Violation as v:
            # without its traceback: the frames it holds hold it (a cycle, and the collector
            # is off while exploring)
            yield Child(o, violation=v.with_traceback(None))
            continue
        yield Child(o, key, Node(child.state, forks, key, node.depth + 1))


def has_moves(config: KernelConfig, limits: Limits, san: Sanitizer, node: Node) -> bool:
    """Whether any operation is enabled at `node` (one at the depth bound cuts exploration
    short)."""
    return bool(enabled(Machine.from_state(config, node.state, [san]), limits, node.forks))


class Stop(Exception):
    """A violation ended the search (not keep_going)."""


@dataclass
class Search:
    """A breadth-first search in progress: what explore() and its parallel form share."""

    config: KernelConfig
    cpus: int
    limits: Limits
    depth: int
    symmetry: bool
    keep_going: bool
    progress: Progress | None
    t0: float = field(default_factory=time.monotonic)
    # Bad accesses are reported the moment they happen; the state invariants are checked
    # once per new state (`children`).
    san: Sanitizer = field(init=False)
    parent: dict[int, tuple[int, Op] | None] = field(default_factory=dict)
    result: Result = field(default_factory=Result)
    seen_kinds: set[str] = field(default_factory=set)
    # every operation recorded in `parent`, once: the same few recur under every state
    ops: dict[Op, Op] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # (no history: a counterexample's report comes from replaying it, replay_counterexample)
        self.san = Sanitizer(self.config, history=0, every=NEVER)

    def boot(self) -> Node:
        m = Machine(self.config, [self.san])
        m.boot(self.cpus)
        key = state_key(m.state, {}, self.symmetry, self.config.arch == "alpha")
        self.parent[key] = None
        self.result.states = 1
        return Node(m.state, {}, key, 0)

    def accept(self, key: int, parent_key: int, o: Op, depth: int) -> bool:
        """A child state: True when it is new (first found from `parent_key` by `o`)."""
        if key in self.parent:
            return False
        self.parent[key] = (parent_key, self.ops.setdefault(o, o))
        self.result.states += 1
        self.result.max_depth = max(self.result.max_depth, depth)
        return True

    def violation(self, node_key: int, o: Op, kind: str, depth: int) -> None:
        """A violation `o` runs into from the state `node_key`: its counterexample, once per
        kind (BFS order makes the first found the shortest). Unless keep_going, it ends the
        search, cut short (raises Stop)."""
        if kind in self.seen_kinds:
            return
        self.seen_kinds.add(kind)
        path = [*_path(self.parent, node_key), o]
        self.result.violations.append(replay_counterexample(self.config, self.cpus, path))
        if not self.keep_going:
            self.result.complete = False
            self.result.max_depth = max(self.result.max_depth, depth)
            raise Stop

    def tick(self, depth: int) -> None:
        self.result.seconds = time.monotonic() - self.t0
        if self.progress is not None:
            self.progress(self.result, depth)

    def at_bound(self, node: Node) -> None:
        """`node` is at the depth bound: if it could go on, the bound cut exploration short
        (asked only until one could)."""
        if self.result.complete and has_moves(self.config, self.limits, self.san, node):
            self.result.complete = False

    def layer(self, frontier: list[Node]) -> list[Node]:
        """Expand one layer in this process; the next layer. States at the depth bound are
        not kept: each is looked at (at_bound) and dropped, so the last layer, the largest,
        never stays in memory."""
        nxt: list[Node] = []
        for node in frontier:
            if node.depth >= self.depth:  # only at the start (a bound of 0 operations)
                self.at_bound(node)
                continue
            leaves = node.depth + 1 >= self.depth
            for c in children(
                self.config, self.limits, self.san, node, self.symmetry, self.parent.__contains__
            ):
                self.result.transitions += 1
                if c.violation is not None:
                    self.violation(node.key, c.op, c.violation.kind, node.depth + 1)
                elif c.node is not None and self.accept(c.key, node.key, c.op, c.node.depth):
                    if leaves:
                        self.at_bound(c.node)
                    else:
                        nxt.append(c.node)
            self.tick(node.depth)
        return nxt


def explore(
    config: KernelConfig,
    cpus: int = 2,
    limits: Limits | None = None,
    depth: int = 12,
    symmetry: bool = True,
    keep_going: bool = False,
    progress: Progress | None = None,
    jobs: int = 1,
) -> Result:
    """Breadth-first search of every state reachable in `depth` operations from boot, in
    `jobs` worker processes when more than one (check/parallel.py).

    The cyclic garbage collector is off meanwhile (in the workers too, forked with it off):
    states hold no reference cycles, so reference counting frees every one of them, and the
    collector's passes over the growing set of live states cost about a sixth of the time."""
    search = Search(config, cpus, limits or Limits(), depth, symmetry, keep_going, progress)
    frontier = [search.boot()]
    collecting = gc.isenabled()
    gc.disable()
    try:
        if jobs > 1:
            from activemm.check.parallel import explore_parallel

            explore_parallel(search, frontier, jobs)
        else:
            while frontier:
                frontier = search.layer(frontier)
    except Stop:
        pass
    finally:
        if collecting:
            gc.enable()
    search.result.seconds = time.monotonic() - search.t0
    return search.result


def replay_counterexample(config: KernelConfig, cpus: int, path: list[Op]) -> Counterexample:
    """Run the path on a fresh machine: the report then carries this path as its history,
    and the replay proves the counterexample reproduces."""
    m = Machine(config, [Sanitizer(config, history=len(path) + 1)])
    m.boot(cpus)
    try:
        for o in path:
            apply(m, o)
    except Violation as v:
        return Counterexample(v.kind, v.message, path, v.report())
    raise AssertionError(f"counterexample did not reproduce: {[describe(o) for o in path]}")


def _path(parent: dict[int, tuple[int, Op] | None], key: int) -> list[Op]:
    ops: list[Op] = []
    link = parent[key]
    while link is not None:
        key, o = link
        ops.append(o)
        link = parent[key]
    ops.reverse()
    return ops
