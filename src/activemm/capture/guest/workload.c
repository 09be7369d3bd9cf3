/* activemm capture: the guest workload. Each workload exercises one rule of
 * Documentation/mm/active_mm.rst. Usage: workload NAME|all|parallel [SCALE]
 * Built static by `activemm capture` with the host's gcc. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <linux/vhost.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int ncpus = 1;
static const char *self = "/workload";

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu % ncpus, &set);
    sched_setaffinity(0, sizeof(set), &set);
}

static void nap(long usec) {
    struct timespec ts = {usec / 1000000, (usec % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

static void spin(long iters) {
    for (volatile long i = 0; i < iters; i++) {
    }
}

static void wait_all(void) {
    while (wait(NULL) > 0 || errno == EINTR) {
    }
}

/* threads: several threads of one mm switching among themselves and with kernel threads */
static void *thread_body(void *arg) {
    long n = (long)arg;
    pin((int)n);
    for (int i = 0; i < 20; i++) {
        spin(20000);
        if (i % 3 == 0) nap(200);
        else sched_yield();
    }
    return NULL;
}

static void w_threads(int scale) {
    for (int r = 0; r < scale; r++) {
        pthread_t t[6];
        for (long i = 0; i < 6; i++) pthread_create(&t[i], NULL, thread_body, (void *)i);
        for (int i = 0; i < 6; i++) pthread_join(t[i], NULL);
    }
}

/* forkexec: fork + exec churn; children exit on CPUs that may then go idle */
static void w_forkexec(int scale) {
    for (int i = 0; i < 6 * scale; i++) {
        pid_t p = fork();
        if (p == 0) {
            pin(i);
            execl(self, self, "noop", (char *)NULL);
            _exit(127);
        }
        if (i % 2) wait_all();
    }
    wait_all();
}

/* badexec: execs that fail, as a shell searching $PATH makes them: a missing file (6.1
 * allocates the new mm in alloc_bprm before it opens the file) and a file that is no program
 * (both kernels: bprm_mm_init, then -ENOEXEC). free_bprm's mmput frees that mm in the task;
 * then the exec that works. */
static void w_badexec(int scale) {
    int fd = open("/tmp/notaprogram", O_WRONLY | O_CREAT | O_TRUNC, 0755);
    if (fd >= 0) {
        write(fd, "\177ELF, but no program\n", 22);
        close(fd);
    }
    for (int i = 0; i < 4 * scale; i++) {
        pid_t p = fork();
        if (p == 0) {
            pin(i);
            char *argv[] = {"x", NULL};
            execv("/no/such/program", argv);
            execv("/tmp/notaprogram", argv);
            execl(self, self, "noop", (char *)NULL);
            _exit(127);
        }
        if (i % 2) wait_all();
    }
    wait_all();
}

/* zombie: a process runs and sleeps on CPU 1 (whose idle task then borrows its mm lazily),
 * moves to CPU 0 and exits there: its mm outlives its last real user until CPU 1 switches
 * to another user task. */
static void w_zombie(int scale) {
    for (int i = 0; i < 4 * scale; i++) {
        pid_t p = fork();
        if (p == 0) {
            pin(1 + i);
            spin(30000);
            nap(1000);
            pin(i);
            spin(10000);
            _exit(0);
        }
        pin(i);
        wait_all();
        nap(2000);
    }
}

/* vfork: the parent is suspended while the child borrows its mm, until the child execs */
static void w_vfork(int scale) {
    for (volatile int i = 0; i < 4 * scale; i++) {
        pid_t p = vfork();
        if (p == 0) {
            execl(self, self, "noop", (char *)NULL);
            _exit(127);
        }
        wait_all();
    }
}

/* execthread: exec from a thread that is not the group leader (de_thread takes the leader's pid) */
static void *exec_body(void *arg) {
    (void)arg;
    nap(500);
    execl(self, self, "noop", (char *)NULL);
    return NULL;
}

static void *sleeper_body(void *arg) {
    (void)arg;
    for (;;) nap(300);
    return NULL;
}

static void w_execthread(int scale) {
    for (int i = 0; i < 3 * scale; i++) {
        pid_t p = fork();
        if (p == 0) {
            pthread_t t, s;
            pthread_create(&s, NULL, sleeper_body, NULL);
            pthread_create(&t, NULL, exec_body, NULL);
            for (;;) nap(1000);
        }
        wait_all();
    }
}

/* exitgroup: exit_group() while sibling threads run on other CPUs */
static void *runner_body(void *arg) {
    pin((int)(long)arg);
    for (;;) {
        spin(5000);
        sched_yield();
    }
    return NULL;
}

static void w_exitgroup(int scale) {
    for (int i = 0; i < 3 * scale; i++) {
        pid_t p = fork();
        if (p == 0) {
            pthread_t t[3];
            for (long k = 0; k < 3; k++) pthread_create(&t[k], NULL, runner_body, (void *)(k + 1));
            nap(2000);
            exit(0);
        }
        wait_all();
    }
}

/* munmap: threads on every CPU touch a mapping that the main thread unmaps and remaps:
 * TLB shootdowns to CPUs running the mm, and to CPUs that borrow it lazily. Each toucher
 * publishes the mapping it is about to write to (a hazard pointer), and a mapping is unmapped
 * only once no toucher holds it: one preempted between reading the pointer and writing
 * through it would fault otherwise (at --scale 50 one did) */
static char *volatile shared_map;
static volatile int stop_touching;
static char *volatile touching[4];

static void *toucher_body(void *arg) {
    long k = (long)arg;
    pin((int)k);
    while (!__atomic_load_n(&stop_touching, __ATOMIC_SEQ_CST)) {
        char *m;
        do {  /* published before it is used: the unmapper sees it, or we see the new one */
            m = __atomic_load_n(&shared_map, __ATOMIC_SEQ_CST);
            __atomic_store_n(&touching[k], m, __ATOMIC_SEQ_CST);
        } while (m != __atomic_load_n(&shared_map, __ATOMIC_SEQ_CST));
        ((volatile char *)m)[(k * 4096) % (64 * 4096)] = 1;
        __atomic_store_n(&touching[k], NULL, __ATOMIC_SEQ_CST);
        if (k % 2) nap(100);
        else sched_yield();
    }
    return NULL;
}

static void w_munmap(int scale) {
    pthread_t t[4];
    stop_touching = 0;
    shared_map = mmap(NULL, 64 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (long k = 0; k < 4; k++) pthread_create(&t[k], NULL, toucher_body, (void *)k);
    for (int i = 0; i < 30 * scale; i++) {
        char *m = mmap(NULL, 64 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        memset(m, 1, 64 * 4096);
        char *old = shared_map;
        __atomic_store_n(&shared_map, m, __ATOMIC_SEQ_CST);
        nap(300);
        for (int k = 0; k < 4; k++)  /* (a toucher preempted mid-write: rarely) */
            while (__atomic_load_n(&touching[k], __ATOMIC_SEQ_CST) == old) nap(50);
        munmap(old, 64 * 4096);
    }
    __atomic_store_n(&stop_touching, 1, __ATOMIC_SEQ_CST);
    for (int k = 0; k < 4; k++) pthread_join(t[k], NULL);
    munmap(shared_map, 64 * 4096);
}

/* iouring: io_uring with IOSQE_ASYNC punts work to iou-wrk threads and SQPOLL starts an
 * iou-sqp thread: kernel-created threads that run on the process's mm */
static void w_iouring(int scale) {
    for (int r = 0; r < scale; r++) {
        pid_t p = fork();
        if (p != 0) {
            wait_all();
            continue;
        }
        for (int sqpoll = 0; sqpoll < 2; sqpoll++) {
            struct io_uring_params params;
            memset(&params, 0, sizeof(params));
            if (sqpoll) params.flags = IORING_SETUP_SQPOLL, params.sq_thread_idle = 20;
            int fd = (int)syscall(__NR_io_uring_setup, 16, &params);
            if (fd < 0) {
                perror("io_uring_setup");
                continue;
            }
            size_t sq_len = params.sq_off.array + params.sq_entries * sizeof(unsigned);
            size_t cq_len = params.cq_off.cqes + params.cq_entries * sizeof(struct io_uring_cqe);
            char *sq = mmap(NULL, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                            IORING_OFF_SQ_RING);
            char *cq = mmap(NULL, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                            IORING_OFF_CQ_RING);
            struct io_uring_sqe *sqes =
                mmap(NULL, params.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
            unsigned *sq_tail = (unsigned *)(sq + params.sq_off.tail);
            unsigned *sq_array = (unsigned *)(sq + params.sq_off.array);
            unsigned *cq_head = (unsigned *)(cq + params.cq_off.head);
            unsigned *cq_tail = (unsigned *)(cq + params.cq_off.tail);
            int pfd[2];
            if (pipe(pfd) != 0) _exit(1);
            char buf[8];
            for (int round = 0; round < 4; round++) {
                unsigned tail = *sq_tail;
                for (unsigned k = 0; k < 4; k++) {
                    unsigned idx = (tail + k) & (params.sq_entries - 1);
                    struct io_uring_sqe *e = &sqes[idx];
                    memset(e, 0, sizeof(*e));
                    e->opcode = k % 2 ? IORING_OP_NOP : IORING_OP_READ;
                    e->fd = pfd[0];
                    e->addr = (unsigned long)buf;
                    e->len = 1;
                    e->flags = IOSQE_ASYNC;
                    sq_array[idx] = idx;
                }
                __atomic_store_n(sq_tail, tail + 4, __ATOMIC_RELEASE);
                unsigned flags = IORING_ENTER_GETEVENTS | (sqpoll ? IORING_ENTER_SQ_WAKEUP : 0);
                syscall(__NR_io_uring_enter, fd, sqpoll ? 0 : 4, 0, flags, NULL, 0);
                nap(500);
                if (write(pfd[1], "xy", 2) < 0) _exit(1);
                nap(500);
                if (write(pfd[1], "xy", 2) < 0) _exit(1);
                syscall(__NR_io_uring_enter, fd, 0, 4, IORING_ENTER_GETEVENTS, NULL, 0);
                __atomic_store_n(cq_head, __atomic_load_n(cq_tail, __ATOMIC_ACQUIRE),
                                 __ATOMIC_RELEASE);
            }
            close(fd);
        }
        _exit(0);
    }
}

/* clonevm: clone(CLONE_VM) without CLONE_THREAD: a second process on the same mm, running
 * beside its parent on another CPU; half of them exec, the others just exit */
static char clone_stack[4][64 * 1024];

static int clone_body(void *arg) {
    long n = (long)arg;
    pin((int)n + 1);
    spin(20000);
    if (n % 2) execl(self, self, "noop", (char *)NULL);
    return 0;
}

static void w_clonevm(int scale) {
    for (int r = 0; r < 2 * scale; r++) {
        for (long k = 0; k < 4; k++)
            clone(clone_body, clone_stack[k] + sizeof(clone_stack[k]), CLONE_VM | SIGCHLD,
                  (void *)k);
        spin(30000);
        wait_all();
    }
}

/* procreader: a reader reads /proc/PID/stat or cmdline of short-lived children
 * (get_task_mm: an mm_users reference) while they exit: the last mmput, and so __mmput,
 * can run in the reader instead of the exiting task */
static void w_procreader(int scale) {
    for (int i = 0; i < 12 * scale; i++) {
        pid_t child = fork();
        if (child == 0) {
            pin(i + 1);
            spin(4000 * (i % 4 + 1));
            _exit(0);
        }
        pid_t reader = fork();
        if (reader == 0) {
            char path[64], buf[1024];
            snprintf(path, sizeof(path), "/proc/%d/%s", (int)child, i % 2 ? "cmdline" : "stat");
            pin(i);
            for (int k = 0; k < 2000; k++) {
                int fd = open(path, O_RDONLY);
                if (fd < 0) break;
                if (read(fd, buf, sizeof(buf)) <= 0) k = 200;
                close(fd);
            }
            _exit(0);
        }
        wait_all();
    }
}

/* umh: the kernel starts user-mode helpers itself: a socket of an address family with no
 * module loaded makes it call request_module(), which runs /proc/sys/kernel/modprobe (set to
 * busybox true here) from a kworker: a task born without an mm that execs */
static void w_umh(int scale) {
    int fd = open("/proc/sys/kernel/modprobe", O_WRONLY);
    if (fd >= 0) {
        if (write(fd, "/bin/true\n", 10) < 0) perror("modprobe");
        close(fd);
    }
    static const int families[] = {4, 5, 9, 11, 19, 21, 22, 24, 32, 33, 34, 35, 36, 37, 41, 42};
    for (int r = 0; r < scale; r++)
        for (unsigned i = 0; i < sizeof(families) / sizeof(families[0]); i++) {
            int s = socket(families[i], SOCK_DGRAM, 0);
            if (s >= 0) close(s);
        }
}

/* hotplug: take the last CPU offline while a process has just run there (its idle task
 * borrowing that mm), then bring it back: the dying CPU's lazy mm is handed to init_mm */
static void cpu_online(int cpu, int on) {
    char path[64];
    snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu%d/online", cpu);
    int fd = open(path, O_WRONLY);
    if (fd < 0) return;
    if (write(fd, on ? "1" : "0", 1) < 0) perror(path);
    close(fd);
}

static void w_hotplug(int scale) {
    if (ncpus < 2) return;
    int last = ncpus - 1;
    for (int r = 0; r < 2 * scale; r++) {
        pid_t p = fork();
        if (p == 0) {
            pin(last);
            spin(20000);
            pin(0);
            _exit(0);
        }
        wait_all();
        cpu_online(last, 0);
        nap(2000);
        cpu_online(last, 1);
        nap(2000);
    }
}

static void *hog(void *arg) {
    for (;;) {
        char *p = malloc(1 << 20);
        if (p == NULL) break;
        memset(p, 1, 1 << 20);
    }
    return arg;
}

/* The OOM killer: a two-threaded child eats memory until it is killed. mark_oom_victim()
 * mmgrab()s the victim's mm into signal->oom_mm, a reference no scheduler event shows,
 * dropped only when the signal struct is freed (mmdrop_async). */
static void w_oom(int scale) {
    for (int r = 0; r < scale; r++) {
        pid_t p = fork();
        if (p == 0) {
            int fd = open("/proc/self/oom_score_adj", O_WRONLY);
            if (fd >= 0) {
                write(fd, "1000", 4);  /* be the victim, whatever else runs */
                close(fd);
            }
            pthread_t t;
            pthread_create(&t, NULL, hog, NULL);
            hog(NULL);
            _exit(0);
        }
        int status;
        waitpid(p, &status, 0);
        printf("oom: child %d %s\n", p, WIFSIGNALED(status) ? "killed" : "exited");
        fflush(stdout);  /* `parallel` ends each workload with _exit() */
    }
}

/* vhost: VHOST_SET_OWNER takes the caller's mm (get_task_mm) and starts a worker: on 6.1 a
 * kernel thread that kthread_use_mm()s it for its whole life, until the device is released
 * (kthread_unuse_mm, then mmput); since 6.4 a vhost_task, a worker thread on the owner's mm.
 * A kick eventfd makes the worker run (handle_tx_kick, no backend: it returns at once). Half
 * the owners close the device themselves; the others exit holding it, so the worker uses the
 * mm past the owner's exit_mm() and the last mmput() runs in exit_files(). */
static void w_vhost(int scale) {
    if (access("/dev/vhost-net", R_OK | W_OK) != 0) {
        printf("vhost: no /dev/vhost-net (the vhost_net module did not load)\n");
        fflush(stdout);
        return;
    }
    for (int i = 0; i < 4 * scale; i++) {
        pid_t p = fork();
        if (p == 0) {
            pin(i);
            int fd = open("/dev/vhost-net", O_RDWR);
            if (fd < 0 || ioctl(fd, VHOST_SET_OWNER, NULL) < 0) {
                perror("vhost-net");
                _exit(1);
            }
            int kick = eventfd(0, 0);
            struct vhost_vring_file f = {1, kick}; /* VHOST_NET_VQ_TX */
            if (ioctl(fd, VHOST_SET_VRING_KICK, &f) < 0) perror("VHOST_SET_VRING_KICK");
            for (int k = 0; k < 6; k++) {
                uint64_t one = 1;
                if (write(kick, &one, sizeof(one)) < 0) perror("kick");
                spin(5000);
                nap(300);
                if (k == 3) pin(i + 1);
            }
            if (i % 2 == 0) close(fd);
            _exit(0);
        }
        wait_all();
        nap(2000);
    }
}

static void ksm_knob(const char *knob, const char *value) {
    char path[64];
    snprintf(path, sizeof(path), "/sys/kernel/mm/ksm/%s", knob);
    int fd = open(path, O_WRONLY);
    if (fd < 0) return;
    if (write(fd, value, strlen(value)) < 0) perror(path);
    close(fd);
}

static long ksm_full_scans(void) {
    char buf[32] = "";
    int fd = open("/sys/kernel/mm/ksm/full_scans", O_RDONLY);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    return n > 0 ? atol(buf) : -1;
}

/* ksm: ksmd running (it is off by default). A region of identical pages made mergeable is
 * inherited by forked children, each of whose mm __ksm_enter() mmgrab()s into a slot of its
 * own; a child that exits (or execs) while its slot has rmap_items leaves the slot, and
 * that reference, to ksmd, which drops it on its next pass once mm_users is 0: the last
 * reference to a zombie mm, held by no task. */
static void w_ksm(int scale) {
    if (access("/sys/kernel/mm/ksm/run", W_OK) != 0) {
        printf("ksm: no /sys/kernel/mm/ksm (a kernel without KSM)\n");
        fflush(stdout);
        return;
    }
    ksm_knob("pages_to_scan", "200");
    ksm_knob("sleep_millisecs", "1");
    ksm_knob("run", "1");
    size_t len = 64 * 4096;
    char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return;
    madvise(m, len, MADV_MERGEABLE);
    for (size_t o = 0; o < len; o += 4096) memset(m + o, 0x5a, 64);
    for (int i = 0; i < 6 * scale; i++) {
        if (fork() == 0) {
            pin(i);
            for (size_t o = 0; o < len; o += 4096) m[o + 64] = (char)i; /* copies: ksmd merges */
            nap(1000 + 700 * (i % 4));
            if (i % 3 == 2) execl(self, self, "noop", (char *)NULL);
            _exit(0);
        }
        nap(400);
    }
    wait_all();
    munmap(m, len);
    /* two full passes of ksmd take every exited child's slot out (and ours, with no
     * mergeable region left) before ksmd is stopped, which would leave them held */
    long first = ksm_full_scans();
    for (int i = 0; i < 1000 && ksm_full_scans() < first + 2; i++) nap(2000);
    ksm_knob("run", "0");
}

struct workload {
    const char *name;
    void (*run)(int);
    const char *what;
};

static const struct workload workloads[] = {
    {"threads", w_threads, "threads of one process"},
    {"forkexec", w_forkexec, "fork+exec churn"},
    {"badexec", w_badexec, "execs that fail (missing file, not a program), then one that works"},
    {"zombie", w_zombie, "exit while the mm is borrowed lazily on another CPU"},
    {"vfork", w_vfork, "vfork + exec"},
    {"execthread", w_execthread, "exec from a non-leader thread"},
    {"exitgroup", w_exitgroup, "exit_group with running siblings"},
    {"munmap", w_munmap, "munmap-driven TLB flushes across CPUs"},
    {"iouring", w_iouring, "io_uring worker and SQPOLL threads on a user mm"},
    {"clonevm", w_clonevm, "clone(CLONE_VM) without CLONE_THREAD beside its parent"},
    {"procreader", w_procreader, "/proc readers holding mm_users while tasks exit"},
    {"umh", w_umh, "user-mode helpers: tasks the kernel starts without an mm, which exec"},
    {"hotplug", w_hotplug, "CPU hotplug: the last CPU goes offline and comes back"},
    {"oom", w_oom, "the OOM killer's victim: its mm held by signal->oom_mm past its exit"},
    {"vhost", w_vhost, "vhost-net workers on a user mm (6.1: kthread_use_mm)"},
    {"ksm", w_ksm, "KSM with ksmd running: exited children's mms held by their slots"},
};
#define NWORKLOADS (sizeof(workloads) / sizeof(workloads[0]))

/* is `want` one of the comma-separated names in `list`? */
static int listed(const char *list, const char *want) {
    size_t n = strlen(want);
    for (const char *p = list; *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && strncmp(p, want, n) == 0) return 1;
        if (!end) break;
        p = end + 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "noop") == 0) {
        spin(2000);
        return 0;
    }
    ncpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (ncpus < 1) ncpus = 1;
    const char *name = argc > 1 ? argv[1] : "all";
    int scale = argc > 2 ? atoi(argv[2]) : 1;
    if (scale < 1) scale = 1;
    int parallel = strcmp(name, "parallel") == 0;
    int found = 0;
    for (unsigned i = 0; i < NWORKLOADS; i++) {
        if (!parallel && strcmp(name, "all") != 0 && !listed(name, workloads[i].name))
            continue;
        found = 1;
        printf("workload %s: %s\n", workloads[i].name, workloads[i].what);
        fflush(stdout);
        if (parallel) {
            if (fork() == 0) {
                workloads[i].run(scale);
                _exit(0);
            }
        } else {
            workloads[i].run(scale);
        }
    }
    wait_all();
    if (!found) {
        fprintf(stderr, "unknown workload %s\n", name);
        return 2;
    }
    return 0;
}
