/* A thirty-sixth workload written after the model, for `activemm capture --program`, on 2
 * CPUs or more, best with `--kernel-args numa=fake=2` (two emulated NUMA nodes) and
 * `--memory 768`: cgroup v2 cpusets moving processes while they run, fork, exec and exit.
 *  - processes with threads touching memory, moved back and forth between two cpusets
 *    (cgroup.procs) whose CPUs and, with two nodes, memory nodes differ: cpuset_attach()
 *    takes each mm with get_task_mm() and, the nodes differing, queues
 *    cpuset_migrate_mm_workfn() (a kworker migrates the pages, then mmput()s, the last
 *    put when the process exited meanwhile: __mmput in the kworker); the threads are
 *    pushed off CPUs they may no longer use (set_cpus_allowed_ptr(): the stopper);
 *  - cpuset.mems and cpuset.cpus of a populated cpuset rewritten (update_tasks_nodemask():
 *    get_task_mm() and mmput() or the migration work for every process in it);
 *  - processes killed right after their move, while the migration work holds their mm;
 *  - a cgroup's whole population SIGKILLed at once through cgroup.kill (cgroup_kill(), 5.14
 *    and later), threads spinning on every CPU, some of them inside fork or exec.
 * Without a cpuset controller it says so and exits 0 having done nothing. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MB (1L << 20)
#define CG "/sys/fs/cgroup"
#define NKIDS 6

static volatile int stop;
static int ncpu = 1, nodes = 1;
static volatile pid_t kids[NKIDS];
static int moves, refused, mem_writes, group_killed;
static void nap(long us) { struct timespec t = {us / 1000000, (us % 1000000) * 1000}; nanosleep(&t, NULL); }

static int put(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -errno;
    ssize_t n = write(fd, text, strlen(text));
    int err = n < 0 ? -errno : 0;
    close(fd);
    return err;
}

static int put_pid(const char *group, pid_t pid) {
    char path[96], text[24];
    snprintf(path, sizeof(path), CG "/%s/cgroup.procs", group);
    snprintf(text, sizeof(text), "%d", (int)pid);
    return put(path, text);
}

static char *touch(long len) {
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    for (long i = 0; i < len; i += 4096) p[i] = (char)i;
    return p;
}

struct buf { char *p; long len; int rounds; };

static void *toucher(void *arg) {
    struct buf *b = arg;
    for (int k = 0; k < b->rounds && !stop; k++) {
        for (long i = 0; i < b->len; i += 4096) b->p[i]++;
        nap(200);
    }
    return NULL;
}

/* One process: three threads touching its memory, then the end `how` says. */
static void worker(const char *group, int how, int rounds) {
    put_pid(group, getpid());
    long len = (3 + how % 3) * MB;
    char *p = touch(len);
    if (p == NULL) _exit(1);
    struct buf b = {p, len, rounds};
    pthread_t t[3];
    for (int i = 0; i < 3; i++) pthread_create(&t[i], NULL, toucher, &b);
    nap(1500L * rounds / 4);
    switch (how % 4) {
    case 0:
        if (fork() == 0) {
            for (long i = 0; i < len; i += 4096) p[i]++;
            nap(800);
            _exit(0);
        }
        _exit(0); /* exit_group() with the threads running */
    case 1:
        execl("/proc/self/exe", "program", "child", NULL);
        _exit(1);
    case 2:
        for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
        _exit(0);
    default:
        for (;;) nap(1000); /* killed by the parent */
    }
}

/* Moves the live workers between the cpusets, and rewrites a's nodes and CPUs now and then. */
static void *mover(void *arg) {
    char cpus_all[32], cpus_low[32], mems_b[16];
    (void)arg;
    snprintf(cpus_all, sizeof(cpus_all), "0-%d", ncpu - 1);
    snprintf(cpus_low, sizeof(cpus_low), "0-%d", ncpu > 2 ? ncpu / 2 - 1 : 0);
    snprintf(mems_b, sizeof(mems_b), "%d", nodes - 1);
    for (int k = 0; !stop; k++) {
        for (int i = 0; i < NKIDS; i++) {
            pid_t pid = kids[i];
            if (pid <= 0) continue;
            if (put_pid(k % 2 ? "a" : "b", pid) == 0) moves++;
            else refused++;
        }
        if (k % 5 == 4) {
            if (put(CG "/a/cpuset.mems", k % 10 == 4 ? mems_b : "0") == 0) mem_writes++;
            put(CG "/a/cpuset.cpus", k % 10 == 4 ? cpus_all : cpus_low);
        }
        nap(700 + 300 * (k % 4));
    }
    return NULL;
}

static void *spinner(void *arg) {
    (void)arg;
    for (;;) sched_yield();
    return NULL;
}

/* A population of spinning, forking, exec'ing processes in cgroup k, killed at once. */
static void kill_group(int round) {
    pid_t pids[4];
    for (int i = 0; i < 4; i++) {
        pids[i] = fork();
        if (pids[i] != 0) continue;
        int err = put_pid("k", getpid());
        if (err) printf("unseen36: joining cgroup k: %s\n", strerror(-err));
        pthread_t t;
        for (int j = 0; j < ncpu; j++) pthread_create(&t, NULL, spinner, NULL);
        for (int j = 0;; j++) {
            pid_t c = fork();
            if (c == 0) {
                if ((i + j) % 2) execl("/proc/self/exe", "program", "child", NULL);
                touch(MB);
                _exit(0);
            }
            if (c > 0) waitpid(c, NULL, 0);
        }
    }
    nap(20000 + 5000 * (round % 3));
    int err = put(CG "/k/cgroup.kill", "1");
    nap(50000);
    for (int i = 0; i < 4; i++) {
        if (waitpid(pids[i], NULL, WNOHANG) == pids[i]) {
            group_killed++;
            continue;
        }
        kill(pids[i], SIGKILL); /* not killed through cgroup.kill (err says why, if it failed) */
        waitpid(pids[i], NULL, 0);
    }
    if (err) printf("unseen36: cgroup.kill: %s\n", strerror(-err));
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "child") == 0) {
        char *p = touch(2 * MB);
        if (p && fork() == 0) _exit(p[4096] == 42);
        wait(NULL);
        return 0;
    }
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1) scale = 1;
    setvbuf(stdout, NULL, _IONBF, 0);
    ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (ncpu < 1) ncpu = 1;
    while (nodes < 8) {
        char path[64];
        snprintf(path, sizeof(path), "/sys/devices/system/node/node%d", nodes);
        if (access(path, F_OK) != 0) break;
        nodes++;
    }
    mkdir(CG, 0755);
    mount("none", CG, "cgroup2", 0, NULL);
    if (put(CG "/cgroup.subtree_control", "+cpuset") != 0) {
        printf("unseen36: no cpuset controller (%s): nothing to do\n", strerror(errno));
        return 0;
    }
    char text[32];
    mkdir(CG "/a", 0755);
    mkdir(CG "/b", 0755);
    mkdir(CG "/k", 0755);
    snprintf(text, sizeof(text), "0-%d", ncpu > 2 ? ncpu / 2 - 1 : 0);
    put(CG "/a/cpuset.cpus", text);
    put(CG "/a/cpuset.mems", "0");
    snprintf(text, sizeof(text), "%d-%d", ncpu > 2 ? ncpu / 2 : ncpu - 1, ncpu - 1);
    put(CG "/b/cpuset.cpus", text);
    snprintf(text, sizeof(text), "%d", nodes - 1);
    put(CG "/b/cpuset.mems", text);
    printf("unseen36: %d CPUs, %d nodes\n", ncpu, nodes);
    pthread_t m;
    pthread_create(&m, NULL, mover, NULL);
    for (int round = 0; round < 6 * scale; round++) {
        for (int i = 0; i < NKIDS; i++) {
            pid_t pid = fork();
            if (pid == 0) worker(i % 2 ? "a" : "b", round + i, 10 + (i * 5) % 9);
            kids[i] = pid;
        }
        nap(8000);
        for (int i = 0; i < NKIDS; i++) {
            if ((round + i) % 4 != 3) continue;
            put_pid(i % 2 ? "b" : "a", kids[i]); /* moved, its pages queued to migrate */
            kill(kids[i], SIGKILL);
        }
        for (int i = 0; i < NKIDS; i++) {
            waitpid(kids[i], NULL, 0);
            kids[i] = 0;
        }
        if (round % 2 == 1) kill_group(round);
    }
    stop = 1;
    pthread_join(m, NULL);
    printf("unseen36: done, %d moves, %d refused, %d node rewrites, %d killed by cgroup.kill\n",
           moves, refused, mem_writes, group_killed);
    return 0;
}
