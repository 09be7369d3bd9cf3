"""activemm validate: the model scored against real kernels (tests/data/captures)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from activemm.cli import app
from activemm.model.config import preset
from activemm.trace.events import Probe
from activemm.trace.readers import read_trace
from activemm.validate import core, validate
from activemm.validate import kernel as kv

CAPTURES = Path(__file__).parent / "data" / "captures"
ALL = sorted(p for p in CAPTURES.iterdir() if p.is_dir())
PLAIN = [p for p in ALL if "iouring" not in p.name]
WINDOWS = ("exit window", "exec window")


def test_the_captures_cover_both_kernels_and_several_cpu_counts() -> None:
    metas = [json.loads((p / "meta.json").read_text()) for p in ALL]
    assert len(PLAIN) >= 4
    assert {m["kernel"].split(".")[:2][1] for m in metas} >= {"1", "12"}
    assert len({m["cpus"] for m in metas}) >= 3
    for p, m in zip(ALL, metas, strict=True):
        assert (p / "trace.txt.gz").stat().st_size < 1_000_000
        assert not m["lost_events"]


def _kernel_counts(path: Path) -> tuple[int, int]:
    """sched_switch and __mmdrop lines, counted in the text without the code under test."""
    switches = drops = 0
    with gzip.open(path / "trace.txt.gz", "rt") as f:
        for line in f:
            switches += " sched_switch: " in line
            drops += "(__mmdrop+" in line
    return switches, drops


@pytest.mark.parametrize("capture", PLAIN, ids=lambda p: p.name)
def test_markers_match_every_switch_and_mmdrop(capture: Path) -> None:
    r = validate(capture)
    switches, drops = _kernel_counts(capture)
    assert r.inputs == "markers"
    assert r.preset == ("linux-6.1-x86_64" if "6.1-" in capture.name else "linux-6.12-x86_64")
    assert r.context_switches.total == switches
    assert r.context_switches.matched == switches
    assert r.mmdrop.total == drops and r.mmdrop.matched == drops
    assert "unexplained" not in r.causes


@pytest.mark.parametrize("capture", PLAIN, ids=lambda p: p.name)
def test_sched_inputs_match_mmdrops_and_tag_every_missed_switch(capture: Path) -> None:
    r = validate(capture, inputs="sched")
    assert r.mmdrop.matched == r.mmdrop.total
    assert r.context_switches.matched >= 0.99 * r.context_switches.total
    for m in r.mismatches:
        if m["group"] == "context_switch":
            assert m["cause"].startswith(WINDOWS), m


def test_io_uring_misses_are_the_reference_it_holds() -> None:
    """io_uring pins the mm (ctx->mm_account) and a kworker drops it: no input says so."""
    r = validate(CAPTURES / "linux-6.12-smp2-iouring")
    assert r.context_switches.matched == r.context_switches.total
    missed = [m for m in r.mismatches if m["group"] == "mmdrop"]
    assert missed and all(m["cause"] == core.HELD_OUTSIDE for m in missed)


@pytest.mark.parametrize(
    ("preset_name", "mutant"),
    [("no-lazy", None), ("linux-6.1-x86_64", "no-lazy-grab"), ("linux-6.1-x86_64", "no-lazy-drop")],
)
def test_broken_models_score_well_under_full_marks(preset_name: str, mutant: str | None) -> None:
    capture = CAPTURES / "linux-6.1-smp2-lazy"
    cfg = preset(preset_name)
    cfg = cfg.with_mutants(mutant) if mutant else cfg
    r = validate(capture, config=cfg)
    worst = min(
        r.context_switches.matched / r.context_switches.total, r.mmdrop.matched / r.mmdrop.total
    )
    assert worst < 0.9


def test_probe_lines_are_recognised_by_function_whatever_the_offset(tmp_path: Path) -> None:
    lines = [
        "# tracer: nop",
        "  cat-141 (  141) [001] d..1.  7.034855: mmswitch: (switch_mm_irqs_off+0x0/0x470) "
        "prev=0xffff888004862d00 next=0xffff888005f60900 tsk=0x0 t_pid=0 t_flags=0x0 t_mm=0x0 "
        "t_active_mm=0x0 t_comm=(fault)",
        "  cat-150 (  150) [000] d..1.  7.034900: foo: (switch_mm_irqs_off+0x4/0x500) prev=0x0 "
        "next=0xffffffff82d69140 tsk=0x0 t_pid=0 t_flags=0x0 t_mm=0x0 t_active_mm=0x0 "
        "t_comm=(fault)",
        "  init-1 (  1) [000] d..2.  7.035000: lazytlb: (enter_lazy_tlb+0x0/0x30) "
        "mm=0xffff888004861680 tsk=0xffffffff82a1aa40 t_pid=0 t_flags=0x4200002 t_mm=0x0 "
        't_active_mm=0x0 t_comm="swapper/0"',
        "  init-1 (  1) [001] .....  7.036000: mminit: (copy_process+0x1930/0x1ae0 <- mm_init) "
        "ret=0xffff888005f60480",
    ]
    path = tmp_path / "probes.txt"
    path.write_text("\n".join(lines) + "\n")
    probes = [e for e in read_trace(str(path)) if isinstance(e, Probe)]
    assert [p.function for p in probes] == [
        "switch_mm_irqs_off", "switch_mm_irqs_off", "enter_lazy_tlb", "mm_init"
    ]  # fmt: skip
    assert [kv.outside_kind(p) for p in probes[:3]] == [
        "activate_mm", "flush_to_init_mm", "enter_lazy_tlb"
    ]  # fmt: skip
    assert kv.address(probes[3].args["ret"]) == 0xFFFF888005F60480
    assert kv.is_init_mm(0xFFFFFFFF82D69140) and not kv.is_init_mm(0xFFFF888004861680)


def test_the_command_exit_status_and_json() -> None:
    runner = CliRunner()
    good = runner.invoke(app, ["validate", str(CAPTURES / "linux-6.1-smp2-lazy"), "--json"])
    assert good.exit_code == 0, good.output
    d = json.loads(good.output)
    assert set(d) >= {"trace", "preset", "inputs", "kernel", "context_switches", "mmdrop",
                      "outside_schedule", "mismatches"}  # fmt: skip
    assert d["kernel"].startswith("6.1.")
    bad = runner.invoke(app, ["validate", str(CAPTURES / "linux-6.1-smp2-lazy"), "-p", "no-lazy"])
    assert bad.exit_code == 1


def test_a_trace_without_probes_is_refused(tmp_path: Path) -> None:
    from activemm.errors import ActiveMmError

    plain = tmp_path / "t.txt"
    plain.write_text(
        "  <idle>-0 [000] d..2. 1.0: sched_switch: prev_comm=swapper/0 prev_pid=0 prev_prio=120 "
        "prev_state=R ==> next_comm=a next_pid=5 next_prio=120\n"
    )
    with pytest.raises(ActiveMmError, match="no kprobes"):
        validate(plain)
