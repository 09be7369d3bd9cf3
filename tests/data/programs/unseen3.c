/* A third workload written after the model, for `activemm capture --program`:
 *  - clone(CLONE_VM) without CLONE_THREAD: processes of their own (own tgid) sharing one mm,
 *    exiting in either order, the parent first or last;
 *  - vfork() children that _exit() without exec, and ones that exec;
 *  - two threads of one process calling execve() at once (one wins, de_thread() kills the
 *    other);
 *  - a userfaultfd whose context mmgrab()s the mm, inherited by a child that closes it
 *    only after its parent exited (the file's mmdrop frees the mm);
 *  - SIGSTOP/SIGCONT of a busy thread group, then SIGKILL;
 *  - mprotect() and MADV_DONTNEED flushes while threads run on other CPUs. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int ncpus;
static volatile long sink;
static void pin(int cpu) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(cpu % ncpus, &s); sched_setaffinity(0, sizeof(s), &s); }
static void busy(long n) { for (volatile long i = 0; i < n; i++) sink += i; }
static void nap(long us) { struct timespec t = {0, us * 1000}; nanosleep(&t, NULL); }

static char stacks[4][65536];

static int shared_child(void *arg) {
    long n = (long)arg;
    pin((int)n);
    busy(20000 * (n + 1));
    return 0;
}

static void clone_vm_processes(int round) {
    /* children that share the mm but are processes of their own */
    pid_t kids[3];
    for (int k = 0; k < 3; k++)
        kids[k] = clone(shared_child, stacks[k] + sizeof stacks[k], CLONE_VM | SIGCHLD,
                        (void *)(long)(k + round));
    if (round % 2) {
        /* the mm's first user leaves first: an intermediate exits and the others run on */
        pid_t mid = fork();
        if (mid == 0) {
            pid_t k2 = clone(shared_child, stacks[3] + sizeof stacks[3], CLONE_VM | SIGCHLD,
                             (void *)3L);
            (void)k2;
            _exit(0);  /* k2 is reparented to init and runs on with this mm */
        }
        waitpid(mid, NULL, 0);
    }
    for (int k = 0; k < 3; k++) waitpid(kids[k], NULL, __WALL);
    nap(3000);
}

static void vforks(int round) {
    for (int k = 0; k < 4; k++) {
        pid_t c = vfork();
        if (c == 0) {
            if ((k + round) % 2) _exit(0);
            execl("/bin/true", "true", (char *)NULL);
            _exit(1);
        }
        waitpid(c, NULL, 0);
    }
}

static void *exec_thread(void *arg) {
    long n = (long)arg;
    pin((int)n);
    busy(5000);
    execl("/bin/true", "true", (char *)NULL);
    return NULL;
}

static void racing_execs(void) {
    pid_t c = fork();
    if (c == 0) {
        pthread_t t[3];
        for (long k = 0; k < 3; k++) pthread_create(&t[k], NULL, exec_thread, (void *)k);
        busy(200000);
        _exit(2);  /* not reached when an exec wins */
    }
    waitpid(c, NULL, 0);
}

static void uffd_outlives(int round) {
    pid_t parent = fork();
    if (parent != 0) { waitpid(parent, NULL, 0); nap(20000); return; }
    int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
    if (uffd >= 0) {
        struct uffdio_api api = {.api = UFFD_API};
        ioctl(uffd, UFFDIO_API, &api);
    }
    pid_t keeper = fork();  /* inherits the uffd: a reference on the parent's mm_count */
    if (keeper == 0) {
        /* its own mm is a copy; the uffd's context points at the parent's */
        pin(round + 1);
        nap(10000);  /* the parent is gone by now */
        pid_t f = fork();  /* a user task where the parent's mm was lazily held */
        if (f == 0) { pin(round); busy(5000); _exit(0); }
        waitpid(f, NULL, 0);
        if (uffd >= 0) close(uffd);
        _exit(0);
    }
    pin(round);
    busy(10000);
    _exit(0);
}

static void *spinner(void *arg) { (void)arg; for (;;) busy(1000); return NULL; }

static void stop_cont_kill(int round) {
    pid_t c = fork();
    if (c == 0) {
        pthread_t t[3];
        for (int k = 0; k < 3; k++) pthread_create(&t[k], NULL, spinner, NULL);
        for (;;) busy(1000);
    }
    nap(3000);
    kill(c, SIGSTOP);
    nap(2000 + 1000 * round);
    kill(c, SIGCONT);
    nap(2000);
    kill(c, SIGKILL);
    waitpid(c, NULL, 0);
}

static char *region;
static volatile int stop_flushers;
static void *toucher(void *arg) {
    long n = (long)arg;
    pin((int)n);
    while (!stop_flushers) { region[(n * 4096) % (64 * 4096)] = 1; busy(500); }
    return NULL;
}

static void flushes(void) {
    pid_t c = fork();
    if (c == 0) {
        region = mmap(NULL, 64 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        pthread_t t[3];
        for (long k = 0; k < 3; k++) pthread_create(&t[k], NULL, toucher, (void *)(k + 1));
        for (int k = 0; k < 20; k++) {
            madvise(region, 64 * 4096, MADV_DONTNEED);
            mprotect(region, 64 * 4096, PROT_READ);
            nap(200);
            mprotect(region, 64 * 4096, PROT_READ | PROT_WRITE);
            nap(300);
        }
        stop_flushers = 1;
        for (int k = 0; k < 3; k++) pthread_join(t[k], NULL);
        _exit(0);
    }
    waitpid(c, NULL, 0);
}

int main(void) {
    ncpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
    for (int round = 0; round < 4; round++) {
        clone_vm_processes(round);
        vforks(round);
        racing_execs();
        uffd_outlives(round);
        stop_cont_kill(round);
        flushes();
    }
    nap(50000);
    printf("unseen3 done\n");
    return 0;
}
