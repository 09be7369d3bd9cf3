/* A fourteenth workload written after the model, for `activemm capture --program`:
 *  - /proc/PID/clear_refs written ("4" soft-dirty, "1", "5") by another process while the
 *    target's threads run on other CPUs, and while it exits: clear_refs_write() takes the
 *    mm with get_task_mm() (its mmput() may be the last) and flushes a TLB that is not the
 *    writer's own (flush_tlb_mm() of a foreign mm: IPIs to CPUs running it or lazy on it);
 *  - UFFDIO_COPY and UFFDIO_ZEROPAGE from another process, on a userfaultfd taken with
 *    pidfd_getfd() from a child that faults on its registered range and then exits: each
 *    ioctl is an mmget_not_zero(ctx->mm) and an mmput(), the last one possibly;
 *  - io_uring reads punted to io-wq workers (IOSQE_ASYNC on an empty pipe) whose owner execs
 *    or is killed while they are blocked (io_uring_task_cancel(), the workers exit);
 *  - the last CPU taken offline while a process and its thread run there, exec or exit
 *    (migrated off a dying CPU in the middle of it), then brought back. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile long sink;
static void busy(long n) { for (volatile long i = 0; i < n; i++) sink += i; }
static void nap(long us) { struct timespec t = {0, us * 1000}; nanosleep(&t, NULL); }
static char *const true_argv[] = {"true", NULL};
static int ncpu = 1;

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof(set), &set);
}

static void *spin(void *arg) { busy((long)arg); return NULL; }

static void *pinned_spin(void *arg) {
    pin(ncpu - 1);
    busy((long)arg);
    return NULL;
}

/* Writes `text` to /proc/PID/clear_refs; -1 once the process is gone. */
static int clear_refs(pid_t pid, const char *text) {
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/clear_refs", pid);
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    return n < 0 && errno == ESRCH ? -1 : 0;
}

static void clear_refs_storm(void) {
    const char *kinds[] = {"4", "1", "5"};
    for (int round = 0; round < 6; round++) {
        pid_t c = fork();
        if (c == 0) {
            pthread_t t[2];
            for (long i = 0; i < 2; i++)
                pthread_create(&t[i], NULL, spin, (void *)(200000 * (i + 1)));
            char *mem = malloc(256 * 1024);
            for (int k = 0; k < 20; k++) {
                if (mem) memset(mem, k, 256 * 1024);
                busy(10000);
            }
            if (round % 2) execv("/bin/true", true_argv);
            _exit(0);  /* the threads with it */
        }
        int status, writes = 0;
        while (waitpid(c, &status, WNOHANG) == 0) {
            clear_refs(c, kinds[writes++ % 3]);
            busy(2000);
        }
        if (round == 0) printf("clear_refs writes: %d\n", writes);
    }
}

/* The child: a userfaultfd on 16 pages, its number and the range sent to the parent, then
 * touches every page (each fault waits for the parent's UFFDIO_COPY) and exits. */
static void faulting_child(int wr) {
    long page = sysconf(_SC_PAGESIZE);
    int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
    struct uffdio_api api = {.api = UFFD_API};
    char *mem = mmap(NULL, 32 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    struct uffdio_register reg = {.range = {(unsigned long)mem, 32 * page},
                                  .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api) || ioctl(uffd, UFFDIO_REGISTER, &reg)) _exit(1);
    long msg[2] = {uffd, (long)mem};
    if (write(wr, msg, sizeof(msg)) != sizeof(msg)) _exit(1);
    for (int i = 0; i < 16; i++) sink += mem[i * page];
    busy(20000);
    _exit(0);
}

static void remote_uffd(void) {
    long page = sysconf(_SC_PAGESIZE);
    static char src[65536];
    for (int round = 0; round < 4; round++) {
        int p[2];
        if (pipe(p) != 0) return;
        pid_t c = fork();
        if (c == 0) {
            close(p[0]);
            faulting_child(p[1]);
        }
        close(p[1]);
        long msg[2];
        if (read(p[0], msg, sizeof(msg)) != sizeof(msg)) {
            waitpid(c, NULL, 0);
            continue;
        }
        close(p[0]);
        int pidfd = (int)syscall(SYS_pidfd_open, c, 0);
        int uffd = pidfd < 0 ? -1 : (int)syscall(SYS_pidfd_getfd, pidfd, (int)msg[0], 0);
        if (uffd < 0) {
            kill(c, SIGKILL);
            waitpid(c, NULL, 0);
            continue;
        }
        int copied = 0, zeroed = 0;
        struct pollfd pf = {.fd = uffd, .events = POLLIN};
        while (copied < 16 && poll(&pf, 1, 200) > 0) {
            struct uffd_msg m;
            if (read(uffd, &m, sizeof(m)) != sizeof(m)) break;
            if (m.event != UFFD_EVENT_PAGEFAULT) continue;
            struct uffdio_copy cp = {.dst = m.arg.pagefault.address & ~(page - 1),
                                     .src = (unsigned long)src, .len = page};
            if (ioctl(uffd, UFFDIO_COPY, &cp) == 0) copied++;
        }
        /* the child exits now: zero-fill the rest while it goes (mmget_not_zero fails
         * once its mm_users is 0; an mmput here may be the last) */
        for (int i = 16 + round; i < 32; i++) {
            struct uffdio_zeropage z = {.range = {(unsigned long)msg[1] + i * page, page}};
            if (ioctl(uffd, UFFDIO_ZEROPAGE, &z) == 0) zeroed++;
            busy(3000);
        }
        waitpid(c, NULL, 0);
        if (round == 0) printf("uffd from outside: %d copied, %d zeroed\n", copied, zeroed);
        close(uffd);  /* userfaultfd_release(): the ctx's mmdrop */
        close(pidfd);
    }
}

static int ring(struct io_uring_params *params) {
    memset(params, 0, sizeof(*params));
    return (int)syscall(SYS_io_uring_setup, 8, params);
}

/* Reads from an empty pipe, forced to io-wq workers; then exec (how 0) or wait to be
 * killed (how 1) with the workers blocked. */
static void blocked_workers(int how) {
    struct io_uring_params params;
    int fd = ring(&params);
    int pfd[2];
    if (fd < 0 || pipe(pfd) != 0) _exit(1);
    char *sq = mmap(NULL, params.sq_off.array + params.sq_entries * sizeof(unsigned),
                    PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
    struct io_uring_sqe *sqes = mmap(NULL, params.sq_entries * sizeof(struct io_uring_sqe),
                                     PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                                     IORING_OFF_SQES);
    if (sq == MAP_FAILED || sqes == MAP_FAILED) _exit(1);
    unsigned *tail = (unsigned *)(sq + params.sq_off.tail);
    unsigned *array = (unsigned *)(sq + params.sq_off.array);
    static char buf[4][8];
    for (unsigned k = 0; k < 4; k++) {
        struct io_uring_sqe *e = &sqes[k];
        memset(e, 0, sizeof(*e));
        e->opcode = IORING_OP_READ;
        e->fd = pfd[0];
        e->addr = (unsigned long)buf[k];
        e->len = 1;
        e->flags = IOSQE_ASYNC;
        array[k] = k;
    }
    __atomic_store_n(tail, 4, __ATOMIC_RELEASE);
    syscall(SYS_io_uring_enter, fd, 4, 0, 0, NULL, 0);
    busy(50000);
    if (how == 0) execv("/bin/true", true_argv);
    for (;;) pause();
}

static void io_workers(void) {
    for (int round = 0; round < 4; round++) {
        pid_t c = fork();
        if (c == 0) blocked_workers(round % 2);
        if (round % 2) {
            nap(20000);
            kill(c, SIGKILL);
        }
        waitpid(c, NULL, 0);
    }
}

static void cpu_online(int cpu, int on) {
    char path[64];
    snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu%d/online", cpu);
    int fd = open(path, O_WRONLY);
    if (fd < 0) return;
    if (write(fd, on ? "1" : "0", 1) < 0) perror(path);
    close(fd);
}

static void offline_under_load(void) {
    if (ncpu < 2) return;
    for (int round = 0; round < 4; round++) {
        pid_t c = fork();
        if (c == 0) {
            pin(ncpu - 1);
            pthread_t t;
            pthread_create(&t, NULL, pinned_spin, (void *)300000L);
            busy(100000 * (round + 1));
            if (round % 2) execv("/bin/true", true_argv);
            _exit(0);
        }
        busy(60000 * (round + 1));
        cpu_online(ncpu - 1, 0);  /* c and its thread are moved off, or exit meanwhile */
        nap(3000);
        cpu_online(ncpu - 1, 1);
        waitpid(c, NULL, 0);
        nap(3000);
    }
}

int main(void) {
    ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    for (int round = 0; round < 2; round++) {
        clear_refs_storm();
        remote_uffd();
        io_workers();
        offline_under_load();
    }
    nap(50000);
    printf("unseen14 done\n");
    return 0;
}
