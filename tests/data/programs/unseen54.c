/* A fifty-fourth workload written after the model, for `activemm capture --program`, on 2
 * CPUs or more (with `--kernel-args numa=fake=2` the cpusets' memory nodes differ too):
 * cgroup v1 controllers at work on processes that fork, exec and exit. Setup: v1
 * hierarchies of the memory, cpuset and freezer controllers, each mounted on its own (a
 * kernel without one says so and the program goes on without it), two memory cgroups that
 * move charges with the tasks that enter them (memory.move_charge_at_immigrate 3:
 * mem_cgroup_can_attach() takes the mm with get_task_mm() for the move and
 * mem_cgroup_move_task() mmput()s it, the last put when the process exited meanwhile: an
 * __mmput in the task writing cgroup.procs), two cpusets on different CPUs (and nodes) with
 * memory_migrate 1 (cpuset_attach(): get_task_mm(), the migration work queued for a
 * kworker when the nodes differ), and a freezer cgroup. One worker per CPU takes 50 steps
 * (x the scale given as the first argument, the seed as the second), every step one of:
 *  - start a tenant: a process whose threads touch memory and which forks children that
 *    exec or exit, for a few milliseconds, then exits;
 *  - move a live tenant into a memory cgroup, or a cpuset, now and then with a killer
 *    child sending it SIGKILL while the move runs;
 *  - put a tenant in the freezer cgroup, freeze it (FROZEN), kill it or not, and thaw it;
 *  - rewrite a populated cpuset's cpus (update_tasks_cpumask) or mems;
 *  - reap, yield or sleep a little.
 * The same seed gives the same choices (not the same timing). Each worker prints what it
 * did. */
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
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CG "/tmp/cg1"
#define TENANTS 64

static int ncpu = 1, nodes = 1, has_memory, has_cpuset, has_freezer;
static uint64_t rng;
static int worker_id;
static volatile pid_t *tenants; /* shared: live tenants' pids, 0 for a free slot */
static int started, mem_moves, cpuset_moves, freezes, killed_moving, killed_frozen;
static int rewrites, refused;

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
    close(fd);
    return n < 0 ? -1 : 0;
}

static int put_pid(const char *group, pid_t pid) {
    char path[128], text[24];
    snprintf(path, sizeof path, CG "/%s/cgroup.procs", group);
    snprintf(text, sizeof text, "%d", (int)pid);
    return put(path, text);
}

/* Mounts one v1 controller on CG/name: 1 when it is there. */
static int hierarchy(const char *name) {
    char dir[64];
    snprintf(dir, sizeof dir, CG "/%s", name);
    mkdir(dir, 0755);
    return mount("cgroup", dir, "cgroup", 0, name) == 0;
}

static void group(const char *path, const char *file, const char *value) {
    char p[160];
    snprintf(p, sizeof p, CG "/%s", path);
    mkdir(p, 0755);
    if (file) {
        snprintf(p, sizeof p, CG "/%s/%s", path, file);
        put(p, value);
    }
}

static char *touch(size_t len, uint32_t r) {
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    for (size_t i = (r % 4) * 4096; i < len; i += 4096) p[i] = (char)i;
    return p;
}

static void *tenant_thread(void *arg) {
    uint32_t r = (uint32_t)(uintptr_t)arg;
    touch((size_t)(64 + r % 448) << 10, r);
    if (r & 1) spin_us(300 + r % 3000);
    else usleep(300 + r % 5000);
    return NULL;
}

/* A tenant's life: threads touching memory, children that exec or exit, then its exit. */
static void tenant(uint32_t r) {
    touch((size_t)(128 + r % 896) << 10, r);
    pthread_t t[3];
    int n = 1 + (int)(r % 3);
    for (int i = 0; i < n; i++)
        if (pthread_create(&t[i], NULL, tenant_thread, (void *)(uintptr_t)(r >> (i + 2)))) n = i;
    for (int k = 0; k < 1 + (int)((r >> 6) % 4); k++) {
        pid_t c = fork();
        if (c == 0) {
            touch(64 << 10, r >> k);
            if ((r >> (8 + k)) & 1) execl("/bin/program", "program", "--leaf", NULL);
            _exit(0);
        }
        if ((r >> (12 + k)) & 1) spin_us(500 + (r >> 4) % 2000);
        else usleep(500 + (r >> 4) % 4000);
    }
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    while (wait(NULL) > 0) {}
    _exit(0);
}

static void step_start(uint32_t r) {
    for (int i = 0; i < TENANTS; i++) {
        if (tenants[i] != 0) continue;
        pid_t c = fork();
        if (c == 0) tenant(r);
        if (c > 0) {
            tenants[i] = c;
            started++;
        }
        return;
    }
}

static pid_t pick(uint32_t r) {
    for (int k = 0; k < TENANTS; k++) {
        pid_t p = tenants[(r + (uint32_t)k) % TENANTS];
        if (p > 0 && kill(p, 0) == 0) return p;
    }
    return 0;
}

/* Moves a tenant into `where`, now and then while a killer child sends it SIGKILL. */
static void move(const char *where, uint32_t r, int *count) {
    pid_t p = pick(r);
    if (p == 0) return;
    pid_t killer = -1;
    if ((r >> 5) % 3 == 0) {
        killer = fork();
        if (killer == 0) {
            spin_us((r >> 7) % 400);
            kill(p, SIGKILL);
            _exit(0);
        }
        killed_moving++;
    }
    if (put_pid(where, p) == 0) (*count)++;
    else refused++;
    if (killer > 0) waitpid(killer, NULL, 0);
}

static void step_freeze(uint32_t r) {
    pid_t p = pick(r);
    if (p == 0 || put_pid("freezer/F", p) != 0) return;
    put(CG "/freezer/F/freezer.state", "FROZEN");
    freezes++;
    usleep(200 + r % 3000);
    if (r & 16) {
        kill(p, SIGKILL);
        killed_frozen++;
    }
    put(CG "/freezer/F/freezer.state", "THAWED");
}

static void step_rewrite(uint32_t r) {
    char cpus[32];
    const char *g = r & 1 ? "cpuset/A" : "cpuset/B";
    int lo = (int)(r % (uint32_t)ncpu), hi = lo + (int)((r >> 3) % (uint32_t)(ncpu - lo));
    snprintf(cpus, sizeof cpus, "%d-%d", lo, hi);
    char path[96];
    snprintf(path, sizeof path, CG "/%s/cpuset.cpus", g);
    if (put(path, cpus) == 0) rewrites++;
    if (nodes > 1 && (r & 4)) {
        snprintf(path, sizeof path, CG "/%s/cpuset.mems", g);
        put(path, (r & 8) ? "0-1" : (r & 1) ? "0" : "1");
    }
}

static void reap(void) {
    pid_t c;
    while ((c = waitpid(-1, NULL, WNOHANG)) > 0)
        for (int i = 0; i < TENANTS; i++)
            if (tenants[i] == c) tenants[i] = 0;
}

static void step(void) {
    uint32_t r = next();
    switch (next() % 12) {
    case 0:
    case 1:
    case 2: step_start(r); break;
    case 3:
    case 4:
        if (has_memory) move(r & 1 ? "memory/A" : "memory/B", r >> 1, &mem_moves);
        break;
    case 5:
    case 6:
        if (has_cpuset) move(r & 1 ? "cpuset/A" : "cpuset/B", r >> 1, &cpuset_moves);
        break;
    case 7:
        if (has_freezer) step_freeze(r);
        break;
    case 8:
        if (has_cpuset) step_rewrite(r);
        break;
    case 9: reap(); break;
    default:
        if (r % 2) sched_yield();
        else usleep(r % 2000);
    }
    reap();
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--leaf") == 0) return 0;
    ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    setvbuf(stdout, NULL, _IONBF, 0);
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1) scale = 1;
    rng = argc > 2 ? strtoull(argv[2], NULL, 10) | 1 : 54;
    unsigned long long seed = (unsigned long long)rng;
    if (access("/sys/devices/system/node/node1", F_OK) == 0) nodes = 2;
    mkdir(CG, 0755);
    mount("tmpfs", CG, "tmpfs", 0, NULL);
    has_memory = hierarchy("memory");
    has_cpuset = hierarchy("cpuset");
    has_freezer = hierarchy("freezer");
    printf("unseen54: v1 memory %s, cpuset %s, freezer %s; %d CPUs, %d nodes\n",
           has_memory ? "yes" : "no", has_cpuset ? "yes" : "no", has_freezer ? "yes" : "no",
           ncpu, nodes);
    if (has_memory) {
        group("memory/A", "memory.move_charge_at_immigrate", "3");
        group("memory/B", "memory.move_charge_at_immigrate", "3");
        put(CG "/memory/B/memory.limit_in_bytes", "64M");
    }
    if (has_cpuset) {
        char cpus[16];
        snprintf(cpus, sizeof cpus, "%d", ncpu > 1 ? 1 : 0);
        group("cpuset/A", "cpuset.mems", "0");
        group("cpuset/A", "cpuset.cpus", "0");
        group("cpuset/A", "cpuset.memory_migrate", "1");
        group("cpuset/B", "cpuset.mems", nodes > 1 ? "1" : "0");
        group("cpuset/B", "cpuset.cpus", cpus);
        group("cpuset/B", "cpuset.memory_migrate", "1");
    }
    if (has_freezer) group("freezer/F", NULL, NULL);
    tenants = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (tenants == MAP_FAILED) return 1;
    int n = ncpu < 64 ? ncpu : 64;
    pid_t w[64];
    for (int i = 0; i < n; i++) {
        next();
        w[i] = fork();
        if (w[i] == 0) {
            rng = rng * 2654435761u + (uint64_t)i * 40503u + 1;
            worker_id = i;
            for (int k = 0; k < 50 * scale; k++) step();
            while (wait(NULL) > 0) {}
            printf("worker %d: %d tenants, %d memory moves, %d cpuset moves (%d with a killer,"
                   " %d refused), %d freezes (%d kills), %d cpuset rewrites\n", worker_id,
                   started, mem_moves, cpuset_moves, killed_moving, refused, freezes,
                   killed_frozen, rewrites);
            _exit(0);
        }
    }
    for (int i = 0; i < n; i++) waitpid(w[i], NULL, 0);
    if (has_freezer) put(CG "/freezer/F/freezer.state", "THAWED");
    printf("seed %llu, scale %d, %d workers: done\n", seed, scale, n);
    return 0;
}
