"""Capture ground truth from a real Linux kernel: a stock Debian kernel booted in QEMU with a
busybox initramfs, kprobes on the very functions the model mirrors, a workload, and the
tracefs trace shipped out over a serial port. See docs/validate.md."""

# The guest workloads (src/activemm/capture/guest/workload.c), here so that the command line
# can list them without importing the capture machinery.
WORKLOADS = {
    "threads": "threads of one process (user->user switches within one mm)",
    "forkexec": "fork+exec churn; children exit on CPUs that then go idle",
    "badexec": "execs that fail (no such file, not a program): an mm born and freed unseen",
    "zombie": "exit while the mm is borrowed lazily on another CPU (the zombie mm)",
    "vfork": "vfork + exec (the child borrows the parent's mm until exec)",
    "execthread": "exec from a non-leader thread (de_thread)",
    "exitgroup": "exit_group while sibling threads run on other CPUs",
    "munmap": "munmap-driven TLB flushes to running and lazy CPUs",
    "iouring": "io_uring worker and SQPOLL threads on a user mm",
    "clonevm": "clone(CLONE_VM) without CLONE_THREAD, beside its parent; half of them exec",
    "procreader": "/proc/PID/stat readers holding mm_users while the task exits",
    "umh": "user-mode helpers (request_module): tasks born without an mm that exec",
    "hotplug": "CPU hotplug: the last CPU goes offline (its lazy mm handed back) and returns "
    "(2 CPUs or more; with one, all and parallel leave it out)",
    "oom": "the OOM killer's victim: signal->oom_mm holds its mm past the last lazy switch",
    "vhost": "vhost-net workers on a user mm (6.1: a kernel thread's kthread_use_mm)",
    "ksm": "KSM with ksmd running: exited children's mms held by ksmd until its next pass",
    "all": "every workload above, one after another",
    "parallel": "every workload above, all at once",
}
