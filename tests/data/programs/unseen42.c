/* A forty-second workload written after the model, for `activemm capture --program`, on 2
 * CPUs or more: deaths on a timer, wherever they fall.
 *  - processes whose threads fork, vfork, exec and munmap in a loop, killed by their own
 *    POSIX timer (SIGEV_THREAD_ID, SIGTERM's default action: the whole group exits) after a
 *    delay that varies by tens of microseconds, so the kill lands inside an exec, a fork's
 *    dup_mmap, a vfork wait or an exit already under way;
 *  - the same with SIGALRM from setitimer() delivered to whichever thread runs, and with the
 *    timer aimed at a thread that is exec'ing;
 *  - a SIGCHLD storm: a parent with SA_NOCLDWAIT whose short-lived children are reaped by the
 *    kernel as they exit (release_task() from exit_notify()), none waited for.
 * Each part counts what it did and prints it. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int ncpu = 1;
static void spin_us(long us) {
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    do clock_gettime(CLOCK_MONOTONIC, &b);
    while ((b.tv_sec - a.tv_sec) * 1000000L + (b.tv_nsec - a.tv_nsec) / 1000 < us);
}

static void *churn(void *arg) {
    long kind = (long)(size_t)arg;
    for (int i = 0;; i++) {
        if (kind == 0) {
            pid_t c = fork();
            if (c == 0) {
                if (i % 2) execl("/bin/program", "program", "--leaf", NULL);
                _exit(0);
            }
            if (c > 0) waitpid(c, NULL, 0);
        } else if (kind == 1) {
            pid_t c = vfork();
            if (c == 0) {
                if (i % 3 == 0) execl("/bin/program", "program", "--leaf", NULL);
                _exit(0);
            }
            if (c > 0) waitpid(c, NULL, 0);
        } else if (kind == 2) {
            char *p = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p != MAP_FAILED) {
                memset(p, 1, 1 << 16);
                munmap(p, 1 << 16);
            }
        } else {
            spin_us(300);
            execl("/bin/program", "program", "--leaf", NULL);
        }
    }
    return NULL;
}

/* A member that dies by its own timer `delay_us` after it starts. */
static void timed_member(long delay_us, int how) {
    pthread_t t[4];
    int n = ncpu > 1 ? 3 : 2;
    for (int i = 0; i < n; i++) pthread_create(&t[i], NULL, churn, (void *)(size_t)i);
    if (how == 2) pthread_create(&t[3], NULL, churn, (void *)(size_t)3);
    if (how == 1) {
        struct itimerval it = {{0, 0}, {0, delay_us}};
        setitimer(ITIMER_REAL, &it, NULL);
    } else {
        struct sigevent sev;
        memset(&sev, 0, sizeof sev);
        sev.sigev_notify = SIGEV_THREAD_ID;
        sev.sigev_signo = SIGTERM;
        sev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
        timer_t tm;
        if (timer_create(CLOCK_MONOTONIC, &sev, &tm) == 0) {
            struct itimerspec its = {{0, 0}, {delay_us / 1000000, (delay_us % 1000000) * 1000}};
            timer_settime(tm, 0, &its, NULL);
        }
    }
    churn((void *)(size_t)0);
}

static void timer_part(int rounds, int *killed) {
    for (int r = 0; r < rounds; r++) {
        pid_t p = fork();
        if (p == 0) timed_member(2000 + 137 * r, r % 3);
        int st;
        if (waitpid(p, &st, 0) == p && WIFSIGNALED(st)) (*killed)++;
    }
}

static void nocldwait_part(int n, int *spawned) {
    pid_t p = fork();
    if (p == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = SIG_IGN;
        sa.sa_flags = SA_NOCLDWAIT;
        sigaction(SIGCHLD, &sa, NULL);
        for (int i = 0; i < n; i++) {
            pid_t c = fork();
            if (c == 0) {
                spin_us(100 + 50 * (i % 5));
                if (i % 4 == 0) execl("/bin/program", "program", "--leaf", NULL);
                _exit(0);
            }
            spin_us(150);
        }
        while (wait(NULL) > 0 || 0) {}
        _exit(0);
    }
    int st;
    if (waitpid(p, &st, 0) == p && WIFEXITED(st)) *spawned = n;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--leaf") == 0) return 0;
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1) scale = 1;
    ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    setvbuf(stdout, NULL, _IONBF, 0);
    int killed = 0, spawned = 0;
    timer_part(15 * scale, &killed);
    printf("timers: %d processes killed\n", killed);
    nocldwait_part(40 * scale, &spawned);
    printf("nocldwait: %d children reaped by the kernel\n", spawned);
    printf("done (%d CPUs)\n", ncpu);
    return 0;
}
