/* A fifty-sixth workload written after the model, for `activemm capture --program`, on 2
 * CPUs or more: the multi-gen LRU's page table walks holding the last reference to an mm.
 * - Setup: the multi-gen LRU with every capability on (/sys/kernel/mm/lru_gen/enabled "y"),
 *   debugfs mounted for /sys/kernel/debug/lru_gen. Without either it says so and exits 0
 *   having done nothing.
 * - Agers, one per two CPUs: forced aging again and again ("+ memcg node max_seq 1 1" to
 *   /sys/kernel/debug/lru_gen, for every memcg and node it lists). Each one walks the page
 *   tables of every mm on the memcg's list (try_to_inc_max_seq() with force_scan): the walk
 *   takes each mm with mmget_not_zero() (get_next_mm()/should_skip_mm()) and puts it back
 *   with mmput_async() when it moves on to the next (iterate_mm_list()). When the mm's
 *   processes all exited meanwhile, that put is the last: __mmput(), exit_mmap() and all,
 *   runs in a kworker (mmput_async_fn()), on a CPU lazy on whatever mm it last ran.
 * - Victims, a population kept on every CPU: each maps and touches a few MiB (an mm must
 *   hold MIN_LRU_BATCH pages to be walked), then, in a seeded random order, exits, exits
 *   from a thread while another one touches its memory (exit_group()), execs, forks a child
 *   that shares its pages copy-on-write and exits with it, or is killed (SIGKILL) by the
 *   worker that started it, most of them while an ager is walking.
 * Arguments: [scale] [seed]. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LRU_GEN "/sys/kernel/debug/lru_gen"
#define ALIVE 6 /* victims kept alive per worker */

static int ncpus;
static unsigned seed;
static volatile long sink;
static volatile int *stop; /* shared with the agers */

static unsigned rnd(void) { seed = seed * 1103515245u + 12345u; return (seed >> 16) & 0x7fff; }
static void pin(int cpu) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(cpu % ncpus, &s); sched_setaffinity(0, sizeof(s), &s); }
static void busy(long n) { for (volatile long i = 0; i < n; i++) sink += i; }
static void nap(long us) { struct timespec t = {us / 1000000, (us % 1000000) * 1000}; nanosleep(&t, NULL); }

static int put(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    int r = write(fd, text, strlen(text)) < 0 ? -1 : 0;
    close(fd);
    return r;
}

/* one forced aging of every memcg and node that lru_gen lists: "+ id nid max_seq 1 1" */
static int age_all(void) {
    static char buf[65536], cmd[8192];
    int fd = open(LRU_GEN, O_RDONLY);
    if (fd < 0) return -1;
    ssize_t n, len = 0;
    while (len < (ssize_t)sizeof buf - 1 && (n = read(fd, buf + len, sizeof buf - 1 - len)) > 0) len += n;
    close(fd);
    buf[len] = 0;
    int memcg = -1, node = -1, done = 0;
    unsigned long seq = 0;
    size_t c = 0;
    cmd[0] = 0;
    for (char *line = strtok(buf, "\n");; line = strtok(NULL, "\n")) {
        int id, nid;
        unsigned long s;
        int memcg_line = line && sscanf(line, "memcg %d", &id) == 1;
        int node_line = line && !memcg_line && sscanf(line, " node %d", &nid) == 1;
        if ((!line || memcg_line || node_line) && memcg >= 0 && node >= 0 && seq > 0 &&
            c < sizeof cmd - 64) {
            c += (size_t)snprintf(cmd + c, sizeof cmd - c, "+ %d %d %lu 1 1\n", memcg, node, seq);
            seq = 0;
        }
        if (!line) break;
        if (memcg_line) { memcg = id; node = -1; }
        else if (node_line) node = nid;
        else if (sscanf(line, " %lu", &s) == 1) seq = s; /* the last generation listed is max_seq */
    }
    /* one command per write: a command refused (EEXIST, max_seq moved on) ends a write */
    for (char *cur = cmd; *cur; ) {
        char *end = strchr(cur, '\n');
        *end = 0;
        if (put(LRU_GEN, cur) == 0) done++;
        cur = end + 1;
    }
    return done;
}

static void ager(int cpu) {
    pin(cpu);
    long rounds = 0, walks = 0;
    while (!*stop) {
        int done = age_all();
        if (done < 0) break;
        rounds++;
        walks += done;
        if (rnd() % 4 == 0) nap(200 + rnd() % 800);
    }
    printf("unseen56: ager on CPU %d: %ld rounds, %ld agings done\n", cpu, rounds, walks);
    fflush(stdout);
    _exit(0);
}

static char *mem;
static size_t memsize;
static void touch(void) { for (size_t i = 0; i < memsize; i += 4096) mem[i] = (char)(i >> 12); }
static void *toucher(void *arg) { for (long k = 0; k < (long)arg; k++) { touch(); busy(2000); } return NULL; }

/* a victim: its own few MiB, then one fate */
static void victim(unsigned how, int cpu) {
    pin(cpu);
    memsize = (size_t)(2 + how % 5) << 20;
    mem = mmap(NULL, memsize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) _exit(1);
    touch();
    nap(500 + (how >> 3) % 4000);
    switch ((how >> 8) % 6) {
    case 0: { /* exit_group() from a thread while another touches the memory */
        pthread_t t;
        pthread_create(&t, NULL, toucher, (void *)50L);
        busy(5000);
        _exit(0);
    }
    case 1: /* exec: the old mm's last user leaves it in exec_mmap() */
        execl("/bin/true", "true", (char *)NULL);
        break;
    case 2: { /* a child sharing the pages copy-on-write, both exit */
        pid_t k = fork();
        if (k == 0) { touch(); _exit(0); }
        touch();
        waitpid(k, NULL, 0);
        break;
    }
    case 3: /* touch its memory until killed, or for a while */
        for (int k = 0; k < 60; k++) { touch(); nap(300); }
        break;
    default: /* sleep a little longer, touch again, exit */
        nap(2000 + (how >> 4) % 5000);
        touch();
        break;
    }
    _exit(0);
}

static void worker(int w, int rounds) {
    pin(w);
    pid_t alive[ALIVE] = {0};
    for (int r = 0; r < rounds; r++) {
        int slot = (int)(rnd() % ALIVE);
        if (alive[slot] > 0) {
            if (rnd() % 3 == 0) kill(alive[slot], SIGKILL);
            waitpid(alive[slot], NULL, 0);
        }
        unsigned how = rnd() | rnd() << 15;
        alive[slot] = fork();
        if (alive[slot] == 0) victim(how, w + (int)(how % 2));
        nap(300 + rnd() % 2500);
    }
    for (int k = 0; k < ALIVE; k++)
        if (alive[k] > 0) { kill(alive[k], SIGKILL); waitpid(alive[k], NULL, 0); }
    _exit(0);
}

int main(int argc, char **argv) {
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    seed = argc > 2 ? (unsigned)atoi(argv[2]) : 56;
    ncpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (ncpus < 1) ncpus = 1;
    if (access(LRU_GEN, F_OK) != 0) mount("debugfs", "/sys/kernel/debug", "debugfs", 0, NULL);
    if (put("/sys/kernel/mm/lru_gen/enabled", "y") != 0 || access(LRU_GEN, W_OK) != 0) {
        printf("unseen56: no multi-gen LRU or no debugfs: nothing to do\n");
        return 0;
    }
    stop = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (stop == MAP_FAILED) return 1;
    int nagers = ncpus / 2 > 0 ? ncpus / 2 : 1;
    pid_t agers[16], workers[16];
    for (int a = 0; a < nagers && a < 16; a++)
        if ((agers[a] = fork()) == 0) { seed += 1000u * (unsigned)a; ager(2 * a); }
    printf("unseen56: %d agers, %d workers, %d CPUs, seed %u\n", nagers, ncpus, ncpus, seed);
    fflush(stdout);
    for (int w = 0; w < ncpus && w < 16; w++)
        if ((workers[w] = fork()) == 0) { seed += 7u * (unsigned)w + 1u; worker(w, 20 * scale); }
    for (int w = 0; w < ncpus && w < 16; w++) waitpid(workers[w], NULL, 0);
    *stop = 1;
    for (int a = 0; a < nagers && a < 16; a++) waitpid(agers[a], NULL, 0);
    printf("unseen56: %d rounds on each of %d workers done\n", 20 * scale, ncpus);
    return 0;
}
