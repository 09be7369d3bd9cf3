/* An example workload for `activemm capture --program`: things our built-in workloads do not
 * do, each touching a rule of active_mm differently.
 *
 *   activemm capture -o cap --smp 3 --program examples/workloads/mixed.c --run 'program 4'
 *   activemm validate cap
 *
 * 1. a multi-threaded child whose threads mmap/mprotect/munmap (flush IPIs), killed with
 *    SIGKILL from outside (exit_group of running threads);
 * 2. posix_spawn (clone(CLONE_VM|CLONE_VFORK) + exec);
 * 3. threads that pthread_exit beside their leader, and fork from a thread;
 * 4. process_vm_readv of a child while it exits (mm_access: an mm_users reference, so the
 *    last mmput, and __mmput, can run in the reader);
 * 5. pipe ping-pong between two processes (user->user switches between two mms).
 * Argument: rounds (default 4). */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>
#include <sched.h>
extern char **environ;
static volatile int stop;
static void *spinner(void *a) { while (!stop) { void *p = mmap(0, 8192, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0); memset(p, 1, 8192); mprotect(p, 4096, PROT_READ); munmap(p, 8192); } return a; }
static void *quitter(void *a) { usleep(1000); pthread_exit(a); }
static void *forker(void *a) { pid_t p = fork(); if (p == 0) { usleep(500); _exit(0); } waitpid(p, 0, 0); return a; }
int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 4;
    for (int r = 0; r < rounds; r++) {
        /* 1: a multi-threaded child killed with SIGKILL from outside */
        pid_t c = fork();
        if (c == 0) { pthread_t t[3]; for (int i = 0; i < 3; i++) pthread_create(&t[i], 0, spinner, 0); pause(); }
        usleep(3000); kill(c, SIGKILL); waitpid(c, 0, 0);
        /* 2: posix_spawn (CLONE_VM|CLONE_VFORK) of busybox true */
        pid_t s; char *av[] = {"true", 0};
        if (posix_spawn(&s, "/bin/true", 0, 0, av, environ) == 0) waitpid(s, 0, 0);
        /* 3: threads that pthread_exit while the leader keeps going, and fork from a thread */
        pthread_t q[2], f;
        pthread_create(&q[0], 0, quitter, 0); pthread_create(&q[1], 0, quitter, 0);
        pthread_create(&f, 0, forker, 0);
        pthread_join(q[0], 0); pthread_join(q[1], 0); pthread_join(f, 0);
        /* 4: process_vm_readv on a child (mm_access: mmget on its mm), child exits meanwhile */
        static char buf[4096] = "x";
        pid_t v = fork();
        if (v == 0) { usleep(800); _exit(0); }
        char out[64]; struct iovec l = {out, sizeof out}, rr = {buf, sizeof out};
        for (int i = 0; i < 50; i++) process_vm_readv(v, &l, 1, &rr, 1, 0);
        waitpid(v, 0, 0);
        /* 5: ping-pong between two processes through pipes */
        int a[2], b[2]; pipe(a); pipe(b);
        pid_t pp = fork();
        if (pp == 0) { char x; for (int i = 0; i < 100; i++) { read(a[0], &x, 1); write(b[1], &x, 1); } _exit(0); }
        char x = 0; for (int i = 0; i < 100; i++) { write(a[1], &x, 1); read(b[0], &x, 1); }
        waitpid(pp, 0, 0); close(a[0]); close(a[1]); close(b[0]); close(b[1]);
    }
    printf("mixed done\n");
    return 0;
}
