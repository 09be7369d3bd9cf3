/* A twenty-fifth workload written after the model, for `activemm capture --program`:
 *  - core dumps of multi-threaded processes (RLIMIT_CORE unlimited, core_pattern a file in
 *    /tmp): the crashing thread's do_coredump() stops the group, the others wait in
 *    coredump_task_exit() before their exit_mm(), and the dumper reads every mapping
 *    (get_dump_page()) before it exits;
 *  - a tracer that PTRACE_SEIZEs children which exec and exit, peeking their memory
 *    (access_process_vm(): get_task_mm() and mmput(), the last one when the child is gone);
 *  - process groups killed with SIGKILL while their members fork, vfork and exec. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile long sink;
static void busy(long n) { for (volatile long i = 0; i < n; i++) sink += i; }
static void nap(long us) { struct timespec t = {us / 1000000, (us % 1000000) * 1000}; nanosleep(&t, NULL); }
static char *const true_argv[] = {"true", NULL};

static int put(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    return n < 0 ? -1 : 0;
}

static void *worker(void *arg) {
    busy((long)arg);
    nap(2000);
    busy((long)arg);
    return NULL;
}

/* A process with threads whose main thread crashes: a core dump. */
static void crasher(int threads, int mb) {
    char *p = mmap(NULL, (size_t)mb << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (p != MAP_FAILED)
        for (long i = 0; i < ((long)mb << 20); i += 4096) p[i] = 1;
    pthread_t t;
    for (int i = 0; i < threads; i++) pthread_create(&t, NULL, worker, (void *)(200000L * (i + 1)));
    nap(1000);
    volatile int *bad = NULL;
    *bad = 1;  /* SIGSEGV: dumped */
}

static void core_dumps(int rounds) {
    struct rlimit unlimited = {RLIM_INFINITY, RLIM_INFINITY};
    setrlimit(RLIMIT_CORE, &unlimited);
    put("/proc/sys/kernel/core_pattern", "/tmp/core.%p");
    for (int r = 0; r < rounds; r++) {
        if (fork() == 0) crasher(1 + r % 3, 1 + r % 4);
        if (r % 2) while (wait(NULL) > 0) {}
    }
    while (wait(NULL) > 0) {}
    system("rm -f /tmp/core.*");
}

/* A child for the tracer: touches memory, maybe execs, exits. */
static void tracee(int how) {
    char *p = malloc(64 << 10);
    memset(p, how, 64 << 10);
    nap(500 + 300 * how);
    if (how % 2) execv("/bin/true", true_argv);
    _exit(0);
}

static void tracer(int rounds) {
    for (int r = 0; r < rounds; r++) {
        pid_t kids[4];
        for (int i = 0; i < 4; i++) {
            kids[i] = fork();
            if (kids[i] == 0) tracee(i + r);
            ptrace(PTRACE_SEIZE, kids[i], NULL, (void *)(long)(PTRACE_O_TRACEEXEC | PTRACE_O_TRACEEXIT));
        }
        for (int k = 0; k < 40; k++) {
            for (int i = 0; i < 4; i++) {
                errno = 0;
                ptrace(PTRACE_INTERRUPT, kids[i], NULL, NULL);
                ptrace(PTRACE_PEEKDATA, kids[i], (void *)0x400000, NULL);
            }
            int status;
            pid_t w;
            while ((w = waitpid(-1, &status, WNOHANG | __WALL)) > 0)
                if (WIFSTOPPED(status)) ptrace(PTRACE_CONT, w, NULL, NULL);
            nap(100);
        }
        for (int i = 0; i < 4; i++) kill(kids[i], SIGKILL);
        /* (a tracee stopped at PTRACE_EVENT_EXIT is exiting already: SIGKILL does not move
         * it; the tracer lets it go on) */
        int status;
        pid_t w;
        while ((w = waitpid(-1, &status, __WALL)) > 0)
            if (WIFSTOPPED(status)) ptrace(PTRACE_CONT, w, NULL, NULL);
    }
}

/* A process group that forks, vforks and execs, killed as a whole. */
static void member_loop(int i) {
    for (int k = 0;; k++) {
        pid_t c = (k + i) % 3 == 0 ? vfork() : fork();
        if (c == 0) {
            if ((k + i) % 2) execv("/bin/true", true_argv);
            busy(20000);
            _exit(0);
        }
        if (c > 0) waitpid(c, NULL, 0);
    }
}

static void group_kills(int rounds) {
    for (int r = 0; r < rounds; r++) {
        pid_t leader = fork();
        if (leader == 0) {
            setpgid(0, 0);
            for (int i = 0; i < 3; i++)
                if (fork() == 0) member_loop(i);
            member_loop(3);
        }
        setpgid(leader, leader);
        nap(20000 + 5000 * (r % 3));
        kill(-leader, SIGKILL);
        while (wait(NULL) > 0) {}
    }
}

int main(int argc, char **argv) {
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    int parts = argc > 2 ? atoi(argv[2]) : 7;  /* which: 1 core dumps, 2 tracer, 4 kills */
    if (scale < 1) scale = 1;
    setvbuf(stdout, NULL, _IONBF, 0);
    if (parts & 1) {
        printf("core dumps\n");
        core_dumps(6 * scale);
    }
    if (parts & 2) {
        printf("tracer\n");
        tracer(3 * scale);
    }
    if (parts & 4) {
        printf("group kills\n");
        group_kills(4 * scale);
    }
    printf("done\n");
    return 0;
}
