/* A thirty-fifth workload written after the model, for `activemm capture --program`, best
 * with `--memory 768` or more (it reserves 64 MiB of huge pages; with less it says so and
 * skips them):
 *  - hugetlb: processes mapping one hugetlb memfd shared over the same 1 GiB-aligned range,
 *    so that their page tables share PMD pages (huge_pmd_share()); each unmapping or exiting
 *    one unshares them (huge_pmd_unshare(): a flush of the whole range, page tables freed)
 *    while the others' threads run on other CPUs; and private huge pages written after fork
 *    (hugetlb_wp() copies them, flushing the parent);
 *  - seccomp: threaded processes whose filter kills the process (SECCOMP_RET_KILL_PROCESS)
 *    or only the thread (SECCOMP_RET_KILL_THREAD) that calls a forbidden syscall, while the
 *    siblings spin on other CPUs;
 *  - memfd_secret(): threads each touching a secret region (its pages taken out of the
 *    kernel's direct map) that exit while their siblings run, processes with one forking
 *    and exiting (6.1 has it off by default: `--kernel-args secretmem.enable=1`; without
 *    it the program says so and skips this part);
 *  - mlockall(MCL_CURRENT | MCL_FUTURE) processes and MADV_WIPEONFORK / MADV_DONTFORK regions
 *    forking children that exit at once, exec'ing ones among them. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif
#ifndef MADV_WIPEONFORK
#define MADV_WIPEONFORK 18
#endif

static int ncpus;
static volatile long sink;
static void pin(int cpu) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(cpu % ncpus, &s); sched_setaffinity(0, sizeof(s), &s); }
static void busy(long n) { for (volatile long i = 0; i < n; i++) sink += i; }
static void nap(long us) { struct timespec t = {us / 1000000, (us % 1000000) * 1000}; nanosleep(&t, NULL); }

static volatile int stop_spin;
static void *spinner(void *arg) {
    pin((int)(long)arg);
    while (!stop_spin) { busy(3000); nap(200); }
    return NULL;
}

/* Threads spinning (and napping) on every CPU but the caller's. */
static void spin_others(int self) {
    pthread_t t;
    for (long c = 0; c < ncpus; c++)
        if (c != self) pthread_create(&t, NULL, spinner, (void *)c);
}

/* -- hugetlb -------------------------------------------------------------------------- */

#define HUGE (2UL << 20)
#define GIB (1UL << 30)
#define SHARED_AT ((void *)(64UL * GIB))

static int set_hugepages(int n) {
    int fd = open("/proc/sys/vm/nr_hugepages", O_WRONLY);
    if (fd < 0) return -1;
    char buf[16];
    int len = snprintf(buf, sizeof(buf), "%d", n);
    int ok = write(fd, buf, (size_t)len) == len;
    close(fd);
    fd = open("/proc/sys/vm/nr_hugepages", O_RDONLY);
    int got = 0;
    if (fd >= 0) { ssize_t r = read(fd, buf, sizeof(buf) - 1); if (r > 0) { buf[r] = 0; got = atoi(buf); } close(fd); }
    return ok ? got : -1;
}

/* A process mapping the shared hugetlb file at SHARED_AT, touching `pages` huge pages with
 * a thread per CPU, then unmapping (or exiting with it mapped). */
static void sharer(int fd, int pages, int cpu, int unmap_first) {
    pin(cpu);
    char *p = mmap(SHARED_AT, GIB, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED_NOREPLACE | MAP_NORESERVE, fd, 0);
    if (p == MAP_FAILED) _exit(2);
    spin_others(cpu);
    for (int r = 0; r < 20; r++)
        for (int i = 0; i < pages; i++) p[(size_t)i * HUGE + (size_t)r * 64] += 1;
    if (unmap_first) munmap(p, GIB);
    busy(20000);
    _exit(0);
}

static void hugetlb_rounds(int rounds) {
    int got = set_hugepages(32);
    if (got < 8) { printf("hugetlb: %d huge pages only, skipped\n", got); return; }
    int fd = memfd_create("huge", MFD_HUGETLB);
    if (fd < 0 || ftruncate(fd, (off_t)GIB) != 0) { printf("hugetlb: memfd %s, skipped\n", strerror(errno)); return; }
    for (int r = 0; r < rounds; r++) {
        pid_t kids[8];
        int n = ncpus < 4 ? 4 : 8;
        for (int i = 0; i < n; i++)
            if ((kids[i] = fork()) == 0) sharer(fd, 4, i, i % 2);
        for (int i = 0; i < n; i++) waitpid(kids[i], NULL, 0);
        /* private huge pages written after fork: hugetlb_wp() copies */
        pid_t p = fork();
        if (p == 0) {
            char *q = mmap(NULL, 2 * HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
            if (q == MAP_FAILED) _exit(3);
            q[0] = 1; q[HUGE] = 1;
            spin_others(0);
            for (int i = 0; i < 3; i++) {
                pid_t c = fork();
                if (c == 0) { q[0] = 2; q[HUGE] = 2; busy(5000); _exit(0); }
                q[64] = 3; /* the parent writes too: its own copy */
                waitpid(c, NULL, 0);
            }
            _exit(0);
        }
        waitpid(p, NULL, 0);
    }
    close(fd);
    set_hugepages(0);
    printf("hugetlb: %d rounds of %d huge pages\n", rounds, got);
}

/* -- seccomp -------------------------------------------------------------------------- */

static void *forbidden(void *arg) {
    pin((int)(long)arg);
    busy(30000);
    syscall(SYS_getppid); /* the filter kills here */
    return NULL;
}

static void seccomp_victim(unsigned action) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, action),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof(f) / sizeof(f[0]), f};
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) _exit(4);
    spin_others(0);
    pthread_t t;
    pthread_create(&t, NULL, forbidden, (void *)1L);
    pthread_join(t, NULL); /* with KILL_THREAD the thread is gone, the rest goes on */
    busy(20000);
    _exit(0);
}

static void seccomp_rounds(int rounds) {
    int killed = 0;
    for (int r = 0; r < rounds; r++) {
        unsigned action = r % 2 ? SECCOMP_RET_KILL_THREAD : SECCOMP_RET_KILL_PROCESS;
        pid_t p = fork();
        if (p == 0) seccomp_victim(action);
        int st = 0;
        waitpid(p, &st, 0);
        killed += WIFSIGNALED(st);
    }
    printf("seccomp: %d rounds, %d processes killed by their filter\n", rounds, killed);
}

/* -- memfd_secret ----------------------------------------------------------------------- */

static int secret_fd(void) { return (int)syscall(447 /* memfd_secret */, 0); }

static void *secret_thread(void *arg) {
    pin((int)(long)arg);
    int fd = secret_fd();
    if (fd < 0 || ftruncate(fd, 16 * 4096) != 0) return NULL;
    char *p = mmap(NULL, 16 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return NULL;
    for (int i = 0; i < 16; i++) p[i * 4096] = (char)i;
    busy(5000);
    return NULL; /* the thread exits with the region mapped */
}

static void secret_rounds(int rounds) {
    int fd = secret_fd();
    if (fd < 0) { printf("memfd_secret: %s, skipped\n", strerror(errno)); return; }
    close(fd);
    for (int r = 0; r < rounds; r++) {
        pid_t p = fork();
        if (p == 0) {
            spin_others(0);
            pthread_t t[16];
            int n = 2 * ncpus > 16 ? 16 : 2 * ncpus;
            for (long i = 0; i < n; i++) pthread_create(&t[i], NULL, secret_thread, (void *)i);
            for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
            secret_thread((void *)0L);
            pid_t c = fork();
            if (c == 0) { secret_thread((void *)1L); _exit(0); }
            waitpid(c, NULL, 0);
            _exit(0);
        }
        waitpid(p, NULL, 0);
    }
    printf("memfd_secret: %d rounds\n", rounds);
}

/* -- mlockall, MADV_WIPEONFORK, MADV_DONTFORK ---------------------------------------------- */

static void locked_rounds(int rounds, const char *self) {
    for (int r = 0; r < rounds; r++) {
        pid_t p = fork();
        if (p == 0) {
            mlockall(MCL_CURRENT | MCL_FUTURE);
            char *w = mmap(NULL, 64 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            char *d = mmap(NULL, 64 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (w == MAP_FAILED || d == MAP_FAILED) _exit(5);
            madvise(w, 64 * 4096, MADV_WIPEONFORK);
            madvise(d, 64 * 4096, MADV_DONTFORK);
            memset(w, 1, 64 * 4096);
            memset(d, 1, 64 * 4096);
            spin_others(0);
            for (int i = 0; i < 4; i++) {
                pid_t c = fork();
                if (c == 0) {
                    sink += w[4096 * i];
                    if (i == 3) execl(self, self, "child", (char *)NULL);
                    _exit(0);
                }
                waitpid(c, NULL, 0);
            }
            _exit(0);
        }
        waitpid(p, NULL, 0);
    }
    printf("mlockall: %d rounds\n", rounds);
}

int main(int argc, char **argv) {
    ncpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (argc > 1 && strcmp(argv[1], "child") == 0) { busy(2000); return 0; }
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1) scale = 1;
    setvbuf(stdout, NULL, _IOLBF, 0);
    hugetlb_rounds(3 * scale);
    seccomp_rounds(6 * scale);
    secret_rounds(3 * scale);
    locked_rounds(3 * scale, "/proc/self/exe");
    return 0;
}
