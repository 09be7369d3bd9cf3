#!/bin/sh
# activemm capture: the guest's /init (busybox sh). Sets up tracefs and the kprobes, runs the
# workload, ships the trace and the task snapshots out on the second serial port, powers off.
# Knobs come on the kernel command line: activemm.workload= activemm.scale= activemm.timeout=
# activemm.buffer_kb= (each CPU's ring buffer) activemm.perf_mb= (perf's, with /bin/perf)
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmp /tmp
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || mount -t debugfs debugfs /sys/kernel/debug
T=/sys/kernel/tracing
[ -e $T/trace ] || T=/sys/kernel/debug/tracing
say() { echo "ACTIVEMM: $*" > /dev/ttyS0; }

WORKLOAD=all; SCALE=1; TIMEOUT=300; BUFFER_KB=16384; PERF_MB=4
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        activemm.workload=*) WORKLOAD=${arg#*=} ;;
        activemm.scale=*) SCALE=${arg#*=} ;;
        activemm.timeout=*) TIMEOUT=${arg#*=} ;;
        activemm.buffer_kb=*) BUFFER_KB=${arg#*=} ;;
        activemm.perf_mb=*) PERF_MB=${arg#*=} ;;
    esac
done
tasks_waiting() {  # PROC: tid, state, comm, wait channel of every user task (stack in D)
    for s in "$1"/[0-9]*/task/[0-9]*/stat; do
        d=${s%/stat}
        read -r line < "$s" 2>/dev/null || continue
        comm=${line#*(}; comm=${comm%)*}
        # (the list to loop over is made once: $1 may change now)
        set -- ${line##*) }  # state ppid pgrp session tty_nr tpgid flags ...
        state=$1 flags=$7
        [ $((flags & 0x200000)) -eq 0 ] || continue  # PF_KTHREAD: not the workload's
        echo "${line%% *} $state $comm $(cat "$d/wchan" 2>/dev/null)"
        [ "$state" != D ] || sed 's/^/    /' "$d/stack" 2>/dev/null
    done
}

watchdog() {  # time is up: what the workload was doing, on the console; then power off
    say "watchdog: the guest ran out of time"
    {
        echo "--- the workload's output so far (last lines)"
        tail -n 30 /tmp/workload.log 2>/dev/null
        echo "--- its tasks: tid, state, comm, where the kernel has it wait (stack when in D)"
        tasks_waiting /proc | head -n 300
        echo "--- memory"
        head -n 3 /proc/meminfo
    } > /dev/ttyS0 2>&1
    poweroff -f
}
( sleep "$TIMEOUT"; watchdog ) &
say "booted $(uname -r) cpus=$(nproc)"

echo 0 > $T/tracing_on
echo nop > $T/current_tracer
echo "$BUFFER_KB" > $T/buffer_size_kb
echo mono > $T/trace_clock
echo 1 > $T/options/record-tgid
echo 1 > $T/options/irq-info
echo 0 > $T/options/overwrite

# finish_task_switch is usually a compiler clone (finish_task_switch.isra.0): take its name.
FTS=$(grep -E ' [tT] finish_task_switch(\.|$)' /proc/kallsyms | head -n 1 | cut -d' ' -f3)
: > /tmp/kprobes.failed
for m in /modules/*.ko; do  # the vhost workload's modules, before tracing starts
    # (a refusal with insmod's reason and the kernel's last word, its module's pr_err())
    [ -e "$m" ] && { why=$(insmod "$m" 2>&1) || echo "insmod $m: $(echo "$why" | tail -n 1 \
        | sed 's/^insmod: //') ($(dmesg | tail -n 1 | sed 's/^\[[^]]*\] *//'))" \
        >> /tmp/kprobes.failed; }
done
sed "s/@FINISH_TASK_SWITCH@/$FTS/" /kprobes | while read -r def; do
    [ -n "$def" ] || continue
    echo "$def" >> $T/kprobe_events 2>/dev/null || echo "$def" >> /tmp/kprobes.failed
done
for e in sched/sched_switch sched/sched_process_fork sched/sched_process_exec \
         sched/sched_process_exit sched/sched_process_free sched/sched_wakeup_new \
         sched/sched_migrate_task task/task_newtask task/task_rename tlb/tlb_flush \
         cpuhp/cpuhp_enter; do
    echo 1 > $T/events/$e/enable 2>/dev/null || echo "event $e" >> /tmp/kprobes.failed
done
echo 1 > $T/events/activemm/enable
# dup_userfaultfd() runs for every VMA of every fork: keep only VMAs with a userfaultfd
F=$T/events/activemm/uffddup/filter
[ -e $F ] && { echo 'octx != 0' > $F || echo "filter $F" >> /tmp/kprobes.failed; }
# remove_rmap_item_from_tree() runs for every stale KSM rmap_item: keep those of exited mms
F=$T/events/activemm/ksmremove/filter
[ -e $F ] && { echo 'mm_users == 0' > $F || echo "filter $F" >> /tmp/kprobes.failed; }

snapshot() {
    for f in /proc/[0-9]*/task/[0-9]*/stat; do
        line=$(cat "$f" 2>/dev/null) && echo "$f:$line"
    done
}
perf_start() {  # --perf-data: perf record -a of the same events, each filter with its event
    # One group (per CPU) for the events without a filter: perf enables and disables a
    # group at once, each other event by an ioctl of its own, one after another, so that
    # the first and last switches of a CPU would come without their probes, or the other
    # way round. A filter applies to a lone event (--filter: the last one named).
    group=sched:sched_switch,sched:sched_process_fork,sched:sched_process_exec
    group=$group,sched:sched_process_exit,sched:sched_process_free,sched:sched_wakeup_new
    group=$group,sched:sched_migrate_task,task:task_newtask,task:task_rename
    group=$group,tlb:tlb_flush,cpuhp:cpuhp_enter
    set --
    for d in $T/events/activemm/*/; do
        d=${d%/}
        filter=$(cat "$d/filter")  # (not read: tracefs gives a 1-byte read all it returns)
        if [ "$filter" = none ]; then
            group=$group,activemm:${d##*/}
        else
            set -- "$@" -e "activemm:${d##*/}" --filter "$filter"
        fi
    done
    set -- -e "{$group}" "$@"
    mkfifo /tmp/perf.ctl /tmp/perf.ack
    # events off (-D -1) until the control FIFO says enable: recording when perf acks it
    perf record -a -N -B -m "${PERF_MB}M" -D -1 --control fifo:/tmp/perf.ctl,/tmp/perf.ack \
        -o /tmp/perf.data "$@" > /tmp/perf.log 2>&1 &
    PERF_PID=$!
    timeout 120 sh -c 'echo enable > /tmp/perf.ctl; read -r ack < /tmp/perf.ack' \
        || echo "perf record did not start (see above)" >> /tmp/perf.log
}
echo 1 > $T/tracing_on
echo "activemm trace start" > $T/trace_marker
snapshot > /tmp/tasks_start
PERF_PID=
[ -x /bin/perf ] && perf_start
say "workload $WORKLOAD scale $SCALE"
status=0
if [ "$WORKLOAD" != none ]; then
    /workload "$WORKLOAD" "$SCALE" > /tmp/workload.log 2>&1
    status=$?
fi
if [ -e /run.sh ]; then  # the user's own workload (activemm capture --run / --program)
    echo "run: $(cat /run.sh)" >> /tmp/workload.log
    (cd /tmp && sh /run.sh) >> /tmp/workload.log 2>&1
    run_status=$?
    [ "$status" -ne 0 ] || status=$run_status
fi
echo "workload exit status $status" >> /tmp/workload.log
snapshot > /tmp/tasks_end
read -r version < /proc/version
case "$version" in *PREEMPT_RT*)
    # PREEMPT_RT frees an mm from an RCU callback a grace period after its last mmdrop, and
    # RCU_LAZY batches offloaded callbacks (rcu_nocbs=) for up to 10 s: let those queued so
    # far run inside the trace (drop_caches runs the shrinkers, lazy RCU's flushes them),
    # then wait without sleeping, with builtins only, so that no new process, and no switch
    # back to this shell, lets go of another mm (and queues another callback)
    echo 2 > /proc/sys/vm/drop_caches
    read -r up _ < /proc/uptime
    end=$((${up%.*}${up#*.} + 30))  # hundredths of a second
    while read -r up _ < /proc/uptime && [ $((${up%.*}${up#*.})) -lt $end ]; do :; done
esac
if [ -n "$PERF_PID" ]; then  # perf writes its perf.data out on SIGINT
    kill -INT "$PERF_PID"
    wait "$PERF_PID"
    echo "perf record exit status $?" >> /tmp/perf.log
fi
echo "activemm trace end" > $T/trace_marker
echo 0 > $T/tracing_on
say "workload done"

{
    echo "release $(uname -r)"
    echo "cpus $(nproc)"
    echo "finish_task_switch $FTS"
    echo "buffer_size_kb $(cat $T/buffer_size_kb)"
    for c in $T/per_cpu/cpu*; do
        echo "stats ${c##*/} $(tr '\n' ' ' < $c/stats)"
    done
    sed 's/^ */kprobe_profile /' $T/kprobe_profile  # EVENT HITS MISSED, per probe
} > /tmp/meta
cat $T/kprobe_events > /tmp/kprobes.active

ship() {  # name file: gzip + base64 between markers, on the second serial port
    echo "=== BEGIN $1"
    gzip -c "$2" | base64
    echo "=== END $1"
}
stty -F /dev/ttyS1 raw -echo 2>/dev/null
{
    ship meta /tmp/meta
    ship kprobes /tmp/kprobes.active
    ship kprobes.failed /tmp/kprobes.failed
    ship workload.log /tmp/workload.log
    ship tasks_start /tmp/tasks_start
    ship tasks_end /tmp/tasks_end
    ship trace $T/trace
    if [ -n "$PERF_PID" ]; then  # --perf-data: its recording, and the symbols it lacks
        [ -s /tmp/perf.data ] && ship perf.data /tmp/perf.data
        ship perf.log /tmp/perf.log
        ship kallsyms /proc/kallsyms
    fi
    if [ -x /bin/trace-cmd ]; then  # --trace-dat: the same buffers, as trace-cmd reads them
        # (after the text: extract consumes the buffers; it keeps /proc/kallsyms with them)
        if (cd /tmp && trace-cmd extract -o /tmp/trace.dat) > /tmp/trace-cmd.log 2>&1; then
            ship trace.dat /tmp/trace.dat
        else
            ship trace-cmd.log /tmp/trace-cmd.log
        fi
    fi
    echo "=== DONE"
} > /dev/ttyS1
say "shipped"
sync
poweroff -f
