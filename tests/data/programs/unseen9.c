/* A ninth workload written after the model, for `activemm capture --program`:
 *  - PTRACE_O_TRACEEXEC on a threaded tracee whose non-leader thread execs;
 *  - a core dump piped to a user-mode helper (core_pattern "|/bin/cat"), threads zapped;
 *  - a cgroup v2 freezer freezing spinning threads while others exit, then thawing;
 *  - an io_uring SQPOLL ring whose owner execs, and one whose owner exits. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/io_uring.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile long sink;
static void busy(long n) { for (volatile long i = 0; i < n; i++) sink += i; }
static void nap(long us) { struct timespec t = {0, us * 1000}; nanosleep(&t, NULL); }
static int put(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    return n < 0 ? -1 : 0;
}
static void *spin(void *arg) { busy((long)arg); return NULL; }
static char *const true_argv[] = {"true", NULL};
static void *exec_true(void *arg) { busy((long)arg); execv("/bin/true", true_argv); return NULL; }

static void traced_thread_exec(void) {
    pid_t c = fork();
    if (c == 0) {
        ptrace(PTRACE_TRACEME, 0, NULL, NULL);
        raise(SIGSTOP);
        pthread_t a, b;
        pthread_create(&a, NULL, spin, (void *)5000000L);
        pthread_create(&b, NULL, exec_true, (void *)200000L);
        pthread_join(a, NULL);
        pthread_join(b, NULL);
        _exit(0);
    }
    int st;
    waitpid(c, &st, 0);
    ptrace(PTRACE_SETOPTIONS, c, NULL, (void *)(long)(PTRACE_O_TRACEEXEC | PTRACE_O_TRACECLONE));
    ptrace(PTRACE_CONT, c, NULL, NULL);
    for (;;) {
        pid_t w = waitpid(-1, &st, __WALL);
        if (w < 0) break;
        if (WIFEXITED(st) || WIFSIGNALED(st)) {
            if (w == c) break;
            continue;
        }
        ptrace(PTRACE_CONT, w, NULL, NULL);
    }
}

static void piped_core(void) {
    if (put("/proc/sys/kernel/core_pattern", "|/bin/cat") != 0) return;
    pid_t c = fork();
    if (c == 0) {
        struct rlimit r = {RLIM_INFINITY, RLIM_INFINITY};
        setrlimit(RLIMIT_CORE, &r);
        int fd = open("/dev/null", O_WRONLY);
        dup2(fd, 1);
        pthread_t t[2];
        for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, spin, (void *)50000000L);
        busy(100000);
        abort();
    }
    waitpid(c, NULL, 0);
    nap(50000);
    put("/proc/sys/kernel/core_pattern", "core");
}

static void frozen(void) {
    mkdir("/sys/fs/cgroup", 0755);
    mount("none", "/sys/fs/cgroup", "cgroup2", 0, NULL);
    mkdir("/sys/fs/cgroup/ice", 0755);
    pid_t c = fork();
    if (c == 0) {
        char me[32];
        snprintf(me, sizeof(me), "%d", getpid());
        put("/sys/fs/cgroup/ice/cgroup.procs", me);
        pthread_t t[4];
        for (long i = 0; i < 4; i++) pthread_create(&t[i], NULL, spin, (void *)(i % 2 ? 300000L : 30000000L));
        for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
        _exit(0);
    }
    nap(5000);
    put("/sys/fs/cgroup/ice/cgroup.freeze", "1");
    nap(20000);
    put("/sys/fs/cgroup/ice/cgroup.freeze", "0");
    waitpid(c, NULL, 0);
}

static int sqpoll_ring(void) {
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_SQPOLL;
    p.sq_thread_idle = 50;
    return (int)syscall(SYS_io_uring_setup, 4, &p);
}

static void sqpoll_owners(void) {
    for (int how = 0; how < 2; how++) {
        pid_t c = fork();
        if (c == 0) {
            int fd = sqpoll_ring();
            busy(200000);
            if (how == 0 && fd >= 0) execv("/bin/true", true_argv);
            _exit(fd < 0);
        }
        waitpid(c, NULL, 0);
    }
}

int main(void) {
    for (int round = 0; round < 2; round++) {
        traced_thread_exec();
        piped_core();
        frozen();
        sqpoll_owners();
    }
    nap(50000);
    printf("unseen9 done\n");
    return 0;
}
