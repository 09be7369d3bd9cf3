/* A fiftieth workload written after the model, for `activemm capture --program`: a seeded
 * random mix of the kernel's bookkeeping around tasks that exit, and of the references to an
 * mm it takes on the way. Setup: BSD process accounting on (acct(2) to a file in /tmp: every
 * group-dead exit writes a record in acct_process(), after exit_mm() and before the
 * sched_process_exit tracepoint, under the accounting file's mutex, so that exits contend
 * and sleep there with no mm); a taskstats listener registered for every CPU
 * (taskstats_exit() sends each exit's statistics to it, reading the exiting task's mm with
 * get_task_mm() before exit_mm()); and, where the kernel has cgroup v1's memory controller
 * (6.1; Debian's 6.12 is built without CONFIG_MEMCG_V1, and it then says so and goes on
 * without), two v1 memory cgroups with move_charge_at_immigrate set:
 * mem_cgroup_can_attach() takes the mm of a process moved there with get_task_mm() and
 * mem_cgroup_clear_mc() puts it after walking its page tables, the last put when the
 * process exited meanwhile (__mmput in the task writing cgroup.procs). One worker per CPU
 * takes 60 steps (x the scale given as the first argument, the seed as the second), every
 * step one of: start a target (a process whose threads touch memory, fork, exec or spin,
 * then an exit of one kind or another); ask taskstats for a target's statistics by PID
 * (xacct_add_tsk(): get_task_mm() and mmput() in the asking worker, the last put when the
 * target exited meanwhile) or by thread group; move a target to the other memory cgroup;
 * SIGKILL a target and at once ask for its statistics or move it; turn accounting off and
 * on again; reap; or yield or sleep a little. The same seed gives the same choices (not the
 * same timing). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <linux/taskstats.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ACCT_FILE "/tmp/acct50"
#define MEMCG "/tmp/memcg50"

static int ncpu = 1;
static uint64_t rng;
static int worker_id;
static int have_memcg;
static int queries, got_mm_stats, moves, kills;

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

static int put(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    int ok = write(fd, text, strlen(text)) < 0 ? -1 : 0; /* ESRCH, EINVAL: the mix goes on */
    close(fd);
    return ok;
}

/* ---- taskstats over generic netlink ---- */

struct nl_request {
    struct nlmsghdr n;
    struct genlmsghdr g;
    char attrs[256];
};

static int nl_send(int fd, uint16_t type, uint8_t cmd, uint16_t attr, const void *data,
                   int len) {
    struct nl_request r;
    memset(&r, 0, sizeof r);
    r.n.nlmsg_len = NLMSG_LENGTH(GENL_HDRLEN);
    r.n.nlmsg_type = type;
    r.n.nlmsg_flags = NLM_F_REQUEST;
    r.g.cmd = cmd;
    r.g.version = 1;
    struct nlattr *na = (struct nlattr *)((char *)&r + r.n.nlmsg_len);
    na->nla_type = attr;
    na->nla_len = (uint16_t)(NLA_HDRLEN + len);
    memcpy((char *)na + NLA_HDRLEN, data, (size_t)len);
    r.n.nlmsg_len += NLMSG_ALIGN(na->nla_len);
    struct sockaddr_nl to = {.nl_family = AF_NETLINK};
    return sendto(fd, &r, r.n.nlmsg_len, 0, (struct sockaddr *)&to, sizeof to) < 0 ? -1 : 0;
}

static int nl_open(void) {
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC);
    if (fd < 0) return -1;
    struct sockaddr_nl me = {.nl_family = AF_NETLINK};
    if (bind(fd, (struct sockaddr *)&me, sizeof me) < 0) {
        close(fd);
        return -1;
    }
    int big = 1 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    return fd;
}

/* The taskstats family's id (CTRL_CMD_GETFAMILY), 0 when the kernel has none. */
static uint16_t taskstats_family(int fd) {
    const char *name = TASKSTATS_GENL_NAME;
    if (nl_send(fd, GENL_ID_CTRL, CTRL_CMD_GETFAMILY, CTRL_ATTR_FAMILY_NAME, name,
                (int)strlen(name) + 1))
        return 0;
    static char buf[8192];
    int n = (int)recv(fd, buf, sizeof buf, 0);
    struct nlmsghdr *h = (struct nlmsghdr *)buf;
    if (n < 0 || !NLMSG_OK(h, (unsigned)n) || h->nlmsg_type == NLMSG_ERROR) return 0;
    struct nlattr *na = (struct nlattr *)((char *)NLMSG_DATA(h) + GENL_HDRLEN);
    int left = (int)h->nlmsg_len - NLMSG_LENGTH(GENL_HDRLEN);
    while (left >= NLA_HDRLEN && na->nla_len >= NLA_HDRLEN) {
        if (na->nla_type == CTRL_ATTR_FAMILY_ID) return *(uint16_t *)((char *)na + NLA_HDRLEN);
        int step = NLA_ALIGN(na->nla_len);
        left -= step;
        na = (struct nlattr *)((char *)na + step);
    }
    return 0;
}

static int nl_fd = -1;
static uint16_t family;

/* Ask for a task's (TASKSTATS_CMD_ATTR_PID) or a thread group's statistics: the kernel
 * answers in this very send (genetlink runs the command in the sender's context). */
static void ask(pid_t pid, int by_tgid) {
    if (nl_fd < 0 || !family) return;
    uint32_t id = (uint32_t)pid;
    if (nl_send(nl_fd, family, TASKSTATS_CMD_GET,
                by_tgid ? TASKSTATS_CMD_ATTR_TGID : TASKSTATS_CMD_ATTR_PID, &id, 4))
        return;
    queries++;
    static char buf[8192];
    int n = (int)recv(nl_fd, buf, sizeof buf, MSG_DONTWAIT);
    struct nlmsghdr *h = (struct nlmsghdr *)buf;
    if (n > 0 && NLMSG_OK(h, (unsigned)n) && h->nlmsg_type != NLMSG_ERROR) got_mm_stats++;
    while (recv(nl_fd, buf, sizeof buf, MSG_DONTWAIT) > 0) {}
}

/* ---- the targets ---- */

static char *region; /* 256 KiB a target's threads touch (pages a charge move walks) */
#define REGION (1 << 18)

static void touch(uint32_t r) {
    if (region == MAP_FAILED) return;
    for (int i = (int)(r % 4) * 4096; i < REGION; i += 4096) ((volatile char *)region)[i]++;
}

static void *target_thread(void *arg) {
    uint32_t r = (uint32_t)(uintptr_t)arg;
    touch(r);
    switch (r % 4) {
    case 0: spin_us(100 + r % 900); break;
    case 1: usleep(200 + r % 2000); break;
    case 2:
        if ((r >> 4) % 3 == 0) syscall(SYS_exit_group, 0); /* the group dies from here */
        spin_us(50 + r % 300);
        break;
    default: break;
    }
    return NULL;
}

static void target_life(uint32_t r) {
    region = mmap(NULL, REGION, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    touch(r);
    pthread_t t[3];
    int n = (int)(r % 4);
    for (int i = 0; i < n; i++)
        if (pthread_create(&t[i], NULL, target_thread, (void *)(uintptr_t)(r >> (i + 2)))) n = i;
    if ((r >> 5) % 2) spin_us(100 + (r >> 7) % 1500);
    else usleep(100 + (r >> 7) % 3000); /* time to be asked about, moved or killed */
    switch ((r >> 9) % 5) {
    case 0: execl("/bin/program", "program", "--leaf", NULL); break;
    case 1: {
        pid_t c = fork();
        if (c == 0) {
            touch(r >> 3);
            _exit(0);
        }
        if (c > 0 && (r >> 12) % 2) waitpid(c, NULL, 0); /* else left to init */
        break;
    }
    case 2: syscall(SYS_exit_group, 0); break; /* threads may still run */
    case 3: usleep(2000 + (r >> 12) % 4000); break; /* lingers: likely killed */
    default: break;
    }
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    _exit(0);
}

#define TARGETS 8
static pid_t targets[TARGETS];
static int moved_to[TARGETS];

static pid_t pick(uint32_t r) {
    for (int i = 0; i < TARGETS; i++) {
        int k = (int)((r + (uint32_t)i) % TARGETS);
        if (targets[k] > 0) return targets[k];
    }
    return 0;
}

static void reap(int block) {
    for (int i = 0; i < TARGETS; i++) {
        if (targets[i] <= 0) continue;
        pid_t w = waitpid(targets[i], NULL, block ? 0 : WNOHANG);
        if (w == targets[i] || (w < 0 && errno == ECHILD)) targets[i] = 0;
    }
}

static void step_start(uint32_t r) {
    int slot = -1;
    for (int i = 0; i < TARGETS && slot < 0; i++)
        if (targets[i] == 0) slot = i;
    if (slot < 0) {
        reap(0);
        return;
    }
    pid_t c = fork();
    if (c == 0) target_life(r);
    if (c > 0) {
        targets[slot] = c;
        moved_to[slot] = 0;
    }
}

static void move(pid_t pid, uint32_t r) {
    if (!have_memcg || pid <= 0) return;
    int slot = 0;
    for (int i = 0; i < TARGETS; i++)
        if (targets[i] == pid) slot = i;
    moved_to[slot] = moved_to[slot] == 1 ? 2 : 1;
    if (r % 5 == 0) moved_to[slot] = 0; /* back to the root */
    char path[64], text[16];
    if (moved_to[slot])
        snprintf(path, sizeof path, MEMCG "/%c/cgroup.procs", 'a' + moved_to[slot] - 1);
    else
        snprintf(path, sizeof path, MEMCG "/cgroup.procs");
    snprintf(text, sizeof text, "%d", pid);
    if (put(path, text) == 0) moves++;
}

static void step(void) {
    uint32_t r = next();
    pid_t victim = pick(r >> 3);
    switch (next() % 11) {
    case 0:
    case 1:
    case 2: step_start(r); break;
    case 3:
    case 4: ask(victim, 0); break;
    case 5: ask(victim, 1); break;
    case 6:
    case 7: move(victim, r); break;
    case 8:
        if (victim > 0 && kill(victim, SIGKILL) == 0) {
            kills++;
            if (r % 3) spin_us(r % 80); /* while it runs its exit */
            if (r % 2) ask(victim, 0);
            else move(victim, r >> 1);
        }
        break;
    case 9:
        if (r % 4 == 0) { /* accounting off a moment: acct_process() skips these exits */
            syscall(SYS_acct, NULL);
            usleep(r % 500);
            syscall(SYS_acct, ACCT_FILE);
        } else {
            reap(0);
        }
        break;
    default:
        if (r % 2) sched_yield();
        else usleep(r % 400);
    }
}

static void worker(int steps) {
    nl_fd = nl_open();
    if (nl_fd >= 0) family = taskstats_family(nl_fd);
    for (int i = 0; i < steps; i++) step();
    for (int i = 0; i < TARGETS; i++)
        if (targets[i] > 0) kill(targets[i], SIGKILL);
    reap(1);
    while (waitpid(-1, NULL, __WALL) > 0) {}
    printf("worker %d: %d taskstats asked (%d answered), %d moves, %d kills\n", worker_id,
           queries, got_mm_stats, moves, kills);
    _exit(0);
}

/* The listener: taskstats_exit() sends every exit's statistics to the sockets registered
 * for the exiting task's CPU; read them until told to stop. */
static volatile int listening = 1;
static long heard;

static void *listener(void *arg) {
    int fd = *(int *)arg;
    static char buf[65536];
    while (listening) {
        int n = (int)recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) heard++;
        else usleep(500);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--leaf") == 0) return 0;
    ncpu = (int)sysconf(_SC_NPROCESSORS_CONF);
    setvbuf(stdout, NULL, _IONBF, 0);
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1) scale = 1;
    rng = argc > 2 ? strtoull(argv[2], NULL, 10) | 1 : 50;
    unsigned long long seed = (unsigned long long)rng;

    int fd = open(ACCT_FILE, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd >= 0) close(fd);
    int acct_on = syscall(SYS_acct, ACCT_FILE) == 0;

    mkdir(MEMCG, 0755);
    if (mount("none", MEMCG, "cgroup", 0, "memory") == 0) {
        mkdir(MEMCG "/a", 0755);
        mkdir(MEMCG "/b", 0755);
        have_memcg = put(MEMCG "/a/memory.move_charge_at_immigrate", "3") == 0 &&
                     put(MEMCG "/b/memory.move_charge_at_immigrate", "3") == 0;
    }

    int lfd = nl_open();
    uint16_t fam = lfd >= 0 ? taskstats_family(lfd) : 0;
    char cpus[32];
    snprintf(cpus, sizeof cpus, "0-%d", ncpu - 1);
    int registered =
        fam && nl_send(lfd, fam, TASKSTATS_CMD_GET, TASKSTATS_CMD_ATTR_REGISTER_CPUMASK, cpus,
                       (int)strlen(cpus) + 1) == 0;
    pthread_t lt;
    int have_listener = registered && pthread_create(&lt, NULL, listener, &lfd) == 0;
    printf("accounting %s, taskstats %s, v1 memory cgroups %s\n", acct_on ? "on" : "off",
           registered ? "listened to" : "absent",
           have_memcg ? "moving charges" : "absent (no cgroup v1 memory controller)");

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
    listening = 0;
    if (have_listener) pthread_join(lt, NULL);
    syscall(SYS_acct, NULL);
    struct stat st;
    long records = stat(ACCT_FILE, &st) == 0 ? (long)st.st_size : -1;
    if (have_memcg) {
        rmdir(MEMCG "/a");
        rmdir(MEMCG "/b");
        umount(MEMCG);
    }
    printf("exit bookkeeping mix (seed %llu): %d workers done, %ld taskstats messages heard, "
           "%ld bytes of accounting\n", seed, n, heard, records);
    printf("done (%d CPUs)\n", ncpu);
    return 0;
}
