/* A second workload the model was not written against: threads that rename themselves
 * (prctl, a task_rename without exec), posix_spawn (CLONE_VM|CLONE_VFORK) from a threaded
 * process, the main thread exiting while its threads run on, /proc/PID/maps readers racing
 * exits, mremap/madvise-driven flushes across CPUs, and a process-shared mapping. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;
static int ncpus;
static volatile long sink;

static void pin(int cpu) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(cpu % ncpus, &s); sched_setaffinity(0, sizeof(s), &s); }
static void busy(long n) { for (volatile long i = 0; i < n; i++) sink += i; }
static void nap(long us) { struct timespec t = {0, us * 1000}; nanosleep(&t, NULL); }
static void reap(void) { while (wait(NULL) > 0 || errno == EINTR) {} }

static void *namer(void *a) {
    char name[16];
    for (int i = 0; i < 20; i++) {
        snprintf(name, sizeof name, "namer%ld-%d", (long)a, i);
        prctl(PR_SET_NAME, name);
        busy(3000);
        if (i % 4 == 0) nap(100);
    }
    return NULL;
}
static void renames(void) {
    pthread_t t[3];
    for (long k = 0; k < 3; k++) pthread_create(&t[k], NULL, namer, (void *)k);
    for (int k = 0; k < 3; k++) pthread_join(t[k], NULL);
}

static void *spawner(void *a) {
    (void)a;
    for (int i = 0; i < 4; i++) {
        pid_t p;
        char *argv[] = {"true", NULL};
        if (posix_spawn(&p, "/bin/true", NULL, NULL, argv, environ) == 0) waitpid(p, NULL, 0);
    }
    return NULL;
}
static void spawns(void) {
    pthread_t t[2];
    for (long k = 0; k < 2; k++) pthread_create(&t[k], NULL, spawner, NULL);
    for (int k = 0; k < 2; k++) pthread_join(t[k], NULL);
}

static void *lingering(void *a) { pin((int)(long)a); busy(150000); return NULL; }
static void leader_exits(void) {
    for (int i = 0; i < 4; i++) {
        pid_t c = fork();
        if (c == 0) {
            pthread_t t;
            for (long k = 0; k < 2; k++) pthread_create(&t, NULL, lingering, (void *)(k + i));
            syscall(SYS_exit, 0);  /* the main thread alone; the group lives on */
        }
        reap();
    }
}

static void maps_readers(void) {
    for (int i = 0; i < 8; i++) {
        pid_t c = fork();
        if (c == 0) { pin(i + 1); busy(20000 * (i % 3 + 1)); _exit(0); }
        char path[64], buf[4096];
        snprintf(path, sizeof path, "/proc/%d/maps", (int)c);
        for (int k = 0; k < 200; k++) {
            int fd = open(path, O_RDONLY);
            if (fd < 0) break;
            while (read(fd, buf, sizeof buf) > 0) {}
            close(fd);
        }
        reap();
    }
}

static void *remapper(void *a) {
    pin((int)(long)a);
    for (int i = 0; i < 30; i++) {
        char *p = mmap(NULL, 8 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        memset(p, 1, 8 * 4096);
        p = mremap(p, 8 * 4096, 16 * 4096, MREMAP_MAYMOVE);
        madvise(p, 16 * 4096, MADV_DONTNEED);
        munmap(p, 16 * 4096);
    }
    return NULL;
}
static void remaps(void) {
    pthread_t t[3];
    for (long k = 0; k < 3; k++) pthread_create(&t[k], NULL, remapper, (void *)k);
    for (int k = 0; k < 3; k++) pthread_join(t[k], NULL);
}

static void shared(void) {
    /* a process-shared mapping and a pipe ping-pong between two CPUs */
    volatile int *counter = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int a[2], b[2];
    char c = 0;
    if (pipe(a) || pipe(b)) return;
    pid_t child = fork();
    if (child == 0) {
        pin(1);
        for (int i = 0; i < 40; i++) { if (read(a[0], &c, 1) != 1) break; (*counter)++; write(b[1], &c, 1); }
        _exit(0);
    }
    pin(0);
    for (int i = 0; i < 40; i++) { (*counter)++; write(a[1], &c, 1); if (read(b[0], &c, 1) != 1) break; }
    reap();
}

int main(void) {
    ncpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
    renames(); spawns(); leader_exits(); maps_readers(); remaps(); shared();
    printf("unseen2 done\n");
    return 0;
}
