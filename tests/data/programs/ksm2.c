/* A second KSM program, written after the KSM markers to try them (the first is unseen30.c),
 * for `activemm capture --program`: ksmd in small batches (pages_to_scan 20) so that its
 * cursor often rests on an mm as it exits; mergeable regions of 64 to 512 pages, some never
 * touched, some of zero pages (use_zero_pages 1); children that run a thread, unmap their
 * region while alive, exec, or are killed with their whole thread group; and an unmerge
 * (run 2) while children exit: the writer takes exited mms' slots out and mmdrop()s them. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static int ncpus;
static volatile long sink;
static void nap(long us) { struct timespec t = {us / 1000000, (us % 1000000) * 1000}; nanosleep(&t, NULL); }
static void put(const char *p, const char *v) { int fd = open(p, O_WRONLY); if (fd >= 0) { if (write(fd, v, strlen(v)) < 0) {} close(fd); } }
static char *region(size_t pages, int fill, int zero) {
    char *m = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return NULL;
    madvise(m, pages * 4096, MADV_MERGEABLE);
    if (fill) for (size_t i = 0; i < pages; i++) { if (zero) m[i * 4096] = 0; else memset(m + i * 4096, 0x33, 32); }
    return m;
}
static void *spin(void *a) { (void)a; for (int i = 0; i < 200; i++) { sink += i; nap(100); } return NULL; }
int main(int argc, char **argv) {
    (void)argv;
    if (argc > 1) { char *m = region(16, 1, 0); nap(300); if (m) m[0] = 1; return 0; }
    ncpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
    put("/sys/kernel/mm/ksm/pages_to_scan", "20");
    put("/sys/kernel/mm/ksm/sleep_millisecs", "1");
    put("/sys/kernel/mm/ksm/use_zero_pages", "1");
    put("/sys/kernel/mm/ksm/run", "1");
    srand(7);
    for (int round = 0; round < 4; round++) {
        char *shared = region(64, 1, round & 1);
        pid_t kids[10];
        for (int k = 0; k < 10; k++) {
            kids[k] = fork();
            if (kids[k] == 0) {
                cpu_set_t s; CPU_ZERO(&s); CPU_SET((k + round) % ncpus, &s); sched_setaffinity(0, sizeof s, &s);
                char *big = region(k % 3 == 0 ? 512 : 64, k % 4 != 3, k & 1); /* k%4==3: mergeable, never touched */
                pthread_t t; pthread_create(&t, NULL, spin, NULL);
                nap(500 + rand() % 5000);
                if (k % 5 == 4 && big) munmap(big, 64 * 4096); /* some regions gone while alive */
                if (k == 6) { execl("/proc/self/exe", "x", "-", (char *)NULL); }
                if (k == 7) kill(getpid(), SIGKILL); /* the whole group at once */
                _exit(0);
            }
        }
        if (round == 2) { nap(3000); put("/sys/kernel/mm/ksm/run", "2"); nap(500); put("/sys/kernel/mm/ksm/run", "1"); }
        for (int k = 0; k < 10; k++) waitpid(kids[k], NULL, 0);
        if (shared) munmap(shared, 64 * 4096);
    }
    nap(40000);
    put("/sys/kernel/mm/ksm/run", "0");
    printf("ksm2 done\n");
    return 0;
}
