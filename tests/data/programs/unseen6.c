/* A sixth workload written after the model, for `activemm capture --program`:
 *  - SIGKILL, then process_mrelease() from the killer: the reaper mmgrab()s the victim's mm
 *    and unmaps it while the victim exits;
 *  - MADV_HUGEPAGE regions larger than one khugepaged pass, inherited across fork()
 *    (khugepaged_fork() mmgrab()s the child's mm), and MADV_COLLAPSE;
 *  - MADV_MERGEABLE (KSM) regions inherited across fork() (ksm_fork());
 *  - MADV_PAGEOUT, mremap(MREMAP_DONTUNMAP);
 *  - membarrier() private expedited commands from threads on several CPUs;
 *  - a SCHED_FIFO thread preempting siblings that are exiting. */
#define _GNU_SOURCE
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif

static int ncpus;
static volatile long sink;
static void pin(int cpu) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(cpu % ncpus, &s); sched_setaffinity(0, sizeof(s), &s); }
static void busy(long n) { for (volatile long i = 0; i < n; i++) sink += i; }
static void nap(long us) { struct timespec t = {0, us * 1000}; nanosleep(&t, NULL); }
static void touch(char *p, size_t len) { for (size_t o = 0; o < len; o += 4096) p[o] = (char)o; }

#define HUGE (2UL << 20)

static char *aligned_map(size_t len) {
    char *raw = mmap(NULL, len + HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return NULL;
    char *p = (char *)(((uintptr_t)raw + HUGE - 1) & ~(HUGE - 1));
    return p;
}

static void mrelease(int round) {
    for (int k = 0; k < 3; k++) {
        int ready[2];
        if (pipe(ready)) return;
        pid_t c = fork();
        if (c == 0) {
            pin(round + k + 1);
            size_t len = 8UL << 20;
            char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            touch(m, len);
            write(ready[1], "r", 1);
            for (;;) busy(100000);
        }
        char b;
        read(ready[0], &b, 1);
        close(ready[0]);
        close(ready[1]);
        int pidfd = (int)syscall(SYS_pidfd_open, c, 0);
        if (k == 1) nap(500);
        syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
        syscall(448 /* process_mrelease */, pidfd, 0);
        waitpid(c, NULL, 0);
        close(pidfd);
    }
}

static void hugepages(int round) {
    size_t len = 40UL << 20; /* more than one khugepaged pass (4096 pages) */
    char *m = aligned_map(len);
    if (!m) return;
    madvise(m, len, MADV_HUGEPAGE);
    touch(m, len / 2);
    madvise(m + len / 2, HUGE, MADV_COLLAPSE);
    pid_t c = fork();
    if (c == 0) {
        pin(round + 1);
        touch(m, HUGE * 2);
        nap(2000 * (round + 1));
        _exit(0);
    }
    busy(5000);
    waitpid(c, NULL, 0);
    munmap(m, len);
}

static void merging(int round) {
    size_t len = 64 * 4096;
    char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(m, 7, len);
    madvise(m, len, MADV_MERGEABLE);
    pid_t c = fork();
    if (c == 0) {
        pin(round);
        if (fork() == 0) { busy(3000); _exit(0); }
        m[0] = 1;
        wait(NULL);
        _exit(0);
    }
    madvise(m, len, MADV_PAGEOUT);
    char *moved = mremap(m, len, len, MREMAP_MAYMOVE | MREMAP_DONTUNMAP);
    if (moved != MAP_FAILED) munmap(moved, len);
    waitpid(c, NULL, 0);
    madvise(m, len, MADV_UNMERGEABLE);
    munmap(m, len);
}

static void *barrier_thread(void *arg) {
    pin((int)(intptr_t)arg);
    for (int k = 0; k < 20; k++) {
        syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0);
        busy(2000);
    }
    return NULL;
}

static void membarriers(void) {
    pid_t c = fork();
    if (c == 0) {
        syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0);
        pthread_t t[3];
        for (int k = 0; k < 3; k++) pthread_create(&t[k], NULL, barrier_thread, (void *)(intptr_t)k);
        for (int k = 0; k < 3; k++) pthread_join(t[k], NULL);
        _exit(0);
    }
    waitpid(c, NULL, 0);
}

static void *leaver(void *arg) {
    pin((int)(intptr_t)arg);
    busy(4000);
    return NULL;
}

static void *fifo(void *arg) {
    pin((int)(intptr_t)arg);
    struct sched_param p = {.sched_priority = 10};
    pthread_setschedparam(pthread_self(), SCHED_FIFO, &p);
    for (int k = 0; k < 30; k++) { busy(500); nap(100); }
    return NULL;
}

static void fifo_preempts(int round) {
    pid_t c = fork();
    if (c == 0) {
        pthread_t f, t[4];
        pthread_create(&f, NULL, fifo, (void *)(intptr_t)round);
        for (int k = 0; k < 4; k++) pthread_create(&t[k], NULL, leaver, (void *)(intptr_t)round);
        nap(1000);
        if (round == 1) exit(0); /* exit_group: the threads die wherever they are */
        for (int k = 0; k < 4; k++) pthread_join(t[k], NULL);
        pthread_join(f, NULL);
        _exit(0);
    }
    waitpid(c, NULL, 0);
}

int main(void) {
    ncpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
    for (int round = 0; round < 3; round++) {
        mrelease(round);
        hugepages(round);
        merging(round);
        membarriers();
        fifo_preempts(round);
    }
    nap(50000);
    printf("unseen6 done\n");
    return 0;
}
