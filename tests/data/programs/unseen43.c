/* A forty-third workload written after the model, for `activemm capture --program`, on 2
 * CPUs or more: exits that block or are preempted before their exit_mm(), and tasks that
 * run out of their time anywhere.
 *  - robust priority-inheritance mutexes: a SCHED_OTHER thread takes one, a SCHED_FIFO
 *    thread pinned to the same CPU blocks on it (boosting the owner), and the owner exits
 *    holding it: exit_mm_release() walks the robust list (futex_exit_release(): the waiter is
 *    woken as the owner dies, and preempts it there, before its exit_mm()); the same across
 *    processes on a MAP_SHARED mutex whose owner process is SIGKILLed;
 *  - threads exiting while a sibling holds the mmap lock for long (mmap(MAP_POPULATE) and
 *    munmap() of 4 MiB in a loop): their exit_mm() waits in mmap_read_lock() with the mm
 *    still theirs, and the group is then killed;
 *  - SCHED_DEADLINE tasks (100 us every 500 us to 2 ms) that munmap, exec and exit: throttled
 *    wherever their runtime runs out, inside exec and exit_mmap() too, and pushed between
 *    CPUs by the deadline scheduler;
 *  - threads whose clear_child_tid word lies in memory their process unmapped before they
 *    exit (mm_release()'s put_user() fails).
 * Each part counts what it did and prints it. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
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

static void pin(int cpu) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu % ncpu, &s);
    sched_setaffinity(0, sizeof s, &s);
}

static void fifo(int prio) {
    struct sched_param sp = {.sched_priority = prio};
    sched_setscheduler(0, SCHED_FIFO, &sp);
}

/* ---- robust PI mutexes ---- */

static void robust_pi_init(pthread_mutex_t *m, int shared) {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setprotocol(&a, PTHREAD_PRIO_INHERIT);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (shared) pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutex_init(m, &a);
}

struct pi_round {
    pthread_mutex_t m;
    volatile int held;
    int cpu;
};

static void *pi_owner(void *arg) {
    struct pi_round *r = arg;
    pin(r->cpu);
    pthread_mutex_lock(&r->m);
    r->held = 1;
    spin_us(400); /* the waiter blocks meanwhile, boosting this thread */
    return NULL;  /* exits holding it: the robust list hands it to the waiter */
}

static void *pi_waiter(void *arg) {
    struct pi_round *r = arg;
    pin(r->cpu);
    while (!r->held) usleep(50);
    fifo(10); /* FIFO only once the owner holds it: a FIFO spin would starve the owner */
    int e = pthread_mutex_lock(&r->m);
    if (e == EOWNERDEAD) pthread_mutex_consistent(&r->m);
    pthread_mutex_unlock(&r->m);
    return (void *)(intptr_t)(e == EOWNERDEAD);
}

/* One process: rounds of an owner exiting under a boosted waiter, then exit or exec. */
static void pi_process(int rounds, int cpu, int last) {
    int dead = 0;
    for (int i = 0; i < rounds; i++) {
        struct pi_round r = {.held = 0, .cpu = cpu + i};
        robust_pi_init(&r.m, 0);
        pthread_t o, w;
        void *v = NULL;
        pthread_create(&o, NULL, pi_owner, &r);
        pthread_create(&w, NULL, pi_waiter, &r);
        pthread_join(o, NULL);
        pthread_join(w, &v);
        dead += v != NULL;
    }
    if (last % 2) execl("/bin/program", "program", "--leaf", NULL);
    _exit(dead > 0 ? 0 : 1);
}

static void pi_part(int n, int *ok) {
    for (int i = 0; i < n; i++) {
        pid_t p = fork();
        if (p == 0) pi_process(3, i, i);
        int st;
        if (waitpid(p, &st, 0) == p && WIFEXITED(st) && WEXITSTATUS(st) == 0) (*ok)++;
    }
}

/* A mutex in shared memory: the owner process is SIGKILLed while a FIFO waiter of another
 * process blocks on it on the same CPU. */
static void shared_pi_part(int n, int *recovered) {
    pthread_mutex_t *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    volatile int *held = (volatile int *)(m + 1);
    if (m == MAP_FAILED) return;
    for (int i = 0; i < n; i++) {
        robust_pi_init(m, 1);
        *held = 0;
        pid_t owner = fork();
        if (owner == 0) {
            pin(i);
            pthread_mutex_lock(m);
            *held = 1;
            for (;;) spin_us(1000);
        }
        pid_t waiter = fork();
        if (waiter == 0) {
            pin(i);
            while (!*held) usleep(50);
            fifo(5);
            int e = pthread_mutex_lock(m);
            if (e == EOWNERDEAD) pthread_mutex_consistent(m);
            pthread_mutex_unlock(m);
            _exit(e == EOWNERDEAD ? 0 : 1);
        }
        while (!*held) sched_yield();
        spin_us(300);
        kill(owner, SIGKILL);
        int st;
        waitpid(owner, NULL, 0);
        if (waitpid(waiter, &st, 0) == waiter && WIFEXITED(st) && WEXITSTATUS(st) == 0)
            (*recovered)++;
    }
    munmap(m, 4096);
}

/* ---- exits waiting for the mmap lock ---- */

static volatile int stop_mapper;

static void *mapper(void *arg) {
    (void)arg;
    while (!stop_mapper) {
        char *p = mmap(NULL, 4 << 20, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
        if (p != MAP_FAILED) munmap(p, 4 << 20);
    }
    return NULL;
}

static void *short_thread(void *arg) {
    spin_us(50 + (long)(intptr_t)arg % 200);
    return NULL;
}

static void mmap_lock_part(int n, int *groups) {
    for (int i = 0; i < n; i++) {
        pid_t p = fork();
        if (p == 0) {
            pthread_t m;
            pthread_create(&m, NULL, mapper, NULL);
            for (int k = 0;; k++) {
                pthread_t t;
                if (pthread_create(&t, NULL, short_thread, (void *)(intptr_t)(k * 37)) == 0)
                    pthread_detach(t);
                spin_us(100);
            }
        }
        spin_us(3000 + 500 * (i % 4));
        kill(p, SIGKILL);
        if (waitpid(p, NULL, 0) == p) (*groups)++;
    }
}

/* ---- SCHED_DEADLINE ---- */

struct dl_attr {
    uint32_t size, policy;
    uint64_t flags;
    int32_t nice;
    uint32_t prio;
    uint64_t runtime, deadline, period;
};

static int deadline(long period_us) {
    struct dl_attr a = {.size = sizeof a, .policy = 6 /* SCHED_DEADLINE */,
                        .runtime = 100 * 1000, .deadline = period_us * 1000,
                        .period = period_us * 1000};
    return (int)syscall(SYS_sched_setattr, 0, &a, 0);
}

static void *dl_thread(void *arg) {
    long period = (long)(intptr_t)arg;
    if (deadline(period) != 0) return NULL;
    for (int i = 0; i < 20; i++) {
        char *p = mmap(NULL, 1 << 18, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) break;
        memset(p, i, 1 << 18);
        munmap(p, 1 << 18);
    }
    return (void *)1;
}

static void dl_part(int n, int *throttled) {
    for (int i = 0; i < n; i++) {
        pid_t p = fork();
        if (p == 0) {
            long period = 500 + 500 * (i % 4);
            pthread_t t[2];
            for (int k = 0; k < 2; k++) pthread_create(&t[k], NULL, dl_thread, (void *)(intptr_t)period);
            int ok = deadline(period) == 0;
            char *p2 = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p2 != MAP_FAILED) memset(p2, 1, 1 << 20); /* exit_mmap has work to do */
            if (i % 3 == 0) {
                for (int k = 0; k < 2; k++) pthread_join(t[k], NULL);
                execl("/bin/program", "program", "--leaf", NULL);
            }
            if (i % 3 == 1) syscall(SYS_exit_group, ok ? 0 : 1); /* threads still running */
            for (int k = 0; k < 2; k++) pthread_join(t[k], NULL);
            _exit(ok ? 0 : 1);
        }
        int st;
        if (waitpid(p, &st, 0) == p && WIFEXITED(st) && WEXITSTATUS(st) == 0) (*throttled)++;
    }
}

/* ---- clear_child_tid in unmapped memory ---- */

static int tid_child(void *arg) {
    spin_us(200 + (long)(intptr_t)arg);
    return 0;
}

static void ctid_part(int n, int *done) {
    for (int i = 0; i < n; i++) {
        pid_t p = fork();
        if (p == 0) {
            char *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            char *stack = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (page == MAP_FAILED || stack == MAP_FAILED) _exit(1);
            int flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD |
                        CLONE_SYSVSEM | CLONE_CHILD_CLEARTID;
            pid_t *ctid = (pid_t *)page;
            int t = clone(tid_child, stack + (1 << 16), flags, (void *)(intptr_t)(i * 50), NULL, NULL, ctid);
            munmap(page, 4096); /* the word the kernel clears at the thread's exit is gone */
            spin_us(600);
            _exit(t > 0 ? 0 : 1);
        }
        int st;
        if (waitpid(p, &st, 0) == p && WIFEXITED(st) && WEXITSTATUS(st) == 0) (*done)++;
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--leaf") == 0) return 0;
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1) scale = 1;
    ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    setvbuf(stdout, NULL, _IONBF, 0);
    int pi = 0, shared = 0, groups = 0, dl = 0, ctid = 0;
    pi_part(8 * scale, &pi);
    printf("robust PI: %d processes saw their owner die under a boosted waiter\n", pi);
    shared_pi_part(6 * scale, &shared);
    printf("shared robust PI: %d waiters took over from a killed owner\n", shared);
    mmap_lock_part(8 * scale, &groups);
    printf("mmap lock: %d groups killed while threads exited\n", groups);
    dl_part(12 * scale, &dl);
    printf("deadline: %d processes ran as SCHED_DEADLINE\n", dl);
    ctid_part(10 * scale, &ctid);
    printf("clear_child_tid: %d threads exited past their unmapped word\n", ctid);
    printf("done (%d CPUs)\n", ncpu);
    return 0;
}
