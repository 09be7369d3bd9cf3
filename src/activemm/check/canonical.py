"""Canonical forms of model states, for hashing states in the explorer.

A state is encoded as a tuple that names no pid, mm id or ctx_id: tasks and mms get labels in
the order a traversal first meets them (CPUs in order, then the rest sorted by what they look
like). With symmetry reduction the encoding is the least over all CPU permutations, so states
equal up to renaming CPUs, tasks of the same kind and mms share one form. Two states with the
same form are isomorphic, so merging them is sound; an isomorphic pair that still differs
(ties the sort cannot break) only costs some reduction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import permutations
from typing import Any

from activemm.model.state import Holder, KernelState, Mm, Rq, Task, TaskState


def _mm_shape(mm: Mm | None) -> tuple[Any, ...]:
    if mm is None:
        return (-1,)
    return (mm.mm_users, mm.mm_count, mm.torn_down, len(mm.mm_cpumask))


def _task_shape(t: Task) -> tuple[Any, ...]:
    return (
        t.pf_kthread,
        t.pid == 1,
        t.uses_mm,
        t.exiting,
        t.state,
        _mm_shape(t.mm),
        _mm_shape(t.active_mm),
    )


@dataclass
class _Prepared:
    """What every CPU order's encoding shares: tasks and mms sorted by what they look like,
    the holders, and which mm each x86 context id belongs to."""

    tasks: list[Task]  # every task not reaped, sorted by shape when symmetric
    holders: list[Holder]
    mms: list[Mm]  # every mm not freed, sorted by shape when symmetric
    ctx_owner: dict[int, Mm]

    @classmethod
    def of(cls, state: KernelState, symmetric: bool) -> _Prepared:
        tasks = [t for t in state.tasks if t.state is not TaskState.GONE]
        holders = list(state.holders)
        mms = [mm for mm in state.mms if not mm.freed]
        if symmetric:  # stable sorts: filtering them later keeps the order a sort would give
            tasks.sort(key=_task_shape)
            holders.sort(key=lambda h: (h.kind, _mm_shape(h.mm)))
            mms.sort(key=_mm_shape)
        return cls(tasks, holders, mms, {mm.context.ctx_id: mm for mm in mms})


def encode(
    state: KernelState,
    cpu_order: tuple[int, ...],
    symmetric: bool = True,
    alpha: bool = False,
    prepared: _Prepared | None = None,
) -> tuple[Any, ...]:
    """The state as a tuple, CPUs taken in `cpu_order` (position = new CPU number).
    Without `symmetric`, tasks and mms keep their pids and ids: no reduction at all."""
    prep = prepared or _Prepared.of(state, symmetric)
    cpu_label = {cpu: i for i, cpu in enumerate(cpu_order)}
    mm_label: dict[int, int] = {id(state.init_mm): 0}
    task_label: dict[int, int] = {}

    def lm(mm: Mm | None) -> int:
        if mm is None:
            return -1
        if mm.freed:
            return -2
        if not symmetric:
            return mm.id
        key = id(mm)
        label = mm_label.get(key)
        if label is None:
            label = mm_label[key] = len(mm_label)
        return label

    def lt(t: Task) -> int:
        key = id(t)
        if not symmetric:
            task_label[key] = -1 - (t.cpu or 0) if t.is_idle else t.pid
            return task_label[key]
        label = task_label.get(key)
        if label is None:
            label = task_label[key] = len(task_label)
            lm(t.mm)
            lm(t.active_mm)
        return label

    rqs = [state.rqs[c] for c in cpu_order]
    for rq in rqs:
        lt(rq.curr)
        lt(rq.idle)
        lm(rq.prev_mm)
        lm(rq.tlb.loaded_mm)
    for t in prep.tasks:
        if id(t) not in task_label:
            lt(t)
    for h in prep.holders:
        lm(h.mm)
    for mm in prep.mms:
        if id(mm) not in mm_label:
            lm(mm)

    running = TaskState.RUNNING
    tasks_out = sorted(
        (
            task_label[id(t)],
            t.pf_kthread,
            t.is_idle,
            t.pid == 1,
            t.uses_mm,
            t.exiting,
            t.state,
            lm(t.mm),
            lm(t.active_mm),
            # where a task last ran is never read again once it stops running
            cpu_label[t.cpu] if t.cpu is not None and t.state is running else -1,
            *((lm(t.pcb.ptbr), t.pcb.asn) if alpha else ()),
        )
        for t in state.tasks
        if id(t) in task_label
    )
    owner = prep.ctx_owner.get
    cpus_out = tuple(
        (
            rq.online,
            task_label[id(rq.curr)],
            task_label[id(rq.idle)],
            lm(rq.prev_mm),
            lm(rq.tlb.loaded_mm),
            rq.tlb.loaded_mm_asid,
            rq.tlb.next_asid,
            rq.tlb.is_lazy,
            tuple(_slot(lm, owner(c.ctx_id), c.tlb_gen) for c in rq.tlb.ctxs),
            rq.tlb.last_asn,
            rq.tlb.need_new_asn,
        )
        for rq in rqs
    )
    if symmetric:
        by_label = sorted(
            ((lbl, mm) for mm in state.mms if (lbl := mm_label.get(id(mm))) is not None),
            key=lambda p: p[0],
        )
    else:
        by_label = [(mm.id, mm) for mm in state.mms if not mm.freed]
    mms_out = tuple(
        (
            lbl,
            mm.mm_users,
            mm.mm_count,
            mm.torn_down,
            tuple(sorted(cpu_label[c] for c in mm.mm_cpumask)),
            tuple(sorted((cpu_label[c], a) for c, a in mm.context.asn.items())),
        )
        for lbl, mm in by_label
    )
    holders_out = tuple(sorted((h.kind, lm(h.mm)) for h in state.holders))
    return (cpus_out, tuple(tasks_out), mms_out, holders_out)


def _slot(lm: Callable[[Mm | None], int], mm: Mm | None, tlb_gen: int) -> tuple[int, bool]:
    """An x86 ASID slot: whose context it holds, and whether it is flushed up to that mm's
    tlb_gen. The kernel only ever compares a slot's tlb_gen with its mm's current one (and a
    slot is never ahead), so the counters themselves need not be part of the state."""
    return (lm(mm), mm is not None and tlb_gen >= mm.context.tlb_gen)


def canonical(state: KernelState, symmetric: bool = True, alpha: bool = False) -> tuple[Any, ...]:
    """The least encoding over CPU permutations (symmetry reduction), or the identity one.
    `alpha`: the PCB (ptbr, ASN) of every task is state too."""
    n = len(state.rqs)
    if not symmetric:
        return encode(state, tuple(range(n)), symmetric=False, alpha=alpha)
    orders = cpu_orders(state)
    prepared = _Prepared.of(state, True)
    if len(orders) == 1:
        return encode(state, orders[0], alpha=alpha, prepared=prepared)
    return min(encode(state, order, alpha=alpha, prepared=prepared) for order in orders)


def _cpu_shape(rq: Rq) -> tuple[Any, ...]:
    return (
        rq.online,
        _task_shape(rq.curr),
        _mm_shape(rq.tlb.loaded_mm),
        _mm_shape(rq.prev_mm),
        rq.tlb.is_lazy,
        rq.curr is rq.idle,
    )


def cpu_orders(state: KernelState) -> list[tuple[int, ...]]:
    """The CPU orders worth encoding: CPUs sorted by a signature that names nothing, every
    order of CPUs whose signatures tie. Isomorphic states have the same sorted signatures, so
    the least encoding over these orders is still a canonical form."""
    shaped = sorted((_cpu_shape(rq), rq.cpu) for rq in state.rqs)
    groups: list[list[int]] = []
    last: object = object()
    for shape, cpu in shaped:
        if shape != last:
            groups.append([])
            last = shape
        groups[-1].append(cpu)
    orders: list[tuple[int, ...]] = [()]
    for g in groups:
        orders = [o + p for o in orders for p in permutations(g)]
    return orders
