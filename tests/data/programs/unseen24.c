/* A twenty-fourth workload written after the model, for `activemm capture --program` with
 * `--module brd` (a RAM disk, /dev/ram0, to swap on):
 *  - the multi-gen LRU with its page table walks turned on (/sys/kernel/mm/lru_gen/enabled):
 *    aging walks every mm on the memory cgroup's mm_list, each taken with mmget_not_zero()
 *    and put with mmput_async(), whose last put runs __mmput() in a kworker;
 *  - proactive reclaim (memory.reclaim) written over and over by two threads while the
 *    group's processes, their anonymous memory partly swapped out, fork, exec, exit and
 *    are killed, so that a walk holds an mm whose owners are gone;
 *  - a process whose threads keep faulting pages back in while reclaim takes them.
 * Without /dev/ram0 (no --module brd) it still runs, the reclaim taking page cache only. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/swap.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define GROUP "/sys/fs/cgroup/squeeze"
#define DEV "/dev/ram0"

static volatile int stop;
static void nap(long us) { struct timespec t = {us / 1000000, (us % 1000000) * 1000}; nanosleep(&t, NULL); }
static char *const true_argv[] = {"true", NULL};

static int put(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    return n < 0 ? -1 : 0;
}

static void join_group(void) {
    char me[32];
    snprintf(me, sizeof(me), "%d", getpid());
    put(GROUP "/cgroup.procs", me);
}

static char *touch(long mb) {
    char *p = mmap(NULL, (size_t)mb << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (p == MAP_FAILED) return NULL;
    for (long i = 0; i < (mb << 20); i += 4096) p[i] = (char)i;
    return p;
}

static void *reclaimer(void *arg) {
    const char *amount = arg;
    while (!stop) {
        put(GROUP "/memory.reclaim", amount);
        nap(300);
    }
    return NULL;
}

static char *shared;
static void *refaulter(void *arg) {
    long mb = (long)arg;
    for (int k = 0; k < 40 && !stop; k++) {
        for (long i = 0; i < (mb << 20); i += 4096) shared[i]++;
        nap(200);
    }
    return NULL;
}

/* One member of the group: touch memory, then end as `how` says. */
static void member(int how, int ms) {
    join_group();
    char *p = touch(4 + how % 3);
    if (p == NULL) _exit(1);
    nap(ms * 1000L);
    switch (how % 5) {
    case 0:
        if (fork() == 0) { touch(2); nap(ms * 500L); _exit(0); }
        _exit(0);
    case 1:
        execv("/bin/true", true_argv);
        _exit(1);
    case 2: {
        shared = p;
        pthread_t t[2];
        for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, refaulter, (void *)4L);
        nap(ms * 1000L);
        _exit(0);
    }
    case 3:
        for (;;) nap(1000);  /* killed by the parent */
    default:
        if (vfork() == 0) _exit(0);
        _exit(0);
    }
}

int main(int argc, char **argv) {
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1) scale = 1;
    setvbuf(stdout, NULL, _IONBF, 0);
    int swap = access(DEV, F_OK) == 0 && system("mkswap " DEV " > /dev/null 2>&1") == 0 &&
               swapon(DEV, 0) == 0;
    int mglru = put("/sys/kernel/mm/lru_gen/enabled", "y") == 0;
    mkdir("/sys/fs/cgroup", 0755);
    mount("none", "/sys/fs/cgroup", "cgroup2", 0, NULL);
    put("/sys/fs/cgroup/cgroup.subtree_control", "+memory");
    mkdir(GROUP, 0755);
    put(GROUP "/memory.max", "24M");
    printf("unseen24: swap %s, multi-gen LRU walks %s\n", swap ? "on" : "off", mglru ? "on" : "off");
    pthread_t r[2];
    pthread_create(&r[0], NULL, reclaimer, "2M");
    pthread_create(&r[1], NULL, reclaimer, "8M");
    for (int round = 0; round < 10 * scale; round++) {
        pid_t kids[6];
        for (int i = 0; i < 6; i++) {
            kids[i] = fork();
            if (kids[i] == 0) member(round + i, 5 + (round * 7 + i * 3) % 20);
        }
        nap(15000);
        for (int i = 0; i < 6; i++)
            if ((round + i) % 5 == 3 && kids[i] > 0) kill(kids[i], SIGKILL);
        while (wait(NULL) > 0) {}
    }
    stop = 1;
    pthread_join(r[0], NULL);
    pthread_join(r[1], NULL);
    if (swap) swapoff(DEV);
    printf("done\n");
    return 0;
}
