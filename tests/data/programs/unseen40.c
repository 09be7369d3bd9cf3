/* A fortieth workload written after the model, for `activemm capture --program`, on 2
 * CPUs or more: tasks stopped and frozen around exec and exit.
 *  - cgroup v2 freezer: a group whose processes fork, exec, vfork and exit in a loop (their
 *    threads spinning on every CPU) is frozen (cgroup.freeze 1) and thawed again and again,
 *    so that tasks stop in the freezer's signal trap anywhere between those steps;
 *  - cgroup.kill of such a group while it is frozen, and while it runs: every process of it
 *    gets SIGKILL at once and their exits (and lazy CPUs on their mms) race across CPUs;
 *  - SIGSTOP and SIGCONT of a thread group one of whose non-leader threads execs (de_thread()
 *    waits for the stopped siblings' deaths);
 *  - PTRACE_SEIZE and PTRACE_INTERRUPT of a threaded tracee while its threads exit and its
 *    last thread execs, then PTRACE_DETACH.
 * Each part counts what it did and prints it. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile int stop;
static int ncpu = 1;
static void nap(long us) { struct timespec t = {us / 1000000, (us % 1000000) * 1000}; nanosleep(&t, NULL); }
static void spin_us(long us) {
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    do clock_gettime(CLOCK_MONOTONIC, &b);
    while ((b.tv_sec - a.tv_sec) * 1000000L + (b.tv_nsec - a.tv_nsec) / 1000 < us);
}

static int put(const char *path, const char *what) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    ssize_t n = write(fd, what, strlen(what));
    close(fd);
    return n < 0 ? -1 : 0;
}

static void *spinner(void *arg) {
    (void)arg;
    while (!stop) {
        spin_us(200);
        sched_yield();
    }
    return NULL;
}

static void *short_spin(void *arg) {
    spin_us((long)(size_t)arg);
    return NULL;
}

/* What a member of a frozen or killed group does until it dies. */
static void member(int seed) {
    pthread_t t[2];
    int nt = ncpu > 1 ? 2 : 1;
    for (int i = 0; i < nt; i++) pthread_create(&t[i], NULL, short_spin, (void *)(size_t)(300 + 100 * i));
    for (int round = 0;; round++) {
        int how = (seed + round) % 4;
        pid_t p = how == 2 ? vfork() : fork();
        if (p == 0) {
            if (how == 0) execl("/bin/true", "true", NULL);
            if (how == 1) execl("/bin/program", "program", "--leaf", NULL);
            if (how == 3) spin_us(500);
            _exit(0);
        }
        if (p > 0) waitpid(p, NULL, 0);
        spin_us(100 + 50 * how);
    }
}

static int group_pids(const char *cg, pid_t *out, int max) {
    char path[128];
    snprintf(path, sizeof path, "%s/cgroup.procs", cg);
    FILE *f = fopen(path, "r");
    int n = 0;
    if (!f) return 0;
    while (n < max && fscanf(f, "%d", &out[n]) == 1) n++;
    fclose(f);
    return n;
}

/* Start `n` members in cgroup `cg`. */
static void start_members(const char *cg, int n, pid_t *pids) {
    char path[128], me[32];
    snprintf(path, sizeof path, "%s/cgroup.procs", cg);
    for (int i = 0; i < n; i++) {
        pids[i] = fork();
        if (pids[i] == 0) {
            snprintf(me, sizeof me, "%d", getpid());
            put(path, me);
            member(i);
        }
    }
}

static void freezer_part(int rounds, int *frozen, int *killed) {
    const char *cg = "/sys/fs/cgroup/ice";
    char f[128], k[128];
    mkdir(cg, 0755);
    snprintf(f, sizeof f, "%s/cgroup.freeze", cg);
    snprintf(k, sizeof k, "%s/cgroup.kill", cg);
    for (int r = 0; r < rounds; r++) {
        pid_t pids[4];
        int n = ncpu < 4 ? ncpu : 4;
        start_members(cg, n, pids);
        for (int i = 0; i < 3; i++) {
            nap(2000 + 1000 * (r % 3));
            if (put(f, "1") == 0) (*frozen)++;
            nap(1000 + 500 * i);
            if (i < 2 || r % 2) put(f, "0");
        }
        /* odd rounds: killed while running; even rounds: killed while frozen */
        if (put(k, "1") == 0) (*killed)++;
        if (r % 2 == 0) put(f, "0");
        for (int i = 0; i < n; i++) waitpid(pids[i], NULL, 0);
        pid_t left[64];
        for (int tries = 0; group_pids(cg, left, 64) && tries < 100; tries++) nap(1000);
    }
    rmdir(cg);
}

/* A thread group stopped (SIGSTOP) while a non-leader thread execs. */
static void *execer(void *arg) {
    spin_us((long)(size_t)arg);
    execl("/bin/program", "program", "--leaf", NULL);
    return NULL;
}

static void stopped_exec_part(int rounds, int *stops) {
    for (int r = 0; r < rounds; r++) {
        pid_t p = fork();
        if (p == 0) {
            pthread_t t[3];
            pthread_create(&t[0], NULL, short_spin, (void *)(size_t)3000);
            pthread_create(&t[1], NULL, short_spin, (void *)(size_t)5000);
            pthread_create(&t[2], NULL, execer, (void *)(size_t)(500 + 300 * (r % 5)));
            spin_us(8000);
            _exit(0);
        }
        nap(300 + 200 * (r % 4));
        if (kill(p, SIGSTOP) == 0) (*stops)++;
        nap(1000);
        kill(p, SIGCONT);
        waitpid(p, NULL, 0);
    }
}

/* A seized, interrupted threaded tracee whose threads exit and whose last thread execs. */
static void traced_part(int rounds, int *interrupts) {
    for (int r = 0; r < rounds; r++) {
        pid_t p = fork();
        if (p == 0) {
            pthread_t t[2];
            pthread_create(&t[0], NULL, short_spin, (void *)(size_t)1500);
            pthread_create(&t[1], NULL, execer, (void *)(size_t)(2500 + 200 * (r % 3)));
            pthread_join(t[0], NULL);
            spin_us(6000);
            _exit(0);
        }
        if (ptrace(PTRACE_SEIZE, p, NULL, (void *)(long)PTRACE_O_TRACEEXEC) != 0) {
            kill(p, SIGKILL);
            waitpid(p, NULL, 0);
            continue;
        }
        int status;
        nap(500 + 100 * (r % 5));
        if (ptrace(PTRACE_INTERRUPT, p, NULL, NULL) == 0) (*interrupts)++;
        for (;;) {
            pid_t w = waitpid(-1, &status, __WALL);
            if (w < 0) break;
            if (w == p && (WIFEXITED(status) || WIFSIGNALED(status))) break;
            if (WIFSTOPPED(status)) {
                if (w == p && r % 2) {
                    ptrace(PTRACE_DETACH, w, NULL, NULL);
                    waitpid(p, &status, 0);
                    break;
                }
                int sig = WSTOPSIG(status);
                int pass = (sig == SIGTRAP || sig == SIGSTOP) ? 0 : sig;
                ptrace(PTRACE_CONT, w, NULL, (void *)(long)pass);
            }
        }
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--leaf") == 0) return 0;
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1) scale = 1;
    ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    setvbuf(stdout, NULL, _IONBF, 0);
    mkdir("/sys/fs/cgroup", 0755);
    mount("none", "/sys/fs/cgroup", "cgroup2", 0, NULL);
    pthread_t s[4];
    int n = ncpu < 4 ? ncpu - 1 : 3;
    for (int i = 0; i < n; i++) pthread_create(&s[i], NULL, spinner, NULL);
    int frozen = 0, killed = 0, stops = 0, interrupts = 0;
    freezer_part(4 * scale, &frozen, &killed);
    printf("freezer: %d freezes, %d group kills\n", frozen, killed);
    stopped_exec_part(10 * scale, &stops);
    printf("stopped exec: %d stops\n", stops);
    traced_part(8 * scale, &interrupts);
    printf("traced: %d interrupts\n", interrupts);
    stop = 1;
    for (int i = 0; i < n; i++) pthread_join(s[i], NULL);
    printf("done\n");
    return 0;
}
