"""The command line: user mistakes are one line on stderr with exit status 2, never a
traceback; violations are KASAN-style reports with exit status 1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import ROOT


def activemm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "activemm", *args], capture_output=True, text=True, timeout=120
    )


def write(tmp_path: Path, body: str) -> str:
    p = tmp_path / "s.toml"
    p.write_text(body)
    return str(p)


BASE = 'cpus = 2\n[[step]]\nop = "schedule"\ncpu = 0\nnext = "init"\n'


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (BASE + '[[step]]\nop = "teleport"\n', "step 2: unknown operation 'teleport'"),
        (BASE + '[[step]]\nop = "exec"\ntask = "nosuch"\n', "step 2: no task 'nosuch'"),
        (BASE + '[[step]]\nop = "exec"\n', "step 2: exec needs task"),
        (BASE + '[[step]]\nop = "exec"\ntask = "init"\ncolour = 1\n', "exec takes no 'colour'"),
        (BASE + '[[step]]\nop = "kthread_use_mm"\ntask = "init"\nmm = "mm1"\n', "no mm 'mm1'"),
        (
            BASE + '[[step]]\nop = "exec"\ntask = "init"\n'
            '[[step]]\nop = "kthread_use_mm"\ntask = "init"\nmm = "mm1"\n',
            "step 3: kthread_use_mm: init[1] is not a kernel thread",
        ),
        (
            BASE + '[[step]]\nop = "exec"\ntask = "init"\n[[step]]\nop = "fork"\nparent = "init"\n'
            'name = "a"\n[[step]]\nop = "schedule"\ncpu = 1\nnext = "a"\n'
            '[[step]]\nop = "exit"\ntask = "a"\n[[step]]\nop = "exec"\ntask = "a"\n',
            "step 6: exec: a[3] has exited",
        ),
        (
            BASE + '[[step]]\nop = "exec"\ntask = "init"\n[[step]]\nop = "fork"\nparent = "init"\n'
            'name = "a"\n[[step]]\nop = "schedule"\ncpu = 1\nnext = "a"\n'
            '[[step]]\nop = "exit"\ntask = "a"\n[[step]]\nop = "schedule"\ncpu = 1\n'
            'next = "swapper/1"\n[[step]]\nop = "schedule"\ncpu = 0\nnext = "a"\n',
            "step 7: schedule: a[3] is dead",
        ),
        (BASE + "[config]\nasids = 4\n", "[config]: unknown setting 'asids'"),
        (BASE + '[config]\nnr_dyn_asids = "4"\n', "[config]: nr_dyn_asids must be a whole"),
        ("cpus = [\n", "not valid TOML"),
        ("cpus = 0\n", "cpus must be an integer from 1 to 64"),
        (
            BASE + '[[step]]\nop = "schedule"\ncpu = "zero"\nnext = "init"\n',
            "cpu must be an integer",
        ),
    ],
)
def test_bad_scenarios_are_one_line_errors(tmp_path: Path, body: str, message: str) -> None:
    path = write(tmp_path, body)
    r = activemm("run", path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert message in lines[0] and path in lines[0]


def test_missing_file_and_unknown_preset(tmp_path: Path) -> None:
    r = activemm("run", str(tmp_path / "nope.toml"))
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr
    r = activemm("run", str(ROOT / "examples/04_zombie_mm.toml"), "--preset", "linux-9.9")
    assert r.returncode == 2 and "unknown preset 'linux-9.9'" in r.stderr
    r = activemm("run", str(ROOT / "examples/04_zombie_mm.toml"), "--mutant", "typo")
    assert r.returncode == 2 and "unknown mutant 'typo'" in r.stderr


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("colour=3", "unknown setting 'colour'"),
        ("nr_dyn_asids", "--set nr_dyn_asids: expected NAME=N"),
        ("nr_dyn_asids=six", "--set nr_dyn_asids=six: expected NAME=N"),
        ("nr_dyn_asids=0", "nr_dyn_asids and alpha_max_asn must be at least 1"),
        ("global_asid_threshold=0", "applies only with INVLPGB, which linux-6.17-x86_64"),
    ],
)
def test_bad_settings_are_one_line_errors(setting: str, message: str) -> None:
    r = activemm("run", str(ROOT / "examples/04_zombie_mm.toml"), "--set", setting)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr


GLOBAL_ASID = """cpus = 2
preset = "linux-6.17-x86_64-invlpgb"

[config]
global_asid_threshold = 0

[[step]]
op = "schedule"
cpu = 0
next = "init"

[[step]]
op = "exec"
task = "init"

[[step]]
op = "schedule"
cpu = 1
next = "kthreadd"

[[step]]
op = "kthread_use_mm"
task = "kthreadd"
mm = "mm1"

[[step]]
op = "fork"
parent = "init"
name = "child"
expect = { "mm1.global_asid" = WANT }
"""


def test_a_scenarios_expectations_hold_for_its_own_settings(tmp_path: Path) -> None:
    """A scenario's [config] table sets the threshold; its expectations are checked with it
    (the fork's flush of mm1, loaded on two CPUs, gives it global ASID 6, the first after
    the six dynamic ones) and not under other settings, where they need not hold."""
    good = write(tmp_path, GLOBAL_ASID.replace("WANT", "6"))
    assert activemm("run", good, "-q").returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text(GLOBAL_ASID.replace("WANT", "7"))
    r = activemm("run", str(bad), "-q")
    assert r.returncode != 0 and "expected mm1.global_asid = 7, got 6" in r.stderr
    other = activemm("run", str(bad), "-q", "--set", "global_asid_threshold=3")
    assert other.returncode == 0, other.stderr


def test_unknown_option_is_a_usage_error() -> None:
    r = activemm("run", "--frobnicate")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_version_is_the_installed_packages() -> None:
    from importlib.metadata import version

    r = activemm("--version")
    assert r.returncode == 0 and r.stdout.split() == ["activemm", version("activemm")]


def test_violation_report_and_exit_status() -> None:
    r = activemm("run", str(ROOT / "examples/04_zombie_mm.toml"), "--mutant", "no-lazy-drop")
    assert r.returncode == 1
    assert "BUG: activemm-sanitizer: refcount mismatch" in r.stderr
    assert "the operations that led here:" in r.stderr


def test_violation_in_json_mode_is_the_last_line() -> None:
    r = activemm(
        "run",
        str(ROOT / "examples/04_zombie_mm.toml"),
        "--json",
        "-p",
        "linux-6.17-shootdown",
        "--mutant",
        "no-shootdown",
    )
    assert r.returncode == 1
    last = json.loads(r.stdout.splitlines()[-1])
    assert last["violation"]["kind"] == "use-after-free"


def test_demo_and_presets() -> None:
    r = activemm("demo")
    assert r.returncode == 0 and "sanitizer clean" in r.stdout
    r = activemm("presets", "--json")
    data = json.loads(r.stdout)
    assert {"linux-6.17", "linux-6.17-shootdown", "linux-2.3.13", "no-lazy"} <= set(data)
    r = activemm("presets", "linux-6.17-powerpc-radix", "--json")
    opts = json.loads(r.stdout)
    assert opts["MMU_LAZY_TLB_SHOOTDOWN"] is True and opts["MMU_LAZY_TLB_REFCOUNT"] is False
    assert activemm("mutants").returncode == 0


def test_explain_shows_kernel_path_case_comment_and_changes() -> None:
    r = activemm("explain", str(ROOT / "examples/02_context_switch_cases.toml"))
    assert r.returncode == 0, r.stderr
    for comment in (
        "user -> user switch",
        "user -> kernel lazy + mmgrab_lazy_tlb() active",
        "kernel -> kernel lazy + transfer active",
        "kernel -> user switch + mmdrop_lazy_tlb() active",
    ):
        assert comment in " ".join(r.stdout.split()), comment
    r = activemm("explain", str(ROOT / "examples/04_zombie_mm.toml"), "--step", "13")
    text = " ".join(r.stdout.split())
    assert "step 13:" in text and "step 12:" not in text
    assert "__mmdrop(mm2 (app)) on CPU 0, from finish_task_switch" in text
    assert "mm_count 1 0" in text and "zombie freed" in text
    r = activemm("explain", str(ROOT / "examples/04_zombie_mm.toml"), "--step", "99")
    assert r.returncode == 2 and "there is no step 99" in r.stderr
    # PREEMPT_RT: the task preempted inside exec_mmap() still holds its old mm (mm2)
    r = activemm("explain", str(ROOT / "examples/15_rt_exec_preempted.toml"), "--step", "7")
    text = " ".join(r.stdout.split())
    assert r.returncode == 0 and "exec_mmap - before activate_mm, holding mm2" in text, text
