/* A forty-fifth workload written after the model, for `activemm capture --program`: a seeded
 * random mix of the holders of an mm that are not its tasks, taken on processes that are
 * busy forking, exec'ing and exiting. One observer per CPU takes 80 steps (x the scale given
 * as the first argument, the seed as the second), every step one of: start a target (a
 * process whose threads touch memory and which then exits, exec's or exit_group()s from a
 * thread), open a target's /proc/PID/mem or environ and keep the file (proc_mem_open():
 * mmgrab()), read or close a kept file later, read a target's maps / smaps_rollup / status /
 * cmdline (get_task_mm() and its mmput()), process_vm_readv() from it, process_madvise()
 * it through a pidfd, SIGKILL it and process_mrelease() its mm, create a userfaultfd
 * (ctx->mm: mmgrab()) and hand it to a child that outlives the observer's close, set up an
 * io_uring (ctx->mm_account; some with an SQPOLL thread) and close it later or never,
 * register for and issue private expedited membarriers, re-exec itself keeping the open
 * files (no O_CLOEXEC), or run a step from a short-lived thread. The same seed gives the
 * same choices (not the same timing). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/io_uring.h>
#include <linux/membarrier.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_process_madvise
#define SYS_process_madvise 440
#endif
#ifndef SYS_process_mrelease
#define SYS_process_mrelease 448
#endif

static uint64_t rng;
static int ncpu = 1;

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

/* ---- targets ---- */

static char *tregion;
#define TREGION (1 << 19)

static void *ttouch(void *arg) {
    long n = (long)(intptr_t)arg;
    for (long i = 0; i < n; i++)
        for (int j = 0; j < TREGION; j += 4096) ((volatile char *)tregion)[j] = (char)i;
    return NULL;
}

static void *texit_group(void *arg) {
    spin_us((long)(intptr_t)arg);
    syscall(SYS_exit_group, 0);
    return NULL;
}

/* A target: threads touching memory, then one way out. */
static void target(uint32_t how) {
    tregion = mmap(NULL, TREGION, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (tregion == MAP_FAILED) _exit(1);
    ttouch((void *)1);
    pthread_t t;
    for (uint32_t i = 0; i < how % 3; i++) pthread_create(&t, NULL, ttouch, (void *)(intptr_t)4);
    usleep(200 + how % 2000);
    switch ((how >> 4) % 4) {
    case 0: _exit(0);
    case 1: execl("/bin/program", "program", "--target-leaf", NULL); _exit(0);
    case 2: pthread_create(&t, NULL, texit_group, (void *)(intptr_t)(how % 300)); pause(); _exit(0);
    default: usleep(3000 + how % 5000); _exit(0);
    }
}

/* ---- what an observer holds ---- */

#define MAXT 8
static pid_t targets[MAXT];
static int ntargets;
#define MAXF 12
static int files[MAXF]; /* /proc/PID/mem, environ, io_uring fds */
static int nfiles;

static void keep(int fd) {
    if (fd < 0) return;
    if (nfiles < MAXF) files[nfiles++] = fd;
    else close(fd);
}

static pid_t some_target(void) { return ntargets ? targets[next() % ntargets] : getppid(); }

static void reap(void) {
    pid_t p;
    while ((p = waitpid(-1, NULL, WNOHANG | __WALL)) > 0)
        for (int i = 0; i < ntargets; i++)
            if (targets[i] == p) { targets[i] = targets[--ntargets]; break; }
}

static void read_file(pid_t pid, const char *what) {
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/%s", pid, what);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return;
    while (read(fd, buf, sizeof buf) > 0) {}
    close(fd);
}

static void reexec(int steps_left);

static void step(int steps_left, int in_thread);

static void *thread_step(void *arg) {
    step((int)(intptr_t)arg, 1);
    return NULL;
}

static void step(int steps_left, int in_thread) {
    switch (next() % 14) {
    case 0:
    case 1: {
        uint32_t how = next();
        pid_t c = fork();
        if (c == 0) target(how);
        if (c > 0 && ntargets < MAXT) targets[ntargets++] = c;
        break;
    }
    case 2: { /* a kept file: the mm's mm_count held by the file */
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/%s", some_target(), next() % 3 ? "mem" : "environ");
        keep(open(path, O_RDONLY));
        break;
    }
    case 3: /* use or drop a kept file */
        if (nfiles) {
            int k = next() % nfiles;
            char buf[256];
            if (next() % 2) pread(files[k], buf, sizeof buf, 0x400000 + (next() % 16) * 4096);
            else { close(files[k]); files[k] = files[--nfiles]; }
        }
        break;
    case 4: {
        static const char *what[] = {"maps", "smaps_rollup", "status", "cmdline", "stat"};
        read_file(some_target(), what[next() % 5]);
        break;
    }
    case 5: {
        char buf[512];
        struct iovec l = {buf, sizeof buf}, r = {(void *)0x400000, sizeof buf};
        process_vm_readv(some_target(), &l, 1, &r, 1, 0);
        break;
    }
    case 6: {
        int pfd = (int)syscall(SYS_pidfd_open, some_target(), 0);
        if (pfd < 0) break;
        struct iovec v = {(void *)0x400000, 1 << 16};
        syscall(SYS_process_madvise, pfd, &v, 1, next() % 2 ? MADV_COLD : MADV_PAGEOUT, 0);
        close(pfd);
        break;
    }
    case 7: /* kill a target and reap its mm at once */
        if (ntargets) {
            pid_t t = targets[next() % ntargets];
            int pfd = (int)syscall(SYS_pidfd_open, t, 0);
            kill(t, SIGKILL);
            if (pfd >= 0) {
                syscall(SYS_process_mrelease, pfd, 0);
                close(pfd);
            }
        }
        break;
    case 8: { /* a userfaultfd: its context holds this mm; a child closes it last */
        int u = (int)syscall(SYS_userfaultfd, O_NONBLOCK);
        if (u < 0) break;
        struct uffdio_api api = {.api = UFFD_API};
        ioctl(u, UFFDIO_API, &api);
        if (next() % 2) {
            pid_t c = fork();
            if (c == 0) {
                usleep(next() % 4000);
                close(u);
                _exit(0);
            }
            if (c > 0 && ntargets < MAXT) targets[ntargets++] = c;
            close(u);
        } else keep(u);
        break;
    }
    case 9: { /* an io_uring: ctx->mm_account holds this mm until the ring is freed */
        struct io_uring_params p;
        memset(&p, 0, sizeof p);
        if (next() % 3 == 0) {
            p.flags = IORING_SETUP_SQPOLL;
            p.sq_thread_idle = 1 + next() % 20;
        }
        int fd = (int)syscall(SYS_io_uring_setup, 4, &p);
        if (fd >= 0 && next() % 2) close(fd);
        else keep(fd);
        break;
    }
    case 10:
        syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0);
        syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0);
        break;
    case 11:
        if (!in_thread && next() % 4 == 0) reexec(steps_left);
        break;
    case 12:
        if (!in_thread) {
            pthread_t t;
            if (pthread_create(&t, NULL, thread_step, (void *)(intptr_t)steps_left) == 0) {
                if (next() % 2) pthread_join(t, NULL);
                else pthread_detach(t);
            }
        }
        break;
    default:
        if (next() % 2) sched_yield();
        else usleep(next() % 500);
    }
    if (!in_thread) reap();
}

static void reexec(int steps_left) {
    char left[16], seed[32], fds[128] = "";
    snprintf(left, sizeof left, "%d", steps_left);
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)(rng | 1));
    for (int i = 0, n = 0; i < nfiles && n < 100; i++)
        n += snprintf(fds + n, sizeof fds - n, "%d,", files[i]);
    execl("/bin/program", "program", "--observer", left, seed, fds, NULL);
}

static void observer(int steps) {
    for (int i = steps; i > 0; i--) step(i - 1, 0);
    switch (next() % 3) { /* the kept files go with it, one way or another */
    case 0: for (int i = 0; i < nfiles; i++) close(files[i]); break;
    case 1: kill(getpid(), SIGKILL); break;
    default: break;
    }
    for (int i = 0; i < ntargets; i++) waitpid(targets[i], NULL, __WALL);
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--target-leaf") == 0) {
        usleep(500);
        return 0;
    }
    ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (argc > 4 && strcmp(argv[1], "--observer") == 0) {
        rng = strtoull(argv[3], NULL, 10) | 1;
        for (char *p = argv[4]; *p;) {
            char *end;
            long fd = strtol(p, &end, 10);
            if (end == p) break;
            keep((int)fd);
            p = *end ? end + 1 : end;
        }
        observer(atoi(argv[2]));
    }
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1) scale = 1;
    rng = argc > 2 ? strtoull(argv[2], NULL, 10) | 1 : 45;
    unsigned long long seed = rng;
    setvbuf(stdout, NULL, _IONBF, 0);
    int n = ncpu < 64 ? ncpu : 64, killed = 0;
    pid_t w[64];
    for (int i = 0; i < n; i++) {
        next();
        w[i] = fork();
        if (w[i] == 0) {
            rng = rng * 2654435761u + (uint64_t)i * 40503u + 1;
            observer(80 * scale);
        }
    }
    for (int i = 0; i < n; i++) {
        int st;
        if (waitpid(w[i], &st, 0) == w[i] && WIFSIGNALED(st)) killed++;
    }
    while (waitpid(-1, NULL, __WALL) > 0) {}
    printf("holders mix (seed %llu): %d observers, %d killed themselves\n", seed, n, killed);
    printf("done (%d CPUs)\n", ncpu);
    return 0;
}
