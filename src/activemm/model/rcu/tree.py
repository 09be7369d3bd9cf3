"""kernel/rcu/tree.c: invoking a CPU's RCU callbacks.

The only callback the model queues is PREEMPT_RT's `__mmdrop_delayed()` (mmdrop_sched()'s
call_rcu()). Grace periods are not modelled: a CPU's callbacks run at its next context switch
(`Machine.schedule`), by when the mm they free must be unreachable anyway (the sanitizer
checks that it is from the moment mm_count reached 0).
"""

from __future__ import annotations

from activemm.model import mm as mmh
from activemm.model.kernel import Kernel


def rcu_do_batch(k: Kernel, cpu: int) -> None:
    """kernel/rcu/tree.c: rcu_do_batch(): invoke the callbacks queued on `cpu` (on
    PREEMPT_RT from its rcuc/N kernel thread), oldest first."""
    sender = k.cpu
    k.cpu = cpu
    for mm in [m for m in k.state.mms if m.rcu_cpu == cpu and not m.freed]:
        mmh.__mmdrop_delayed(k, mm)
    k.cpu = sender
