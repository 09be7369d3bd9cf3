/* An eleventh workload written after the model, for `activemm capture --program`:
 *  - fork() failing inside dup_mmap() under strict overcommit (vm.overcommit_memory=2): the
 *    half-built copy is put back by dup_mm()'s error path, from the main thread and from a
 *    thread while siblings spin on other CPUs;
 *  - a userfaultfd without fork events on a registered range, then fork(): dup_userfaultfd()
 *    only clears the child's VMA (no new context, no reference);
 *  - a userfaultfd with fork events whose file is closed by another thread while a fork (a
 *    clone sharing the file table) waits for the monitor: userfaultfd_event_wait_completion()
 *    gives up and puts the child's new context in the forking task; and one whose monitor
 *    reads every event;
 *  - a process exiting while it is blocked in that wait (SIGKILL from its parent). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
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
static char *const true_argv[] = {"true", NULL};
static void *spin(void *arg) { busy((long)arg); return NULL; }

/* MemTotal in KiB, from /proc/meminfo. */
static long mem_total_kb(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    long kb = 0;
    if (f) {
        if (fscanf(f, "MemTotal: %ld kB", &kb) != 1) kb = 0;
        fclose(f);
    }
    return kb;
}

static void *fork_fails(void *arg) {
    (void)arg;
    for (int i = 0; i < 4; i++) {
        pid_t c = fork();
        if (c == 0) _exit(0);  /* only when the copy fit after all */
        if (c > 0) waitpid(c, NULL, 0);
        busy(20000);
    }
    return NULL;
}

static void strict_overcommit(void) {
    long kb = mem_total_kb();
    if (kb == 0 || put("/proc/sys/vm/overcommit_memory", "2") != 0) return;
    put("/proc/sys/vm/overcommit_ratio", "60");
    pid_t c = fork();
    if (c == 0) {
        /* a private writable mapping of 40% of RAM: committed at mmap, again by every fork */
        size_t len = (size_t)kb * 1024 / 10 * 4;
        char *big = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (big == MAP_FAILED) {
            printf("overcommit: mmap refused (%s)\n", strerror(errno));
            _exit(0);
        }
        big[0] = 1;
        pthread_t s[2], f;
        for (int i = 0; i < 2; i++) pthread_create(&s[i], NULL, spin, (void *)3000000L);
        fork_fails(NULL);
        pthread_create(&f, NULL, fork_fails, NULL);
        pthread_join(f, NULL);
        for (int i = 0; i < 2; i++) pthread_join(s[i], NULL);
        pid_t ok = fork();
        printf("overcommit: fork %s\n", ok < 0 ? strerror(errno) : "succeeded");
        if (ok == 0) _exit(0);
        if (ok > 0) waitpid(ok, NULL, 0);
        _exit(0);
    }
    waitpid(c, NULL, 0);
    put("/proc/sys/vm/overcommit_memory", "0");
}

static int registered_uffd(int features, char **area) {
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return -1;
    struct uffdio_api api = {.api = UFFD_API, .features = (unsigned long long)features};
    *area = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    struct uffdio_register reg = {
        .range = {.start = (unsigned long)*area, .len = 1 << 16},
        .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(fd, UFFDIO_API, &api) != 0 || ioctl(fd, UFFDIO_REGISTER, &reg) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void uffd_without_fork_events(void) {
    pid_t owner = fork();
    if (owner != 0) {
        waitpid(owner, NULL, 0);
        return;
    }
    char *area;
    int fd = registered_uffd(0, &area);
    for (int i = 0; i < 4; i++) {
        pid_t c = fork();  /* the child's copy of the range loses the context */
        if (c == 0) {
            area[i * 4096] = 1;  /* an ordinary fault in the child */
            busy(20000);
            _exit(0);
        }
        waitpid(c, NULL, 0);
    }
    if (fd >= 0) close(fd);
    _exit(0);
}

static int closing_fd = -1;
static void *close_later(void *arg) {
    nap((long)arg);
    close(closing_fd);
    return NULL;
}

static void *read_events(void *arg) {
    int fd = (int)(long)arg, kept[8], n = 0;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    while (n < 8 && poll(&p, 1, 500) > 0) {
        struct uffd_msg msg;
        if (read(fd, &msg, sizeof(msg)) != sizeof(msg)) break;
        if (msg.event == UFFD_EVENT_FORK) kept[n++] = (int)msg.arg.fork.ufd;
    }
    busy(50000);
    for (int i = 0; i < n; i++) close(kept[i]);
    return NULL;
}

static void uffd_fork_event_abandoned(int round) {
    pid_t owner = fork();
    if (owner != 0) {
        if (round == 2) {  /* killed while its fork waits for a monitor that never reads */
            nap(30000);
            kill(owner, SIGKILL);
        }
        waitpid(owner, NULL, 0);
        return;
    }
    char *area;
    int fd = registered_uffd(UFFD_FEATURE_EVENT_FORK, &area);
    if (fd < 0) _exit(0);
    pthread_t t;
    if (round == 0) {  /* a monitor that reads: the children's contexts are delivered */
        pthread_create(&t, NULL, read_events, (void *)(long)fd);
        for (int i = 0; i < 3; i++) {
            pid_t c = fork();
            if (c == 0) { busy(30000); _exit(0); }
        }
        while (wait(NULL) > 0) {}
        pthread_join(t, NULL);
        close(fd);
        _exit(0);
    }
    /* no monitor: the fork waits until the file is released (round 1) or the owner dies.
     * A fork's child holds the parent's files, the uffd's among them, from copy_files() on:
     * only a child sharing the file table (CLONE_FILES) lets a close() release it. */
    closing_fd = fd;
    if (round == 1) pthread_create(&t, NULL, close_later, (void *)20000L);
    pid_t c = (pid_t)syscall(SYS_clone, CLONE_FILES | SIGCHLD, NULL, NULL, NULL, NULL);
    if (c == 0) { busy(30000); _exit(0); }
    if (c > 0) waitpid(c, NULL, 0);
    if (round == 1) pthread_join(t, NULL);
    _exit(0);
}

int main(void) {
    for (int round = 0; round < 2; round++) {
        strict_overcommit();
        uffd_without_fork_events();
        for (int k = 0; k < 3; k++) uffd_fork_event_abandoned(k);
        pid_t c = fork();
        if (c == 0) { execv("/bin/true", true_argv); _exit(1); }
        waitpid(c, NULL, 0);
    }
    nap(50000);
    printf("unseen11 done\n");
    return 0;
}
