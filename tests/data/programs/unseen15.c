/* A fifteenth workload written after the model, for `activemm capture --program`:
 *  - memory-cgroup OOM kills: a cgroup v2 with a small memory.max and memory.oom.group set,
 *    holding several processes with threads that all touch memory, so that one of them
 *    crossing the limit has the whole group killed at once (mark_oom_victim() for each:
 *    signal->oom_mm mmgrab()s every victim's mm, the OOM reaper unmaps them while they
 *    exit, the signal structs free the references later);
 *  - the same without memory.oom.group: only the biggest is killed, its threads exiting
 *    while its siblings in the cgroup fork and exec;
 *  - a victim whose threads are blocked in a pipe read, and one with a vfork child
 *    sharing its mm when the kill comes. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define GROUP "/sys/fs/cgroup/oomgroup"

static void nap(long us) { struct timespec t = {us / 1000000, (us % 1000000) * 1000}; nanosleep(&t, NULL); }
static char *const true_argv[] = {"true", NULL};

static int put(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    return n < 0 ? -1 : 0;
}

/* A memory cgroup with memory.max `max` and memory.oom.group `group`: 0 when set up. */
static int memory_cgroup(const char *max, const char *group) {
    mkdir("/sys/fs/cgroup", 0755);
    mount("none", "/sys/fs/cgroup", "cgroup2", 0, NULL);  /* EBUSY when mounted already */
    put("/sys/fs/cgroup/cgroup.subtree_control", "+memory");
    mkdir(GROUP, 0755);
    if (put(GROUP "/memory.max", max) != 0) return -1;
    put(GROUP "/memory.swap.max", "0");
    return put(GROUP "/memory.oom.group", group);
}

static void join_group(void) {
    char me[32];
    snprintf(me, sizeof(me), "%d", getpid());
    put(GROUP "/cgroup.procs", me);
}

/* Touches `mb` MiB a page at a time, slowly, then holds it. */
static void *toucher(void *arg) {
    long mb = (long)arg;
    char *p = mmap(NULL, (size_t)mb << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (p == MAP_FAILED) return NULL;
    for (long i = 0; i < (mb << 20); i += 4096) {
        p[i] = 1;
        if ((i & ((1 << 20) - 1)) == 0) nap(2000);
    }
    for (;;) nap(10000);
    return NULL;
}

static void *reader(void *arg) {
    int fd = (int)(long)arg;
    char c;
    if (read(fd, &c, 1) < 0) return NULL;
    return NULL;
}

/* A member of the group: `threads` threads touching `mb` MiB each; `pipe_fd` >= 0 adds a
 * thread blocked reading it; `vfork_child` adds a vfork child that sleeps sharing the mm. */
static void member(int threads, long mb, int pipe_fd, int vfork_child) {
    join_group();
    pthread_t t;
    for (int i = 0; i < threads; i++) pthread_create(&t, NULL, toucher, (void *)mb);
    if (pipe_fd >= 0) pthread_create(&t, NULL, reader, (void *)(long)pipe_fd);
    if (vfork_child) {
        pid_t c = vfork();
        if (c == 0) {  /* the parent thread waits; the others go on touching memory */
            for (int i = 0; i < 200; i++) {
                struct timespec ts = {0, 5000000};
                nanosleep(&ts, NULL);
            }
            execve("/bin/true", true_argv, NULL);
            _exit(0);
        }
    }
    for (;;) nap(10000);
}

/* Forks processes into the group, runs `forkers` churn in it too, and waits for them all. */
static void round_of(int members, int threads, long mb, int extras) {
    int p[2];
    if (pipe(p) != 0) return;
    pid_t kids[16];
    int n = 0;
    for (int i = 0; i < members && n < 16; i++) {
        pid_t c = fork();
        if (c == 0) member(threads, mb, i == 0 ? p[0] : -1, extras && i == 1);
        if (c > 0) kids[n++] = c;
    }
    /* fork and exec churn inside the group while it fills up */
    for (int i = 0; i < 20; i++) {
        pid_t c = fork();
        if (c == 0) {
            join_group();
            if (i % 2) execve("/bin/true", true_argv, NULL);
            _exit(0);
        }
        if (c > 0) waitpid(c, NULL, 0);
        nap(5000);
    }
    /* whatever the OOM killer left after a while goes by SIGKILL */
    for (int waited = 0; waited < 300; waited++) {
        int alive = 0;
        for (int i = 0; i < n; i++)
            if (kids[i] > 0 && waitpid(kids[i], NULL, WNOHANG) == 0) alive++;
            else kids[i] = -1;
        if (!alive) break;
        nap(20000);
    }
    for (int i = 0; i < n; i++)
        if (kids[i] > 0) {
            kill(kids[i], SIGKILL);
            waitpid(kids[i], NULL, 0);
        }
    close(p[0]);
    close(p[1]);
}

int main(void) {
    int rounds = 0;
    if (memory_cgroup("24M", "1") == 0) {
        round_of(3, 2, 6, 0);   /* the group is killed together */
        round_of(4, 1, 8, 1);   /* with a pipe reader and a vfork child */
        rounds += 2;
    }
    if (memory_cgroup("24M", "0") == 0) {
        round_of(3, 2, 6, 0);   /* one victim at a time */
        rounds++;
    }
    printf("unseen15: %d memory cgroup rounds\n", rounds);
    return 0;
}
