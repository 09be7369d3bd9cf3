/* A fifty-fifth workload written after the model, for `activemm capture --program`, on 2
 * CPUs or more: /proc/PID/oom_score_adj written while the processes that share one mm exit.
 * - clone(CLONE_VM) without CLONE_THREAD or CLONE_VFORK sets MMF_MULTIPROCESS on the mm
 *   (copy_oom_score_adj()); a write to /proc/PID/oom_score_adj (or the legacy oom_adj) of
 *   such a process then mmgrab()s that mm in __set_oom_adj(), walks every process to give
 *   the others sharing it the same value, and mmdrop()s it: when they all exited meanwhile,
 *   that mmdrop() is the last and the mm is freed in the writer's write();
 * - a few hundred sleeping processes make the walk long, so that exits fall inside it, and
 *   a spinner per CPU at nice 19, so that a CPU whose task exits switches to a user task
 *   (not to idle, which would keep the mm lazily) and lets go of the mm at once;
 * - the sharers run threads, exec (dropping the shared mm for a new one) or exit, in a
 *   seeded random order, on every CPU;
 * - at the end the sleepers are killed at once: with `--kernel-args preempt=full` many wait
 *   ("D") or are preempted inside their exit_mmap() and come back in turn on each CPU, a
 *   run of exit windows one after another that no tracepoint announces.
 * Arguments: [scale] [seed]. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SHARERS 2
#define SLEEPERS 800

static int ncpus;
static unsigned seed;
static volatile long sink;
static char stacks[SHARERS][65536];

static unsigned rnd(void) { seed = seed * 1103515245u + 12345u; return (seed >> 16) & 0x7fff; }
static void pin(int cpu) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(cpu % ncpus, &s); sched_setaffinity(0, sizeof(s), &s); }
static void busy(long n) { for (volatile long i = 0; i < n; i++) sink += i; }
static void nap(long us) { struct timespec t = {0, us * 1000}; nanosleep(&t, NULL); }

static void *spin(void *arg) { busy((long)arg); return NULL; }

/* one process sharing the group's mm: runs a little (with a thread, or execs), then exits */
static int sharer(void *arg) {
    long how = (long)arg;
    pin((int)(how >> 4));
    busy(20000 + 8000 * (how & 7));
    switch (how & 3) {
    case 0: {  /* a thread of its own, left running as the process exits */
        pthread_t t;
        pthread_create(&t, NULL, spin, (void *)200000L);
        busy(3000);
        break;
    }
    case 1:  /* exec: the shared mm loses a user, the process lives on in a new one */
        execl("/bin/true", "true", (char *)NULL);
        break;
    default:
        break;
    }
    syscall(60 /* SYS_exit: this task only */, 0);
    return 0;
}

/* write oom_score_adj (or oom_adj) of `pid` until it is gone; each write walks every process */
static void writer(pid_t pid, int legacy, int cpu) {
    pin(cpu);
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", pid, legacy ? "oom_adj" : "oom_score_adj");
    int fd = open(path, O_WRONLY);
    if (fd < 0) _exit(0);
    for (int n = 0; n < 3000; n++) {
        const char *v = legacy ? (n & 1 ? "3" : "-2") : (n & 1 ? "500" : "-100");
        if (write(fd, v, strlen(v)) < 0) break;
    }
    close(fd);  /* the file holds the task, not its mm */
    _exit(0);
}

static void round_of(int r) {
    pid_t group = fork();
    if (group == 0) {
        pid_t kids[SHARERS];
        for (int k = 0; k < SHARERS; k++) {
            long how = (long)(rnd() % 8) | (long)((k + r) % ncpus) << 4;
            kids[k] = clone(sharer, stacks[k] + sizeof stacks[k], CLONE_VM | SIGCHLD, (void *)how);
        }
        /* two writers, from processes of their own, each aimed at a sharer (one time in
         * four at the group leader) */
        pid_t leader = getpid();
        for (int k = 0; k < 2; k++) {
            pid_t target = rnd() % 4 ? kids[k % SHARERS] : leader;
            int legacy = (int)(rnd() % 2);
            if (fork() == 0) writer(target, legacy, k + r + 1);
        }
        busy(1000 + 400 * (rnd() % 10));
        if (rnd() % 3 == 0) {
            for (int k = 0; k < SHARERS; k++) waitpid(kids[k], NULL, __WALL);
        }
        _exit(0);  /* the leader: its sharers and writers may outlive it */
    }
    waitpid(group, NULL, 0);
    if (rnd() % 2) nap(500 + rnd() % 3000);
}

int main(int argc, char **argv) {
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    seed = argc > 2 ? (unsigned)atoi(argv[2]) : 55;
    ncpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (ncpus < 1) ncpus = 1;
    signal(SIGCHLD, SIG_DFL);
    pid_t sleepers[SLEEPERS];
    int n = 0;
    for (; n < SLEEPERS; n++) {
        sleepers[n] = fork();
        if (sleepers[n] == 0) { pause(); _exit(0); }
        if (sleepers[n] < 0) break;
    }
    pid_t spinners[64];
    int nspin = ncpus < 64 ? ncpus : 64;
    for (int c = 0; c < nspin; c++) {
        spinners[c] = fork();
        if (spinners[c] == 0) {
            pin(c);
            if (nice(19) < 0) _exit(1);
            for (;;) busy(1000000);
        }
    }
    printf("unseen55: %d sleepers, %d spinners, %d CPUs, seed %u\n", n, nspin, ncpus, seed);
    fflush(stdout);
    for (int r = 0; r < 40 * scale; r++) round_of(r);
    /* orphaned sharers and writers were reparented to init; give them time to finish */
    nap(200000);
    for (int c = 0; c < nspin; c++) kill(spinners[c], SIGKILL);
    for (int c = 0; c < nspin; c++) waitpid(spinners[c], NULL, 0);
    for (int k = 0; k < n; k++) kill(sleepers[k], SIGKILL);
    for (int k = 0; k < n; k++) waitpid(sleepers[k], NULL, 0);
    printf("unseen55: %d rounds done\n", 40 * scale);
    return 0;
}
