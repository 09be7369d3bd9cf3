/* A thirty-seventh workload written after the model, for `activemm capture --program`, best
 * with `--memory 768` (transparent huge pages need 512 MiB or more):
 *  - khugepaged stopped and started again (/sys/kernel/mm/transparent_hugepage/enabled
 *    "never", then "always" or "madvise": start_stop_khugepaged(), kthread_stop() and
 *    kthread_run()) while processes with MADV_HUGEPAGE regions larger than one pass (its
 *    scan cursor rests on them) exit: a stopping khugepaged collects the slot its cursor
 *    holds on its way out (collect_mm_slot(), mmdrop() of an mm whose owner may be gone),
 *    and the new thread borrows whatever mm its CPU last ran;
 *  - process_madvise(MADV_COLLAPSE) from a child of the target (forked once its region was
 *    mapped, so the addresses match) while the target's threads run on other CPUs and the
 *    target exits (a foreign mm's page tables collapsed and flushed from the caller's
 *    context; the caller's mm_users reference may be the last);
 *  - MADV_COLLAPSE by a process on itself while its threads fault the same range.
 * Without transparent huge pages it says so and exits 0 having done nothing. */
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
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_process_madvise
#define SYS_process_madvise 440
#endif
#define HUGE (2UL << 20)
#define THP "/sys/kernel/mm/transparent_hugepage/"

static int ncpu = 1, collapsed, collapse_failed, last_errno, restarts;
static volatile int stop;
static void nap(long us) { struct timespec t = {us / 1000000, (us % 1000000) * 1000}; nanosleep(&t, NULL); }

static int put(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -errno;
    ssize_t n = write(fd, text, strlen(text));
    int err = n < 0 ? -errno : 0;
    close(fd);
    return err;
}

/* A 2 MiB-aligned region of `len` bytes, MADV_HUGEPAGE, every 4 KiB page touched (small
 * pages first, when THP faults are off: khugepaged or MADV_COLLAPSE makes them huge). */
static char *region(size_t len) {
    char *raw = mmap(NULL, len + HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return NULL;
    char *p = (char *)(((uintptr_t)raw + HUGE - 1) & ~(HUGE - 1));
    madvise(p, len, MADV_HUGEPAGE);
    for (size_t o = 0; o < len; o += 4096) p[o] = (char)o;
    return p;
}

struct job { char *p; size_t len; int cpu; };

static void *toucher(void *arg) {
    struct job *j = arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(j->cpu % ncpu, &set);
    sched_setaffinity(0, sizeof(set), &set);
    for (int k = 0; !stop; k++) {
        for (size_t o = 0; o < j->len; o += 4096 * 7) j->p[o]++;
        if (k % 3 == 2) madvise(j->p + (k % 8) * 4096, 4096, MADV_DONTNEED);
        nap(100);
    }
    return NULL;
}

/* Collapses the region [p, p + len) of process `pid` (its parent, which forked it once the
 * region was mapped: the same addresses) from outside, while it runs and as it exits. */
static void collapser(pid_t pid, char *p, size_t len) {
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (fd < 0) _exit(100 + errno % 100);
    int ok = 0, failed = 0, err = 0;
    for (int k = 0; k < 40 && failed < 10; k++) {
        struct iovec v = {p + (k % (len / HUGE)) * HUGE, HUGE};
        if (syscall(SYS_process_madvise, fd, &v, 1, MADV_COLLAPSE, 0) >= 0) ok++;
        else failed++, err = errno;
        nap(3000);
    }
    _exit(ok > 0 ? 11 : 100 + err % 100); /* none collapsed: 100 + the last errno */
}

/* A process with two threads touching a region of `mib` MiB until it exits after `ms` ms,
 * collapsing parts of it itself when `self`, from a child of its own when `outside`. */
static void target(size_t mib, long ms, int self, int outside, int idx) {
    size_t len = mib << 20;
    char *p = region(len);
    if (p == NULL) _exit(1);
    pid_t me = getpid();
    if (outside && fork() == 0) collapser(me, p, len);
    struct job j[2] = {{p, len, idx + 1}, {p, len, idx + 2}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, toucher, &j[i]);
    for (long left = ms; left > 0; left -= 20) {
        if (self) madvise(p + (left / 20 % (len / HUGE)) * HUGE, HUGE, MADV_COLLAPSE);
        nap(20000);
    }
    _exit(0); /* exit_group() with the threads running */
}

static void *restarter(void *arg) {
    (void)arg;
    for (int k = 0; !stop; k++) {
        nap(30000 + 10000 * (k % 3));
        if (put(THP "enabled", "never") == 0) {
            nap(5000);
            put(THP "enabled", k % 2 ? "always" : "madvise");
            restarts++;
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1) scale = 1;
    setvbuf(stdout, NULL, _IONBF, 0);
    ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (ncpu < 1) ncpu = 1;
    if (put(THP "enabled", "madvise") != 0) {
        printf("unseen37: no transparent huge pages (%s): nothing to do\n", strerror(errno));
        return 0;
    }
    put(THP "defrag", "madvise");
    put(THP "khugepaged/scan_sleep_millisecs", "10");
    put(THP "khugepaged/alloc_sleep_millisecs", "10");
    put(THP "khugepaged/pages_to_scan", "1024");
    printf("unseen37: %d CPUs\n", ncpu);
    pthread_t r;
    pthread_create(&r, NULL, restarter, NULL);
    prctl(PR_SET_CHILD_SUBREAPER, 1); /* the collapsers outlive their targets */
    for (int round = 0; round < 6 * scale; round++) {
        pid_t last = 0;
        for (int i = 0; i < 4; i++) {
            size_t mib = 8 + 4 * ((round + i) % 3);
            last = fork();
            if (last == 0) target(mib, 60L + 40L * i, (round + i) % 3 == 0, i % 2 == 0, i);
        }
        nap(90000);
        kill(last, SIGKILL); /* the last target, mid-collapse perhaps */
        int status;
        while (wait(&status) > 0) {
            if (WIFEXITED(status) && WEXITSTATUS(status) == 11) collapsed++;
            else if (WIFEXITED(status) && WEXITSTATUS(status) >= 100) {
                collapse_failed++;
                last_errno = WEXITSTATUS(status) - 100;
            }
        }
    }
    stop = 1;
    pthread_join(r, NULL);
    put(THP "enabled", "madvise");
    printf("unseen37: done, khugepaged restarted %d times, %d collapsers collapsed, %d none"
           " (last: %s)\n", restarts, collapsed, collapse_failed, strerror(last_errno));
    return 0;
}
