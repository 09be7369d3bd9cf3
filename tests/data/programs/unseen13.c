/* A thirteenth workload written after the model, for `activemm capture --program`:
 *  - a cgroup v2 with a tight cpu.max (CFS bandwidth throttling): its tasks fork, exec and
 *    exit while the group is throttled and unthrottled, so they are preempted anywhere;
 *  - /proc/PID/cmdline, status and stat read in a loop while those processes exit (each read
 *    takes the mm with get_task_mm() and puts it back with mmput(), sometimes the last);
 *  - a vfork() child that outlives its parent's thread group (exit_group() from a sibling
 *    thread while the parent thread waits for it), then execs;
 *  - sched_setaffinity() from another process on a task that is exec'ing and exiting. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile long sink;
static void busy(long n) { for (volatile long i = 0; i < n; i++) sink += i; }
static void nap(long us) { struct timespec t = {0, us * 1000}; nanosleep(&t, NULL); }
static int put(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    return n < 0 ? -1 : 0;
}
static char *const true_argv[] = {"true", NULL};

static void *spin(void *arg) { busy((long)arg); return NULL; }

/* Forks, execs and exits inside the throttled group. */
static void throttled_child(int round) {
    pthread_t t[2];
    for (long i = 0; i < 2; i++) pthread_create(&t[i], NULL, spin, (void *)(300000 * (i + 1)));
    for (int i = 0; i < 6; i++) {
        pid_t c = fork();
        if (c == 0) {
            busy(50000 * (i + 1));
            if ((i + round) % 2) execv("/bin/true", true_argv);
            _exit(0);
        }
    }
    while (wait(NULL) > 0) {}
    _exit(0);  /* the spinning threads with it */
}

static volatile int stop_readers;
static void *proc_reader(void *arg) {
    (void)arg;
    char path[64], buf[512];
    const char *files[] = {"cmdline", "status", "stat"};
    while (!stop_readers) {
        for (int pid = 2; pid < 4000 && !stop_readers; pid += 1) {
            for (int f = 0; f < 3; f++) {
                snprintf(path, sizeof(path), "/proc/%d/%s", pid, files[f]);
                int fd = open(path, O_RDONLY);
                if (fd < 0) break;
                if (read(fd, buf, sizeof(buf)) < 0) buf[0] = 0;
                close(fd);
            }
        }
    }
    return NULL;
}

static void throttled_group(void) {
    mkdir("/sys/fs/cgroup", 0755);
    mount("none", "/sys/fs/cgroup", "cgroup2", 0, NULL);
    put("/sys/fs/cgroup/cgroup.subtree_control", "+cpu");
    mkdir("/sys/fs/cgroup/tight", 0755);
    put("/sys/fs/cgroup/tight/cpu.max", "3000 20000");  /* 3 ms every 20 ms */
    pthread_t r;
    stop_readers = 0;
    pthread_create(&r, NULL, proc_reader, NULL);
    for (int round = 0; round < 3; round++) {
        pid_t c = fork();
        if (c == 0) {
            char me[32];
            snprintf(me, sizeof(me), "%d", getpid());
            put("/sys/fs/cgroup/tight/cgroup.procs", me);
            throttled_child(round);
        }
        waitpid(c, NULL, 0);
    }
    stop_readers = 1;
    pthread_join(r, NULL);
}

static void *vfork_then_exec(void *arg) {
    pid_t c = vfork();
    if (c == 0) {
        busy((long)arg);  /* the group exits meanwhile: this child still has the mm */
        execv("/bin/true", true_argv);
        _exit(1);
    }
    return NULL;
}

static void vfork_outlives_group(void) {
    for (int round = 0; round < 3; round++) {
        pid_t p = fork();
        if (p == 0) {
            pthread_t t;
            pthread_create(&t, NULL, vfork_then_exec, (void *)(long)(300000 + 1000 * round));
            busy(40000);
            exit(0);  /* exit_group(): kills the thread waiting in vfork */
        }
        waitpid(p, NULL, 0);
        nap(30000);
    }
}

static void affinity_from_outside(void) {
    int ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    for (int round = 0; round < 6; round++) {
        pid_t c = fork();
        if (c == 0) {
            busy(30000 * (round + 1));
            if (round % 2) execv("/bin/true", true_argv);
            busy(30000);
            _exit(0);
        }
        for (int i = 0; i < 40; i++) {
            cpu_set_t set;
            CPU_ZERO(&set);
            CPU_SET(i % (ncpu > 0 ? ncpu : 1), &set);
            if (sched_setaffinity(c, sizeof(set), &set) != 0) break;
            busy(3000);
        }
        waitpid(c, NULL, 0);
    }
}

int main(void) {
    for (int round = 0; round < 2; round++) {
        throttled_group();
        vfork_outlives_group();
        affinity_from_outside();
    }
    nap(50000);
    printf("unseen13 done\n");
    return 0;
}
