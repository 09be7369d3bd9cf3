"""Bounded exhaustive exploration: every interleaving of model operations from boot, breadth
first, states hashed in canonical form (with symmetry reduction), the sanitizer checking every
state. A violation yields the shortest counterexample as a scenario `activemm run` replays."""

from __future__ import annotations

import time
from collections.abc import Callable
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


def explore(
    config: KernelConfig,
    cpus: int = 2,
    limits: Limits | None = None,
    depth: int = 12,
    symmetry: bool = True,
    keep_going: bool = False,
    progress: Progress | None = None,
) -> Result:
    """Breadth-first search of every state reachable in `depth` operations from boot."""
    t0 = time.monotonic()
    limits = limits or Limits()
    alpha = config.arch == "alpha"
    # Bad accesses are reported the moment they happen; the state invariants are checked
    # below, once per new state: a state equal in canonical form to one already checked
    # breaks the same invariants (the form is isomorphism-invariant, and so are they).
    san = Sanitizer(config, every=NEVER)
    boot = Machine(config, [san])
    boot.boot(cpus)
    root_key = hash((canonical(boot.state, symmetry, alpha), ()))
    parent: dict[int, tuple[int, Op] | None] = {root_key: None}
    result = Result(states=1)
    frontier = [Node(boot.state, {}, root_key, 0)]
    seen_kinds: set[str] = set()
    while frontier:
        nxt: list[Node] = []
        for node in frontier:
            m = Machine.from_state(config, node.state, [san])
            ops = enabled(m, limits, node.forks)
            if node.depth >= depth:
                if ops:
                    result.complete = False
                continue
            for o in ops:
                result.transitions += 1
                child = Machine.from_state(config, clone_state(node.state, prune=True), [san])
                forks = node.forks
                counted = dict(o[1])["kind"] if o[0] == "fork" else o[0]
                if counted in ("process", "thread", "vfork", "kthread", "exec"):
                    forks = {**forks, counted: forks.get(counted, 0) + 1}
                try:
                    apply(child, o)
                    key = hash(
                        (canonical(child.state, symmetry, alpha), tuple(sorted(forks.items())))
                    )
                    if key in parent:
                        continue
                    san.check_now(child.state)
                except Violation as v:
                    if v.kind in seen_kinds:
                        continue
                    seen_kinds.add(v.kind)
                    path = [*_path(parent, node.key), o]
                    result.violations.append(replay_counterexample(config, cpus, path))
                    if not keep_going:
                        result.complete = False
                        result.max_depth = max(result.max_depth, node.depth + 1)
                        result.seconds = time.monotonic() - t0
                        return result
                    continue
                parent[key] = (node.key, o)
                result.states += 1
                result.max_depth = max(result.max_depth, node.depth + 1)
                nxt.append(Node(child.state, forks, key, node.depth + 1))
            if progress is not None:
                result.seconds = time.monotonic() - t0
                progress(result, node.depth)
        frontier = nxt
    result.seconds = time.monotonic() - t0
    return result


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
