/* A twenty-third workload written after the model, for `activemm capture --program`, made to
 * preempt execs (best on the PREEMPT_RT kernels, or with --kernel-args preempt=full):
 *  - on every CPU a SCHED_FIFO thread that wakes every 30-200 us and spins a little, so that
 *    whatever runs there is preempted at arbitrary points, inside exec_mmap() included;
 *  - exec chains: a process re-executing /proc/self/exe down a countdown, several at once;
 *  - fexecve() of a memfd holding a copy of this program (execveat(fd, "", AT_EMPTY_PATH));
 *  - a #! script exec'd directly (binfmt_script, then the interpreter: one exec_mmap());
 *  - exec from a non-leader thread while the other threads spin (de_thread() first);
 *  - clone(CLONE_VM) siblings without CLONE_THREAD: one execs (its old mm keeps a user),
 *    the other exits afterwards (the last real user). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile long sink;
static volatile int stop;
static void busy(long n) { for (volatile long i = 0; i < n; i++) sink += i; }
static void nap(long us) { struct timespec t = {us / 1000000, (us % 1000000) * 1000}; nanosleep(&t, NULL); }
static int ncpus(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (int)n;
}

/* A SCHED_FIFO preemptor pinned to one CPU: short sleeps, short spins. */
static void *preemptor(void *arg) {
    int cpu = (int)(long)arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
    struct sched_param sp = {.sched_priority = 50};
    pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp);
    unsigned seed = (unsigned)cpu * 7919u + 1u;
    while (!stop) {
        nap(30 + rand_r(&seed) % 170);
        busy(200 + rand_r(&seed) % 2000);
    }
    return NULL;
}

static void wait_all(void) { while (wait(NULL) > 0) {} }

/* argv[1] == "chain": re-exec ourselves argv[2] more times. */
static int chain(int n) {
    if (n <= 0) return 0;
    char count[16];
    snprintf(count, sizeof(count), "%d", n - 1);
    char *argv[] = {"chain", "chain", count, NULL};
    execv("/proc/self/exe", argv);
    return 1;
}

static void chains(int width, int depth) {
    for (int i = 0; i < width; i++) {
        if (fork() == 0) {
            char count[16];
            snprintf(count, sizeof(count), "%d", depth);
            char *argv[] = {"chain", "chain", count, NULL};
            execv("/proc/self/exe", argv);
            _exit(1);
        }
    }
    wait_all();
}

/* A memfd holding a copy of this program, exec'd through its descriptor. */
static int memfd_copy(void) {
    int in = open("/proc/self/exe", O_RDONLY);
    if (in < 0) return -1;
    int fd = (int)syscall(SYS_memfd_create, "copy", 0);
    char buf[65536];
    ssize_t n;
    while (fd >= 0 && (n = read(in, buf, sizeof(buf))) > 0)
        if (write(fd, buf, (size_t)n) != n) break;
    close(in);
    return fd;
}

static void fexecs(int rounds) {
    int fd = memfd_copy();
    if (fd < 0) return;
    for (int i = 0; i < rounds; i++) {
        if (fork() == 0) {
            char *argv[] = {"chain", "chain", "1", NULL};
            char *envp[] = {NULL};
            syscall(SYS_execveat, fd, "", argv, envp, AT_EMPTY_PATH);
            _exit(1);
        }
    }
    wait_all();
    close(fd);
}

static void scripts(int rounds) {
    int fd = open("/tmp/u23.sh", O_WRONLY | O_CREAT | O_TRUNC, 0755);
    if (fd < 0) return;
    const char *text = "#!/bin/sh\nexit 0\n";
    if (write(fd, text, strlen(text)) < 0) {}
    close(fd);
    for (int i = 0; i < rounds; i++) {
        if (fork() == 0) {
            char *argv[] = {"/tmp/u23.sh", NULL};
            execv("/tmp/u23.sh", argv);
            _exit(1);
        }
        if (i % 4 == 3) wait_all();
    }
    wait_all();
}

static void *spin_thread(void *arg) {
    busy((long)arg);
    return NULL;
}

static void *exec_thread(void *arg) {
    nap((long)arg);
    char *argv[] = {"chain", "chain", "0", NULL};
    execv("/proc/self/exe", argv);
    return NULL;
}

static void thread_execs(int rounds) {
    for (int i = 0; i < rounds; i++) {
        if (fork() == 0) {
            pthread_t t;
            for (int k = 0; k < 2; k++) pthread_create(&t, NULL, spin_thread, (void *)3000000L);
            pthread_create(&t, NULL, exec_thread, (void *)(long)(100 * (i % 5)));
            busy(5000000);
            _exit(0);
        }
    }
    wait_all();
}

static char stacks[2][65536] __attribute__((aligned(16)));

static int vm_sibling(void *arg) {
    if ((long)arg) {  /* the one that execs */
        char *argv[] = {"chain", "chain", "0", NULL};
        execv("/proc/self/exe", argv);
    }
    busy(400000);
    return 0;
}

static void vm_siblings(int rounds) {
    for (int i = 0; i < rounds; i++) {
        if (fork() == 0) {
            pid_t a = clone(vm_sibling, stacks[0] + sizeof(stacks[0]), CLONE_VM | SIGCHLD, (void *)1L);
            pid_t b = clone(vm_sibling, stacks[1] + sizeof(stacks[1]), CLONE_VM | SIGCHLD, (void *)0L);
            if (a > 0) waitpid(a, NULL, 0);
            if (b > 0) waitpid(b, NULL, 0);
            _exit(0);
        }
        wait_all();
    }
}

int main(int argc, char **argv) {
    if (argc > 2 && strcmp(argv[1], "chain") == 0) return chain(atoi(argv[2]));
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1) scale = 1;
    setvbuf(stdout, NULL, _IONBF, 0);
    int n = ncpus();
    pthread_t pre[64];
    for (int c = 0; c < n && c < 64; c++) pthread_create(&pre[c], NULL, preemptor, (void *)(long)c);
    printf("exec chains\n");
    chains(3 * scale, 6);
    printf("fexecve of a memfd\n");
    fexecs(6 * scale);
    printf("scripts\n");
    scripts(12 * scale);
    printf("exec from threads\n");
    thread_execs(4 * scale);
    printf("CLONE_VM siblings\n");
    vm_siblings(4 * scale);
    stop = 1;
    for (int c = 0; c < n && c < 64; c++) pthread_join(pre[c], NULL);
    nap(100000);
    printf("done\n");
    return 0;
}
