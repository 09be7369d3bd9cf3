/* A forty-fourth workload written after the model, for `activemm capture --program`: no
 * theme, a seeded random mix. Two workers per CPU each take 60 steps (x the scale given as
 * the first argument, the seed as the second), every step one of: fork a child that runs a
 * few steps of its own, vfork and exec or _exit, start a thread that maps, unmaps or forks,
 * a clone(CLONE_VM) process, unmap / mprotect / MADV_DONTNEED memory its threads touch, move
 * itself to another CPU, yield or sleep a little, SIGKILL one of its children, re-exec
 * itself (from the leader or from a thread: de_thread()) carrying on its steps in the new
 * image. Each worker ends its way: returning from main with threads running, exit_group()
 * from a thread, pthread_exit() of its leader, or SIGKILL of itself. The same seed gives the
 * same choices (not the same timing). */
#define _GNU_SOURCE
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
static uint64_t rng;
static char *region; /* 1 MiB its threads touch */
#define REGION (1 << 20)

static uint32_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

static void spin_us(long us) {
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    do clock_gettime(CLOCK_MONOTONIC, &b);
    while ((b.tv_sec - a.tv_sec) * 1000000L + (b.tv_nsec - a.tv_nsec) / 1000 < us);
}

static void touch(void) {
    if (region != MAP_FAILED)
        for (int i = 0; i < REGION; i += 4096) ((volatile char *)region)[i] = 1;
}

static void *toucher(void *arg) {
    long what = (long)(intptr_t)arg;
    for (int i = 0; i < 4; i++) {
        char *p = mmap(NULL, 1 << 17, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p != MAP_FAILED) {
            memset(p, i, 1 << 17);
            munmap(p, 1 << 17);
        }
        touch();
    }
    if (what % 3 == 0) {
        pid_t c = fork();
        if (c == 0) _exit(0);
        if (c > 0) waitpid(c, NULL, 0);
    }
    spin_us(100 * (what % 5));
    return NULL;
}

static int vm_child(void *arg) {
    (void)arg;
    touch();
    spin_us(200);
    return 0;
}

static pid_t kids[16];
static int nkids;

static void reap(void) {
    while (waitpid(-1, NULL, WNOHANG | __WALL) > 0) {}
}

static void reexec(int steps_left, int from_thread);

static void *execer(void *arg) {
    spin_us(100);
    reexec((int)(intptr_t)arg, 1);
    return NULL;
}

static void run(int steps);

static void step(int steps_left) {
    switch (next() % 12) {
    case 0: { /* a child with a few steps of its own */
        pid_t c = fork();
        if (c == 0) {
            nkids = 0;
            run(3);
            _exit(0);
        }
        if (c > 0 && nkids < 16) kids[nkids++] = c;
        break;
    }
    case 1: {
        pid_t c = vfork();
        if (c == 0) {
            if (next() % 2) execl("/bin/program", "program", "--leaf", NULL);
            _exit(0);
        }
        break;
    }
    case 2:
    case 3: {
        pthread_t t;
        if (pthread_create(&t, NULL, toucher, (void *)(intptr_t)next()) == 0) pthread_detach(t);
        break;
    }
    case 4: {
        static char stack[1 << 16] __attribute__((aligned(16)));
        pid_t c = clone(vm_child, stack + sizeof stack, CLONE_VM | SIGCHLD, NULL);
        if (c > 0) waitpid(c, NULL, 0); /* one stack: wait before the next */
        break;
    }
    case 5: {
        size_t off = (next() % 16) * 65536;
        if (region == MAP_FAILED) break;
        switch (next() % 3) {
        case 0: madvise(region + off, 65536, MADV_DONTNEED); break;
        case 1:
            mprotect(region + off, 65536, PROT_READ);
            mprotect(region + off, 65536, PROT_READ | PROT_WRITE);
            break;
        default:
            munmap(region + off, 65536);
            mmap(region + off, 65536, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        }
        break;
    }
    case 6: {
        cpu_set_t s;
        CPU_ZERO(&s);
        CPU_SET(next() % ncpu, &s);
        if (next() % 4 == 0) for (int i = 0; i < ncpu; i++) CPU_SET(i, &s);
        sched_setaffinity(0, sizeof s, &s);
        break;
    }
    case 7:
        if (next() % 2) sched_yield();
        else usleep(next() % 300);
        break;
    case 8:
        if (nkids) {
            int k = next() % nkids;
            kill(kids[k], SIGKILL);
            kids[k] = kids[--nkids];
        }
        break;
    case 9:
        if (next() % 3 == 0) reexec(steps_left, 0);
        break;
    case 10:
        if (next() % 3 == 0) {
            pthread_t t;
            pthread_create(&t, NULL, execer, (void *)(intptr_t)steps_left);
            spin_us(50 + next() % 400); /* de_thread() kills this thread meanwhile */
        }
        break;
    default:
        touch();
        spin_us(next() % 200);
    }
    reap();
}

static void run(int steps) {
    for (int i = steps; i > 0; i--) step(i - 1);
}

static char seed_arg[32];

static void reexec(int steps_left, int from_thread) {
    char left[16], seed[32];
    snprintf(left, sizeof left, "%d", steps_left);
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)(rng | 1));
    (void)from_thread;
    execl("/bin/program", "program", "--worker", left, seed, NULL);
}

static void *group_exit(void *arg) {
    spin_us((long)(intptr_t)arg);
    syscall(SYS_exit_group, 0);
    return NULL;
}

static void worker(int steps) {
    region = mmap(NULL, REGION, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    run(steps);
    pthread_t t[3];
    for (int i = 0; i < 3; i++) pthread_create(&t[i], NULL, toucher, (void *)(intptr_t)next());
    switch (next() % 4) {
    case 0: exit(0); /* threads still running */
    case 1: pthread_create(&t[0], NULL, group_exit, (void *)(intptr_t)(next() % 500)); pause(); break;
    case 2: pthread_exit(NULL); /* the leader waits as a zombie for its threads */
    default: kill(getpid(), SIGKILL);
    }
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--leaf") == 0) return 0;
    ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (argc > 3 && strcmp(argv[1], "--worker") == 0) {
        rng = strtoull(argv[3], NULL, 10) | 1;
        worker(atoi(argv[2]));
    }
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1) scale = 1;
    rng = argc > 2 ? strtoull(argv[2], NULL, 10) | 1 : 44;
    snprintf(seed_arg, sizeof seed_arg, "%llu", (unsigned long long)rng);
    setvbuf(stdout, NULL, _IONBF, 0);
    int n = 2 * ncpu, ok = 0, killed = 0;
    pid_t w[64];
    for (int i = 0; i < n && i < 64; i++) {
        next();
        w[i] = fork();
        if (w[i] == 0) {
            rng = rng * 2654435761u + (uint64_t)i * 40503u + 1;
            worker(60 * scale);
        }
    }
    for (int i = 0; i < n && i < 64; i++) {
        int st;
        if (waitpid(w[i], &st, 0) == w[i]) {
            if (WIFSIGNALED(st)) killed++;
            else ok++;
        }
    }
    printf("random mix (seed %s): %d workers ended by themselves, %d killed\n", seed_arg, ok, killed);
    printf("done (%d CPUs)\n", ncpu);
    return 0;
}
