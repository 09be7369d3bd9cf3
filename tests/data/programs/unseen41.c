/* A forty-first workload written after the model, for `activemm capture --program`, on 2
 * CPUs or more: deaths that seccomp deals.
 *  - SECCOMP_RET_KILL_THREAD: threads (and the leader, its threads running on) killed in
 *    the syscall path by a filter, do_exit() straight from there, siblings spinning on
 *    other CPUs and one of them exec'ing afterwards;
 *  - SECCOMP_RET_KILL_PROCESS from a non-leader thread while siblings run, sleep and
 *    vfork: the whole group dies at once;
 *  - SECCOMP_RET_TRAP: the SIGSYS handler forks or execs from inside the handler.
 * Each part counts what it did and prints it. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int ncpu = 1;
static void nap(long us) { struct timespec t = {us / 1000000, (us % 1000000) * 1000}; nanosleep(&t, NULL); }
static void spin_us(long us) {
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    do clock_gettime(CLOCK_MONOTONIC, &b);
    while ((b.tv_sec - a.tv_sec) * 1000000L + (b.tv_nsec - a.tv_nsec) / 1000 < us);
}

/* getppid: kill the thread; getpgrp: kill the process; sched_getscheduler: SIGSYS. */
static int install_filter(void) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_THREAD),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getpgrp, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_sched_getscheduler, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {(unsigned short)(sizeof f / sizeof f[0]), f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) return -1;
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog);
}

static void *spin_then_die(void *arg) {
    spin_us((long)(size_t)arg);
    syscall(SYS_getppid); /* killed here */
    return NULL;
}

static void *spin_then_exec(void *arg) {
    spin_us((long)(size_t)arg);
    execl("/bin/program", "program", "--leaf", NULL);
    return NULL;
}

static void *spinner(void *arg) {
    spin_us((long)(size_t)arg);
    return NULL;
}

static void kill_thread_part(int rounds, int *ok) {
    for (int r = 0; r < rounds; r++) {
        pid_t p = fork();
        if (p == 0) {
            if (install_filter()) _exit(3);
            pthread_t t[3];
            pthread_create(&t[0], NULL, spin_then_die, (void *)(size_t)(300 + 100 * (r % 4)));
            pthread_create(&t[1], NULL, spinner, (void *)(size_t)2000);
            if (r % 2) pthread_create(&t[2], NULL, spin_then_exec, (void *)(size_t)3000);
            spin_us(500);
            if (r % 3 == 0) syscall(SYS_getppid); /* the leader dies, its threads run on */
            pthread_join(t[1], NULL);
            if (r % 2) pthread_join(t[2], NULL);
            _exit(0);
        }
        int st;
        if (waitpid(p, &st, 0) == p) (*ok)++;
    }
}

static void *sleeper(void *arg) {
    nap((long)(size_t)arg);
    return NULL;
}

static void *vforker(void *arg) {
    (void)arg;
    for (;;) {
        pid_t c = vfork();
        if (c == 0) {
            spin_us(200);
            _exit(0);
        }
        if (c > 0) waitpid(c, NULL, 0);
    }
    return NULL;
}

static void *spin_then_kill_all(void *arg) {
    spin_us((long)(size_t)arg);
    syscall(SYS_getpgrp); /* the whole process dies here */
    return NULL;
}

static void kill_process_part(int rounds, int *ok) {
    for (int r = 0; r < rounds; r++) {
        pid_t p = fork();
        if (p == 0) {
            if (install_filter()) _exit(3);
            pthread_t t[4];
            pthread_create(&t[0], NULL, spinner, (void *)(size_t)5000);
            pthread_create(&t[1], NULL, sleeper, (void *)(size_t)5000);
            pthread_create(&t[2], NULL, vforker, NULL);
            pthread_create(&t[3], NULL, spin_then_kill_all, (void *)(size_t)(800 + 300 * (r % 4)));
            spin_us(10000);
            _exit(0);
        }
        int st;
        if (waitpid(p, &st, 0) == p && WIFSIGNALED(st)) (*ok)++;
    }
}

static volatile int trapped;
static void on_sigsys(int sig) {
    (void)sig;
    trapped++;
    pid_t c = fork();
    if (c == 0) {
        if (trapped % 2) execl("/bin/program", "program", "--leaf", NULL);
        _exit(0);
    }
    if (c > 0) waitpid(c, NULL, 0);
}

static void trap_part(int rounds, int *ok) {
    pid_t p = fork();
    if (p == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_sigsys;
        sigaction(SIGSYS, &sa, NULL);
        if (install_filter()) _exit(3);
        pthread_t t;
        pthread_create(&t, NULL, spinner, (void *)(size_t)(rounds * 400));
        for (int r = 0; r < rounds; r++) {
            syscall(SYS_sched_getscheduler, 0);
            spin_us(200);
        }
        pthread_join(t, NULL);
        _exit(trapped == rounds ? 0 : 1);
    }
    int st;
    if (waitpid(p, &st, 0) == p && WIFEXITED(st) && WEXITSTATUS(st) == 0) *ok = rounds;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--leaf") == 0) return 0;
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1) scale = 1;
    ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    setvbuf(stdout, NULL, _IONBF, 0);
    int a = 0, b = 0, c = 0;
    kill_thread_part(12 * scale, &a);
    printf("kill thread: %d processes\n", a);
    kill_process_part(10 * scale, &b);
    printf("kill process: %d killed by the filter\n", b);
    trap_part(10 * scale, &c);
    printf("trap: %d handled\n", c);
    printf("done (%d CPUs)\n", ncpu);
    return 0;
}
