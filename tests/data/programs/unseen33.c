/* A thirty-third workload written after the model, for `activemm capture --program`:
 * core dumps, a path no earlier workload took.
 *  - a threaded process that faults (SIGSEGV) while its threads spin on every CPU, sleep
 *    and block: zap_threads() kills them, each waits in coredump_task_exit() (before its
 *    exit_mm()) while the dumper writes the core to a file, then all exit;
 *  - the same to a pipe: core_pattern "|/bin/program --core %p", core_pipe_limit set so the
 *    dumper waits for its helper; the helper (a user-mode helper: a kworker's child that
 *    execs) reads the dumping process's /proc/PID/maps and /proc/PID/mem (get_task_mm and
 *    mmput in another task) and the core from its stdin;
 *  - abort() from a thread other than the leader;
 *  - a vfork child that faults (it dumps the mm its parent, waiting in vfork, shares) and
 *    a clone(CLONE_VM) process that faults while its creator runs on;
 *  - SIGQUIT sent from outside to a threaded process; a dump interrupted by SIGKILL while
 *    its pipe helper sleeps; a process made undumpable (no dump) that faults. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int ncpus;
static volatile long sink;
static void pin(int cpu) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(cpu % ncpus, &s); sched_setaffinity(0, sizeof(s), &s); }
static void busy(long n) { for (volatile long i = 0; i < n; i++) sink += i; }
static void nap(long us) { struct timespec t = {us / 1000000, (us % 1000000) * 1000}; nanosleep(&t, NULL); }

static void put(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_TRUNC);
    if (fd < 0 || write(fd, text, strlen(text)) < 0) perror(path);
    if (fd >= 0) close(fd);
}

static void fault(void) { *(volatile int *)8 = 1; }

/* The pipe helper: core_pattern "|/bin/program --core %p" runs this with the core on stdin. */
static int core_helper(const char *pid, int slow) {
    char path[64], buf[65536];
    snprintf(path, sizeof(path), "/proc/%s/maps", pid);
    int fd = open(path, O_RDONLY);
    if (fd >= 0) { while (read(fd, buf, sizeof(buf)) > 0) {} close(fd); }
    snprintf(path, sizeof(path), "/proc/%s/mem", pid);
    fd = open(path, O_RDONLY);
    if (fd >= 0) { if (pread(fd, buf, 4096, 0x400000) < 0) sink++; close(fd); }
    if (slow) nap(20000); /* long enough for the test to SIGKILL the dumper */
    long total = 0;
    ssize_t n;
    while ((n = read(0, buf, sizeof(buf))) > 0) total += n;
    return total > 0 ? 0 : 1;
}

static void *spinner(void *arg) { pin((long)arg); for (;;) { busy(5000); sched_yield(); } return NULL; }
static void *sleeper(void *arg) { (void)arg; for (;;) nap(700); return NULL; }
static void *reader(void *arg) { char b; if (read(*(int *)arg, &b, 1) < 0) sink++; return NULL; }
static void *aborter(void *arg) { pin((long)arg); busy(20000); abort(); return NULL; }

/* A threaded process: spinners on every CPU, a sleeper, a reader blocked on a pipe. */
static void threads(int spin) {
    static int fds[2];
    if (pipe(fds) < 0) _exit(1);
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setstacksize(&a, 65536); /* small stacks: a pipe dump writes holes as zeros */
    pthread_t t;
    for (int k = 0; k < spin; k++) pthread_create(&t, &a, spinner, (void *)(long)k);
    pthread_create(&t, &a, sleeper, NULL);
    pthread_create(&t, &a, reader, fds);
}

static void reap(void) { while (wait(NULL) > 0) {} }

/* 1 and 2. A threaded process faults; its threads wait for the dump. */
static void threaded_dumps(int rounds) {
    for (int i = 0; i < rounds; i++) {
        if (fork() == 0) {
            pin(i);
            threads(ncpus);
            nap(2000);
            fault();
        }
        reap();
    }
}

/* 3. abort() from a thread other than the leader, the leader in pthread_join(). */
static void thread_aborts(int rounds) {
    for (int i = 0; i < rounds; i++) {
        if (fork() == 0) {
            pthread_attr_t a;
            pthread_attr_init(&a);
            pthread_attr_setstacksize(&a, 65536);
            pthread_t t;
            threads(1);
            pthread_create(&t, &a, aborter, (void *)(long)(i + 1));
            pthread_join(t, NULL);
            _exit(0);
        }
        reap();
    }
}

static char clone_stack[65536] __attribute__((aligned(16)));
static int vm_child(void *arg) { pin((long)arg); busy(20000); fault(); return 0; }

/* 4. A vfork child that faults; a clone(CLONE_VM) process that faults. */
static void shared_mm_dumps(int rounds) {
    for (volatile int i = 0; i < rounds; i++) {
        if (fork() == 0) {
            pin(i);
            pid_t c = vfork();
            if (c == 0) { busy(10000); fault(); }
            waitpid(c, NULL, 0);
            c = clone(vm_child, clone_stack + sizeof(clone_stack), CLONE_VM | SIGCHLD, (void *)(long)(i + 1));
            busy(200000); /* runs on while the process sharing its mm dumps it */
            if (c > 0) waitpid(c, NULL, 0);
            _exit(0);
        }
        reap();
    }
}

/* 5. SIGQUIT from outside; a dump killed while its helper sleeps; an undumpable fault. */
static void signalled(int rounds, int piped) {
    for (int i = 0; i < rounds; i++) {
        pid_t p = fork();
        if (p == 0) { threads(ncpus); for (;;) pause(); }
        nap(3000);
        kill(p, SIGQUIT);
        if (piped) {
            nap(1000);
            kill(p, SIGKILL); /* the dump is most likely writing to the sleeping helper */
        }
        reap();
        if (fork() == 0) { prctl(PR_SET_DUMPABLE, 0); threads(1); nap(1000); fault(); }
        reap();
    }
}

static void remove_cores(void) {
    char path[64];
    for (int p = 1; p < 65536; p++) { snprintf(path, sizeof(path), "/tmp/core.%d", p); unlink(path); }
}

int main(int argc, char **argv) {
    if (argc > 2 && strcmp(argv[1], "--core") == 0) return core_helper(argv[2], argc > 3);
    ncpus = sysconf(_SC_NPROCESSORS_ONLN);
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    struct rlimit r = {64 << 20, 64 << 20};
    setrlimit(RLIMIT_CORE, &r);
    mkdir("/tmp", 0777);
    for (int s = 0; s < scale; s++) {
        put("/proc/sys/kernel/core_pattern", "/tmp/core.%p");
        threaded_dumps(3);
        thread_aborts(2);
        shared_mm_dumps(2);
        signalled(2, 0);
        remove_cores();
        put("/proc/sys/kernel/core_pipe_limit", "4");
        put("/proc/sys/kernel/core_pattern", "|/bin/program --core %p");
        threaded_dumps(3);
        thread_aborts(2);
        shared_mm_dumps(2);
        put("/proc/sys/kernel/core_pattern", "|/bin/program --core %p slow");
        signalled(2, 1);
    }
    printf("core: done\n");
    return 0;
}
