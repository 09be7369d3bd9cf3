#!/usr/bin/env bash
# How the real traces in this directory were recorded (as root, on the development VM:
# Linux 6.18, 2 CPUs). Re-run to record new ones: bash record.sh OUTDIR
# Each trace holds the same kind of workload: fork+exec churn from a shell, a vfork-style
# spawn, Python threads, and processes exiting while kernel threads run.
set -euo pipefail
out=${1:-.}
T=/sys/kernel/tracing
mountpoint -q $T || mount -t tracefs nodev $T
EVENTS="sched/sched_switch sched/sched_process_fork sched/sched_process_exec sched/sched_process_exit sched/sched_process_free task/task_newtask task/task_rename"

workload() {
    for i in $(seq 1 ${1:-20}); do
        sh -c 'ls / >/dev/null; cat /proc/self/stat >/dev/null' &
        /bin/true & /bin/true &
        wait
    done
    python3 -c '
import threading, os
def work():
    sum(range(20000))
ts = [threading.Thread(target=work) for _ in range(4)]
[t.start() for t in ts]; [t.join() for t in ts]
if os.fork() == 0:
    os.execv("/bin/true", ["true"])
os.wait()'
}

snapshot() { grep -H . /proc/[0-9]*/task/[0-9]*/stat 2>/dev/null || true; }

tracefs() {  # $1 = output name, $2 = record-tgid (0/1), $3 = irq-info (0/1)
    echo 0 > $T/tracing_on; echo > $T/trace; echo nop > $T/current_tracer
    echo 4096 > $T/buffer_size_kb; echo mono > $T/trace_clock
    echo "$2" > $T/options/record-tgid; echo "$3" > $T/options/irq-info
    for e in $EVENTS; do echo 1 > $T/events/$e/enable; done
    snapshot > "$out/$1.tasks"
    echo 1 > $T/tracing_on; workload 20; sleep 0.05; echo 0 > $T/tracing_on
    cat $T/trace > /tmp/activemm-trace.txt   # gzip cannot read the live file directly
    gzip -9 -c /tmp/activemm-trace.txt > "$out/$1.txt.gz"
    for e in $EVENTS; do echo 0 > $T/events/$e/enable; done
    echo 1 > $T/options/record-tgid; echo 1 > $T/options/irq-info
}

tracefs tracefs_tgid 1 1
tracefs tracefs_plain 0 0

# perf script of perf record -e 'sched:*'-style events
perf record -q -o /tmp/activemm-perf.data -a \
    -e sched:sched_switch -e sched:sched_process_fork -e sched:sched_process_exec \
    -e sched:sched_process_exit -e sched:sched_process_free \
    -e task:task_newtask -e task:task_rename -- bash -c "$(declare -f workload); workload 10"
perf script -i /tmp/activemm-perf.data 2>/dev/null | gzip -9 > "$out/perf_script.txt.gz"

# trace-cmd report text, and the trace.dat it came from. `trace-cmd record` is refused on
# this VM ("Can't enable ftrace"), so the events are recorded through tracefs as above and
# `trace-cmd extract` saves the buffers as a trace.dat.
echo 0 > $T/tracing_on; echo > $T/trace; echo 1 > $T/options/record-tgid
for e in $EVENTS; do echo 1 > $T/events/$e/enable; done
echo 1 > $T/tracing_on; workload 5; sleep 0.05; echo 0 > $T/tracing_on
trace-cmd extract -o /tmp/activemm-tc.dat >/dev/null 2>&1
for e in $EVENTS; do echo 0 > $T/events/$e/enable; done
trace-cmd report -i /tmp/activemm-tc.dat 2>/dev/null | gzip -9 > "$out/trace_cmd_report.txt.gz"
# (the .dat itself, over 1 MB with its kallsyms and formats, is not committed)
