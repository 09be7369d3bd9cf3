"""kernel/rcu/tree.c: invoking a CPU's RCU callbacks.

The only callback the model queues is PREEMPT_RT's `__mmdrop_delayed()` (mmdrop_sched()'s
call_rcu()). A grace period ends when every CPU online and not idle at the call_rcu() has
passed a quiescent state, a context switch, since (`Mm.rcu_wait`; an idle CPU is in an
extended quiescent state, holding no grace period up); preempted read-side critical
sections, which also hold a grace period up on PREEMPT_RCU, are not modelled. Grace periods
are started and ended by RCU's grace-period kthread (rcu_gp_kthread(): `rcu_preempt`, or
`rcu_sched` without PREEMPT_RCU), so none that began after a call_rcu() can have ended before
that kthread ran twice: when a client says when it runs (a trace replay), a callback also
waits for that (`Mm.rcu_gp_runs`). The mm must be unreachable from the moment mm_count
reached 0 (the sanitizer checks it).
"""

from __future__ import annotations

from activemm.model import mm as mmh
from activemm.model.kernel import Kernel


def rcu_note_context_switch(k: Kernel, cpu: int) -> None:
    """kernel/rcu/tree_plugin.h: rcu_note_context_switch(), from __schedule(): a quiescent
    state of `cpu` for every grace period in progress."""
    for mm in k.state.rcu_callbacks:
        if cpu in mm.rcu_wait:
            mm.rcu_wait = mm.rcu_wait - {cpu}


def rcu_do_batch(k: Kernel, cpu: int) -> None:
    """kernel/rcu/tree.c: rcu_do_batch(): invoke the callbacks queued on `cpu` whose grace
    period has ended (on PREEMPT_RT from its rcuc/N kernel thread), oldest first. A CPU gone
    offline holds no grace period up."""
    online = {rq.cpu for rq in k.state.rqs if rq.online}
    queued = k.state.rcu_callbacks
    ready = [
        m
        for m in queued
        if m.rcu_cpu == cpu and not m.freed and not m.rcu_wait & online and not m.rcu_gp_runs
    ]
    sender = k.cpu
    k.cpu = cpu
    for mm in ready:
        mmh.__mmdrop_delayed(k, mm)
    k.cpu = sender


def rcu_gp_kthread(k: Kernel, running: bool) -> None:
    """kernel/rcu/tree.c: rcu_gp_kthread(), RCU's grace-period kthread, switched in
    (`running`) or out. In one run it starts a grace period (rcu_gp_init()) for the callbacks
    that need one, and, once every CPU has passed a quiescent state, it ends it
    (rcu_gp_cleanup()) in a later run: it sleeps in between (rcu_gp_fqs_loop()), if only for
    its own CPU's quiescent state, which that CPU's RCU core (rcuc) reports. A callback
    queued by call_rcu() gets the next grace period to start (rcu_accelerate_cbs()), so its
    grace period ends in the second run of the kthread after the call_rcu(), or the first
    when the kthread was running at the call_rcu() (its rcu_gp_cleanup() of the grace period
    before may then go straight on to rcu_gp_init() of the callback's): Mm.rcu_gp_runs,
    counted down at each switch in. A necessary condition, not the kernel's grace period: the
    quiescent states the model waits for are context switches since the call_rcu(). The
    callbacks queued before the first word of the kthread wait for none of its runs (whether
    it was running at their call_rcu() is not known: mmdrop_sched() counts them only once
    KernelState.rcu_gp_tracked is set)."""
    k.state.rcu_gp_tracked = True
    k.state.rcu_gp_running = running
    if running:
        for mm in k.state.rcu_callbacks:
            mm.rcu_gp_runs = max(0, mm.rcu_gp_runs - 1)


def rcutree_migrate_callbacks(k: Kernel, cpu: int) -> None:
    """kernel/rcu/tree.c: rcutree_migrate_callbacks(), from takedown_cpu() in the task taking
    `cpu` down, on the CPU it runs on (k.cpu): the dead CPU's callbacks join this CPU's list
    and run from there once their grace period is over (the kernel appends them to that
    list; the model keeps call order). Offloaded callbacks stay: the dead CPU's rcuop thread
    goes on running them elsewhere."""
    if k.config.RCU_NOCB_CPU_DEFAULT_ALL or cpu == k.cpu:
        return
    for mm in k.state.rcu_callbacks:
        if mm.rcu_cpu == cpu:
            mm.rcu_cpu = k.cpu
