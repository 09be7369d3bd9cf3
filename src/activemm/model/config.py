"""Kernel configurations: the Kconfig options and kernel version the model follows.

Option names are the Kconfig names. A preset is a named, documented configuration; `PRESETS`
lists them. A mutant is a deliberately broken variant of one kernel rule, for showing that the
sanitizer and the checker catch real refcount bugs (`MUTANTS` names each and says where).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from activemm.errors import ConfigError

ARCHES = ("generic", "x86_64", "powerpc", "alpha")

# Each mutant is one switch in one kernel function. The key is what `--mutant` takes.
MUTANTS: dict[str, str] = {
    "no-lazy-grab": "context_switch(): user->kernel case skips mmgrab_lazy_tlb(prev->active_mm)",
    "no-lazy-drop": "finish_task_switch(): skips mmdrop_lazy_tlb_sched(rq->prev_mm)",
    "kernel-to-kernel-grab": "context_switch(): kernel->kernel case grabs again instead of "
    "handing the CPU's lazy reference on",
    "exec-keeps-lazy-ref": "exec_mmap(): a task without an mm does not drop its borrowed "
    "active_mm (missing mmdrop_lazy_tlb)",
    "exit-mmput-before-lazy": "exit_mm(): mmput() before the task becomes a lazy user "
    "(mmgrab_lazy_tlb + enter_lazy_tlb)",
    "unuse-no-lazy-grab": "kthread_unuse_mm(): forgets mmgrab_lazy_tlb(mm) before dropping "
    "the use reference",
    "use-no-grab": "kthread_use_mm(): forgets mmgrab(mm)",
    "mmput-no-drop": "__mmput(): does not drop the real users' share of mm_count "
    "(1999 rule: mm_count counts lazy users plus one while any real user exists)",
    "users-share-not-counted": "mm_init(): mm_count starts at 0, not counting the real "
    "users' share",
    "shootdown-skips-cpu": "cleanup_lazy_tlbs(): the shootdown IPI misses the highest CPU in "
    "mm_cpumask",
    "no-shootdown": "cleanup_lazy_tlbs(): does nothing although MMU_LAZY_TLB_SHOOTDOWN=y",
    "x86-no-tlb-gen-catchup": "x86 switch_mm_irqs_off(): a CPU back from lazy mode on the same "
    "mm skips the tlb_gen check, keeping stale TLB entries",
    "text-poke-no-leave-mm": "x86 use_temporary_mm(): skips leave_mm() on a lazy CPU, which "
    "comes back to its borrowed mm no longer lazy (the 2020 Xen PV bug)",
    "invlpgb-no-transition-ipi": "x86 finish_asid_transition() (INVLPGB): ends an mm's move "
    "to its global ASID without the IPI that moves a CPU still running it on a dynamic ASID, "
    "whose TLB the broadcast flush did not reach",
    "fork-cleanup-no-mmput": "copy_process(): the bad_fork_cleanup_mm error path forgets "
    "mmput() of the child's mm (dup_mm()'s copy, or the mm_users a thread took)",
    "bprm-no-mmput": "free_bprm(): an exec failing before exec_mmap() forgets "
    "mmput(bprm->mm), the new mm alloc_bprm() allocated",
}


# The model's sizes and thresholds that a preset fixes as the kernel does and a user may set
# (`--set NAME=N`, a scenario's [config] table) to study a small system: what each is.
KNOBS: dict[str, str] = {
    "nr_dyn_asids": "x86 TLB_NR_DYN_ASIDS, the per-CPU ASID slots (6)",
    "alpha_max_asn": "alpha HARDWARE_ASN_MASK, the largest ASN before a rollover (127)",
    "global_asid_threshold": "x86 INVLPGB: an mm gets a global ASID when running on more "
    "than this many CPUs at an IPI flush (3)",
}


def knob_problem(name: str, value: object) -> str | None:
    """What is wrong with setting `name` to `value`, or None: the one check of a setting,
    wherever it comes from (a scenario's [config], `--set`, with_knobs())."""
    if name not in KNOBS:
        return f"unknown setting {name!r}; expected one of {', '.join(KNOBS)}"
    if not isinstance(value, int) or isinstance(value, bool):
        return f"{name} must be a whole number, not {value!r}"
    return None


@dataclass(frozen=True, slots=True)
class KernelConfig:
    """What kernel the model is: version, architecture and the lazy-TLB Kconfig options."""

    name: str = "custom"
    summary: str = ""
    version: tuple[int, ...] = (6, 17)
    arch: str = "generic"
    MMU_LAZY_TLB_REFCOUNT: bool = True
    MMU_LAZY_TLB_SHOOTDOWN: bool = False
    # mmdrop_sched() (finish_task_switch's drop) defers the final __mmdrop to an RCU callback
    PREEMPT_RT: bool = False
    # every CPU's RCU callbacks offloaded to its rcuop/N thread (or rcu_nocbs=all): a CPU
    # going offline keeps them, where otherwise rcutree_migrate_callbacks() moves them
    RCU_NOCB_CPU_DEFAULT_ALL: bool = False
    lazy_tlb: bool = True  # False: the no-lazy ablation, kernel threads run on init_mm
    radix: bool = False  # powerpc: radix MMU (exit_mmap's flush shoots lazy users early)
    # x86 CONFIG_BROADCAST_TLB_FLUSH=y (6.15+) on a CPU with X86_FEATURE_INVLPGB (AMD Zen 3+):
    # an mm active on more than `global_asid_threshold` CPUs gets a global ASID, flushed by
    # INVLPGB broadcast with no IPIs
    invlpgb: bool = False
    global_asid_threshold: int = 3  # consider_global_asid(): mm_active_cpus_exceeds(mm, 3)
    allow_unsafe: bool = False
    mutants: frozenset[str] = field(default_factory=frozenset)
    nr_dyn_asids: int = 6  # x86 TLB_NR_DYN_ASIDS
    alpha_max_asn: int = 127  # alpha EV5/EV6 HARDWARE_ASN_MASK
    # CONFIG_HZ, jiffies a second (Debian's kernels: CONFIG_HZ_250); x86 6.14+ trims an mm's
    # mm_cpumask at most once every HZ jiffies (should_trim_cpumask)
    HZ: int = 250

    def __post_init__(self) -> None:
        if self.arch not in ARCHES:
            raise ConfigError(f"unknown architecture {self.arch!r}; expected one of {ARCHES}")
        if self.MMU_LAZY_TLB_REFCOUNT and self.MMU_LAZY_TLB_SHOOTDOWN:
            raise ConfigError(
                "MMU_LAZY_TLB_REFCOUNT=y with MMU_LAZY_TLB_SHOOTDOWN=y is impossible: in "
                "arch/Kconfig MMU_LAZY_TLB_REFCOUNT depends on !MMU_LAZY_TLB_SHOOTDOWN"
            )
        if not (self.MMU_LAZY_TLB_REFCOUNT or self.MMU_LAZY_TLB_SHOOTDOWN) and (
            self.lazy_tlb and not self.allow_unsafe
        ):
            raise ConfigError(
                "MMU_LAZY_TLB_REFCOUNT=n without MMU_LAZY_TLB_SHOOTDOWN is unsafe: nothing keeps "
                "a lazily used mm alive (ask for it with allow_unsafe=True / --unsafe to study it)"
            )
        unknown = set(self.mutants) - set(MUTANTS)
        if unknown:
            raise ConfigError(
                f"unknown mutant {sorted(unknown)[0]!r}; `activemm mutants` lists them"
            )
        if self.nr_dyn_asids < 1 or self.alpha_max_asn < 1:
            raise ConfigError("nr_dyn_asids and alpha_max_asn must be at least 1")
        if self.invlpgb and (self.arch != "x86_64" or self.version < (6, 15)):
            raise ConfigError(
                "invlpgb needs arch x86_64 and version 6.15 or later: broadcast TLB "
                "invalidation (CONFIG_BROADCAST_TLB_FLUSH) came with 6.15"
            )
        if self.global_asid_threshold < 0:
            raise ConfigError("global_asid_threshold must be 0 or more")
        if self.HZ < 1:
            raise ConfigError("HZ must be at least 1")

    @property
    def per_task_lazy_refs(self) -> bool:
        """Before 5.4 ("sched: Clean up active_mm reference counting") every switch into a
        kernel thread grabbed and every switch out of one dropped: each lazy task held its own
        reference. Since then the reference belongs to the CPU and is handed on."""
        return self.version < (5, 4)

    @property
    def lazy_tlb_helpers(self) -> bool:
        """mmgrab_lazy_tlb()/mmdrop_lazy_tlb() exist since 6.4 (6.1 uses mmgrab/mmdrop)."""
        return self.version >= (6, 4)

    @property
    def lazy_refs_counted(self) -> bool:
        """Whether a lazy user holds an mm_count reference on its borrowed mm."""
        return self.MMU_LAZY_TLB_REFCOUNT or not self.lazy_tlb_helpers

    @property
    def activate_mm_passes_prev(self) -> bool:
        """x86 exec: activate_mm() hands switch_mm_irqs_off() the old active_mm as `prev`,
        but for 6.9 to 6.15, where it went through switch_mm(), which passes NULL since 6.9
        ("x86/mm: always pass NULL as the first argument of switch_mm_irqs_off()"), until
        6.16's "x86/mm: Opt-in to IRQs-off activate_mm()" called switch_mm_irqs_off(prev,
        next, NULL) directly (seen by kprobes on Debian's 6.1, 6.12 and 6.17 kernels; the
        argument is unused either way)."""
        return self.arch != "x86_64" or not (6, 9) <= self.version < (6, 16)

    @property
    def switch_mm_passes_prev(self) -> bool:
        """x86 switch_mm() (EFI calls before 6.15): its `prev` reaches switch_mm_irqs_off()
        before 6.9, NULL since (the same commit as above)."""
        return self.arch != "x86_64" or self.version < (6, 9)

    @property
    def version_text(self) -> str:
        return ".".join(str(v) for v in self.version)

    def with_mutants(self, *names: str) -> KernelConfig:
        return replace(self, mutants=self.mutants | frozenset(names))

    def with_knobs(self, knobs: dict[str, object]) -> KernelConfig:
        """This configuration with some of its KNOBS set; ConfigError on an unknown name or
        a value that is not a whole number."""
        for name, value in knobs.items():
            if (problem := knob_problem(name, value)) is not None:
                raise ConfigError(problem)
        if "global_asid_threshold" in knobs and not self.knob_applies("global_asid_threshold"):
            raise ConfigError(
                f"global_asid_threshold applies only with INVLPGB, which {self.name} does not "
                "have (try linux-6.17-x86_64-invlpgb)"
            )
        return replace(self, **knobs)  # type: ignore[arg-type]

    def knob_applies(self, name: str) -> bool:
        """Whether the setting `name` (one of KNOBS) changes anything in this configuration."""
        if name == "nr_dyn_asids":
            return self.arch == "x86_64"
        if name == "alpha_max_asn":
            return self.arch == "alpha"
        return self.invlpgb  # global_asid_threshold

    @property
    def cpumask_trim(self) -> bool:
        """Whether the arch trims mm_cpumask now and then (flush_tlb_mm_range's `trim`): x86
        since its bits stay on switch-away (6.14), powerpc radix (tick_and_test_trim_clock)."""
        return (self.arch == "x86_64" and self.version >= (6, 14)) or (
            self.arch == "powerpc" and self.radix
        )

    @property
    def label(self) -> str:
        """The preset's name, followed by the settings that differ from it."""
        return ", ".join([self.name, *(f"{k}={v}" for k, v in self.knobs().items())])

    def knobs(self) -> dict[str, int]:
        """The KNOBS whose values differ from those of the preset this config is named after
        (all of them for a config of no preset's name)."""
        base = PRESETS.get(self.name)
        mine = {name: getattr(self, name) for name in KNOBS}
        if base is None:
            return mine
        return {n: v for n, v in mine.items() if v != getattr(base, n)}

    def options(self) -> dict[str, object]:
        """Every option, for `activemm presets NAME` and JSON output."""
        return {
            "name": self.name,
            "summary": self.summary,
            "version": self.version_text,
            "arch": self.arch,
            "MMU_LAZY_TLB_REFCOUNT": self.MMU_LAZY_TLB_REFCOUNT,
            "MMU_LAZY_TLB_SHOOTDOWN": self.MMU_LAZY_TLB_SHOOTDOWN,
            "PREEMPT_RT": self.PREEMPT_RT,
            "RCU_NOCB_CPU_DEFAULT_ALL": self.RCU_NOCB_CPU_DEFAULT_ALL,
            "lazy_tlb": self.lazy_tlb,
            "radix": self.radix,
            "invlpgb": self.invlpgb,
            "global_asid_threshold": self.global_asid_threshold,
            "per_task_lazy_refs": self.per_task_lazy_refs,
            "lazy_tlb_helpers": self.lazy_tlb_helpers,
            "activate_mm_passes_prev": self.activate_mm_passes_prev,
            "switch_mm_passes_prev": self.switch_mm_passes_prev,
            "nr_dyn_asids": self.nr_dyn_asids,
            "alpha_max_asn": self.alpha_max_asn,
            "HZ": self.HZ,
            "allow_unsafe": self.allow_unsafe,
            "mutants": sorted(self.mutants),
        }


def _preset(name: str, summary: str, **kw: object) -> KernelConfig:
    return KernelConfig(name=name, summary=summary, **kw)  # type: ignore[arg-type]


PRESETS: dict[str, KernelConfig] = {
    p.name: p
    for p in (
        _preset(
            "linux-6.17-x86_64",
            "Linux 6.17 on x86-64: lazy refs counted, cpu_tlbstate with ASIDs, lazy mm_cpumask",
            arch="x86_64",
        ),
        _preset(
            "linux-6.17-x86_64-rt",
            "Linux 6.17 PREEMPT_RT on x86-64 (Debian 13's backports, linux-image-rt-amd64): "
            "the final mmdrop in finish_task_switch frees the mm from an RCU callback",
            arch="x86_64",
            PREEMPT_RT=True,
        ),
        _preset(
            "linux-6.17-x86_64-invlpgb",
            "Linux 6.17 on an x86-64 CPU with INVLPGB (AMD Zen 3+): an mm running on 4+ CPUs "
            "gets a global ASID, flushed by broadcast with no IPIs, lazy CPUs included",
            arch="x86_64",
            invlpgb=True,
        ),
        _preset(
            "linux-6.17",
            "Linux 6.17 core rules, arch-neutral MMU (MMU_LAZY_TLB_REFCOUNT=y)",
        ),
        _preset(
            "linux-6.17-shootdown",
            "Linux 6.17 core rules with MMU_LAZY_TLB_SHOOTDOWN: lazy users uncounted, "
            "__mmdrop IPIs them",
            MMU_LAZY_TLB_REFCOUNT=False,
            MMU_LAZY_TLB_SHOOTDOWN=True,
        ),
        _preset(
            "linux-6.12-x86_64",
            "Debian 12's 6.12 kernel on x86-64 (validated against real captures)",
            version=(6, 12),
            arch="x86_64",
        ),
        _preset(
            "linux-6.1-x86_64",
            "Debian 12's 6.1 kernel on x86-64: plain mmgrab/mmdrop for lazy users",
            version=(6, 1),
            arch="x86_64",
        ),
        _preset(
            "linux-6.1-x86_64-rt",
            "Debian 12's 6.1 PREEMPT_RT kernel on x86-64 (linux-image-rt-amd64): the final "
            "mmdrop in finish_task_switch frees the mm from an RCU callback",
            version=(6, 1),
            arch="x86_64",
            PREEMPT_RT=True,
        ),
        _preset(
            "linux-6.12-x86_64-rt",
            "Debian 12's 6.12 PREEMPT_RT kernel on x86-64: the final mmdrop in "
            "finish_task_switch frees the mm from an RCU callback",
            version=(6, 12),
            arch="x86_64",
            PREEMPT_RT=True,
        ),
        _preset(
            "linux-6.17-powerpc-radix",
            "Linux 6.17 on powerpc Book3S-64 radix: MMU_LAZY_TLB_SHOOTDOWN, exit flush shoots "
            "lazy users",
            arch="powerpc",
            radix=True,
            MMU_LAZY_TLB_REFCOUNT=False,
            MMU_LAZY_TLB_SHOOTDOWN=True,
        ),
        _preset(
            "alpha",
            "Linux 6.17 on alpha: PALcode swpctx loads page tables with the registers; "
            "per-CPU ASNs",
            arch="alpha",
        ),
        _preset(
            "linux-2.3.13",
            "The 1999 rules of the seed note: every lazy task holds its own mm_count reference",
            version=(2, 3, 13),
        ),
        _preset(
            "no-lazy",
            "Ablation: kernel threads always switch to init_mm (no lazy TLB), to measure what "
            "lazy TLB saves",
            arch="x86_64",
            lazy_tlb=False,
        ),
    )
}

DEFAULT_PRESET = "linux-6.17-x86_64"


def preset(name: str) -> KernelConfig:
    """The named preset, or a ConfigError listing the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None
