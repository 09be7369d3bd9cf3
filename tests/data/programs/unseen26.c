/* A twenty-sixth workload written after the model, for `activemm capture --program`, made for
 * `--kernel-args 'numa=fake=2 numa_balancing=enable movablecore=256M'` (two emulated NUMA
 * nodes and a movable zone) and best with `--memory 1024`:
 *  - automatic NUMA balancing: processes whose threads touch memory bound to the other node;
 *    task_numa_work() (a task_work of each thread) makes their pages PROT_NONE and flushes
 *    their mm on every CPU running it, the hinting faults migrate the pages back;
 *  - mbind(MPOL_MF_MOVE) flipping a buffer between the nodes while sibling threads run on
 *    other CPUs and the process forks, execs and exits;
 *  - memory blocks of the movable zone taken offline and back online (offline_pages():
 *    every page of the block migrated, try_to_migrate() flushing the TLBs of mms that are
 *    not the writer's, some of them exiting meanwhile).
 * Without the kernel arguments it still runs: one node, no movable blocks. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MPOL_DEFAULT 0
#define MPOL_BIND 2
#define MPOL_MF_MOVE (1 << 1)
#define MB (1L << 20)

static volatile int stop;
static int ncpu = 1, nodes = 1;
static void nap(long us) { struct timespec t = {us / 1000000, (us % 1000000) * 1000}; nanosleep(&t, NULL); }

static int put(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -errno;
    ssize_t n = write(fd, text, strlen(text));
    int err = n < 0 ? -errno : 0;
    close(fd);
    return err;
}

static long bind_to(char *p, long len, int node) {
    unsigned long mask = 1UL << node;
    return syscall(SYS_mbind, p, len, node < 0 ? MPOL_DEFAULT : MPOL_BIND, node < 0 ? NULL : &mask,
                   node < 0 ? 0 : 8 * sizeof(mask), node < 0 ? 0 : MPOL_MF_MOVE);
}

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu % ncpu, &set);
    sched_setaffinity(0, sizeof(set), &set);
}

static char *touch(long len) {
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    for (long i = 0; i < len; i += 4096) p[i] = (char)i;
    return p;
}

struct buf { char *p; long len; int cpu; int rounds; };

static void *toucher(void *arg) {
    struct buf *b = arg;
    pin(b->cpu);
    for (int k = 0; k < b->rounds && !stop; k++) {
        for (long i = 0; i < b->len; i += 4096) b->p[i]++;
        if (k % 4 == 3) pin(b->cpu + k);
        nap(150);
    }
    return NULL;
}

static void *flipper(void *arg) {
    struct buf *b = arg;
    for (int k = 0; k < b->rounds && !stop; k++) {
        bind_to(b->p, b->len, nodes > 1 ? k % nodes : -1);
        nap(300);
    }
    return NULL;
}

/* One process: threads touching a buffer on other CPUs, one moving it between nodes, then
 * the end `how` says. */
static void worker(int how, int rounds) {
    long len = (4 + how % 3) * MB;
    char *p = touch(len);
    if (p == NULL) _exit(1);
    if (nodes > 1) bind_to(p, len, 1);
    struct buf b[3];
    pthread_t t[3];
    for (int i = 0; i < 3; i++) {
        b[i] = (struct buf){p, len, how + i, rounds};
        pthread_create(&t[i], NULL, i == 2 ? flipper : toucher, &b[i]);
    }
    nap(2000L * rounds / 3);
    switch (how % 4) {
    case 0:
        if (fork() == 0) {
            for (long i = 0; i < len; i += 4096) p[i]++;
            nap(1000);
            _exit(0);
        }
        _exit(0); /* exit_group() with the threads running */
    case 1:
        execl("/proc/self/exe", "program", "child", NULL);
        _exit(1);
    case 2:
        for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
        _exit(0);
    default:
        for (;;) nap(1000); /* killed by the parent */
    }
}

/* The movable memory blocks: offline and online again, over and over. */
static char blocks[64][320];
static int nblocks;
static void find_blocks(void) {
    DIR *d = opendir("/sys/devices/system/memory");
    struct dirent *e;
    while (d && (e = readdir(d)) && nblocks < 64) {
        if (strncmp(e->d_name, "memory", 6) || e->d_name[6] < '0' || e->d_name[6] > '9') continue;
        char path[320], zones[64] = "";
        snprintf(path, sizeof(path), "/sys/devices/system/memory/%s/valid_zones", e->d_name);
        int fd = open(path, O_RDONLY);
        if (fd < 0) continue;
        ssize_t n = read(fd, zones, sizeof(zones) - 1);
        close(fd);
        if (n > 0 && strstr(zones, "Movable"))
            snprintf(blocks[nblocks++], sizeof(blocks[0]), "/sys/devices/system/memory/%s/state",
                     e->d_name);
    }
    if (d) closedir(d);
}

static int offlined, refused, last_error;
static void *hotplugger(void *arg) {
    (void)arg;
    for (int k = 0; !stop && nblocks; k++) {
        const char *state = blocks[k % nblocks];
        int err = put(state, "offline");
        if (err == 0) {
            offlined++;
            nap(2000);
            put(state, "online_movable");
        } else {
            refused++;
            last_error = -err;
        }
        nap(3000);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "child") == 0) {
        char *p = touch(2 * MB);
        if (p && fork() == 0) _exit(p[4096] == 42);
        wait(NULL);
        return 0;
    }
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1) scale = 1;
    setvbuf(stdout, NULL, _IONBF, 0);
    ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (ncpu < 1) ncpu = 1;
    while (nodes < 8) {
        char path[64];
        snprintf(path, sizeof(path), "/sys/devices/system/node/node%d", nodes);
        if (access(path, F_OK) != 0) break;
        nodes++;
    }
    put("/proc/sys/kernel/numa_balancing", "1");
    put("/proc/sys/kernel/numa_balancing_scan_delay_ms", "10");
    put("/proc/sys/kernel/numa_balancing_scan_period_min_ms", "10");
    find_blocks();
    printf("unseen26: %d CPUs, %d nodes, %d movable memory blocks\n", ncpu, nodes, nblocks);
    pthread_t h;
    pthread_create(&h, NULL, hotplugger, NULL);
    for (int round = 0; round < 8 * scale; round++) {
        pid_t kids[6];
        for (int i = 0; i < 6; i++) {
            kids[i] = fork();
            if (kids[i] == 0) worker(round + i, 12 + (i * 5) % 11);
        }
        nap(15000);
        for (int i = 0; i < 6; i++)
            if ((round + i) % 4 == 3) kill(kids[i], SIGKILL);
        while (wait(NULL) > 0) {}
    }
    stop = 1;
    pthread_join(h, NULL);
    printf("unseen26: done, %d blocks taken offline, %d refused (last: %s)\n", offlined, refused,
           refused ? strerror(last_error) : "none");
    return 0;
}
