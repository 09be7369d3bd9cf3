"""Every example runs under every preset with a clean sanitizer; the expectations written in
the files (derived by hand for their preset) hold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from activemm import PRESETS
from activemm import scenario as scen
from activemm.errors import ActiveMmError
from activemm.sanitizer import Sanitizer

from .helpers import EXAMPLES, ROOT


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_clean(path: Path, preset: str) -> None:
    """Every example runs under every preset; one that needs PREEMPT_RT (an exec preempted
    inside exec_mmap()) is refused by the others, with the reason, at that step."""
    sc = scen.load(path)
    cfg = PRESETS[preset]
    rt_only = any(s.args.get("preempted") and s.op == "exec" for s in sc.steps)
    if rt_only and not cfg.PREEMPT_RT:
        with pytest.raises(ActiveMmError, match="needs PREEMPT_RT"):
            list(scen.run(sc, cfg, [Sanitizer(cfg)]))
        return
    steps = list(scen.run(sc, cfg, [Sanitizer(cfg)]))
    assert len(steps) == len(sc.steps) + 1


def test_examples_have_expectations_for_their_preset() -> None:
    for path in EXAMPLES:
        sc = scen.load(path)
        assert sc.preset in PRESETS, path
        assert any(s.expect for s in sc.steps), f"{path} checks nothing"


def test_demo_scenario_is_the_zombie_example() -> None:
    builtin = ROOT / "src" / "activemm" / "scenarios" / "seed.toml"
    assert builtin.read_text() == (ROOT / "examples" / "04_zombie_mm.toml").read_text()


def test_zombie_json_shows_the_free_when_the_lazy_user_switches_away() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "activemm",
            "run",
            str(ROOT / "examples/04_zombie_mm.toml"),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    steps = [json.loads(line) for line in out.splitlines()]
    freed = [
        (s["step"], e)
        for s in steps
        for e in s["events"]
        if e["event"] == "MmFreed" and e["mm"] == "mm2"
    ]
    assert len(freed) == 1
    step_no, ev = freed[0]
    step = steps[step_no]
    # Independently of the model: the free happens in the step where CPU 0's current task
    # (the lazy holder, a task without an mm) is switched out for a task with an mm.
    switch = next(e for e in step["events"] if e["event"] == "ContextSwitch")
    assert switch["case"] == "kernel->user" and switch["cpu"] == 0
    assert ev["cpu"] == 0 and ev["reason"] == "finish_task_switch"
    before = steps[step_no - 1]
    cpu0 = before["cpus"][0]
    assert cpu0["lazy"] and cpu0["active_mm"] == "mm2"
    mm2 = next(m for m in before["mms"] if m["mm"] == "mm2")
    assert mm2["status"] == "zombie" and mm2["mm_count"] == 1
    # and not earlier: in no earlier step is mm2 freed.
    assert all(
        m["status"] != "freed" for s in steps[:step_no] for m in s["mms"] if m["mm"] == "mm2"
    )
