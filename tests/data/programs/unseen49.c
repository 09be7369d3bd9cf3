/* A forty-ninth workload written after the model, for `activemm capture --program`: a seeded
 * random mix of tasks whose PIDs come back at once. Setup: pid_max lowered to a few dozen
 * PIDs past the highest in use, so that every new task takes the PID (or thread ID) of one
 * that died a moment ago, often before the dead one's sched_process_free (an RCU callback)
 * is traced, and forks fail now and then for want of a PID (alloc_pid() runs after
 * copy_mm(): the child's mm is made and freed in the parent). One worker per CPU takes 60
 * steps (x the scale given as the first argument, the seed as the second), every step one
 * of: fork a child that touches memory, starts a thread or two and exits, then reap it and
 * at once clone3() a new one with set_tid = the PID just freed (a process that forks, execs
 * or exits; retried while the old one is not yet released); start a thread, join it and
 * start the next at the joined one's thread ID (ns_last_pid), the exit of the first having
 * woken the join from exit_mm()'s mm_release() before the thread ID was free; vfork a child
 * at a PID just freed that execs or _exits; a CLONE_VM child (its own stack) at a freed PID
 * that exits while the worker runs on, borrowed lazily meanwhile; exec from a non-leader
 * thread (the thread takes the leader's PID, its own is freed and taken again by the next
 * step); leave a few children zombies and reap them together (a run of PIDs freed at once,
 * taken again in a burst); re-exec itself; or yield or sleep a little. The same seed gives
 * the same choices (not the same timing). */
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

#ifndef SYS_clone3
#define SYS_clone3 435
#endif

struct clone_args_v2 { /* struct clone_args of <linux/sched.h>, CLONE_ARGS_SIZE_VER1 */
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
    uint64_t set_tid, set_tid_size;
};

static int ncpu = 1;
static uint64_t rng;
static char seed_arg[32];
static int worker_id;
static int reused, tries_failed, forks_failed;

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
    if (write(fd, text, strlen(text)) < 0) {} /* EINVAL, EPERM: the mix goes on */
    close(fd);
}

static long get(const char *path) {
    char buf[32] = {0};
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    if (read(fd, buf, sizeof buf - 1) < 0) buf[0] = 0;
    close(fd);
    return atol(buf);
}

/* The next task made in this PID namespace takes `pid` if it is free (racy: another worker
 * may take it first, which is the point too). */
static void aim(pid_t pid) {
    char text[16];
    snprintf(text, sizeof text, "%d", pid - 1);
    put("/proc/sys/kernel/ns_last_pid", text);
}

static char *region; /* 128 KiB the tasks touch */
#define REGION (1 << 17)

static void touch(void) {
    if (region != MAP_FAILED)
        for (int i = 0; i < REGION; i += 4096) ((volatile char *)region)[i]++;
}

static void *thread_body(void *arg) {
    uint32_t r = (uint32_t)(uintptr_t)arg;
    touch();
    if (r % 3 == 0) spin_us(50 + r % 400);
    else if (r % 3 == 1) usleep(r % 300);
    return NULL;
}

static void *named_thread(void *arg) {
    pid_t *tid = arg;
    *tid = (pid_t)syscall(SYS_gettid);
    return thread_body((void *)(uintptr_t)*tid);
}

/* A short life: touch memory, a thread or two, then one last act. */
static void short_life(uint32_t r) {
    touch();
    pthread_t t[2];
    int n = (int)(r % 3);
    for (int i = 0; i < n; i++)
        if (pthread_create(&t[i], NULL, thread_body, (void *)(uintptr_t)(r >> i))) n = i;
    spin_us(30 + (r >> 3) % 300);
    switch ((r >> 6) % 4) {
    case 0: execl("/bin/program", "program", "--leaf", NULL); break;
    case 1: {
        pid_t c = fork(); /* a grandchild at whatever PID comes next */
        if (c == 0) { touch(); _exit(0); }
        if (c > 0) waitpid(c, NULL, 0);
        break;
    }
    case 2: syscall(SYS_exit_group, 0); break; /* threads may still run */
    default: break;
    }
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    _exit(0);
}

/* clone3() a fork-like child at `pid`, tried until the old task there is released. */
static pid_t fork_at(pid_t pid, uint32_t r) {
    struct clone_args_v2 a;
    uint64_t tid = (uint64_t)pid;
    for (int i = 0; i < 200; i++) {
        memset(&a, 0, sizeof a);
        a.exit_signal = SIGCHLD;
        a.set_tid = (uint64_t)(uintptr_t)&tid;
        a.set_tid_size = 1;
        long c = syscall(SYS_clone3, &a, sizeof a);
        if (c == 0) short_life(r);
        if (c > 0) {
            reused++;
            return (pid_t)c;
        }
        if (errno != EEXIST) break;
        spin_us(5);
    }
    tries_failed++;
    return -1;
}

static void step_fork_reuse(uint32_t r) {
    pid_t c = fork();
    if (c == 0) short_life(r);
    if (c < 0) { forks_failed++; return; }
    waitpid(c, NULL, 0);
    pid_t again = fork_at(c, r >> 2);
    if (again > 0) waitpid(again, NULL, 0);
}

static void step_thread_reuse(uint32_t r) {
    pid_t tid = 0, before = 0;
    for (int round = 0; round < 2 + (int)(r % 3); round++) {
        pthread_t t;
        if (before) aim(before); /* the thread ID of the one just joined */
        if (pthread_create(&t, NULL, named_thread, &tid)) return;
        /* (the join returns at exit_mm()'s mm_release(), before the thread is released) */
        pthread_join(t, NULL);
        if (before && tid == before) reused++;
        before = tid;
        if ((r >> round) % 2) spin_us(20);
    }
}

static void step_vfork_reuse(uint32_t r) {
    pid_t c = fork();
    if (c == 0) _exit(0);
    if (c < 0) { forks_failed++; return; }
    waitpid(c, NULL, 0);
    aim(c);
    pid_t v = vfork();
    if (v == 0) {
        if (r % 2) execl("/bin/program", "program", "--leaf", NULL);
        _exit(0);
    }
    if (v > 0) {
        if (v == c) reused++;
        waitpid(v, NULL, 0);
    }
}

static int vm_child(void *arg) {
    uint32_t r = (uint32_t)(uintptr_t)arg;
    touch();
    spin_us(20 + r % 500);
    return 0;
}

static void step_clone_vm_reuse(uint32_t r) {
    static char stacks[4][65536] __attribute__((aligned(16)));
    pid_t c = fork();
    if (c == 0) _exit(0);
    if (c < 0) { forks_failed++; return; }
    waitpid(c, NULL, 0);
    aim(c);
    char *stack = stacks[worker_id % 4] + sizeof stacks[0];
    pid_t v = clone(vm_child, stack, CLONE_VM | SIGCHLD, (void *)(uintptr_t)r);
    if (v < 0) { forks_failed++; return; }
    if (v == c) reused++;
    if (r % 2) spin_us(50 + r % 300); /* the worker runs on with the child's mm */
    else usleep(r % 300);
    waitpid(v, NULL, 0);
}

static void *exec_from_thread(void *arg) {
    uint32_t r = (uint32_t)(uintptr_t)arg;
    spin_us(r % 200);
    execl("/bin/program", "program", "--leaf", NULL);
    return NULL;
}

static void step_thread_exec(uint32_t r) {
    pid_t c = fork();
    if (c == 0) {
        touch();
        pthread_t t[2];
        pthread_create(&t[1], NULL, thread_body, (void *)(uintptr_t)r);
        if (pthread_create(&t[0], NULL, exec_from_thread, (void *)(uintptr_t)r) == 0) pause();
        _exit(0);
    }
    if (c < 0) { forks_failed++; return; }
    waitpid(c, NULL, 0);
}

static void step_zombies(uint32_t r) {
    pid_t kids[6];
    int n = 2 + (int)(r % 5);
    for (int i = 0; i < n; i++) {
        kids[i] = fork();
        if (kids[i] == 0) { touch(); _exit(0); }
        if (kids[i] < 0) { forks_failed++; n = i; break; }
    }
    usleep(200 + r % 800); /* zombies all, holding their PIDs */
    for (int i = 0; i < n; i++) waitpid(kids[i], NULL, 0);
    for (int i = 0; i < n && i < 3; i++) { /* a burst at the PIDs just freed */
        aim(kids[i]);
        pid_t c = fork();
        if (c == 0) short_life(r >> i);
        if (c > 0) {
            if (c == kids[i]) reused++;
            waitpid(c, NULL, 0);
        }
    }
}

static void reexec(int steps_left) {
    char left[16], seed[32], id[16];
    snprintf(left, sizeof left, "%d", steps_left);
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)(rng | 1));
    snprintf(id, sizeof id, "%d", worker_id);
    execl("/bin/program", "program", "--worker", left, seed, id, NULL);
}

static void step(int steps_left) {
    uint32_t r = next();
    switch (next() % 9) {
    case 0:
    case 1: step_fork_reuse(r); break;
    case 2: step_thread_reuse(r); break;
    case 3: step_vfork_reuse(r); break;
    case 4: step_clone_vm_reuse(r); break;
    case 5: step_thread_exec(r); break;
    case 6: step_zombies(r); break;
    case 7:
        if (r % 4 == 0) reexec(steps_left);
        break;
    default:
        if (r % 2) sched_yield();
        else usleep(r % 400);
    }
}

static void worker(int steps) {
    region = mmap(NULL, REGION, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    touch();
    for (int i = steps; i > 0; i--) step(i - 1);
    while (waitpid(-1, NULL, __WALL) > 0) {}
    if (reused || tries_failed || forks_failed)
        printf("worker %d: %d PIDs taken again, %d not, %d forks failed\n", worker_id, reused,
               tries_failed, forks_failed);
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--leaf") == 0) return 0;
    ncpu = (int)sysconf(_SC_NPROCESSORS_CONF);
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc > 4 && strcmp(argv[1], "--worker") == 0) {
        rng = strtoull(argv[3], NULL, 10) | 1;
        worker_id = atoi(argv[4]);
        worker(atoi(argv[2]));
    }
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1) scale = 1;
    rng = argc > 2 ? strtoull(argv[2], NULL, 10) | 1 : 49;
    snprintf(seed_arg, sizeof seed_arg, "%llu", (unsigned long long)rng);
    int n = ncpu < 64 ? ncpu : 64;
    long last = get("/proc/sys/kernel/ns_last_pid"), old_max = get("/proc/sys/kernel/pid_max");
    long max = (last > 300 ? last : 300) + 40 + 12L * n;
    char text[32];
    snprintf(text, sizeof text, "%ld", max);
    put("/proc/sys/kernel/pid_max", text);
    if (last < 300) aim(300); /* PIDs wrap to 300 (RESERVED_PIDS): start there */
    printf("PIDs: last %ld, pid_max %ld -> %ld\n", last, old_max, get("/proc/sys/kernel/pid_max"));
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
    snprintf(text, sizeof text, "%ld", old_max);
    put("/proc/sys/kernel/pid_max", text);
    printf("PID reuse mix (seed %s): %d workers done\n", seed_arg, n);
    printf("done (%d CPUs)\n", ncpu);
    return 0;
}
