/* A twenty-seventh workload written after the model, for `activemm capture --program`:
 * kernel text patched (x86 text_poke(): use_temporary_mm(poking_mm) and back, leave_mm()
 * first on a lazy CPU) from tasks that are lazy on a user mm:
 *  - static keys turned off from kworkers: SO_TIMESTAMP sockets closed (net_disable_timestamp()
 *    queues netstamp_work, which flips netstamp_needed_key) and per-task perf events closed
 *    (perf_sched_events goes off from perf_sched_work, a delayed work, a second later), while
 *    user threads run and sleep on every CPU, so that the kworker borrows their mm;
 *  - a thread with a file table of its own (unshare(CLONE_FILES)) holding the last
 *    software-event perf fd (perf_swevent_enabled): it exits while its siblings run, and
 *    exit_files() frees the event after exit_mm(), the thread lazy on the mm it shares;
 *  - the same from processes that exit and that exec with the fds close-on-exec;
 *  - some of those processes SIGKILLed. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/perf_event.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile int stop;
static volatile long sink;
static int ncpu = 1, perf_ok, sock_ok;
static void nap(long us) { struct timespec t = {us / 1000000, (us % 1000000) * 1000}; nanosleep(&t, NULL); }
static void busy(long n) { for (volatile long i = 0; i < n; i++) sink += i; }

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu % ncpu, &set);
    sched_setaffinity(0, sizeof(set), &set);
}

/* A software perf event on the calling thread (perf_swevent_init() takes the static key of
 * its event id; a per-task event also holds perf_sched_events on). */
static int sw_event(unsigned long long config, int cloexec) {
    struct perf_event_attr a;
    memset(&a, 0, sizeof(a));
    a.type = PERF_TYPE_SOFTWARE;
    a.size = sizeof(a);
    a.config = config;
    a.exclude_kernel = 1;
    int fd = (int)syscall(SYS_perf_event_open, &a, 0, -1, -1, cloexec ? PERF_FLAG_FD_CLOEXEC : 0);
    if (fd >= 0) perf_ok = 1;
    return fd;
}

/* A socket pair with SO_TIMESTAMP on (net_enable_timestamp(): netstamp_work, a kworker). */
static void stamped_pair(int fds[2], int cloexec) {
    fds[0] = fds[1] = -1;
    if (socketpair(AF_UNIX, SOCK_DGRAM | (cloexec ? SOCK_CLOEXEC : 0), 0, fds) != 0) return;
    int on = 1;
    if (setsockopt(fds[0], SOL_SOCKET, SO_TIMESTAMP, &on, sizeof(on)) == 0) sock_ok = 1;
    send(fds[1], "x", 1, MSG_DONTWAIT);
}

/* User threads on every CPU that run and sleep in turn: whatever the kworkers run after. */
static void *runner(void *arg) {
    long cpu = (long)arg;
    pin((int)cpu);
    while (!stop) {
        busy(30000 + 7000 * cpu);
        nap(2500 + 400 * cpu);
    }
    return NULL;
}

static void *holder(void *arg) {
    long how = (long)arg;
    unshare(CLONE_FILES); /* exit_files() of this thread alone puts the fds */
    int fd = sw_event(how % 2 ? PERF_COUNT_SW_CONTEXT_SWITCHES : PERF_COUNT_SW_PAGE_FAULTS, 0);
    int pair[2];
    stamped_pair(pair, 0);
    busy(50000 * (how % 3 + 1));
    nap(500);
    (void)fd;
    return NULL; /* exits with both held */
}

/* One process: threads on other CPUs, one of them holding the events and exiting first. */
static void worker(int how) {
    pin(how);
    pthread_t t[3];
    for (long i = 0; i < 2; i++) pthread_create(&t[i], NULL, runner, (void *)(how + i + 1L));
    pthread_create(&t[2], NULL, holder, (void *)(long)how);
    pthread_join(t[2], NULL);
    nap(2000);
    int fd = sw_event(PERF_COUNT_SW_CPU_MIGRATIONS, how % 2);
    int pair[2];
    stamped_pair(pair, how % 2);
    (void)fd;
    switch (how % 4) {
    case 0:
        _exit(0); /* exit_group() with the runners running: fds put in exit_files() */
    case 1:
        execl("/proc/self/exe", "program", "child", NULL); /* close-on-exec */
        _exit(1);
    case 2:
        busy(200000);
        _exit(0);
    default:
        for (;;) nap(1000); /* killed by the parent */
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "child") == 0) {
        busy(100000);
        return 0;
    }
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1) scale = 1;
    setvbuf(stdout, NULL, _IONBF, 0);
    ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (ncpu < 1) ncpu = 1;
    int probe = sw_event(PERF_COUNT_SW_CONTEXT_SWITCHES, 1), pair[2];
    stamped_pair(pair, 1);
    close(probe);
    close(pair[0]);
    close(pair[1]);
    printf("unseen27: %d CPUs, perf events %s, timestamped sockets %s\n", ncpu,
           perf_ok ? "yes" : "no", sock_ok ? "yes" : "no");
    pthread_t r[16];
    int nr = ncpu < 16 ? ncpu : 16;
    for (long i = 0; i < nr; i++) pthread_create(&r[i], NULL, runner, (void *)i);
    for (int round = 0; round < 6 * scale; round++) {
        pid_t kids[4];
        for (int i = 0; i < 4; i++) {
            kids[i] = fork();
            if (kids[i] == 0) worker(round + i);
        }
        nap(40000);
        for (int i = 0; i < 4; i++)
            if ((round + i) % 4 == 3) kill(kids[i], SIGKILL);
        while (wait(NULL) > 0) {}
        nap(1500000); /* no per-task event left: perf_sched_work turns the key off */
    }
    stop = 1;
    for (int i = 0; i < nr; i++) pthread_join(r[i], NULL);
    printf("unseen27: done\n");
    return 0;
}
