/* A nineteenth workload written after the model, for `activemm capture --program` on 6.12
 * (CONFIG_DAMON_SYSFS; Debian's 6.1 has no DAMON), best with `--module brd`:
 *  - DAMON's kdamond, a kernel thread, monitoring the virtual address spaces of processes that
 *    touch memory, fork, exec and exit: every sampling takes an mm_users reference on each
 *    target's mm (damon_get_mm(): get_task_mm()) and puts it back (mmput()), the last one
 *    when the target exited meanwhile: then __mmput, exit_mmap and all, runs in the kernel
 *    thread, on a CPU lazy on whatever mm it last ran;
 *  - a DAMOS pageout scheme: kdamond reclaims the targets' memory (MADV_PAGEOUT, out to swap
 *    on /dev/ram0 when there is one), holding their mms for longer and flushing TLBs of mms
 *    that are not its own;
 *  - kdamond started and stopped every round, and replaced targets committed while it runs.
 * Without DAMON it says so and exits 0 having done nothing. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/swap.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define K "/sys/kernel/mm/damon/admin/kdamonds"
#define C K "/0/contexts/0"

static void nap(long us) { struct timespec t = {us / 1000000, (us % 1000000) * 1000}; nanosleep(&t, NULL); }
static char *const true_argv[] = {"true", NULL};
static int failures;

static void put(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0 || write(fd, text, strlen(text)) < 0) {
        if (failures++ < 5) printf("unseen19: writing %s to %s failed\n", text, path);
    }
    if (fd >= 0) close(fd);
}

static void putf(const char *path, long v) {
    char s[32];
    snprintf(s, sizeof(s), "%ld", v);
    put(path, s);
}

/* A target: touches `mb` MiB, then after `ms` exits as `how` says. */
static pid_t target(int how, long mb, int ms) {
    pid_t pid = fork();
    if (pid != 0) return pid;
    char *p = mmap(NULL, (size_t)mb << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (p == MAP_FAILED) _exit(1);
    for (long i = 0; i < (mb << 20); i += 4096) p[i] = (char)i;
    for (int left = ms; left > 0; left -= 2) {  /* keep some pages hot while kdamond samples */
        for (long i = 0; i < (mb << 19); i += 4096) p[i]++;
        nap(2000);
    }
    if (how == 1) execv("/bin/true", true_argv);
    if (how == 2 && fork() == 0) { nap(3000); _exit(0); }
    _exit(0);
}

static void set_targets(pid_t *pids, int n) {
    char path[160];
    putf(C "/targets/nr_targets", n);
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof(path), C "/targets/%d/pid_target", i);
        putf(path, pids[i]);
    }
}

static void round_of(int n, int seed) {
    pid_t pids[8], more[8];
    for (int i = 0; i < n; i++) pids[i] = target((i + seed) % 3, 2, 10 + 9 * ((i + seed) % 5));
    set_targets(pids, n);
    put(K "/0/state", "on");
    nap(25000);
    for (int i = 0; i < n; i++) more[i] = target((i + seed + 1) % 3, 2, 8 + 7 * (i % 4));
    set_targets(more, n);
    put(K "/0/state", "commit");  /* the new targets, while kdamond runs */
    for (int i = 0; i < n; i++) waitpid(pids[i], NULL, 0);
    for (int i = 0; i < n; i++) waitpid(more[i], NULL, 0);
    nap(5000);
    int fd = open(K "/0/state", O_WRONLY);  /* (off already when every target is gone) */
    if (fd >= 0) {
        if (write(fd, "off", 3) < 0) nap(1);
        close(fd);
    }
}

int main(void) {
    if (access(K "/nr_kdamonds", W_OK) != 0) {
        printf("unseen19: no DAMON sysfs (%s): nothing done\n", K);
        return 0;
    }
    int swap = access("/dev/ram0", F_OK) == 0 && system("mkswap /dev/ram0 > /dev/null 2>&1") == 0
               && swapon("/dev/ram0", 0) == 0;
    put(K "/nr_kdamonds", "1");
    put(K "/0/contexts/nr_contexts", "1");
    put(C "/operations", "vaddr");
    put(C "/monitoring_attrs/intervals/sample_us", "1000");
    put(C "/monitoring_attrs/intervals/aggr_us", "10000");
    put(C "/monitoring_attrs/intervals/update_us", "20000");
    put(C "/schemes/nr_schemes", "1");
    put(C "/schemes/0/action", "pageout");
    for (int k = 0; k < 8; k++) round_of(3 + k % 3, k);
    if (swap) swapoff("/dev/ram0");
    printf("unseen19: 8 DAMON rounds, swap %s, %d writes failed\n", swap ? "on" : "off",
           failures);
    return 0;
}
