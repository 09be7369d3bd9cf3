/* A forty-sixth workload written after the model, for `activemm capture --program`: a seeded
 * random mix of the ways one process reaches into another's address space while that one
 * forks, execs and exits. One prober per CPU takes 60 steps (x the scale given as the first
 * argument, the seed as the second), every step one of: start a target (threads touching
 * memory, some of them re-exec'ing it from a non-leader thread (de_thread()), a vfork child
 * exec'ing, then an exit of one kind or another); keep a /proc file of a target (or of one
 * of its threads, /proc/PID/task/TID/...) open, of each kind the release of which drops an
 * mm: maps, smaps, smaps_rollup, numa_maps, pagemap, mem, environ, auxv; read a kept one
 * later (seq_file reads take mmap_read_lock through the file's mm), or close it; ptrace a
 * target (PTRACE_SEIZE, PTRACE_INTERRUPT, PTRACE_PEEKDATA through access_process_vm(),
 * PTRACE_DETACH); process_vm_writev() into it; move_pages() of its pages (get_task_mm()
 * and mmput() in the prober); get a userfaultfd with fork events and fork under it; kill a
 * target or leave it. Files are opened without O_CLOEXEC, and a prober may re-exec itself
 * keeping them. The same seed gives the same choices (not the same timing). */
#define _GNU_SOURCE
#include <fcntl.h>
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
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t rng;
static int ncpu = 1;

static uint32_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

/* ---- targets ---- */

static char *page;

static void *churn(void *arg) {
    long n = (long)(intptr_t)arg;
    for (long i = 0; i < n; i++) {
        char *p = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p != MAP_FAILED) {
            memset(p, (int)i, 1 << 16);
            munmap(p, 1 << 16);
        }
        page[i % 4096] = (char)i;
    }
    return NULL;
}

static void *reexec_from_thread(void *arg) {
    (void)arg;
    usleep(300);
    execl("/bin/program", "program", "--leaf", NULL);
    syscall(SYS_exit_group, 0); /* (no such program) */
    return NULL;
}

/* A target: threads churning its mappings, then one way out. */
static void target(uint32_t how) {
    page = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) _exit(1);
    memset(page, 1, 1 << 20);
    pthread_t t;
    for (uint32_t i = 0; i < 1 + how % 3; i++) pthread_create(&t, NULL, churn, (void *)(intptr_t)40);
    usleep(500 + how % 3000);
    switch ((how >> 3) % 5) {
    case 0: _exit(0);
    case 1: pthread_create(&t, NULL, reexec_from_thread, NULL); pause(); _exit(0);
    case 2: {
        pid_t c = vfork();
        if (c == 0) {
            execl("/bin/program", "program", "--leaf", NULL);
            _exit(0);
        }
        _exit(0);
    }
    case 3: syscall(SYS_exit_group, 0); _exit(0);
    default: usleep(2000 + how % 4000); _exit(0);
    }
}

/* ---- what a prober keeps ---- */

#define MAXT 8
static pid_t targets[MAXT];
static int ntargets;
#define MAXF 16
static int files[MAXF];
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

/* A /proc file of the target, or of one of its threads. */
static int open_of(pid_t pid, const char *what) {
    char path[96];
    if (next() % 3 == 0) {
        snprintf(path, sizeof path, "/proc/%d/task", pid);
        /* the leader's own task directory, or the first other thread listed */
        int dir = open(path, O_RDONLY | O_DIRECTORY);
        if (dir >= 0) {
            char buf[1024];
            long n = syscall(SYS_getdents64, dir, buf, sizeof buf);
            close(dir);
            for (long off = 0; off < n;) {
                unsigned short reclen = *(unsigned short *)(buf + off + 16);
                const char *name = buf + off + 19;
                if (name[0] != '.' && atoi(name) != pid) {
                    snprintf(path, sizeof path, "/proc/%d/task/%s/%s", pid, name, what);
                    return open(path, O_RDONLY);
                }
                off += reclen;
            }
        }
    }
    snprintf(path, sizeof path, "/proc/%d/%s", pid, what);
    return open(path, O_RDONLY);
}

struct monitor {
    int uffd, ufd;
};

/* Reads the fork event (up to 200 ms): its file is the child's context. */
static void *monitor(void *arg) {
    struct monitor *m = arg;
    for (int i = 0; i < 400; i++) {
        struct uffd_msg msg;
        if (read(m->uffd, &msg, sizeof msg) == sizeof msg) {
            if (msg.event == UFFD_EVENT_FORK) m->ufd = (int)msg.arg.fork.ufd;
            return NULL;
        }
        usleep(500);
    }
    return NULL;
}

static void reexec(int steps_left);

static void step(int steps_left) {
    static const char *kinds[] = {"maps", "smaps", "smaps_rollup", "numa_maps",
                                  "pagemap", "mem", "environ", "auxv"};
    switch (next() % 13) {
    case 0:
    case 1: {
        uint32_t how = next();
        pid_t c = fork();
        if (c == 0) target(how);
        if (c > 0 && ntargets < MAXT) targets[ntargets++] = c;
        break;
    }
    case 2:
    case 3:
        keep(open_of(some_target(), kinds[next() % 8]));
        break;
    case 4: /* read a kept file, or close it */
        if (nfiles) {
            int k = next() % nfiles;
            char buf[4096];
            if (next() % 2) { /* a few pages of it: pagemap covers the whole address space */
                lseek(files[k], 0, SEEK_SET);
                for (int i = 0; i < 16 && read(files[k], buf, sizeof buf) > 0; i++) {}
            } else {
                close(files[k]);
                files[k] = files[--nfiles];
            }
        }
        break;
    case 5: { /* ptrace: seize, stop, peek, let go */
        pid_t t = some_target();
        if (t == getppid() || ptrace(PTRACE_SEIZE, t, NULL, NULL) != 0) break;
        ptrace(PTRACE_INTERRUPT, t, NULL, NULL);
        int st;
        if (waitpid(t, &st, __WALL) == t && WIFSTOPPED(st)) {
            for (int i = 0; i < 4; i++) ptrace(PTRACE_PEEKDATA, t, (void *)(0x400000L + 8 * i), NULL);
            ptrace(PTRACE_DETACH, t, NULL, NULL);
        } else if (waitpid(t, &st, WNOHANG | __WALL) == t) {
            for (int i = 0; i < ntargets; i++)
                if (targets[i] == t) { targets[i] = targets[--ntargets]; break; }
        }
        break;
    }
    case 6: {
        char buf[64] = "probe";
        struct iovec l = {buf, sizeof buf}, r = {(void *)0x400000, sizeof buf};
        process_vm_writev(some_target(), &l, 1, &r, 1, 0); /* text: EFAULT, after mm_access() */
        break;
    }
    case 7: {
        void *pages[1] = {(void *)0x400000};
        int status[1];
        syscall(SYS_move_pages, some_target(), 1, pages, NULL, status, 0);
        break;
    }
    case 8: { /* a userfaultfd with fork events: the child's context holds the child's mm */
        int u = (int)syscall(SYS_userfaultfd, O_NONBLOCK);
        if (u < 0) break;
        struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_EVENT_FORK};
        char *r = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (ioctl(u, UFFDIO_API, &api) == 0 && r != MAP_FAILED) {
            struct uffdio_register reg = {.range = {(unsigned long)r, 1 << 16},
                                          .mode = UFFDIO_REGISTER_MODE_MISSING};
            ioctl(u, UFFDIO_REGISTER, &reg);
            /* the fork waits until its event is read: a thread reads it meanwhile */
            pthread_t t;
            struct monitor m = {.uffd = u, .ufd = -1};
            pthread_create(&t, NULL, monitor, &m);
            pid_t c = fork();
            if (c == 0) _exit(0);
            if (c > 0 && ntargets < MAXT) targets[ntargets++] = c;
            pthread_join(t, NULL);
            keep(m.ufd);
        }
        if (r != MAP_FAILED) munmap(r, 1 << 16);
        keep(u);
        break;
    }
    case 9:
        if (ntargets) kill(targets[next() % ntargets], SIGKILL);
        break;
    case 10:
        if (next() % 4 == 0) reexec(steps_left);
        break;
    default:
        usleep(next() % 400);
    }
    reap();
}

static void reexec(int steps_left) {
    char left[16], seed[32], fds[160] = "";
    snprintf(left, sizeof left, "%d", steps_left);
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)(rng | 1));
    for (int i = 0, n = 0; i < nfiles && n < 140; i++)
        n += snprintf(fds + n, sizeof fds - n, "%d,", files[i]);
    execl("/bin/program", "program", "--prober", left, seed, fds, NULL);
}

static void prober(int steps) {
    for (int i = steps; i > 0; i--) step(i - 1);
    if (next() % 2)
        for (int i = 0; i < nfiles; i++) close(files[i]);
    for (int i = 0; i < ntargets; i++) waitpid(targets[i], NULL, __WALL);
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--leaf") == 0) {
        usleep(800);
        return 0;
    }
    ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (argc > 4 && strcmp(argv[1], "--prober") == 0) {
        rng = strtoull(argv[3], NULL, 10) | 1;
        for (char *p = argv[4]; *p;) {
            char *end;
            long fd = strtol(p, &end, 10);
            if (end == p) break;
            keep((int)fd);
            p = *end ? end + 1 : end;
        }
        prober(atoi(argv[2]));
    }
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1) scale = 1;
    rng = argc > 2 ? strtoull(argv[2], NULL, 10) | 1 : 46;
    unsigned long long seed = rng;
    setvbuf(stdout, NULL, _IONBF, 0);
    int n = ncpu < 64 ? ncpu : 64;
    pid_t w[64];
    for (int i = 0; i < n; i++) {
        next();
        w[i] = fork();
        if (w[i] == 0) {
            rng = rng * 2654435761u + (uint64_t)i * 40503u + 1;
            prober(60 * scale);
        }
    }
    for (int i = 0; i < n; i++) waitpid(w[i], NULL, 0);
    while (waitpid(-1, NULL, __WALL) > 0) {}
    printf("probes mix (seed %llu): %d probers\n", seed, n);
    printf("done (%d CPUs)\n", ncpu);
    return 0;
}
