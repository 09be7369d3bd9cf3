/* khugepaged's reference: __khugepaged_enter() mmgrab()s every mm with a huge-page-eligible
 * region; __khugepaged_exit() (in __mmput) drops it at once, unless khugepaged's scan cursor
 * rests on that mm: then khugepaged drops it on its next pass (collect_mm_slot), up to
 * scan_sleep_millisecs later. Needs transparent huge pages: a guest of 512 MiB or more. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define HUGE (2UL << 20)
static void nap(long ms) { struct timespec t = {ms / 1000, (ms % 1000) * 1000000L}; nanosleep(&t, NULL); }

static void child(size_t len, long ms) {
    char *raw = mmap(NULL, len + HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *p = (char *)(((uintptr_t)raw + HUGE - 1) & ~(HUGE - 1));
    madvise(p, len, MADV_HUGEPAGE);
    for (size_t o = 0; o < len; o += HUGE) p[o] = 1;
    nap(ms);
    _exit(0);
}

int main(void) {
    /* three mms larger than one khugepaged pass (4096 pages = 8 PMDs): the cursor rests on
     * one of them between passes; they exit at different times. */
    pid_t c[3];
    for (int k = 0; k < 3; k++) {
        c[k] = fork();
        if (c[k] == 0) child(64UL << 20, 4000 + 4000L * k);
    }
    for (int k = 0; k < 3; k++) waitpid(c[k], NULL, 0);
    nap(2000);
    printf("khugepaged done\n");
    return 0;
}
