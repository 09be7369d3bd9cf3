/* A thirty-fourth workload written after the model, for `activemm capture --program`:
 * exit storms, for the locks every exit takes after exit_mm() (tasklist_lock, siglock: on
 * PREEMPT_RT sleeping locks, so that exiting tasks block, or call schedule() woken already,
 * past exit_notify()).
 *  - thread groups of 8 threads per CPU, spinning pinned on every CPU, killed at once by one
 *    thread's exit_group();
 *  - the same groups' threads each leaving with pthread_exit() at the same moment (a
 *    barrier), the leader first, so that it waits as a zombie for the others;
 *  - meanwhile, on every CPU, processes forking and reaping short-lived children
 *    (tasklist_lock writers) and a reader walking /proc (its readers);
 *  - a group SIGKILLed from outside while its threads fork children of their own. */
#define _GNU_SOURCE
#include <dirent.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int ncpus;
static volatile long sink;
static void pin(int cpu) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(cpu % ncpus, &s); sched_setaffinity(0, sizeof(s), &s); }
static void busy(long n) { for (volatile long i = 0; i < n; i++) sink += i; }
static void nap(long us) { struct timespec t = {us / 1000000, (us % 1000000) * 1000}; nanosleep(&t, NULL); }

static pthread_barrier_t gate;
static volatile int go_exit;

static void *storm_thread(void *arg) {
    long k = (long)arg;
    pin((int)k);
    pthread_barrier_wait(&gate);
    while (!go_exit) busy(2000);
    return NULL;
}

/* 8 threads per CPU running fn, all past the barrier when this returns. */
static void group(void *(*fn)(void *)) {
    int n = 8 * ncpus;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setstacksize(&a, 65536);
    pthread_barrier_init(&gate, NULL, (unsigned)n + 1);
    pthread_t t;
    for (long k = 0; k < n; k++) pthread_create(&t, &a, fn, (void *)k);
    pthread_barrier_wait(&gate);
}

/* rounds processes running fn (which never returns), waited for. */
static void storms(int rounds, void (*fn)(void)) {
    pid_t kids[16];
    for (int i = 0; i < rounds && i < 16; i++) if ((kids[i] = fork()) == 0) fn();
    for (int i = 0; i < rounds && i < 16; i++) waitpid(kids[i], NULL, 0);
}

/* 1. exit_group() by one thread while 8 per CPU spin. */
static void exit_group_storm(void) {
    group(storm_thread);
    busy(20000);
    syscall(SYS_exit_group, 0);
}

static void *leaver(void *arg) {
    pin((int)(long)arg);
    pthread_barrier_wait(&gate);
    busy(1000);
    pthread_exit(NULL);
}

/* 2. Every thread leaves with pthread_exit() at once, the leader first. */
static void pthread_exit_storm(void) {
    group(leaver);
    pthread_exit(NULL); /* the leader: a zombie until its last thread is gone */
}

/* 3. Background churn: forks and reaps on every CPU, and a /proc walker. */
static pid_t churn(int cpu) {
    pid_t p = fork();
    if (p == 0) {
        pin(cpu);
        for (;;) {
            pid_t c = fork();
            if (c == 0) _exit(0);
            waitpid(c, NULL, 0);
        }
    }
    return p;
}

static pid_t proc_walker(void) {
    pid_t p = fork();
    if (p == 0) {
        char path[300], buf[512];
        for (;;) {
            DIR *d = opendir("/proc");
            struct dirent *e;
            while (d && (e = readdir(d)) != NULL) {
                if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
                snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
                FILE *f = fopen(path, "r");
                if (f) { if (!fgets(buf, sizeof(buf), f)) sink++; fclose(f); }
            }
            if (d) closedir(d);
        }
    }
    return p;
}

static void *forker(void *arg) {
    pin((int)(long)arg);
    for (;;) {
        pid_t c = fork();
        if (c == 0) { busy(5000); _exit(0); }
        if (c > 0) waitpid(c, NULL, 0);
    }
    return NULL;
}

/* 4. A group SIGKILLed from outside while its threads fork. */
static void killed_forkers(int rounds) {
    for (int i = 0; i < rounds; i++) {
        pid_t p = fork();
        if (p == 0) {
            pthread_t t;
            for (long k = 0; k < 2 * ncpus; k++) pthread_create(&t, NULL, forker, (void *)k);
            for (;;) pause();
        }
        nap(4000);
        kill(p, SIGKILL);
        waitpid(p, NULL, 0);
    }
}

int main(int argc, char **argv) {
    ncpus = sysconf(_SC_NPROCESSORS_ONLN);
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    pid_t bg[64];
    int nbg = 0;
    for (int c = 0; c < ncpus && nbg < 63; c++) bg[nbg++] = churn(c);
    bg[nbg++] = proc_walker();
    for (int s = 0; s < scale; s++) {
        storms(3, exit_group_storm);
        storms(3, pthread_exit_storm);
        killed_forkers(2);
    }
    for (int i = 0; i < nbg; i++) kill(bg[i], SIGKILL);
    while (wait(NULL) > 0) {}
    printf("storm: done\n");
    return 0;
}
