/* A seventh workload written after the model, for `activemm capture --program`:
 *  - fork() failing after copy_mm(): a cgroup v2 `pids.max` refuses the child in
 *    cgroup_can_fork(), so the new mm dup_mmap() built is torn down and freed by the parent
 *    (bad_fork_cleanup_mm), with no task_newtask or sched_process_fork; also from a thread,
 *    and pthread_create() failing the same way (a CLONE_VM child: only mm_users goes back);
 *  - fork() restarted because a signal arrived meanwhile (-ERESTARTNOINTR after copy_mm),
 *    while another process sends the forker a stream of signals;
 *  - execve() failing after the point of no return: a copy of this program whose second
 *    PT_LOAD has a p_offset that no longer matches its p_vaddr modulo the page size, so
 *    elf_map() fails after begin_new_exec() installed the new mm; the task dies of SIGSEGV
 *    with no sched_process_exec (single-threaded, and from a thread of a busy group);
 *  - a child in a new PID namespace (its init) killed while its own children run. */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int ncpus;
static volatile long sink;
static char *big;
static void pin(int cpu) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(cpu % ncpus, &s); sched_setaffinity(0, sizeof(s), &s); }
static void busy(long n) { for (volatile long i = 0; i < n; i++) sink += i; }
static void nap(long us) { struct timespec t = {0, us * 1000}; nanosleep(&t, NULL); }

static int put(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    return n < 0 ? -1 : 0;
}

/* A cgroup whose pids.max is `max`; returns 0 when set up. */
static int pids_cgroup(const char *max) {
    mkdir("/sys/fs/cgroup", 0755);
    mount("none", "/sys/fs/cgroup", "cgroup2", 0, NULL);  /* EBUSY when mounted already */
    put("/sys/fs/cgroup/cgroup.subtree_control", "+pids");
    mkdir("/sys/fs/cgroup/limited", 0755);
    return put("/sys/fs/cgroup/limited/pids.max", max);
}

static void *spin_thread(void *arg) { busy((long)arg); return NULL; }

static void *fork_from_thread(void *arg) {
    (void)arg;
    nap(2000);
    for (int i = 0; i < 3; i++) {
        pid_t c = fork();
        if (c == 0) _exit(0);
        if (c > 0) waitpid(c, NULL, 0);
    }
    return NULL;
}

/* In a cgroup that allows two tasks, this process and one thread: every further fork
 * fails in cgroup_can_fork(), after copy_mm(). */
static void refused_forks(int round) {
    pid_t c = fork();
    if (c == 0) {
        char me[32];
        snprintf(me, sizeof(me), "%d", getpid());
        if (put("/sys/fs/cgroup/limited/cgroup.procs", me) != 0) {
            printf("refused_forks: no pids cgroup (%s)\n", strerror(errno));
            _exit(1);
        }
        pin(round);
        pthread_t t;  /* the second task the cgroup allows: it forks too */
        int threaded = pthread_create(&t, NULL, fork_from_thread, NULL) == 0;
        int refused = 0;
        for (int i = 0; i < 6; i++) {
            big[i * 4096] = (char)i;  /* something for dup_mmap to copy */
            pid_t g = fork();
            if (g == 0) _exit(0);
            if (g < 0) refused++;
            else waitpid(g, NULL, 0);
        }
        pthread_t u;  /* a third task: refused too, a CLONE_VM child */
        if (pthread_create(&u, NULL, spin_thread, (void *)1000L) == 0) pthread_join(u, NULL);
        else refused++;
        if (threaded) pthread_join(t, NULL);
        printf("refused_forks: %d refused\n", refused);
        _exit(0);
    }
    waitpid(c, NULL, 0);
}

static volatile sig_atomic_t signals;
static void on_signal(int s) { (void)s; signals++; }

/* fork() while another process keeps signalling: some copy_process() calls see the signal
 * after copy_mm() and restart. */
static void interrupted_forks(int round) {
    pid_t forker = fork();
    if (forker == 0) {
        signal(SIGUSR1, on_signal);
        pin(round);
        for (int i = 0; i < 40; i++) {
            pid_t g = fork();
            if (g == 0) _exit(0);
            if (g > 0) waitpid(g, NULL, 0);
        }
        printf("interrupted_forks: %d signals\n", (int)signals);
        _exit(0);
    }
    pid_t sender = fork();
    if (sender == 0) {
        pin(round + 1);
        for (int i = 0; i < 400; i++) {
            if (kill(forker, SIGUSR1) != 0) break;
            busy(2000);
        }
        _exit(0);
    }
    waitpid(forker, NULL, 0);
    kill(sender, SIGKILL);
    waitpid(sender, NULL, 0);
}

/* A copy of /proc/self/exe whose second PT_LOAD is misaligned by one byte. */
static int broken_copy(const char *path) {
    int in = open("/proc/self/exe", O_RDONLY);
    if (in < 0) return -1;
    off_t size = lseek(in, 0, SEEK_END);
    char *img = malloc((size_t)size);
    if (!img || pread(in, img, (size_t)size, 0) != size) return -1;
    close(in);
    Elf64_Ehdr *eh = (Elf64_Ehdr *)img;
    Elf64_Phdr *ph = (Elf64_Phdr *)(img + eh->e_phoff);
    int loads = 0;
    for (int i = 0; i < eh->e_phnum; i++) {
        if (ph[i].p_type == PT_LOAD && ++loads == 2) {
            ph[i].p_offset += 1;
            break;
        }
    }
    int out = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0755);
    if (out < 0 || write(out, img, (size_t)size) != size) return -1;
    close(out);
    free(img);
    return loads >= 2 ? 0 : -1;
}

static char *const bad_argv[] = {"broken", NULL};
static void *exec_broken(void *arg) {
    busy((long)arg);
    execv("/tmp/broken", bad_argv);
    return NULL;  /* the exec failed before the point of no return */
}

static void doomed_execs(int round) {
    for (int i = 0; i < 2; i++) {
        pid_t c = fork();
        if (c == 0) {
            pin(round + i);
            if (i == 0) {
                execv("/tmp/broken", bad_argv);
                _exit(9);
            }
            pthread_t t[3];
            for (int k = 0; k < 2; k++) pthread_create(&t[k], NULL, spin_thread, (void *)3000000L);
            pthread_create(&t[2], NULL, exec_broken, (void *)20000L);
            pthread_join(t[2], NULL);
            _exit(9);
        }
        int st = 0;
        waitpid(c, &st, 0);
        printf("doomed exec %d: %s %d\n", i, WIFSIGNALED(st) ? "signal" : "exit",
               WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
    }
}

static int ns_init(void *arg) {
    (void)arg;
    for (int k = 0; k < 3; k++) {
        if (fork() == 0) {
            pin(k);
            busy(50000000L);
            _exit(0);
        }
    }
    busy(200000);
    for (;;) pause();
    return 0;
}

static void pid_namespace(int round) {
    static char stack[65536];
    pid_t init = clone(ns_init, stack + sizeof(stack), CLONE_NEWPID | SIGCHLD, NULL);
    if (init < 0) {
        printf("pid namespace: %s\n", strerror(errno));
        return;
    }
    nap(20000 + round * 5000);
    kill(init, SIGKILL);  /* zap_pid_ns_processes() kills its children */
    waitpid(init, NULL, 0);
}

int main(void) {
    ncpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
    big = malloc(64 * 4096);
    memset(big, 1, 64 * 4096);
    int limited = pids_cgroup("2");
    int broken = broken_copy("/tmp/broken");
    printf("unseen7: pids cgroup %s, broken copy %s\n", limited ? "no" : "yes",
           broken ? "no" : "yes");
    for (int round = 0; round < 3; round++) {
        if (limited == 0) refused_forks(round);
        interrupted_forks(round);
        if (broken == 0) doomed_execs(round);
        pid_namespace(round);
    }
    nap(50000);
    printf("unseen7 done\n");
    return 0;
}
