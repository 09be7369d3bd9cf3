/* A seventeenth workload written after the model, for `activemm capture --program`:
 * address spaces read and written from other processes while their owners fork, exec,
 * unmap and exit.
 *  - process_vm_readv() / process_vm_writev() from several reader processes on short-lived
 *    targets (each with a thread on another CPU, unmapping memory): mm_access() takes an
 *    mm_users reference (get_task_mm), and when the target exits meanwhile the reader's
 *    mmput() is the last one, so __mmput() runs in the reader;
 *  - process_madvise(MADV_COLD, MADV_PAGEOUT) through a pidfd on the same targets: another
 *    mm_users reference taken from outside, with the TLB flushes of reclaim;
 *  - targets that exec while being read (the old mm goes, the reader may hold it last). */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_COLD
#define MADV_COLD 20
#endif
#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif

#define PAGES 16
#define PAGE 4096

static void nap(long us) { struct timespec t = {us / 1000000, (us % 1000000) * 1000}; nanosleep(&t, NULL); }
static char *const true_argv[] = {"true", NULL};

/* Shared with the readers: where each target keeps its buffer (same address after fork). */
static char *buffer;

static void *unmapper(void *arg) {
    (void)arg;
    for (int i = 0; i < 20; i++) {
        char *p = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) break;
        memset(p, i, 4 * PAGE);
        munmap(p, 4 * PAGE);
        nap(300);
    }
    return NULL;
}

/* A target: touch the buffer, start an unmapping thread, then exit or exec after `us`. */
static pid_t target(int n, long us) {
    pid_t pid = fork();
    if (pid != 0) return pid;
    memset(buffer, n, PAGES * PAGE);
    pthread_t th;
    pthread_create(&th, NULL, unmapper, NULL);
    nap(us);
    if (n % 3 == 0) execv("/bin/true", true_argv);
    _exit(0);
}

/* A reader: read and write its targets' buffers, madvise them, until they are gone. */
static void reader(const pid_t *targets, int count, int id, int pipe_out) {
    long reads = 0, writes = 0, advised = 0, gone = 0;
    char local[PAGE];
    for (int round = 0; round < 400; round++) {
        pid_t t = targets[(round + id) % count];
        struct iovec mine = {local, sizeof(local)};
        struct iovec theirs = {buffer + (round % PAGES) * PAGE, PAGE};
        if (syscall(SYS_process_vm_readv, t, &mine, 1, &theirs, 1, 0) > 0) reads++;
        else if (errno == ESRCH) gone++;
        if (round % 4 == 0 && syscall(SYS_process_vm_writev, t, &mine, 1, &theirs, 1, 0) > 0)
            writes++;
        if (round % 16 == 0) {
            int fd = (int)syscall(SYS_pidfd_open, t, 0);
            if (fd >= 0) {
                struct iovec range = {buffer, PAGES * PAGE};
                int advice = round % 32 ? MADV_COLD : MADV_PAGEOUT;
                if (syscall(SYS_process_madvise, fd, &range, 1, advice, 0) > 0) advised++;
                close(fd);
            }
        }
        if (round % 8 == 0) nap(200);
    }
    long out[4] = {reads, writes, advised, gone};
    if (write(pipe_out, out, sizeof(out)) != sizeof(out)) _exit(1);
    _exit(0);
}

int main(void) {
    buffer = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buffer == MAP_FAILED) return 1;
    long total[4] = {0, 0, 0, 0};
    enum { ROUNDS = 6, TARGETS = 4, READERS = 3 };
    for (int r = 0; r < ROUNDS; r++) {
        pid_t targets[TARGETS];
        for (int i = 0; i < TARGETS; i++) targets[i] = target(r * TARGETS + i, 2000 + 4000 * i);
        int fds[2];
        if (pipe(fds) != 0) return 1;
        for (int i = 0; i < READERS; i++)
            if (fork() == 0) { close(fds[0]); reader(targets, TARGETS, i, fds[1]); }
        close(fds[1]);
        long got[4];
        while (read(fds[0], got, sizeof(got)) == sizeof(got))
            for (int k = 0; k < 4; k++) total[k] += got[k];
        close(fds[0]);
        while (wait(NULL) > 0) {}
    }
    printf("unseen17: %ld reads, %ld writes, %ld madvised, %ld after exit\n",
           total[0], total[1], total[2], total[3]);
    return 0;
}
