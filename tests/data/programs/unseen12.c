/* A twelfth workload written after the model, for `activemm capture --program`:
 *  - a vfork() from a thread while a sibling thread execs: de_thread() kills the waiting
 *    parent thread, the vfork child still shares the old mm (mm_users) and outlives the
 *    exec, then exits or execs itself;
 *  - a clone(CLONE_VM) process (no thread) alive while its parent execs, then exiting;
 *  - a tracer reading the tracee's memory (PTRACE_PEEKDATA: access_process_vm, get_task_mm)
 *    around the tracee's exec, and /proc/PID/mem opened before it and read after it;
 *  - a userfaultfd fork-event chain: the owner's child forks again, the grandchild's context
 *    comes from the child's, and a monitor thread in the owner reads both files. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile long sink;
static void busy(long n) { for (volatile long i = 0; i < n; i++) sink += i; }
static void nap(long us) { struct timespec t = {0, us * 1000}; nanosleep(&t, NULL); }
static char *const true_argv[] = {"true", NULL};
static char *const sleep_argv[] = {"sleep", "0.05", NULL};

static void *vfork_from_thread(void *arg) {
    pid_t c = vfork();
    if (c == 0) {
        busy((long)arg);  /* runs on the parent's mm while a sibling execs */
        if ((long)arg % 2) execv("/bin/true", true_argv);
        _exit(0);
    }
    if (c > 0) waitpid(c, NULL, __WALL);
    return NULL;
}

static void vfork_while_sibling_execs(void) {
    for (int round = 0; round < 4; round++) {
        pid_t p = fork();
        if (p == 0) {
            pthread_t t;
            pthread_create(&t, NULL, vfork_from_thread, (void *)(long)(400000 + round));
            busy(30000);
            execv("/bin/true", true_argv);
            _exit(1);
        }
        waitpid(p, NULL, 0);
        nap(20000);  /* the orphaned vfork child finishes on its own */
    }
}

static char stack[4][65536] __attribute__((aligned(16)));
static int vm_sibling(void *arg) { busy((long)arg); return 0; }

static void clone_vm_while_parent_execs(void) {
    for (int round = 0; round < 4; round++) {
        pid_t p = fork();
        if (p == 0) {
            clone(vm_sibling, stack[round] + sizeof(stack[round]), CLONE_VM | SIGCHLD,
                  (void *)(long)(200000 * (round + 1)));
            busy(20000);
            execv("/bin/sleep", sleep_argv);  /* the sibling keeps the old mm's mm_users */
            _exit(1);
        }
        waitpid(p, NULL, 0);
    }
}

static long marker = 0x1234;

static void read_across_exec(void) {
    for (int round = 0; round < 3; round++) {
        int go[2];
        if (pipe(go) != 0) return;
        pid_t c = fork();
        if (c == 0) {
            ptrace(PTRACE_TRACEME, 0, NULL, NULL);
            char b;
            close(go[1]);
            if (read(go[0], &b, 1) != 1) _exit(1);
            busy(50000);
            execv("/bin/true", true_argv);
            _exit(1);
        }
        close(go[0]);
        char path[64];
        snprintf(path, sizeof(path), "/proc/%d/mem", c);
        int mem = open(path, O_RDONLY);  /* holds the mm it sees now (mmgrab) */
        if (write(go[1], "g", 1) != 1) break;
        close(go[1]);
        int st;
        for (;;) {
            if (waitpid(c, &st, 0) < 0 || WIFEXITED(st) || WIFSIGNALED(st)) break;
            errno = 0;
            ptrace(PTRACE_PEEKDATA, c, &marker, NULL);  /* the new program's mm after exec */
            ptrace(PTRACE_CONT, c, NULL, NULL);
        }
        if (mem >= 0) {
            long v;
            if (pread(mem, &v, sizeof(v), (off_t)(long)&marker) < 0) v = 0;
            sink += v;
            close(mem);  /* the old mm's last reference: freed here */
        }
    }
}

static void *monitor(void *arg) {
    int fds[8] = {(int)(long)arg}, n = 1, kept[8], nk = 0;
    for (int quiet = 0; quiet < 3 && n < 8;) {
        struct pollfd p[8];
        for (int i = 0; i < n; i++) p[i] = (struct pollfd){.fd = fds[i], .events = POLLIN};
        if (poll(p, (nfds_t)n, 200) <= 0) { quiet++; continue; }
        for (int i = 0; i < n; i++) {
            struct uffd_msg msg;
            if (!(p[i].revents & POLLIN) || read(fds[i], &msg, sizeof(msg)) != sizeof(msg))
                continue;
            if (msg.event == UFFD_EVENT_FORK && n < 8) {
                fds[n++] = (int)msg.arg.fork.ufd;  /* watched too: its forks send events */
                kept[nk++] = (int)msg.arg.fork.ufd;
            }
        }
    }
    busy(50000);
    for (int i = 0; i < nk; i++) close(kept[i]);
    return NULL;
}

static void uffd_fork_chain(void) {
    pid_t owner = fork();
    if (owner != 0) {
        waitpid(owner, NULL, 0);
        return;
    }
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) _exit(0);
    struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_EVENT_FORK};
    char *area = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    struct uffdio_register reg = {
        .range = {.start = (unsigned long)area, .len = 1 << 16},
        .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(fd, UFFDIO_API, &api) != 0 || ioctl(fd, UFFDIO_REGISTER, &reg) != 0) _exit(0);
    pthread_t t;
    pthread_create(&t, NULL, monitor, (void *)(long)fd);
    for (int i = 0; i < 2; i++) {
        pid_t c = fork();
        if (c == 0) {
            pid_t g = fork();  /* the grandchild's context comes from the child's */
            if (g == 0) { busy(20000); _exit(0); }
            waitpid(g, NULL, 0);
            busy(20000);
            _exit(0);
        }
        waitpid(c, NULL, 0);
    }
    pthread_join(t, NULL);
    close(fd);
    _exit(0);
}

int main(void) {
    for (int round = 0; round < 2; round++) {
        vfork_while_sibling_execs();
        clone_vm_while_parent_execs();
        read_across_exec();
        uffd_fork_chain();
    }
    nap(50000);
    printf("unseen12 done\n");
    return 0;
}
