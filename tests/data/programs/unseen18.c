/* An eighteenth workload written after the model, for `activemm capture --program` with
 * `--module brd` (RAM disks, /dev/ram0, to swap on):
 *  - swap on /dev/ram0 and a memory cgroup v2 whose memory.max is below what its processes
 *    touch, so that their anonymous pages go out to swap: an mm with a page swapped out
 *    joins init_mm.mmlist (try_to_unmap_one()), and dup_mmap() puts a fork's copy there too;
 *  - swapoff() while those processes fork, exec and exit on other CPUs: try_to_unuse() walks
 *    mmlist taking an mm_users reference on each mm (mmget_not_zero()) and puts it back with
 *    mmput(), which is the last one when the owner exited meanwhile: then __mmput, exit_mmap
 *    and all, runs in the task calling swapoff, from a thread of this program or its main
 *    thread;
 *  - rounds with memory.max lifted before swapoff (every page comes back in), and rounds
 *    without (swapping in charges the group beyond its limit: reclaim with no swap to go to,
 *    the group's OOM killer, an OOM victim's mm on mmlist).
 * Without /dev/ram0 (no --module brd) it says so and exits 0 having done nothing. */
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

#define GROUP "/sys/fs/cgroup/swapgroup"
#define DEV "/dev/ram0"

static void nap(long us) { struct timespec t = {us / 1000000, (us % 1000000) * 1000}; nanosleep(&t, NULL); }
static char *const true_argv[] = {"true", NULL};

static int put(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    return n < 0 ? -1 : 0;
}

static int memory_cgroup(const char *max) {
    mkdir("/sys/fs/cgroup", 0755);
    mount("none", "/sys/fs/cgroup", "cgroup2", 0, NULL);  /* EBUSY when mounted already */
    put("/sys/fs/cgroup/cgroup.subtree_control", "+memory");
    mkdir(GROUP, 0755);
    put(GROUP "/memory.swap.max", "max");
    return put(GROUP "/memory.max", max);
}

static void join_group(void) {
    char me[32];
    snprintf(me, sizeof(me), "%d", getpid());
    put(GROUP "/cgroup.procs", me);
}

/* `mb` MiB of anonymous memory, every page written (past memory.max: some go to swap). */
static char *touch(long mb) {
    char *p = mmap(NULL, (size_t)mb << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (p == MAP_FAILED) return NULL;
    for (long i = 0; i < (mb << 20); i += 4096) p[i] = (char)i;
    return p;
}

static void *spinner(void *arg) {
    (void)arg;
    for (volatile long i = 0;; i++)
        if ((i & 0xffff) == 0) nap(500);
    return NULL;
}

/* A process of the group: touches its memory, then ends as `how` says after `ms`. */
static void hog(int how, long mb, int ms, int ready) {
    join_group();
    char *p = touch(mb);
    if (p == NULL) _exit(1);
    if (write(ready, "r", 1) != 1) _exit(1);
    pthread_t t;
    switch (how) {
    case 0:  /* a fork whose copy shares the swap entries (on mmlist), both exit */
        if (fork() == 0) { nap(ms * 700L); _exit(0); }
        nap(ms * 1000L);
        _exit(0);
    case 1:  /* exec: the old mm, swap entries and all, goes in exec's mmput */
        nap(ms * 1000L);
        execv("/bin/true", true_argv);
        _exit(1);
    case 2:  /* a thread spinning on another CPU while exit_group() comes */
        pthread_create(&t, NULL, spinner, NULL);
        nap(ms * 1000L);
        _exit(0);
    default:  /* a vfork child that exits, then the parent */
        if (vfork() == 0) _exit(0);
        nap(ms * 1000L);
        _exit(0);
    }
}

static long swapped;  /* KiB of swap in use at the swapoffs, summed (the workload log says) */

static long used_swap_kb(void) {
    FILE *f = fopen("/proc/swaps", "r");
    char line[256];
    long used = 0, size, u;
    if (f == NULL) return 0;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "%*s %*s %ld %ld", &size, &u) == 2) used += u;
    fclose(f);
    return used;
}

static void *swapoff_thread(void *arg) {
    (void)arg;
    long r = swapoff(DEV);
    return (void *)r;
}

/* One round: swap on, `n` hogs, swapoff after `wait_ms` (from a thread when `threaded`). */
static int round_of(int n, int wait_ms, int lift, int threaded, int seed) {
    if (swapon(DEV, 0) != 0) return -1;
    if (memory_cgroup("16M") != 0) { swapoff(DEV); return -1; }
    pid_t kids[8];
    int ready[2];
    if (pipe(ready) != 0) return -1;
    for (int i = 0; i < n; i++) {
        kids[i] = fork();
        /* each ends a while after all have touched their memory, some while swapoff walks */
        if (kids[i] == 0) hog((i + seed) % 4, 5, wait_ms / 2 + 1 + 2 * ((i + seed) % 6), ready[1]);
    }
    char c;
    close(ready[1]);  /* (a hog killed before it is ready ends the wait) */
    for (int i = 0; i < n; i++)
        if (kids[i] > 0 && read(ready[0], &c, 1) != 1) break;
    close(ready[0]);
    nap(wait_ms * 1000L / 2);
    swapped += used_swap_kb();
    if (lift) put(GROUP "/memory.max", "max");
    long r;
    if (threaded) {
        pthread_t t;
        void *ret;
        pthread_create(&t, NULL, swapoff_thread, NULL);
        pthread_join(t, &ret);
        r = (long)ret;
    } else {
        r = swapoff(DEV);
    }
    for (int i = 0; i < n; i++)
        if (kids[i] > 0) waitpid(kids[i], NULL, 0);
    if (r != 0) swapoff(DEV);  /* (ENOMEM: the group could not take its pages back) */
    return 0;
}

int main(void) {
    if (access(DEV, F_OK) != 0 || system("mkswap " DEV " > /dev/null 2>&1") != 0) {
        printf("unseen18: no %s (capture with --module brd): nothing done\n", DEV);
        return 0;
    }
    int rounds = 0;
    for (int k = 0; k < 12; k++)
        if (round_of(4 + k % 3, 4 + 4 * (k % 3), k % 4 != 3, k % 3 == 1, k) == 0) rounds++;
    printf("unseen18: %d swapoff rounds, %ld KiB swapped at them\n", rounds, swapped);
    return 0;
}
