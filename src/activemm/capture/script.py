"""A recording script for the user's own machine: what `activemm capture` sets up in its guest
(the tracepoints, the kprobes of docs/validate.md with this kernel's BTF offsets), as one
POSIX sh script (busybox's sh runs it too) that records while a command runs and leaves a
directory `activemm validate` reads as it reads a capture."""

from __future__ import annotations

from activemm.capture.guest import FILTERS, GROUP

# The tracepoints /init enables (docs/validate.md), the global buffer's or an instance's
EVENTS = (
    "sched/sched_switch sched/sched_process_fork sched/sched_process_exec "
    "sched/sched_process_exit sched/sched_process_free sched/sched_wakeup_new "
    "sched/sched_migrate_task task/task_newtask task/task_rename tlb/tlb_flush "
    "cpuhp/cpuhp_enter"
)
# the probes the scores rest on: a kernel that refuses one cannot be validated
CORE = ("switch_mm_irqs_off", "enter_lazy_tlb", "@FINISH_TASK_SWITCH@", "__mmdrop", "mm_init")

TEMPLATE = r"""#!/bin/sh
# Record what this kernel does with active_mm, for `activemm validate`: the sched, task, tlb
# and cpuhp tracepoints and the kprobes of activemm's docs/validate.md, in a tracefs
# instance of its own (the global trace buffer and its settings are left alone).
# Written by `activemm probes --script` for @SOURCE@.
#
# usage (as root): sh record.sh DIR [--] [COMMAND [ARG...]]
#   runs COMMAND (default: sleep 10) while recording, then writes DIR/trace.txt.gz,
#   DIR/tasks_start.txt, DIR/tasks_end.txt, DIR/kprobes.txt and DIR/meta.json (the kernel
#   release and command line, the preemption mode, probes that missed hits), removes its
#   probes and instance, and exits with COMMAND's status. Then: activemm validate DIR
#   BUFFER_KB=N sets each CPU's ring buffer (default 16384); events are never overwritten,
#   and a recording that lost some says so.
G=@GROUP@
BUFFER_KB=${BUFFER_KB:-16384}
say() { echo "record.sh: $*" >&2; }
[ $# -ge 1 ] || { echo "usage: $0 DIR [--] [COMMAND [ARG...]]" >&2; exit 2; }
OUT=$1
shift
[ "${1:-}" != -- ] || shift
[ $# -gt 0 ] || set -- sleep 10
T=/sys/kernel/tracing
[ -e $T/kprobe_events ] || T=/sys/kernel/debug/tracing
if [ ! -w $T/kprobe_events ]; then
    say "$T/kprobe_events is not writable: run as root, with tracefs mounted" \
        "(mount -t tracefs nodev /sys/kernel/tracing) and a kernel built with CONFIG_KPROBE_EVENTS"
    exit 1
fi
I=$T/instances/$G
if [ -e $I ]; then
    say "$I exists: another recording runs, or one was interrupted (then: echo 0 >" \
        "$I/events/enable; rmdir $I; and remove the $G/ lines of $T/kprobe_events)"
    exit 1
fi
mkdir -p "$OUT" || { say "cannot make $OUT"; exit 1; }
FTS=$(grep -E ' [tT] finish_task_switch(\.|$)' /proc/kallsyms | head -n 1 | cut -d' ' -f3)
[ -n "$FTS" ] || { say "finish_task_switch is not in /proc/kallsyms"; exit 1; }

cleanup() {
    if [ -e $I ]; then
        echo 0 > $I/tracing_on
        echo 0 > $I/events/enable
        rmdir $I || say "could not remove $I"
    fi
    grep "^[pr][0-9]*:$G/" $T/kprobe_events | while read -r def _; do
        echo "-:${def#*:}" >> $T/kprobe_events || say "could not remove the probe ${def#*:}"
    done
    echo "$TGID" > $T/options/record-tgid
}
TGID=$(cat $T/options/record-tgid)
echo 1 > $T/options/record-tgid  # an instance takes the global flags it is made with
if ! mkdir $I; then
    say "cannot make the tracefs instance $I"
    echo "$TGID" > $T/options/record-tgid
    exit 1
fi
trap 'cleanup; exit 130' INT TERM HUP
echo 0 > $I/tracing_on  # (a new instance records at once: not before every event is on)
if ! echo "$BUFFER_KB" > $I/buffer_size_kb; then
    say "cannot give each CPU a ring buffer of $BUFFER_KB KiB (BUFFER_KB=)"; cleanup; exit 1
fi
echo mono > $I/trace_clock
echo 1 > $I/options/irq-info
echo 0 > $I/options/overwrite

sed "s/@FINISH_TASK_SWITCH@/$FTS/" > "$OUT/kprobes.txt" <<'DEFINITIONS'
@DEFINITIONS@
DEFINITIONS
while read -r kind def; do
    if ! echo "$def" >> $T/kprobe_events 2>/dev/null; then
        if [ "$kind" = core ]; then
            say "the kernel refused a probe the scores rest on: $def" \
                "(kernel lockdown refuses every kprobe; dmesg says more)"
            cleanup; exit 1
        fi
        name=${def%% *}
        say "left out ${name#*:} (this kernel lacks the function or a field): a marker"
    fi
done < "$OUT/kprobes.txt"
for e in @EVENTS@; do
    echo 1 > $I/events/$e/enable || say "no tracepoint $e"
done
echo 1 > $I/events/$G/enable
@FILTERS@
snapshot() { grep -H . /proc/[0-9]*/task/[0-9]*/stat 2>/dev/null; }
snapshot > "$OUT/tasks_start.txt"
echo 1 > $I/tracing_on
"$@"
status=$?
echo 0 > $I/tracing_on
snapshot > "$OUT/tasks_end.txt"
gzip -c $I/trace > "$OUT/trace.txt.gz.part" && mv "$OUT/trace.txt.gz.part" "$OUT/trace.txt.gz"
lost=$(cat $I/per_cpu/cpu*/stats | grep -E '^(overrun|dropped events): [1-9]')
[ -z "$lost" ] || say "the ring buffers lost events ($lost): record again with a larger BUFFER_KB"
missed=$(awk '$3 > 0 { printf "\"%s\": %s,", $1, $3 }' $T/kprobe_profile | sed 's/,*$//')
json() { sed 's/\\/\\\\/g; s/"/\\"/g'; }  # a JSON string's inside
args=$(json < /proc/cmdline)
version=$(uname -v | json)
# each CPU's ring buffer stats: validate scores a trace whose buffers dropped events (full)
# up to where the first full CPU's trace ends
rb=$(for s in $I/per_cpu/cpu*/stats; do
  c=${s%/stats}; c=${c##*/}
  o=$(sed -n 's/^overrun: *//p' $s); d=$(sed -n 's/^dropped events: *//p' $s)
  printf '"%s": {"overrun": %s, "dropped_events": %s},' $c ${o:-0} ${d:-0}
done | sed 's/,*$//')
mode=$(sed -n 's/.*(\([a-z]*\)).*/\1/p' /sys/kernel/debug/sched/preempt 2>/dev/null)
[ -z "$mode" ] || args="$args preempt=$mode"
# a KVM guest whose flushes skip the vCPUs the host preempted (kvm_flush_tlb_multi())
pvflush=false
boot=$( { dmesg; journalctl -k -b -q; } 2>/dev/null)
case $boot in *"KVM setup pv remote TLB flush"*) pvflush=true ;; esac
cat > "$OUT/meta.json" <<META
{"kernel": "$(uname -r)", "kernel_version": "$version",
 "cpus": $(grep -c '^processor' /proc/cpuinfo), "kernel_args": "$args",
 "kprobe_missed": {$missed}, "ring_buffer": {$rb}, "kvm_pv_tlb_flush": $pvflush,
 "recorded_by": "activemm probes --script"}
META
cleanup
say "recorded into $OUT (the command's exit status: $status): activemm validate $OUT"
exit $status
"""


def recording_script(definitions: list[str], source: str, group: str = GROUP) -> str:
    """The script for these kprobe `definitions` (guest.kprobe_definitions(), in group
    `group`), each tagged core or marker; `source` says whose BTF they came from."""
    tagged = [
        ("core" if d.split()[1] in CORE else "marker") + " " + d.replace(f":{GROUP}/", f":{group}/")
        for d in definitions
    ]
    filters = [
        f"F=$I/events/$G/{event}/filter\n"
        f"[ ! -e $F ] || echo '{rule}' > $F || say \"cannot filter {event}: it fires for every "
        f'call"'
        for event, rule in FILTERS.items()
    ]
    return (
        TEMPLATE.replace("@SOURCE@", source)
        .replace("@GROUP@", group)
        .replace("@DEFINITIONS@", "\n".join(tagged))
        .replace("@EVENTS@", EVENTS)
        .replace("@FILTERS@", "\n".join(filters))
    )
