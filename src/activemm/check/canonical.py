"""Canonical forms of model states, for hashing states in the explorer.

A state is encoded as a tuple that names no pid, mm id or ctx_id: tasks and mms get labels in
the order a traversal first meets them (CPUs in order, then the rest sorted by what they look
like). With symmetry reduction the encoding is the least over all CPU permutations, so states
equal up to renaming CPUs, tasks of the same kind and mms share one form. Two states with the
same form are isomorphic, so merging them is sound; an isomorphic pair that still differs
(ties the sort cannot break) only costs some reduction.

The explorer encodes every state it reaches, so this is written for speed: the shapes of
tasks and mms are computed once per state, labels are dict lookups keyed by the objects
themselves (identity hashes) with None and freed mms mapped to -1 and -2.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations
from typing import Any

from activemm.model.state import Holder, KernelState, Mm, Task, TaskState

MmShape = tuple[Any, ...]
NO_MM: MmShape = (-1,)
GLOBAL_ASID = -2  # a CPU's loaded_mm_asid when it is an x86 INVLPGB global ASID
NO_SLOT = (-1, False)  # an x86 ASID slot holding no live mm's context
NO_WINDOW = (-3,)  # a task not preempted inside exec_mmap()


@dataclass
class _Prepared:
    """What every CPU order's encoding shares: tasks and mms sorted by what they look like,
    the holders, which mm each x86 context id belongs to, and the shapes themselves."""

    tasks: list[Task]  # every task not reaped, sorted by shape when symmetric
    holders: list[Holder]
    mms: list[Mm]  # every mm not freed, sorted by shape when symmetric
    ctx_owner: dict[int, Mm]
    mm_shape: dict[Mm | None, MmShape]
    task_shape: dict[Task, tuple[Any, ...]]

    @classmethod
    def of(cls, state: KernelState, symmetric: bool) -> _Prepared:
        ms: dict[Mm | None, MmShape] = {None: NO_MM}
        for mm in state.mms:
            ms[mm] = (mm.mm_users, mm.mm_count, mm.torn_down, len(mm.mm_cpumask))
        gone = TaskState.GONE
        tasks = [t for t in state.tasks if t.state is not gone]
        ts = {
            t: (
                t.pf_kthread,
                t.pid == 1,
                t.uses_mm,
                t.exiting,
                t.state,
                ms[t.mm],
                ms[t.active_mm],
                t.in_exec_mmap is not None,
            )
            for t in state.tasks
        }
        holders = list(state.holders)
        mms = [mm for mm in state.mms if not mm.freed]
        if symmetric:  # stable sorts: filtering them later keeps the order a sort would give
            tasks.sort(key=ts.__getitem__)
            holders.sort(key=lambda h: (h.kind, ms[h.mm]))
            mms.sort(key=ms.__getitem__)
        return cls(tasks, holders, mms, {mm.context.ctx_id: mm for mm in mms}, ms, ts)


def encode(
    state: KernelState,
    cpu_order: tuple[int, ...],
    symmetric: bool = True,
    alpha: bool = False,
    prepared: _Prepared | None = None,
) -> tuple[Any, ...]:
    """The state as a tuple, CPUs taken in `cpu_order` (position = new CPU number).
    Without `symmetric`, tasks and mms keep their pids and ids: no reduction at all.
    The kernel's clocks are left out: the checker keeps jiffies at 0 (so every mm's x86
    next_trim_cpumask is HZ) and gives each flush's trim itself (ops.py), so powerpc's
    per-CPU trim clock ticks only at forks' dup_mmap() flushes: in a breadth-first search
    a state keeps the clock of its shortest path, far from the 1073 flushes of a trim."""
    prep = prepared or _Prepared.of(state, symmetric)
    cpu_label = {cpu: i for i, cpu in enumerate(cpu_order)}
    rqs = [state.rqs[c] for c in cpu_order]
    # labels in the order the traversal meets tasks and mms (None and freed mms: -1, -2)
    task_label: dict[Task, int] = {}
    ml: dict[Mm | None, int] = {None: -1}
    by_label: list[Mm] = []
    if symmetric:
        for mm in state.mms:
            if mm.freed:
                ml[mm] = -2
        ml[state.init_mm] = 0
        by_label.append(state.init_mm)
        met_mm: list[Mm | None] = []
        for rq in rqs:
            for t in (rq.curr, rq.idle):
                if t not in task_label:
                    task_label[t] = len(task_label)
                    met_mm += (t.mm, t.active_mm)
            met_mm += (rq.prev_mm, rq.tlb.loaded_mm)
        for t in prep.tasks:
            if t not in task_label:
                task_label[t] = len(task_label)
                met_mm += (t.mm, t.active_mm)
        met_mm += [h.mm for h in prep.holders]
        met_mm += prep.mms
        for met_one in met_mm:
            if met_one not in ml:
                assert met_one is not None
                ml[met_one] = len(by_label)
                by_label.append(met_one)
        met = list(task_label)
    else:
        for mm in state.mms:
            ml[mm] = -2 if mm.freed else mm.id
        by_label = [mm for mm in state.mms if not mm.freed]
        for t in [*(t for rq in rqs for t in (rq.curr, rq.idle)), *prep.tasks]:
            task_label[t] = -1 - (t.cpu or 0) if t.is_idle else t.pid
        met = sorted(task_label, key=task_label.__getitem__)

    running = TaskState.RUNNING
    tasks_out = tuple(
        (
            task_label[t],
            t.pf_kthread,
            t.is_idle,
            t.pid == 1,
            t.uses_mm,
            t.exiting,
            t.state,
            ml[t.mm],
            ml[t.active_mm],
            # where a task last ran is never read again once it stops running (but by a task
            # preempted inside exec_mmap(), which may only run there again)
            cpu_label[t.cpu]
            if t.cpu is not None and (t.state is running or t.in_exec_mmap is not None)
            else -1,
            # exec_mmap()'s locals, for such a task
            NO_WINDOW if (w := t.in_exec_mmap) is None else (ml[w.old_mm], ml[w.active_mm]),
            *((ml[t.pcb.ptbr], t.pcb.asn) if alpha else ()),
        )
        for t in met
    )
    # An x86 ASID slot: whose context it holds, and whether it is flushed up to that mm's
    # tlb_gen. The kernel only ever compares a slot's tlb_gen with its mm's current one (and
    # a slot is never ahead), so the counters themselves need not be part of the state.
    owner = {ctx_id: (ml[mm], mm.context.tlb_gen) for ctx_id, mm in prep.ctx_owner.items()}
    cpus_out = tuple(
        (
            rq.online,
            task_label[rq.curr],
            task_label[rq.idle],
            ml[rq.prev_mm],
            ml[rq.tlb.loaded_mm],
            # an INVLPGB global ASID is its loaded mm's (the sanitizer checks): which number
            # the allocator handed out changes nothing the kernel does, so it is not state
            a if (a := rq.tlb.loaded_mm_asid) < len(rq.tlb.ctxs) else GLOBAL_ASID,
            rq.tlb.next_asid,
            rq.tlb.is_lazy,
            tuple(
                (o[0], c.tlb_gen >= o[1]) if (o := owner.get(c.ctx_id)) is not None else NO_SLOT
                for c in rq.tlb.ctxs
            ),
            rq.tlb.last_asn,
            rq.tlb.need_new_asn,
            rq.tlb.unlazy_by,
        )
        for rq in rqs
    )
    identity = cpu_order == tuple(range(len(cpu_order)))
    mms_out = tuple(
        (
            ml[mm],
            mm.mm_users,
            mm.mm_count,
            mm.torn_down,
            tuple(sorted(mm.mm_cpumask if identity else [cpu_label[c] for c in mm.mm_cpumask])),
            tuple(sorted((cpu_label[c], a) for c, a in mm.context.asn.items()))
            if mm.context.asn
            else (),
            -1 if mm.rcu_cpu is None else cpu_label[mm.rcu_cpu],  # PREEMPT_RT's call_rcu
            tuple(sorted(cpu_label[c] for c in mm.rcu_wait)),  # ... and its grace period
            (mm.context.global_asid != 0, mm.context.asid_transition),  # x86 INVLPGB
        )
        for mm in by_label
    )
    holders_out = tuple(sorted((h.kind, ml[h.mm]) for h in state.holders))
    return (cpus_out, tasks_out, mms_out, holders_out)


def canonical(state: KernelState, symmetric: bool = True, alpha: bool = False) -> tuple[Any, ...]:
    """The least encoding over CPU permutations (symmetry reduction), or the identity one.
    `alpha`: the PCB (ptbr, ASN) of every task is state too."""
    n = len(state.rqs)
    if not symmetric:
        return encode(state, tuple(range(n)), symmetric=False, alpha=alpha)
    prepared = _Prepared.of(state, True)
    orders = cpu_orders(state, prepared)
    if len(orders) == 1:
        return encode(state, orders[0], alpha=alpha, prepared=prepared)
    return min(encode(state, order, alpha=alpha, prepared=prepared) for order in orders)


def cpu_orders(state: KernelState, prepared: _Prepared | None = None) -> list[tuple[int, ...]]:
    """The CPU orders worth encoding: CPUs sorted by a signature that names nothing, every
    order of CPUs whose signatures tie. Isomorphic states have the same sorted signatures, so
    the least encoding over these orders is still a canonical form."""
    prep = prepared or _Prepared.of(state, True)
    ms, ts = prep.mm_shape, prep.task_shape
    shaped = sorted(
        (
            (
                rq.online,
                ts[rq.curr],
                ms[rq.tlb.loaded_mm],
                ms[rq.prev_mm],
                rq.tlb.is_lazy,
                rq.curr is rq.idle,
            ),
            rq.cpu,
        )
        for rq in state.rqs
    )
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
