/* A twenty-second workload written after the model, for `activemm capture --program` (best
 * with `--memory 1024`):
 *  - processes with big address spaces (tens of MiB touched, hundreds of VMAs split by
 *    mprotect()): their fork()s copy long (dup_mmap()) and their exits unmap long, so that
 *    exit_mmap() flushes its gathered pages several times before its end, the first of those
 *    flushes finding the exiting task's CPU lazy long before exit_mmap() is done; children
 *    preempted there by busy siblings pinned to the same CPU;
 *  - a thread group exiting (exit_group()) while one of its threads is inside a long
 *    munmap() of a big range and another spins on another CPU;
 *  - a cgroup v2 with the cpuset controller: short-lived processes, some with threads, moved
 *    into it by writing cgroup.procs while they exit (cpuset_attach() takes each leader's mm
 *    with get_task_mm() and puts it back with mmput(), the last one when the process exited
 *    meanwhile: __mmput then runs in the writer). */
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

#define MIB (1024L * 1024L)

static volatile long sink;
static void busy(long n) { for (volatile long i = 0; i < n; i++) sink += i; }
static void nap(long us) { struct timespec t = {us / 1000000, (us % 1000000) * 1000}; nanosleep(&t, NULL); }
static int put(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    return n < 0 ? -1 : 0;
}
static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof(set), &set);
}
static int ncpus(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (int)n;
}

/* Touch `mib` MiB of anonymous memory and split it into many VMAs. */
static char *grow(long mib) {
    char *p = mmap(NULL, mib * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    for (long off = 0; off < mib * MIB; off += 4096) p[off] = (char)off;
    for (long off = 0; off < mib * MIB; off += 32 * 4096)
        mprotect(p + off, 4096, PROT_READ);  /* a VMA of its own every 128 KiB */
    return p;
}

/* Big parents fork children that exit at once, pinned with a busy sibling on their CPU. */
static void big_forks(int rounds) {
    int n = ncpus();
    for (int r = 0; r < rounds; r++) {
        pid_t parent = fork();
        if (parent == 0) {
            if (!grow(24 + 8 * (r % 3))) _exit(1);
            for (int i = 0; i < 4; i++) {
                int cpu = (r + i) % n;
                pid_t busy_sib = fork();
                if (busy_sib == 0) {
                    pin(cpu);
                    busy(3000000);
                    _exit(0);
                }
                pid_t c = fork();
                if (c == 0) {
                    pin(cpu);
                    if (i % 2) busy(20000);
                    _exit(0);  /* exit_mmap() of a copy of the big mm */
                }
            }
            while (wait(NULL) > 0) {}
            _exit(0);  /* and of the big mm itself */
        }
        waitpid(parent, NULL, 0);
    }
}

static char *region;
static void *unmapper(void *arg) {
    (void)arg;
    munmap(region, 48 * MIB);  /* long: the group's exit comes meanwhile */
    return NULL;
}
static void *spinner(void *arg) {
    pin((int)(long)arg);
    busy(50000000);
    return NULL;
}

/* exit_group() while a thread unmaps a big range and another spins elsewhere. */
static void exit_while_unmapping(int rounds) {
    int n = ncpus();
    for (int r = 0; r < rounds; r++) {
        pid_t c = fork();
        if (c == 0) {
            region = grow(48);
            if (!region) _exit(1);
            pthread_t t[2];
            pthread_create(&t[0], NULL, spinner, (void *)(long)((r + 1) % n));
            pthread_create(&t[1], NULL, unmapper, NULL);
            busy(2000 * (r % 5));
            exit(0);
        }
        waitpid(c, NULL, 0);
    }
}

static void *short_thread(void *arg) {
    busy((long)arg);
    return NULL;
}

/* Processes moved into a cpuset cgroup while they exit. */
static void cpuset_moves(int rounds) {
    mkdir("/sys/fs/cgroup", 0755);
    if (mount("cgroup2", "/sys/fs/cgroup", "cgroup2", 0, NULL) && errno != EBUSY) {
        printf("cpuset: no cgroup2 (%s)\n", strerror(errno));
        return;
    }
    if (put("/sys/fs/cgroup/cgroup.subtree_control", "+cpuset")) {
        printf("cpuset: controller not available (%s)\n", strerror(errno));
        return;
    }
    mkdir("/sys/fs/cgroup/pinned", 0755);
    char cpus[16];
    snprintf(cpus, sizeof(cpus), "0-%d", ncpus() - 1);
    put("/sys/fs/cgroup/pinned/cpuset.cpus", cpus);
    put("/sys/fs/cgroup/pinned/cpuset.mems", "0");
    int moved = 0;
    for (int r = 0; r < rounds; r++) {
        pid_t kids[4];
        for (int i = 0; i < 4; i++) {
            kids[i] = fork();
            if (kids[i] == 0) {
                if (i % 2) {
                    pthread_t t;
                    pthread_create(&t, NULL, short_thread, (void *)(long)(10000 * (r % 7)));
                }
                busy(5000 * ((r + i) % 9));
                if (r % 3 == 0) {
                    char *argv[] = {"true", NULL};
                    execv("/bin/true", argv);
                }
                _exit(0);
            }
        }
        for (int i = 0; i < 4; i++) {
            char pid[16];
            snprintf(pid, sizeof(pid), "%d", kids[i]);
            if (put("/sys/fs/cgroup/pinned/cgroup.procs", pid) == 0) moved++;
            if (put("/sys/fs/cgroup/cgroup.procs", pid) == 0) moved++;
        }
        while (wait(NULL) > 0) {}
    }
    printf("cpuset: %d moves\n", moved);
    rmdir("/sys/fs/cgroup/pinned");
}

int main(int argc, char **argv) {
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1) scale = 1;
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("big forks\n");
    big_forks(3 * scale);
    printf("exit while unmapping\n");
    exit_while_unmapping(4 * scale);
    printf("cpuset moves\n");
    cpuset_moves(8 * scale);
    nap(100000);
    printf("done\n");
    return 0;
}
