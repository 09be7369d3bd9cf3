"""The exhaustive explorer: mutants give short counterexamples, real presets none, symmetry
reduction merges only isomorphic states, counterexamples replay."""

from __future__ import annotations

import gc
import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from activemm import PRESETS, Machine
from activemm.check import parallel
from activemm.check.canonical import canonical
from activemm.check.explore import explore
from activemm.check.ops import Limits, apply, enabled
from activemm.model.state import KernelState, TlbContext, clone_state

from .helpers import cli
from .test_properties import MUTANT_PRESETS, mutant_config

BOUND = Limits(
    max_tasks=5,
    processes=1,
    threads=1,
    kthreads=1,
    execs=2,
    max_holders=1,
    grabs=False,
    hotplug=True,
)
MUTANT_DEPTH = 8  # the stated bound: every mutant is caught within 8 operations of boot


@pytest.mark.parametrize("mutant", list(MUTANT_PRESETS))
def test_every_mutant_has_a_counterexample_within_the_bound(mutant: str) -> None:
    cfg = mutant_config(mutant)
    bound = replace(
        BOUND,
        text_poke=mutant == "text-poke-no-leave-mm",
        failures=mutant in ("fork-cleanup-no-mmput", "bprm-no-mmput"),
    )
    r = explore(cfg, 2, bound, depth=MUTANT_DEPTH)
    assert r.violations, f"{mutant}: no counterexample within depth {MUTANT_DEPTH}"
    cex = r.violations[0]
    assert len(cex.ops) <= MUTANT_DEPTH
    # BFS: nothing shorter exists. Exploring one level less finds nothing.
    shorter = explore(cfg, 2, bound, depth=len(cex.ops) - 1)
    assert not shorter.violations


@pytest.mark.parametrize("name", list(PRESETS))
def test_real_presets_have_no_counterexample(name: str) -> None:
    cfg = PRESETS[name]
    bound = replace(BOUND, kthread_use_mm=cfg.arch != "alpha")  # see test_arch.py
    r = explore(cfg, 2, bound, depth=6)
    assert r.violations == [] and r.states > 500


def test_global_asids_are_explored_and_have_no_counterexample() -> None:
    """x86 INVLPGB with a threshold of 0 (on two CPUs the preset's four are out of reach):
    the explorer reaches states the same bound without INVLPGB has not (global ASIDs, their
    transitions, lazy CPUs kept on broadcast-flushed mms), and none trips the sanitizer."""
    cfg = replace(PRESETS["linux-6.17-x86_64-invlpgb"], global_asid_threshold=0)
    plain = explore(PRESETS["linux-6.17-x86_64"], 2, BOUND, depth=7)
    r = explore(cfg, 2, BOUND, depth=7)
    assert r.violations == [] and r.states > plain.states


@pytest.mark.parametrize("name", ["linux-6.17-x86_64", "linux-6.17-powerpc-radix"])
def test_cpumask_trims_are_explored_and_have_no_counterexample(name: str) -> None:
    """--trim offers, wherever a flush is offered, one at which the arch's occasional
    mm_cpumask trim is due: more transitions, no invariant broken."""
    cfg = PRESETS[name]
    plain = explore(cfg, 2, BOUND, depth=7)
    r = explore(cfg, 2, replace(BOUND, trim=True), depth=7)
    assert r.violations == [] and r.transitions > plain.transitions


def test_exploring_leaves_no_cyclic_garbage() -> None:
    """explore() runs with the cyclic collector off: states, machines and the violations kept
    with --keep-going must be freed by reference counting alone."""
    cfg = replace(PRESETS["linux-6.17-x86_64"], mutants=frozenset({"no-lazy-drop"}))
    gc.collect()
    gc.disable()
    try:
        r = explore(cfg, 2, BOUND, depth=6, keep_going=True)
        assert r.violations and gc.isenabled() is False
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_alpha_kthread_use_mm_finding_is_reached_by_the_explorer() -> None:
    r = explore(PRESETS["alpha"], 2, replace(BOUND, hotplug=False), depth=9)
    assert [v.kind for v in r.violations] == ["use-after-free"]
    assert any(name == "kthread_use_mm" for name, _ in r.violations[0].ops)


@pytest.mark.parametrize("mutant", ["no-lazy-drop", "shootdown-skips-cpu", "use-no-grab"])
def test_symmetry_reduction_keeps_verdicts_and_shrinks_the_space(mutant: str) -> None:
    cfg = mutant_config(mutant)
    reduced = explore(cfg, 2, BOUND, depth=7)
    full = explore(cfg, 2, BOUND, depth=7, symmetry=False)
    assert [len(v.ops) for v in reduced.violations] == [len(v.ops) for v in full.violations]
    clean = PRESETS["linux-6.17-x86_64"]
    a = explore(clean, 2, BOUND, depth=6)
    b = explore(clean, 2, BOUND, depth=6, symmetry=False)
    assert a.violations == b.violations == []
    assert a.states < b.states


def _mirror(swap: bool) -> Machine:
    c0, c1 = (1, 0) if swap else (0, 1)
    m = Machine(PRESETS["linux-6.17-x86_64"])
    m.boot(2)
    m.schedule(c0, "init")
    m.exec("init")
    m.fork("init", name="a")
    m.schedule(c1, "a")
    m.schedule(c1, "kthreadd")
    return m


def test_canonical_form_is_equal_for_isomorphic_states_only() -> None:
    # The same history with the CPUs' roles swapped: isomorphic states.
    assert canonical(_mirror(False).state) == canonical(_mirror(True).state)
    # Without reduction they differ.
    assert canonical(_mirror(False).state, False) != canonical(_mirror(True).state, False)
    # A genuinely different state (a lazy reference on another mm) differs.
    other = _mirror(False)
    other.schedule(0, "swapper/0")
    assert canonical(other.state) != canonical(_mirror(False).state)


def _walk(preset: str, cpus: int, seed: int, steps: int) -> KernelState:
    """The state after `steps` operations drawn at random among the enabled ones."""
    rng = random.Random(seed)
    m = Machine(PRESETS[preset])
    m.boot(cpus)
    for _ in range(steps):
        ops = enabled(m, Limits(max_holders=2, text_poke=True))
        apply(m, rng.choice(ops))
    return m.state


def _renamed(state: KernelState, seed: int) -> KernelState:
    """An isomorphic copy: CPUs permuted, every pid (but init's and the idle tasks' 0), mm id
    and x86 context id renumbered. The lists keep their order."""
    rng = random.Random(seed)
    s = clone_state(state)
    n = len(s.rqs)
    perm = rng.sample(range(n), n)  # old CPU -> new CPU
    pids = sorted({t.pid for t in s.tasks} - {0, 1})
    new_pid = dict(zip(pids, rng.sample(range(100, 200), len(pids)), strict=True))
    new_pid |= {0: 0, 1: 1}
    ids = {mm.context.ctx_id for mm in s.mms} | {c.ctx_id for rq in s.rqs for c in rq.tlb.ctxs}
    ctx = dict(zip(sorted(ids), rng.sample(range(500, 600), len(ids)), strict=True))
    for t in s.tasks:
        t.pid, t.tgid = new_pid[t.pid], new_pid.get(t.tgid, t.tgid)
        t.cpu = None if t.cpu is None else perm[t.cpu]
    for mm in s.mms:
        if not mm.is_init_mm:
            mm.id += 1000
        mm.mm_cpumask = {perm[c] for c in mm.mm_cpumask}
        mm.context.ctx_id = ctx[mm.context.ctx_id]
        mm.context.asn = {perm[c]: a for c, a in mm.context.asn.items()}
    for rq in s.rqs:
        rq.cpu = perm[rq.cpu]
        rq.tlb.ctxs = [TlbContext(ctx[c.ctx_id], c.tlb_gen) for c in rq.tlb.ctxs]
    s.rqs.sort(key=lambda rq: rq.cpu)
    return s


@settings(max_examples=60, deadline=None)
@given(
    preset=st.sampled_from(
        [
            "linux-6.17-x86_64",
            "linux-6.1-x86_64",
            "alpha",
            "linux-6.17-powerpc-radix",
            "linux-6.17-shootdown",
        ]
    ),
    cpus=st.integers(1, 3),
    seed=st.integers(0, 10**6),
    steps=st.integers(0, 25),
)
def test_canonical_form_ignores_names_and_cpu_numbers(
    preset: str, cpus: int, seed: int, steps: int
) -> None:
    """States equal up to renaming CPUs, pids, mm ids and x86 context ids have one canonical
    form; without symmetry reduction a renaming that moves anything is seen."""
    state = _walk(preset, cpus, seed, steps)
    renamed = _renamed(state, seed)
    alpha = PRESETS[preset].arch == "alpha"
    assert canonical(renamed, True, alpha) == canonical(state, True, alpha)
    if any(mm.id for mm in state.mms):  # some mm besides init_mm got renumbered
        assert canonical(renamed, False, alpha) != canonical(state, False, alpha)


def test_explore_cli_writes_a_counterexample_that_run_replays(tmp_path: Path) -> None:
    out = tmp_path / "cex.toml"
    r = cli("explore", "--mutant", "no-lazy-grab", "-o", str(out), "--json")
    assert r.returncode == 1, r.stderr
    summary = json.loads(r.stdout)
    assert summary["violations"][0]["kind"] == "refcount mismatch"
    assert {"states", "transitions", "max_depth", "violations", "seconds"} <= set(summary)
    replay = cli("run", str(out))
    assert replay.returncode == 1 and "refcount mismatch" in replay.stderr


def test_explore_settings_go_into_the_counterexample(tmp_path: Path) -> None:
    """INVLPGB gives an mm a global ASID when it runs on more than 3 CPUs: never on 2, so
    explore says how to reach them (--set), the mutant that ends a transition without its
    IPI is caught then, and the counterexample's [config] table keeps the setting: `run`
    replays the stale TLB with it, and the same steps under the kernel's threshold are clean
    (no mm ever gets a global ASID there)."""
    inv = "linux-6.17-x86_64-invlpgb"
    args = ("explore", "-p", inv, "-m", "invlpgb-no-transition-ipi", "--json")
    without = cli(*args, "--depth", "6")
    assert without.returncode == 0, without.stderr
    assert "--set global_asid_threshold=1 or lower" in without.stderr
    out = tmp_path / "cex.toml"
    found = cli(*args, "--set", "global_asid_threshold=0", "-o", str(out))
    assert found.returncode == 1, found.stderr
    summary = json.loads(found.stdout)
    assert summary["settings"] == {"global_asid_threshold": 0}
    assert summary["violations"][0]["kind"] == "stale TLB"
    text = out.read_text()
    assert "\n[config]\nglobal_asid_threshold = 0\n" in text
    replay = cli("run", str(out))
    assert replay.returncode == 1 and "stale TLB" in replay.stderr
    plain = tmp_path / "plain.toml"
    plain.write_text(text.replace("[config]\nglobal_asid_threshold = 0\n", ""))
    assert cli("run", str(plain)).returncode == 0
    again = cli("run", str(plain), "--set", "global_asid_threshold=0")
    assert again.returncode == 1 and "stale TLB" in again.stderr


def test_explore_says_which_option_a_mutant_needs(tmp_path: Path) -> None:
    """An error-path mutant is out of reach without --failures: explore says so on stderr
    (and finds nothing); with it, the shortest counterexample is init's failed first exec,
    which leaks bprm->mm, and `activemm run` replays it to the same leak."""
    note = "note: mutant bprm-no-mmput breaks a path explored only with --failures"
    without = cli("explore", "-m", "bprm-no-mmput", "--depth", "4", "--json")
    assert without.returncode == 0 and note in without.stderr
    out = tmp_path / "cex.toml"
    found = cli("explore", "-m", "bprm-no-mmput", "--failures", "-o", str(out), "--json")
    assert found.returncode == 1 and note not in found.stderr
    (violation,) = json.loads(found.stdout)["violations"]
    assert violation["kind"] == "leak" and violation["ops"][-1] == "failed_exec(task=init[1])"
    replay = cli("run", str(out))
    assert replay.returncode == 1 and "BUG: activemm-sanitizer: leak" in replay.stderr


@pytest.mark.parametrize("mutant", ["no-lazy-drop", "exit-mmput-before-lazy"])
def test_worker_processes_find_the_same_shortest_counterexample_length(
    mutant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--jobs: the layers are shared out between forked workers (here from the second layer
    on); BFS order still makes the counterexample a shortest one, and it replays
    (replay_counterexample checks it)."""
    monkeypatch.setattr(parallel, "PREFIX", 1)
    cfg = mutant_config(mutant)
    one = explore(cfg, 2, BOUND, depth=MUTANT_DEPTH)
    two = explore(cfg, 2, BOUND, depth=MUTANT_DEPTH, jobs=2)
    assert [(v.kind, len(v.ops)) for v in two.violations] == [
        (v.kind, len(v.ops)) for v in one.violations
    ]


def test_worker_processes_explore_the_same_space_whatever_the_timing() -> None:
    """With two workers: the same transitions out of every layer up to ties the canonical
    form leaves (a handful of isomorphic states kept twice), and the same numbers on every
    run, since which worker keeps a state both found never depends on which got there
    first."""
    cfg = PRESETS["linux-6.17-x86_64"]
    bound = replace(BOUND, hotplug=False)
    one = explore(cfg, 2, bound, depth=7)
    runs = [explore(cfg, 2, bound, depth=7, jobs=2) for _ in range(2)]
    assert runs[0].to_dict() | {"seconds": 0} == runs[1].to_dict() | {"seconds": 0}
    two = runs[0]
    assert two.violations == [] and two.max_depth == one.max_depth == 7
    assert two.complete is one.complete is False
    assert one.states <= two.states <= one.states * 1.002
    assert one.transitions <= two.transitions <= one.transitions * 1.002


def test_states_at_the_depth_bound_are_looked_at_and_dropped() -> None:
    """The last layer, the largest, is never kept: while it is explored no more states are
    alive than those above the bound (plus the children of the state being expanded). It is
    still looked at: a bound one past the deepest state leaves the run exhausted, a bound at
    the deepest state does not (states there can still move), with the same states, in one
    process or two."""
    cfg = PRESETS["linux-6.17"]
    bound = Limits(
        max_tasks=5, processes=1, threads=0, kthreads=1, execs=1, holders=False, hotplug=False
    )
    peak = 0

    def progress(result: object, depth: int) -> None:
        nonlocal peak
        peak = max(peak, sum(isinstance(o, KernelState) for o in gc.get_objects()))

    above = explore(cfg, 2, bound, depth=6).states
    last = explore(cfg, 2, bound, depth=7, progress=progress)
    assert last.states > 2 * above  # the last layer is the largest
    assert peak <= above + 20
    full = explore(cfg, 2, bound, depth=10_000)
    assert full.complete and full.max_depth > 7
    for jobs in (1, 2):
        past = explore(cfg, 2, bound, depth=full.max_depth + 1, jobs=jobs)
        at = explore(cfg, 2, bound, depth=full.max_depth, jobs=jobs)
        assert past.complete and not at.complete
        assert past.states == at.states and past.max_depth == at.max_depth == full.max_depth
        assert abs(past.states - full.states) <= full.states // 500  # two workers: ties, see above


def test_explore_cli_jobs_gives_the_same_verdict() -> None:
    """`activemm explore -j 2`: the summary says how many processes shared the work, and a
    clean preset explored to the same depth has no violation either way."""

    def run(*extra: str) -> dict[str, object]:
        r = cli("explore", "--depth", "7", "--json", *extra, timeout=300)
        assert r.returncode == 0, r.stderr
        return dict(json.loads(r.stdout))

    one, two = run(), run("-j", "2")
    assert one["jobs"] == 1 and two["jobs"] == 2
    assert one["violations"] == two["violations"] == []
    assert one["max_depth"] == two["max_depth"] == 7
    assert abs(int(str(one["states"])) - int(str(two["states"]))) <= int(str(one["states"])) // 500


@pytest.mark.parametrize("name", ["linux-6.1-x86_64", "linux-6.17-x86_64"])
def test_text_poke_interleaved_with_everything_breaks_nothing(name: str) -> None:
    """x86 text_poke on any CPU at any point (explore --text-poke): its leave_mm, the
    poking_mm's ASID slot and the way back never break an invariant; its mm is never offered
    to kthread_use_mm or an external holder."""
    r = explore(PRESETS[name], 2, replace(BOUND, text_poke=True), depth=6)
    assert r.violations == [] and r.states > 500


@pytest.mark.parametrize("name", ["linux-6.1-x86_64", "linux-6.12-x86_64", "linux-6.17-x86_64"])
def test_efi_calls_interleaved_with_everything_break_nothing(name: str) -> None:
    """x86 EFI runtime calls by a kernel thread on any CPU at any point (explore --efi):
    before 6.15 the thread's active_mm is efi_mm for the call and its CPU comes back to the
    borrowed mm out of lazy mode, which no later switch, flush, exit or hotplug step turns
    into a use-after-free or a count error; 6.15+ goes through use_temporary_mm(). Calls are
    explored (efi_mm appears) and its mm is offered to no one."""
    r = explore(PRESETS[name], 2, replace(BOUND, efi=True), depth=6)
    assert r.violations == [] and r.states > 500
    plain = explore(PRESETS[name], 2, BOUND, depth=6)
    assert r.states > plain.states


@pytest.mark.parametrize(
    "name", ["linux-6.1-x86_64", "linux-6.17-shootdown", "linux-6.17-powerpc-radix", "alpha"]
)
def test_failing_forks_and_execs_interleaved_with_everything_break_nothing(name: str) -> None:
    """explore --failures: a fork failing after copy_mm() and an exec failing after
    alloc_bprm(), from any running user task at any point (init before its first exec
    included), leave every count as the kernel's rules say and leak nothing; and they are
    really explored (more transitions than without them)."""
    cfg = PRESETS[name]
    bound = replace(BOUND, failures=True, kthread_use_mm=cfg.arch != "alpha")
    r = explore(cfg, 2, bound, depth=6)
    assert r.violations == [] and r.states > 500
    without = explore(cfg, 2, replace(bound, failures=False), depth=6)
    assert r.transitions > without.transitions


@pytest.mark.parametrize("name", ["linux-6.1-x86_64-rt", "linux-6.12-x86_64-rt"])
def test_exec_preempted_inside_exec_mmap_interleaved_with_everything_breaks_nothing(
    name: str,
) -> None:
    """explore --exec-preemption on PREEMPT_RT: an exec stopped between tsk->mm = new and
    activate_mm(), its task preempted there (kernel threads borrowing the new mm on a CPU
    still running the old page tables, a hotplug refused, the task kept on its CPU) and
    resumed later, leaves every count as the kernel's rules say; it is really explored (more
    states than without it), and such a state is reached: a kernel thread borrowing an mm
    its CPU has not loaded, beside a task preempted inside exec_mmap()."""
    cfg = PRESETS[name]
    bound = replace(BOUND, exec_preemption=True)
    r = explore(cfg, 2, bound, depth=7)
    assert r.violations == [] and r.states > 500
    without = explore(cfg, 2, replace(bound, exec_preemption=False), depth=7)
    assert r.states > without.states
    # walk the same space by hand to the interleaving itself
    m = Machine(cfg)
    m.boot(2)
    for o in (
        ("schedule", {"cpu": 0, "next": "init[1]"}),
        ("exec", {"task": "init[1]", "preempted": True}),
        ("schedule", {"cpu": 0, "next": "swapper/0"}),
    ):
        assert (o[0], tuple(o[1].items())) in enabled(m, bound), o
        apply(m, (o[0], tuple(o[1].items())))
    init = m.task(1)
    assert m.state.rqs[0].tlb.loaded_mm is not m.state.rqs[0].curr.active_mm
    assert m.state.rqs[0].curr.active_mm is init.mm and init.in_exec_mmap is not None
    moves = enabled(m, bound)
    assert ("schedule", (("cpu", 1), ("next", "init[1]"))) not in moves
    assert not any(o[0] == "cpu_down" and dict(o[1])["cpu"] == 0 for o in moves)


def test_explore_cli_exec_preemption_flag() -> None:
    """--exec-preemption is recorded in the bound; on a preset whose exec_mmap() cannot be
    preempted it says it explores nothing more, and explores the same space."""
    rt = cli("explore", "-p", "linux-6.1-x86_64-rt", "--exec-preemption", "--depth", "4", "--json")
    assert rt.returncode == 0, rt.stderr
    assert json.loads(rt.stdout)["bound"]["exec_preemption"] is True
    plain = cli("explore", "--exec-preemption", "--depth", "3", "--json")
    assert plain.returncode == 0 and "--exec-preemption explores nothing more" in plain.stderr
    without = cli("explore", "--depth", "3", "--json")
    assert json.loads(plain.stdout)["states"] == json.loads(without.stdout)["states"]
