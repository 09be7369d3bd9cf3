/* A thirtieth workload written after the model, for `activemm capture --program`, on 2 CPUs
 * or more: KSM with ksmd running (/sys/kernel/mm/ksm/run 1, a short sleep_millisecs):
 *  - processes whose MADV_MERGEABLE regions hold identical pages fork children (ksm_fork()
 *    mmgrab()s the child's mm into a new mm_slot) and exit while ksmd scans them: an mm
 *    whose slot has rmap_items, or that ksmd's cursor rests on, is left to ksmd by
 *    __ksm_exit(), which drops it (mmdrop) when its scan reaches the slot;
 *  - threads of such processes exiting and exec()ing, vfork()+exec from them;
 *  - prctl(PR_SET_MEMORY_MERGE) (6.4 and later: every VMA of the mm mergeable, kept across
 *    fork and, from 6.10, across exec, ksm_execve());
 *  - writes of 2 to /sys/kernel/mm/ksm/run (unmerge_and_remove_all_rmap_items(): the writer
 *    drops the slots of mms that exited), then 1 again. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#endif

static int ncpus;
static volatile long sink;
static const char *self;
static void pin(int cpu) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(cpu % ncpus, &s); sched_setaffinity(0, sizeof(s), &s); }
static void busy(long n) { for (volatile long i = 0; i < n; i++) sink += i; }
static void nap(long us) { struct timespec t = {us / 1000000, (us % 1000000) * 1000}; nanosleep(&t, NULL); }

static void put(const char *path, const char *value) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return;
    if (write(fd, value, strlen(value)) < 0) perror(path);
    close(fd);
}

/* identical pages: ksmd merges them into one KSM page (write-protecting each copy) */
static char *same_pages(size_t len, int mergeable) {
    char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return NULL;
    if (mergeable) madvise(m, len, MADV_MERGEABLE);
    for (size_t o = 0; o < len; o += 4096) memset(m + o, 0x5a, 64);
    return m;
}

static void *thread_body(void *arg) {
    long k = (long)arg;
    char *m = same_pages(64 * 4096, 1);
    busy(20000 + 5000 * k);
    if (m && (k & 1)) m[4096 * k] = 1; /* break a merged page: copy-on-write */
    nap(200 + 300 * k);
    return NULL;
}

static void child(int round, int k) {
    pin(round + k);
    char *m = same_pages(128 * 4096, 1);
    pthread_t t[3];
    for (long i = 0; i < 3; i++) pthread_create(&t[i], NULL, thread_body, (void *)i);
    nap(1000 + 1500 * k); /* ksmd passes over us meanwhile */
    if (m) for (int i = 0; i < 128; i += 7) m[i * 4096] = (char)i;
    if (k % 3 == 2) { /* exec while the threads run: de_thread(), then the mm is put */
        execl(self, self, "exec", (char *)NULL);
        _exit(1);
    }
    if (k % 3 == 1) {
        pid_t v = vfork();
        if (v == 0) { execl(self, self, "exec", (char *)NULL); _exit(1); }
        if (v > 0) waitpid(v, NULL, 0);
    }
    for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
    _exit(0);
}

static void round_of(int round) {
    char *m = same_pages(256 * 4096, 1); /* children inherit the region: ksm_fork() */
    pid_t c[6];
    for (int k = 0; k < 6; k++) {
        c[k] = fork();
        if (c[k] == 0) child(round, k);
        nap(300);
    }
    if (round == 1) { /* unmerge everything while some have exited: the writer drops their slots */
        nap(2500);
        put("/sys/kernel/mm/ksm/run", "2");
        put("/sys/kernel/mm/ksm/run", "1");
    }
    for (int k = 0; k < 6; k++) waitpid(c[k], NULL, 0);
    if (m) munmap(m, 256 * 4096);
}

static void merge_any(int round) {
    pid_t c = fork();
    if (c != 0) { if (c > 0) waitpid(c, NULL, 0); return; }
    pin(round + 1);
    if (prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) != 0) _exit(0); /* older kernels: not there */
    char *m = same_pages(96 * 4096, 0);
    for (int k = 0; k < 3; k++) {
        pid_t g = fork();
        if (g == 0) {
            char *n = same_pages(32 * 4096, 0);
            nap(800 * (k + 1));
            if (k == 1) { execl(self, self, "exec", (char *)NULL); _exit(1); }
            if (n) n[0] = 3;
            _exit(0);
        }
    }
    while (wait(NULL) > 0) {}
    if (m) m[0] = 1;
    _exit(0);
}

int main(int argc, char **argv) {
    self = "/proc/self/exe"; /* argv[0] may name no file */
    (void)argv;
    ncpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (argc > 1) { /* an exec'd copy: touch a little, sleep a little, leave */
        char *m = same_pages(16 * 4096, 1);
        nap(500);
        if (m) m[0] = 2;
        return 0;
    }
    put("/sys/kernel/mm/ksm/pages_to_scan", "200");
    put("/sys/kernel/mm/ksm/sleep_millisecs", "1");
    put("/sys/kernel/mm/ksm/run", "1");
    for (int round = 0; round < 3; round++) {
        round_of(round);
        merge_any(round);
    }
    nap(30000); /* ksmd's last passes drop the slots of what exited */
    put("/sys/kernel/mm/ksm/run", "0");
    printf("unseen30 done\n");
    return 0;
}
