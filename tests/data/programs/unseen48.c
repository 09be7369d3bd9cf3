/* A forty-eighth workload written after the model, for `activemm capture --program`, on 2
 * CPUs or more: a seeded random mix of what the scheduler does to tasks that fork, exec and
 * exit. Setup: two cgroups v2 with the cpu controller, one throttled (a cpu.max that the
 * workers change) and one that the workers freeze and thaw. One worker per CPU takes 60 steps
 * (x the scale given as the first argument, the seed as the second), every step one of:
 * start a target (threads that spin, touch memory, fork, vfork and exec, and a last act:
 * exit from main with threads running, exec, exit_group() from a thread, a pthread_exit()
 * of the leader), move a target into a cgroup, set a target's policy (SCHED_FIFO, SCHED_RR,
 * SCHED_BATCH, SCHED_IDLE, SCHED_DEADLINE for its leader, with or without reset-on-fork, or
 * back to SCHED_OTHER) or its nice value, pin a target (every thread) to a random CPU set,
 * SIGSTOP it and SIGCONT it a little later, give it a core-scheduling cookie, freeze and
 * thaw the frozen group, change the throttled group's cpu.max, SIGKILL a target, take a CPU
 * offline and back online (worker 0 only), run a SCHED_FIFO spin on its own CPU for a few
 * hundred microseconds, re-exec itself, or yield or sleep a little. The same seed gives the
 * same choices (not the same timing). */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef PR_SCHED_CORE
#define PR_SCHED_CORE 62
#define PR_SCHED_CORE_CREATE 1
#endif
#ifndef SCHED_FLAG_RESET_ON_FORK
#define SCHED_FLAG_RESET_ON_FORK 0x01
#endif

#define THROTTLED "/sys/fs/cgroup/mix-throttled"
#define FROZEN "/sys/fs/cgroup/mix-frozen"

static int ncpu = 1;
static uint64_t rng;
static char seed_arg[32];

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

static void put(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return;
    if (write(fd, text, strlen(text)) < 0) {} /* EBUSY, EINVAL: the mix goes on */
    close(fd);
}

struct dl_attr { /* struct sched_attr of <linux/sched/types.h>, which clashes with glibc's */
    uint32_t size, sched_policy;
    uint64_t sched_flags;
    int32_t sched_nice;
    uint32_t sched_priority;
    uint64_t sched_runtime, sched_deadline, sched_period;
};

/* ---- targets ---- */

static char *region; /* 256 KiB its threads touch */
#define REGION (1 << 18)

static void touch(void) {
    if (region != MAP_FAILED)
        for (int i = 0; i < REGION; i += 4096) ((volatile char *)region)[i]++;
}

static void *target_thread(void *arg) {
    uint32_t r = (uint32_t)(uintptr_t)arg;
    for (volatile int i = 0; i < 6 + (int)(r % 10); i++) {
        switch ((r >> (i % 8)) % 5) {
        case 0: spin_us(200 + r % 800); break;
        case 1: touch(); usleep(r % 500); break;
        case 2: {
            pid_t c = fork();
            if (c == 0) { touch(); _exit(0); }
            if (c > 0) waitpid(c, NULL, 0);
            break;
        }
        case 3: {
            pid_t c = vfork();
            if (c == 0) { execl("/bin/program", "program", "--leaf", NULL); _exit(0); }
            if (c > 0) waitpid(c, NULL, 0);
            break;
        }
        default: sched_yield();
        }
    }
    return NULL;
}

static void *group_exit(void *arg) {
    spin_us((long)(uintptr_t)arg);
    syscall(SYS_exit_group, 0);
    return NULL;
}

static void target(uint32_t r) {
    alarm(2); /* SIGALRM ends it if it outlives its worker's list (a re-exec forgets it) */
    region = mmap(NULL, REGION, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    touch();
    int n = 1 + (int)(r % 4);
    pthread_t t[4];
    for (int i = 0; i < n; i++)
        if (pthread_create(&t[i], NULL, target_thread, (void *)(uintptr_t)(r * 2654435761u + i)))
            n = i;
    spin_us(300 + (r >> 4) % 3000);
    switch ((r >> 8) % 5) {
    case 0: exit(0); /* threads still running */
    case 1: execl("/bin/program", "program", "--leaf", NULL); break;
    case 2: {
        pthread_t g; /* (a SCHED_DEADLINE leader without reset-on-fork cannot clone) */
        if (pthread_create(&g, NULL, group_exit, (void *)(uintptr_t)((r >> 12) % 1000)) == 0)
            pause();
        break;
    }
    case 3: pthread_exit(NULL); /* the leader waits as a zombie for its threads */
    default:
        for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    }
    _exit(0);
}

/* ---- the worker's steps ---- */

static pid_t targets[8];
static int ntargets;

static void reap(void) {
    pid_t p;
    while ((p = waitpid(-1, NULL, WNOHANG | __WALL)) > 0)
        for (int i = 0; i < ntargets; i++)
            if (targets[i] == p) { targets[i] = targets[--ntargets]; break; }
}

static pid_t some_target(void) { return ntargets ? targets[next() % ntargets] : 0; }

/* Apply fn to every thread of process pid. */
static void each_thread(pid_t pid, void (*fn)(pid_t, uint32_t), uint32_t r) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    DIR *d = opendir(path);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.') fn(atoi(e->d_name), r);
    closedir(d);
}

static void set_policy(pid_t tid, uint32_t r) {
    struct sched_param sp = {.sched_priority = 0};
    switch (r % 6) {
    case 0: sp.sched_priority = 1 + (int)(r >> 4) % 40; sched_setscheduler(tid, SCHED_FIFO, &sp); break;
    case 1: sp.sched_priority = 1 + (int)(r >> 4) % 40; sched_setscheduler(tid, SCHED_RR, &sp); break;
    case 2: sched_setscheduler(tid, SCHED_BATCH, &sp); break;
    case 3: sched_setscheduler(tid, SCHED_IDLE, &sp); break;
    case 4: {
        struct dl_attr a = {.size = sizeof a, .sched_policy = SCHED_DEADLINE,
                            .sched_flags = (r >> 3) % 2 ? SCHED_FLAG_RESET_ON_FORK : 0,
                            .sched_runtime = 300000, .sched_deadline = 2000000,
                            .sched_period = 2000000};
        syscall(SYS_sched_setattr, tid, &a, 0);
        break;
    }
    default: sched_setscheduler(tid, SCHED_OTHER, &sp);
    }
}

static void pin(pid_t tid, uint32_t r) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(r % ncpu, &s);
    if ((r >> 5) % 3 == 0) CPU_SET((r >> 7) % ncpu, &s);
    sched_setaffinity(tid, sizeof s, &s);
}

static void move_to(pid_t pid, const char *cg) {
    char path[96], text[16];
    snprintf(path, sizeof path, "%s/cgroup.procs", cg);
    snprintf(text, sizeof text, "%d", pid);
    put(path, text);
}

static void cpu_online(int cpu, int on) {
    char path[64];
    snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/online", cpu);
    put(path, on ? "1" : "0");
}

static int worker_id;

static void reexec(int steps_left) {
    char left[16], seed[32], id[16];
    snprintf(left, sizeof left, "%d", steps_left);
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)(rng | 1));
    snprintf(id, sizeof id, "%d", worker_id);
    execl("/bin/program", "program", "--worker", left, seed, id, NULL);
}

static void step(int steps_left) {
    uint32_t r = next();
    pid_t t = some_target();
    switch (next() % 15) {
    case 0:
    case 1:
        if (ntargets < 8) {
            pid_t c = fork();
            if (c == 0) target(r);
            if (c > 0) targets[ntargets++] = c;
        }
        break;
    case 2:
        if (t) move_to(t, r % 3 == 0 ? "/sys/fs/cgroup" : r % 3 == 1 ? THROTTLED : FROZEN);
        break;
    case 3:
        if (t) {
            if (r % 4 == 0) set_policy(t, r >> 2); /* the leader only */
            else each_thread(t, set_policy, r >> 2);
        }
        break;
    case 4:
        if (t) setpriority(PRIO_PROCESS, t, (int)(r % 40) - 20);
        break;
    case 5:
        if (t) each_thread(t, pin, r);
        break;
    case 6:
        if (t) {
            kill(t, SIGSTOP);
            usleep(r % 2000);
            kill(t, SIGCONT);
        }
        break;
    case 7:
        if (t) prctl(PR_SCHED_CORE, PR_SCHED_CORE_CREATE, t, r % 2 /* thread or group */, 0);
        break;
    case 8:
        put(FROZEN "/cgroup.freeze", "1");
        usleep(r % 3000);
        put(FROZEN "/cgroup.freeze", "0");
        break;
    case 9: {
        char text[32];
        snprintf(text, sizeof text, "%u 10000", 1000 + r % 9000);
        put(THROTTLED "/cpu.max", r % 5 == 0 ? "max 10000" : text);
        break;
    }
    case 10:
        if (t) kill(t, SIGKILL);
        break;
    case 11:
        if (worker_id == 0 && ncpu > 1 && r % 3 == 0) {
            int cpu = 1 + (int)((r >> 2) % (ncpu - 1));
            cpu_online(cpu, 0);
            usleep(r % 5000);
            cpu_online(cpu, 1);
        }
        break;
    case 12: {
        struct sched_param sp = {.sched_priority = 60}, back = {.sched_priority = 0};
        if (sched_setscheduler(0, SCHED_FIFO, &sp) == 0) {
            spin_us(100 + r % 600);
            sched_setscheduler(0, SCHED_OTHER, &back);
        }
        break;
    }
    case 13:
        if (r % 4 == 0) reexec(steps_left);
        break;
    default:
        if (r % 2) sched_yield();
        else usleep(r % 400);
    }
    reap();
}

static void worker(int steps) {
    for (int i = steps; i > 0; i--) step(i - 1);
    for (int i = 0; i < ntargets; i++) kill(targets[i], SIGKILL);
    put(FROZEN "/cgroup.freeze", "0");
    while (waitpid(-1, NULL, __WALL) > 0) {}
    _exit(0);
}

static void setup(void) {
    mkdir("/sys/fs/cgroup", 0755);
    mount("none", "/sys/fs/cgroup", "cgroup2", 0, NULL);
    put("/sys/fs/cgroup/cgroup.subtree_control", "+cpu");
    mkdir(THROTTLED, 0755);
    mkdir(FROZEN, 0755);
    put(THROTTLED "/cpu.max", "5000 10000");
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--leaf") == 0) return 0;
    ncpu = (int)sysconf(_SC_NPROCESSORS_CONF);
    if (argc > 4 && strcmp(argv[1], "--worker") == 0) {
        rng = strtoull(argv[3], NULL, 10) | 1;
        worker_id = atoi(argv[4]);
        worker(atoi(argv[2]));
    }
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1) scale = 1;
    rng = argc > 2 ? strtoull(argv[2], NULL, 10) | 1 : 48;
    snprintf(seed_arg, sizeof seed_arg, "%llu", (unsigned long long)rng);
    setvbuf(stdout, NULL, _IONBF, 0);
    setup();
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
    for (int i = 0; i < n; i++) waitpid(w[i], NULL, 0);
    put(FROZEN "/cgroup.freeze", "0");
    for (int c = 1; c < ncpu; c++) cpu_online(c, 1);
    printf("scheduler mix (seed %s): %d workers done\n", seed_arg, n);
    printf("done (%d CPUs)\n", ncpu);
    return 0;
}
