/* A forty-seventh workload written after the model, for `activemm capture --program`, best
 * with `--module brd` (a RAM disk, /dev/ram0, to swap on): a seeded random mix of the
 * kernel's memory management at work on processes that fork, exec and exit. Setup: swap on
 * the RAM disk, ksmd running, THP always with khugepaged scanning fast, two memory cgroups
 * (a pool, and a tight one without swap whose members the OOM killer takes). One worker per
 * CPU takes 60 steps (x the scale given as the first argument, the seed as the second),
 * every step one of: start a target (threads touching anonymous memory, part of it
 * mergeable and identical page to page, part huge-page aligned; it may fork a child first,
 * then it exits, execs or exit_group()s from a thread after a while), start an OOM victim in
 * the tight group, page a target's memory out through process_madvise() (get_task_mm() and
 * mmput() in the worker, reclaim's batched TLB flush of another mm), MADV_PAGEOUT or
 * MADV_COLD of its own memory, MADV_COLLAPSE of its own (khugepaged's collapse, in the
 * task), write memory.reclaim of the pool, compact all memory (/proc/sys/vm/compact_memory:
 * migration of every process's pages from the writer), drop the page cache, mprotect() or
 * munmap() part of its memory while its threads touch it, SIGKILL a target, re-exec itself,
 * or yield or sleep a little. The same seed gives the same choices (not the same timing). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/swap.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_process_madvise
#define SYS_process_madvise 440
#endif
#ifndef MADV_COLD
#define MADV_COLD 20
#endif
#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

#define CG "/sys/fs/cgroup"
#define POOL CG "/pool"
#define TIGHT CG "/tight"
#define DEV "/dev/ram0"
#define HUGE (2UL << 20)

static uint64_t rng;
static int ncpu = 1;

static uint32_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

static void spin_us(long us) {
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    do clock_gettime(CLOCK_MONOTONIC, &b);
    while ((b.tv_sec - a.tv_sec) * 1000000L + (b.tv_nsec - a.tv_nsec) / 1000 < us);
}

static int put(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    return n < 0 ? -1 : 0;
}

static void join(const char *group) {
    char me[32];
    snprintf(me, sizeof me, "%d", getpid());
    put(group, me);
}

/* ---- memory: a mergeable part (every page alike) and a huge-page aligned part ---- */

static char *same, *huge;
static size_t same_len, huge_len;

static char *huge_map(size_t len) {
    char *p = mmap(NULL, len + HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    char *a = (char *)(((uintptr_t)p + HUGE - 1) & ~(HUGE - 1));
    madvise(a, len, MADV_HUGEPAGE);
    return a;
}

static void map_memory(uint32_t how) {
    same_len = (size_t)(1 + how % 4) << 18;
    same = mmap(NULL, same_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (same == MAP_FAILED) _exit(1);
    memset(same, 0x5a, same_len);
    madvise(same, same_len, MADV_MERGEABLE);
    huge_len = HUGE * (1 + (how >> 3) % 2);
    huge = huge_map(huge_len);
    if (huge == NULL) _exit(1);
    for (size_t i = 0; i < huge_len; i += 4096) huge[i] = (char)i;
}

static volatile int touching = 1;
static void *toucher(void *arg) {
    long rounds = (long)(intptr_t)arg;
    for (long r = 0; r < rounds && touching; r++) {
        for (size_t i = 0; i < huge_len; i += 4096) ((volatile char *)huge)[i]++;
        for (size_t i = 0; i < same_len; i += 4096) (void)((volatile char *)same)[i];
    }
    return NULL;
}

static void *texit_group(void *arg) {
    spin_us((long)(intptr_t)arg);
    syscall(SYS_exit_group, 0);
    return NULL;
}

/* A target: its memory touched by threads, maybe a child forked, then one way out. */
static void target(uint32_t how) {
    map_memory(how);
    pthread_t t;
    for (uint32_t i = 0; i < how % 3; i++)
        pthread_create(&t, NULL, toucher, (void *)(intptr_t)(4 + how % 16));
    if ((how >> 2) % 3 == 0 && fork() == 0) { /* ksm_fork(), khugepaged_fork() */
        toucher((void *)(intptr_t)2);
        usleep(how % 3000);
        _exit(0);
    }
    usleep(500 + how % 6000);
    switch ((how >> 5) % 4) {
    case 0: _exit(0);
    case 1: execl("/bin/program", "program", "--leaf", NULL); _exit(0);
    case 2: pthread_create(&t, NULL, texit_group, (void *)(intptr_t)(how % 400)); pause(); _exit(0);
    default: toucher((void *)(intptr_t)8); _exit(0);
    }
}

/* An OOM victim: the tight group has no swap and 8 MiB; it maps twice that. */
static void victim(uint32_t how) {
    join(TIGHT "/cgroup.procs");
    pthread_t t;
    if (how % 2) pthread_create(&t, NULL, toucher, (void *)(intptr_t)100);
    size_t len = 16UL << 20;
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) _exit(1);
    for (size_t i = 0; i < len; i += 4096) p[i] = 1;
    _exit(0); /* not killed: the group's limit was not met */
}

/* ---- a worker ---- */

#define MAXT 8
static pid_t targets[MAXT];
static int ntargets;

static pid_t some_target(void) { return ntargets ? targets[next() % ntargets] : getppid(); }

static void reap(void) {
    pid_t p;
    while ((p = waitpid(-1, NULL, WNOHANG | __WALL)) > 0)
        for (int i = 0; i < ntargets; i++)
            if (targets[i] == p) { targets[i] = targets[--ntargets]; break; }
}

static void start(void (*fn)(uint32_t)) {
    uint32_t how = next();
    pid_t c = fork();
    if (c == 0) fn(how);
    if (c > 0 && ntargets < MAXT) targets[ntargets++] = c;
    else if (c > 0) waitpid(c, NULL, 0);
}

static void reexec(int steps_left) {
    char left[16], seed[32];
    snprintf(left, sizeof left, "%d", steps_left);
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)(rng | 1));
    execl("/bin/program", "program", "--worker", left, seed, NULL);
}

static void step(int steps_left) {
    switch (next() % 16) {
    case 0:
    case 1:
    case 2: start(target); break;
    case 3:
        if (next() % 3 == 0) start(victim);
        break;
    case 4: { /* reclaim of another process's memory, from here */
        int pfd = (int)syscall(SYS_pidfd_open, some_target(), 0);
        if (pfd < 0) break;
        /* a target maps its memory below the worker's, which it was forked from */
        struct iovec v = {same - (1UL << 30), (1UL << 30) + (64UL << 20)};
        syscall(SYS_process_madvise, pfd, &v, 1, next() % 3 ? MADV_PAGEOUT : MADV_COLD, 0);
        close(pfd);
        break;
    }
    case 5:
        madvise(same, same_len, next() % 2 ? MADV_PAGEOUT : MADV_COLD);
        madvise(huge, huge_len, MADV_PAGEOUT);
        break;
    case 6:
        madvise(huge, huge_len, MADV_COLLAPSE);
        break;
    case 7:
        put(POOL "/memory.reclaim", next() % 2 ? "1M" : "4M");
        break;
    case 8:
        if (next() % 3 == 0) put("/proc/sys/vm/compact_memory", "1");
        break;
    case 9:
        if (next() % 4 == 0) put("/proc/sys/vm/drop_caches", "3");
        break;
    case 10: { /* change the mapping under its threads' feet */
        pthread_t t;
        touching = 1;
        int made = pthread_create(&t, NULL, toucher, (void *)(intptr_t)3) == 0;
        if (next() % 2) {
            mprotect(huge, HUGE, PROT_READ);
            mprotect(huge, HUGE, PROT_READ | PROT_WRITE);
        } else {
            size_t off = (next() % (huge_len / 4096)) * 4096;
            munmap(huge + off, 4096);
            mmap(huge + off, 4096, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        }
        if (made) pthread_join(t, NULL);
        break;
    }
    case 11:
        if (ntargets) kill(targets[next() % ntargets], SIGKILL);
        break;
    case 12:
        if (next() % 4 == 0) reexec(steps_left);
        break;
    case 13:
        toucher((void *)(intptr_t)1);
        break;
    default:
        if (next() % 2) sched_yield();
        else usleep(next() % 800);
    }
    reap();
}

static void worker(int steps) {
    join(POOL "/cgroup.procs");
    map_memory(next());
    for (int i = steps; i > 0; i--) step(i - 1);
    if (next() % 4 == 0) kill(getpid(), SIGKILL);
    for (int i = 0; i < ntargets; i++) waitpid(targets[i], NULL, __WALL);
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--leaf") == 0) {
        usleep(300);
        return 0;
    }
    ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (argc > 3 && strcmp(argv[1], "--worker") == 0) {
        rng = strtoull(argv[3], NULL, 10) | 1;
        worker(atoi(argv[2]));
    }
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1) scale = 1;
    rng = argc > 2 ? strtoull(argv[2], NULL, 10) | 1 : 47;
    unsigned long long seed = rng;
    setvbuf(stdout, NULL, _IONBF, 0);
    int swap = access(DEV, F_OK) == 0 && system("mkswap " DEV " > /dev/null 2>&1") == 0 &&
               swapon(DEV, 0) == 0;
    int ksm = put("/sys/kernel/mm/ksm/sleep_millisecs", "5") == 0 &&
              put("/sys/kernel/mm/ksm/pages_to_scan", "2000") == 0 &&
              put("/sys/kernel/mm/ksm/run", "1") == 0;
    int thp = put("/sys/kernel/mm/transparent_hugepage/enabled", "always") == 0;
    put("/sys/kernel/mm/transparent_hugepage/khugepaged/scan_sleep_millisecs", "5");
    put("/sys/kernel/mm/transparent_hugepage/khugepaged/alloc_sleep_millisecs", "5");
    put("/sys/kernel/mm/transparent_hugepage/khugepaged/pages_to_scan", "8192");
    mkdir(CG, 0755);
    mount("none", CG, "cgroup2", 0, NULL);
    put(CG "/cgroup.subtree_control", "+memory");
    mkdir(POOL, 0755);
    mkdir(TIGHT, 0755);
    put(POOL "/memory.max", "96M");
    put(TIGHT "/memory.max", "8M");
    put(TIGHT "/memory.swap.max", "0");
    printf("unseen47: swap %s, ksm %s, thp %s\n", swap ? "on" : "off", ksm ? "on" : "off",
           thp ? "always" : "unchanged");
    int n = ncpu < 64 ? ncpu : 64, killed = 0;
    pid_t w[64];
    for (int i = 0; i < n; i++) {
        next();
        w[i] = fork();
        if (w[i] == 0) {
            rng = rng * 2654435761u + (uint64_t)i * 40503u + 1;
            worker(60 * scale);
        }
    }
    for (int i = 0; i < n; i++) {
        int st;
        if (waitpid(w[i], &st, 0) == w[i] && WIFSIGNALED(st)) killed++;
    }
    while (waitpid(-1, NULL, __WALL) > 0) {}
    char line[256];
    FILE *f = fopen(TIGHT "/memory.events", "r");
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "oom_kill ", 9) == 0) printf("tight group: %s", line);
    if (f) fclose(f);
    f = fopen("/sys/kernel/mm/ksm/full_scans", "r");
    if (f && fgets(line, sizeof line, f)) printf("ksm full scans: %s", line);
    if (f) fclose(f);
    put("/sys/kernel/mm/ksm/run", "2");
    if (swap) swapoff(DEV);
    printf("mm mix (seed %llu): %d workers, %d killed themselves\n", seed, n, killed);
    printf("done (%d CPUs)\n", ncpu);
    return 0;
}
