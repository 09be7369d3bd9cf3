/* An example workload for `activemm capture --program`: other tasks reaching into an mm.
 *
 *   activemm capture -o cap --smp 4 --program examples/workloads/readers.c
 *
 * 1. ptrace PEEKDATA on a stopped child that then exits;
 * 2. /proc/PID/mem reads of a child while it exits (proc_mem_open keeps an mmgrab until the
 *    file is closed: an mm_count reference no tracepoint shows);
 * 3. a vfork parent killed while its child runs on the shared mm; the child then execs;
 * 4. exec from a process whose threads spin on every CPU (de_thread);
 * 5. sched_yield ping-pong of threads pinned to CPU 0 (user->user within one mm). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>
static char *self;
static volatile long sink;
static void *spin(void *a) { for (;;) sink++; return a; }
static void *yielder(void *a) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(0, &s); sched_setaffinity(0, sizeof s, &s); for (int i = 0; i < 300; i++) sched_yield(); return a; }
int main(int argc, char **argv) {
    self = argv[0];
    if (argc > 1 && strcmp(argv[1], "noop") == 0) return 0;
    if (argc > 1 && strcmp(argv[1], "execer") == 0) {
        pthread_t t[4]; for (int i = 0; i < 4; i++) pthread_create(&t[i], 0, spin, 0);
        usleep(3000); char *av[] = {self, "noop", 0}; execv(self, av); return 1;
    }
    for (int r = 0; r < 3; r++) {
        /* (a) ptrace PEEKDATA on a child, which then exits */
        pid_t c = fork();
        if (c == 0) { ptrace(PTRACE_TRACEME, 0, 0, 0); raise(SIGSTOP); for (volatile int i = 0; i < 100000; i++); _exit(0); }
        waitpid(c, 0, 0);
        for (int i = 0; i < 20; i++) ptrace(PTRACE_PEEKDATA, c, (void *)&sink, 0);
        ptrace(PTRACE_CONT, c, 0, 0); waitpid(c, 0, 0);
        /* (b) /proc/PID/mem reads of a child while it exits */
        pid_t m = fork();
        if (m == 0) { usleep(2000); _exit(0); }
        char path[64]; snprintf(path, sizeof path, "/proc/%d/mem", m);
        for (int i = 0; i < 30; i++) { int fd = open(path, O_RDONLY); if (fd >= 0) { long v; pread(fd, &v, sizeof v, (long)&sink); close(fd); } }
        waitpid(m, 0, 0);
        /* (c) a vfork parent killed while its child runs on the shared mm; the child then execs */
        pid_t mid = fork();
        if (mid == 0) {
            pid_t v = vfork();
            if (v == 0) { usleep(5000); char *av[] = {self, "noop", 0}; execv(self, av); _exit(1); }
            _exit(0);
        }
        usleep(1000); kill(mid, SIGKILL); waitpid(mid, 0, 0);
        usleep(8000);
        /* (d) exec from a process whose threads spin on every CPU */
        pid_t e = fork();
        if (e == 0) { char *av[] = {self, "execer", 0}; execv(self, av); _exit(1); }
        waitpid(e, 0, 0);
        /* (e) sched_yield ping-pong of threads pinned to CPU 0 */
        pthread_t y[3]; for (int i = 0; i < 3; i++) pthread_create(&y[i], 0, yielder, 0);
        for (int i = 0; i < 3; i++) pthread_join(y[i], 0);
    }
    usleep(20000);
    puts("readers done");
    return 0;
}
