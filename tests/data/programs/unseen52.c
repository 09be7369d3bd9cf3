/* A fifty-second workload written after the model, for `activemm capture --program`, on 2
 * CPUs or more: system sleep while tasks fork, exec and exit. One sleeper takes the machine
 * through suspend and hibernation test cycles (/sys/power/pm_test with pm_test_delay 0, then
 * "freeze", "mem" or "disk" to /sys/power/state: "freezer" freezes every task and thaws it,
 * "devices" and "platform" also suspend the devices, "processors" and "core" also take every
 * CPU but the boot CPU down together (freeze_secondary_cpus(): idle_task_exit() on each with
 * whatever mm it had borrowed, finish_cpu()'s mmdrop) and back up; hibernation first takes
 * memory for its image (hibernate_preallocate_memory(), reclaiming when it must)). A kernel
 * without CONFIG_PM_DEBUG (the cloud flavours) has no such tests, and sleeps not at all (a
 * real suspend to idle, to be woken by the RTC alarm, hung 6.1's cloud guest under TCG and
 * was refused on 6.12's). Meanwhile one worker per CPU takes 60 steps (x the
 * scale given as the first argument, the seed as the second), every step one of: fork a
 * child whose threads touch memory and which then execs, forks, vforks, exit_group()s from a
 * thread or spins until it exits; vfork and exec or _exit (the parent waits freezable);
 * start a thread that maps and unmaps 2 MiB (page tables freed: flush IPIs to lazy CPUs);
 * fork a child pinned to a CPU other than the boot CPU that spins there (moved away when it
 * goes down); a child whose non-leader thread execs (de_thread()); yield or sleep a little.
 * The same seed gives the same choices (not the same timing). Each part counts what it did
 * and prints it. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
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
static int worker_id;
static int children, vforks, unmaps, pinned, thread_execs;

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

static int put(const char *path, const char *value) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    ssize_t n = write(fd, value, strlen(value));
    int err = n < 0 ? errno : 0;
    close(fd);
    if (err) errno = err;
    return n < 0 ? -1 : 0;
}

static char *region; /* 128 KiB a process's threads touch */
#define REGION (1 << 17)

static void touch(uint32_t r) {
    if (region == NULL || region == MAP_FAILED) {
        region = mmap(NULL, REGION, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (region == MAP_FAILED) return;
    }
    for (int i = (int)(r % 4) * 4096; i < REGION; i += 4096) ((volatile char *)region)[i]++;
}

static void *busy_thread(void *arg) {
    uint32_t r = (uint32_t)(uintptr_t)arg;
    touch(r);
    if (r % 3 == 0) spin_us(100 + r % 900);
    else usleep(100 + r % 2000);
    return NULL;
}

static void *exit_group_thread(void *arg) {
    usleep((unsigned)(uintptr_t)arg % 800);
    syscall(SYS_exit_group, 0);
    return NULL;
}

/* A child's life: threads, then one last act; each ends with its exit. */
static void child_life(uint32_t r) {
    touch(r);
    pthread_t t[3];
    int n = 1 + (int)(r % 3);
    for (int i = 0; i < n; i++)
        if (pthread_create(&t[i], NULL, busy_thread, (void *)(uintptr_t)(r >> (i + 1)))) n = i;
    switch ((r >> 5) % 6) {
    case 0: execl("/bin/program", "program", "--leaf", NULL); break;
    case 1:
        if (fork() == 0) {
            touch(r >> 3);
            spin_us(50 + (r >> 7) % 500);
            _exit(0);
        }
        break;
    case 2:
        if (vfork() == 0) {
            execl("/bin/program", "program", "--leaf", NULL);
            _exit(1);
        }
        break;
    case 3: {
        pthread_t g;
        pthread_create(&g, NULL, exit_group_thread, (void *)(uintptr_t)(r >> 9));
        spin_us(2000);
        break;
    }
    case 4: spin_us(300 + (r >> 8) % 3000); break;
    default: usleep(300 + (r >> 8) % 4000); break;
    }
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    _exit(0);
}

static void step_child(uint32_t r) {
    pid_t c = fork();
    if (c == 0) child_life(r);
    if (c > 0) {
        children++;
        if (r & 1) waitpid(c, NULL, 0);
    }
}

static void step_vfork(uint32_t r) {
    touch(r);
    pid_t c = vfork();
    if (c == 0) {
        if (r & 1) execl("/bin/program", "program", "--leaf", NULL);
        _exit(0);
    }
    if (c > 0) {
        vforks++;
        waitpid(c, NULL, 0);
    }
}

static void *unmap_thread(void *arg) {
    uint32_t r = (uint32_t)(uintptr_t)arg;
    size_t len = 2u << 20;
    for (int k = 0; k < 1 + (int)(r % 3); k++) {
        char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) break;
        for (size_t i = 0; i < len; i += 4096) p[i] = 1;
        munmap(p, len);
    }
    return NULL;
}

static void step_unmap(uint32_t r) {
    pthread_t t;
    if (pthread_create(&t, NULL, unmap_thread, (void *)(uintptr_t)r) == 0) {
        touch(r >> 2);
        pthread_join(t, NULL);
        unmaps++;
    }
}

/* A child pinned to a CPU other than the boot CPU: moved away when its CPU goes down. */
static void step_pinned(uint32_t r) {
    if (ncpu < 2) return;
    pid_t c = fork();
    if (c == 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(1 + (int)(r % (uint32_t)(ncpu - 1)), &set);
        sched_setaffinity(0, sizeof set, &set);
        touch(r);
        pthread_t t;
        int th = (r >> 3) & 1;
        if (th) pthread_create(&t, NULL, busy_thread, (void *)(uintptr_t)(r >> 4));
        spin_us(500 + (r >> 6) % 5000);
        if (th) pthread_join(t, NULL);
        _exit(0);
    }
    if (c > 0) pinned++;
}

static void *exec_thread(void *arg) {
    usleep((unsigned)(uintptr_t)arg % 500);
    execl("/bin/program", "program", "--leaf", NULL);
    return NULL;
}

/* A child whose non-leader thread execs: de_thread() kills the leader and siblings. */
static void step_thread_exec(uint32_t r) {
    pid_t c = fork();
    if (c == 0) {
        touch(r);
        pthread_t t, b;
        pthread_create(&b, NULL, busy_thread, (void *)(uintptr_t)(r >> 2));
        pthread_create(&t, NULL, exec_thread, (void *)(uintptr_t)(r >> 5));
        for (;;) spin_us(1000);
    }
    if (c > 0) {
        thread_execs++;
        if (r & 2) waitpid(c, NULL, 0);
    }
}

static void step(void) {
    uint32_t r = next();
    switch (next() % 10) {
    case 0:
    case 1: step_child(r); break;
    case 2: step_vfork(r); break;
    case 3: step_unmap(r); break;
    case 4: step_pinned(r); break;
    case 5: step_thread_exec(r); break;
    case 6: while (waitpid(-1, NULL, WNOHANG) > 0) {} break;
    default:
        if (r % 2) sched_yield();
        else usleep(r % 600);
    }
}

static void worker(int steps) {
    for (int i = 0; i < steps; i++) step();
    while (waitpid(-1, NULL, 0) > 0) {}
    printf("worker %d: %d children, %d vforks, %d unmapping threads, %d pinned children,"
           " %d thread execs\n", worker_id, children, vforks, unmaps, pinned, thread_execs);
    _exit(0);
}

/* Sleep test cycles until the workers are done (at most `rounds`). */
static void sleeper(int rounds, volatile int *done) {
    static const char *levels[] = {"freezer", "devices", "platform", "processors", "core"};
    static const char *states[] = {"freeze", "mem", "disk"};
    int tested = 0, failed = 0, counts[5] = {0}, by_state[3] = {0}, last_errno = 0;
    if (access("/sys/power/pm_test", W_OK) != 0) {
        printf("sleeper: no /sys/power/pm_test (CONFIG_PM_DEBUG), no sleep tests\n");
        return;
    }
    put("/sys/module/suspend/parameters/pm_test_delay", "0");
    for (int i = 0; i < rounds && !*done; i++) {
        usleep(2000 + next() % 20000);
        int l = (int)(next() % 5);
        if (put("/sys/power/pm_test", levels[l]) != 0) {
            failed++;
            last_errno = errno;
            continue;
        }
        int st = (int)(next() % 3);
        if (st == 0 && l > 2) st = 1; /* suspend to idle takes no CPU down: freezer to platform */
        if (put("/sys/power/state", states[st]) == 0) {
            tested++;
            counts[l]++;
            by_state[st]++;
        } else {
            failed++; /* EBUSY: a wakeup event came, or a task would not freeze */
            last_errno = errno;
        }
    }
    put("/sys/power/pm_test", "none");
    printf("sleeper: %d sleep tests (freezer %d, devices %d, platform %d, processors %d, core %d;"
           " freeze %d, mem %d, disk %d), %d refused (the last: %s)\n", tested, counts[0],
           counts[1], counts[2], counts[3], counts[4], by_state[0], by_state[1], by_state[2],
           failed, failed ? strerror(last_errno) : "none");
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--leaf") == 0) return 0;
    ncpu = (int)sysconf(_SC_NPROCESSORS_CONF);
    setvbuf(stdout, NULL, _IONBF, 0);
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1) scale = 1;
    rng = argc > 2 ? strtoull(argv[2], NULL, 10) | 1 : 52;
    unsigned long long seed = (unsigned long long)rng;
    volatile int *done = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (done == MAP_FAILED) return 1;
    *done = 0;
    int n = ncpu < 64 ? ncpu : 64;
    pid_t w[64];
    for (int i = 0; i < n; i++) {
        next();
        w[i] = fork();
        if (w[i] == 0) {
            rng = rng * 2654435761u + (uint64_t)i * 40503u + 1;
            worker_id = i;
            worker(60 * scale);
        }
    }
    pid_t s = fork();
    if (s == 0) {
        rng = rng * 2654435761u + 977u;
        sleeper(8 * scale, done);
        _exit(0);
    }
    for (int i = 0; i < n; i++) waitpid(w[i], NULL, 0);
    *done = 1;
    if (s > 0) waitpid(s, NULL, 0);
    printf("seed %llu, scale %d, %d workers: done\n", seed, scale, n);
    return 0;
}
