/* A tenth workload written after the model, for `activemm capture --program`:
 *  - a uprobe on a function of this very program, enabled and disabled while forked copies
 *    run and exit: uprobe_register() and uprobe_unregister() walk every mm mapping the file
 *    (register_for_each_vma(): mmget_not_zero(), then mmput(), which may be the last), the
 *    probed copies hit it (the XOL area) and the hits land in the trace as uprobe events;
 *  - move_pages() and migrate_pages() on other processes that are exiting (find_mm_struct(),
 *    get_task_mm(): an mm_users reference from another task, put back with mmput());
 *  - a userfaultfd with UFFD_FEATURE_EVENT_FORK: every fork() of the registered process gives
 *    the child's mm a new context (dup_userfaultfd() mmgrab()s it, no new_userfaultfd()), which
 *    a monitor thread receives and closes only after the child has exited (its mmdrop);
 *  - SCHED_RR and SCHED_DEADLINE threads preempting siblings that exit or exec. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
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
static int put(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_APPEND);
    if (fd < 0) return -1;
    ssize_t n = write(fd, text, strlen(text));
    int saved = errno;
    close(fd);
    errno = saved;
    return n < 0 ? -1 : 0;
}
static char *const true_argv[] = {"true", NULL};
static void *spin(void *arg) { busy((long)arg); return NULL; }

/* The probed function: called in a loop by the forked copies. */
__attribute__((noinline)) long probed(long x) { sink += x; return x * 3 + 1; }

/* The file offset of `probed` in /proc/self/exe, from /proc/self/maps. */
static long probed_offset(char *exe, size_t size) {
    ssize_t n = readlink("/proc/self/exe", exe, size - 1);
    if (n <= 0) return -1;
    exe[n] = 0;
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return -1;
    char line[512];
    long off = -1;
    uintptr_t at = (uintptr_t)&probed;
    while (fgets(line, sizeof(line), f)) {
        unsigned long lo, hi, pgoff;
        if (sscanf(line, "%lx-%lx %*s %lx", &lo, &hi, &pgoff) == 3 && at >= lo && at < hi) {
            off = (long)(at - lo + pgoff);
            break;
        }
    }
    fclose(f);
    return off;
}

/* Defines the uprobe (never removed: removing a trace event resets the ring buffers, and
 * with them the trace); returns the path of its enable file, or NULL. */
static const char *define_uprobe(void) {
    static char enable[256];
    char exe[256], def[512], path[256];
    long off = probed_offset(exe, sizeof(exe));
    if (off < 0) return NULL;
    snprintf(def, sizeof(def), "p:unseen10/probed %s:0x%lx\n", exe, off);
    const char *roots[] = {"/sys/kernel/tracing", "/sys/kernel/debug/tracing"};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof(path), "%s/uprobe_events", roots[i]);
        if (put(path, def) == 0) {
            snprintf(enable, sizeof(enable), "%s/events/unseen10/probed/enable", roots[i]);
            printf("uprobe: %s", def);
            return enable;
        }
    }
    printf("uprobe refused (%s): %s", strerror(errno), def);
    return NULL;
}

static void uprobes(const char *enable) {
    if (enable == NULL) return;
    for (int round = 0; round < 6; round++) {
        put(enable, "1");  /* the copies forked now inherit the breakpoint (uprobe_dup_mmap) */
        pid_t kids[4];
        for (int i = 0; i < 4; i++) {
            kids[i] = fork();
            if (kids[i] == 0) {
                for (long j = 0; j < 20 + 15 * i; j++) { probed(j); busy(20000); }
                if (i == 3) execv("/bin/true", true_argv);
                _exit(0);
            }
        }
        /* unregister and register again while the copies run and exit */
        for (int k = 0; k < 3; k++) {
            busy(30000 * (round + 1));
            put(enable, "0");
            busy(30000);
            put(enable, "1");
        }
        put(enable, "0");
        for (int i = 0; i < 4; i++) waitpid(kids[i], NULL, 0);
    }
}

static char pagebuf[4096] __attribute__((aligned(4096)));

static void *remote_pages(void *arg) {
    pid_t victim = (pid_t)(long)arg;
    void *pages[1] = {pagebuf};
    int status[1];
    unsigned long nodes = 1;
    for (int i = 0; i < 400; i++) {
        if (syscall(SYS_move_pages, victim, 1, pages, NULL, status, 0) < 0) break;
        syscall(SYS_migrate_pages, victim, 8 * sizeof(nodes), &nodes, &nodes);
    }
    return NULL;
}

static void remote_mm_users(void) {
    pagebuf[0] = 1;
    for (int round = 0; round < 8; round++) {
        pid_t c = fork();
        if (c == 0) {
            pthread_t t;
            pthread_create(&t, NULL, spin, (void *)(long)(20000 * round));
            busy(10000 * round);
            if (round % 3 == 2) execv("/bin/true", true_argv);
            _exit(0);
        }
        pthread_t r[2];
        for (int i = 0; i < 2; i++) pthread_create(&r[i], NULL, remote_pages, (void *)(long)c);
        waitpid(c, NULL, 0);
        for (int i = 0; i < 2; i++) pthread_join(r[i], NULL);
    }
}

struct monitor { int uffd; int kept[16]; int nkept; };

static void *uffd_monitor(void *arg) {
    struct monitor *m = arg;
    struct pollfd p = {.fd = m->uffd, .events = POLLIN};
    while (m->nkept < 16 && poll(&p, 1, 300) > 0) {
        struct uffd_msg msg;
        if (read(m->uffd, &msg, sizeof(msg)) != sizeof(msg)) break;
        if (msg.event == UFFD_EVENT_FORK) m->kept[m->nkept++] = (int)msg.arg.fork.ufd;
    }
    return NULL;
}

static void uffd_fork_events(void) {
    pid_t owner = fork();
    if (owner != 0) {
        waitpid(owner, NULL, 0);
        return;
    }
    struct monitor m = {.uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK)};
    if (m.uffd < 0) _exit(0);
    struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_EVENT_FORK};
    if (ioctl(m.uffd, UFFDIO_API, &api) != 0) _exit(0);
    char *area = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    struct uffdio_register reg = {
        .range = {.start = (unsigned long)area, .len = 1 << 16}, .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(m.uffd, UFFDIO_REGISTER, &reg) != 0) _exit(0);
    pthread_t mon;
    pthread_create(&mon, NULL, uffd_monitor, &m);
    for (int i = 0; i < 6; i++) {
        pid_t c = fork();  /* waits until the monitor has read the fork event */
        if (c == 0) {
            busy(20000 * (i + 1));
            if (i % 3 == 1) execv("/bin/true", true_argv);
            _exit(0);
        }
        if (i % 2) waitpid(c, NULL, 0);
    }
    while (waitpid(-1, NULL, 0) > 0) {}
    pthread_join(mon, NULL);
    busy(100000);
    for (int i = 0; i < m.nkept; i++) {  /* the children's contexts: the last mmdrop of each mm */
        close(m.kept[i]);
        busy(20000);
    }
    _exit(0);
}

struct dl_attr {  /* struct sched_attr of <linux/sched/types.h>, which clashes with glibc's */
    uint32_t size, sched_policy;
    uint64_t sched_flags;
    int32_t sched_nice;
    uint32_t sched_priority;
    uint64_t sched_runtime, sched_deadline, sched_period;
};

static void *rt_spin(void *arg) {
    long policy = (long)arg;
    if (policy == SCHED_DEADLINE) {
        struct dl_attr a = {.size = sizeof(a), .sched_policy = SCHED_DEADLINE,
                               .sched_runtime = 2000000, .sched_deadline = 10000000,
                               .sched_period = 10000000};
        syscall(SYS_sched_setattr, 0, &a, 0);
    } else {
        struct sched_param sp = {.sched_priority = 10};
        pthread_setschedparam(pthread_self(), SCHED_RR, &sp);
    }
    for (int i = 0; i < 20; i++) { busy(20000); nap(500); }
    return NULL;
}

static void *exits_or_execs(void *arg) {
    busy((long)arg);
    if ((long)arg % 3 == 0) execv("/bin/true", true_argv);
    return NULL;
}

static void realtime(void) {
    for (int round = 0; round < 4; round++) {
        pid_t c = fork();
        if (c == 0) {
            pthread_t rt[2], t[3];
            pthread_create(&rt[0], NULL, rt_spin, (void *)(long)SCHED_RR);
            pthread_create(&rt[1], NULL, rt_spin, (void *)(long)SCHED_DEADLINE);
            for (long i = 0; i < 3; i++)
                pthread_create(&t[i], NULL, exits_or_execs, (void *)(30000 * (i + 1) + round));
            for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
            _exit(0);
        }
        waitpid(c, NULL, 0);
    }
}

int main(void) {
    const char *enable = define_uprobe();
    for (int round = 0; round < 2; round++) {
        uprobes(enable);
        remote_mm_users();
        uffd_fork_events();
        realtime();
    }
    nap(50000);
    printf("unseen10 done\n");
    return 0;
}
