/* A workload the model has not met: process_vm_readv and ptrace readers of exiting
 * processes, kill -9 of busy thread groups, exec while sibling threads run, affinity
 * ping-pong, short-lived thread churn, fork and vfork from threads. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int ncpus;
static volatile long sink;
static char secret[4096] = "hello";

static void pin(int cpu) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(cpu % ncpus, &s); sched_setaffinity(0, sizeof(s), &s); }
static void busy(long n) { for (volatile long i = 0; i < n; i++) sink += i; }
static void nap(long us) { struct timespec t = {0, us * 1000}; nanosleep(&t, NULL); }
static void reap(void) { while (wait(NULL) > 0 || errno == EINTR) {} }

static void *spinner(void *a) { pin((int)(long)a); for (;;) busy(100000); return NULL; }
static void *brief(void *a) { busy(2000 + 1000 * (long)a); return NULL; }

static void vm_readers(void) {
    for (int i = 0; i < 10; i++) {
        pid_t c = fork();
        if (c == 0) { pin(i); busy(30000 * (i % 3 + 1)); _exit(0); }
        char buf[64]; struct iovec l = {buf, sizeof buf}, r = {secret, sizeof buf};
        for (int k = 0; k < 400; k++) if (process_vm_readv(c, &l, 1, &r, 1, 0) < 0) break;
        reap();
    }
}

static void tracer(void) {
    for (int i = 0; i < 6; i++) {
        pid_t c = fork();
        if (c == 0) { pin(i + 1); busy(200000); _exit(0); }
        if (ptrace(PTRACE_ATTACH, c, 0, 0) == 0) {
            waitpid(c, NULL, 0);
            for (int k = 0; k < 50; k++) ptrace(PTRACE_PEEKDATA, c, secret, 0);
            ptrace(PTRACE_DETACH, c, 0, 0);
        }
        reap();
    }
}

static void killgroups(void) {
    for (int i = 0; i < 6; i++) {
        pid_t c = fork();
        if (c == 0) {
            pthread_t t;
            for (long k = 0; k < 3; k++) pthread_create(&t, NULL, spinner, (void *)(k + i));
            for (;;) busy(100000);
        }
        nap(3000 + 1000 * i);
        kill(c, SIGKILL);
        reap();
    }
}

static void *execer(void *a) { (void)a; nap(2000); execl("/bin/true", "true", NULL); return NULL; }
static void exec_busy(void) {
    for (int i = 0; i < 5; i++) {
        pid_t c = fork();
        if (c == 0) {
            pthread_t t;
            for (long k = 0; k < 2; k++) pthread_create(&t, NULL, spinner, (void *)k);
            pthread_create(&t, NULL, execer, NULL);
            for (;;) busy(100000);
        }
        reap();
    }
}

static void pingpong(void) {
    pid_t c = fork();
    if (c == 0) { for (int i = 0; i < 60; i++) { pin(i); busy(5000); } _exit(0); }
    for (int i = 0; i < 60; i++) { pin(i + 1); busy(5000); }
    reap();
}

static void churn(void) {
    for (int i = 0; i < 30; i++) {
        pthread_t t[4];
        for (long k = 0; k < 4; k++) pthread_create(&t[k], NULL, brief, (void *)k);
        for (int k = 0; k < 4; k++) pthread_join(t[k], NULL);
    }
}

static void *forker(void *a) {
    long n = (long)a;
    for (int i = 0; i < 4; i++) {
        pid_t c = n % 2 ? vfork() : fork();
        if (c == 0) { if (i % 2) execl("/bin/true", "true", NULL); _exit(0); }
        waitpid(c, NULL, 0);
    }
    return NULL;
}
static void thread_forks(void) {
    pthread_t t[3];
    for (long k = 0; k < 3; k++) pthread_create(&t[k], NULL, forker, (void *)k);
    for (int k = 0; k < 3; k++) pthread_join(t[k], NULL);
}

int main(void) {
    ncpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
    vm_readers(); tracer(); killgroups(); exec_busy(); pingpong(); churn(); thread_forks();
    printf("unseen done\n");
    return 0;
}
