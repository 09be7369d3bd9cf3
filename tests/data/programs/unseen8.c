/* An eighth workload written after the model, for `activemm capture --program`:
 *  - sysctl writes that flip static keys (kernel.sched_schedstats): text_poke() from a user
 *    task, its poking_mm loaded and put back, then a prctl(PR_SET_NAME) rename and an exit;
 *  - execs that fail after the point of no return (a misaligned PT_LOAD) from a vfork()
 *    child, whose parent exec_mm_release() lets go, and from a CLONE_VM child that is no
 *    thread;
 *  - exit_group() from one thread while a sibling is inside execve() (de_thread() racing
 *    zap_other_threads());
 *  - SIGKILL to a vfork() parent waiting for its child, the child going on;
 *  - pidfd_send_signal() to a process with threads blocked in futexes;
 *  - mprotect() and MADV_DONTNEED storms from threads on every CPU while siblings exit. */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int ncpus;
static volatile long sink;
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

/* Flip a static key from a user task, rename it, let it exit. */
static void poke_and_exit(int round) {
    pid_t c = fork();
    if (c == 0) {
        pin(round);
        int a = put("/proc/sys/kernel/sched_schedstats", "1");
        busy(20000);
        int b = put("/proc/sys/kernel/sched_schedstats", "0");
        prctl(PR_SET_NAME, "poked", 0, 0, 0);
        busy(20000);
        if (a || b) _exit(1);
        _exit(0);
    }
    int st = 0;
    waitpid(c, &st, 0);
    if (round == 0) printf("poke_and_exit: %s\n", WEXITSTATUS(st) ? "no schedstats" : "ok");
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

static char *const doomed_argv[] = {"doomed", NULL};

static int clone_vm_child(void *arg) {
    busy((long)arg);
    execv("/tmp/doomed", doomed_argv);
    return 9;
}

static void doomed_shared_execs(int round) {
    pid_t c = vfork();
    if (c == 0) {
        execv("/tmp/doomed", doomed_argv);
        _exit(9);
    }
    int st = 0;
    waitpid(c, &st, 0);
    static char stack[65536];
    pin(round);
    pid_t d = clone(clone_vm_child, stack + sizeof(stack), CLONE_VM | SIGCHLD, (void *)10000L);
    if (d > 0) waitpid(d, &st, 0);
    if (round == 0) printf("doomed shared execs: %d\n", WIFSIGNALED(st) ? WTERMSIG(st) : -1);
}

static char *const true_argv[] = {"true", NULL};

static void *exec_true(void *arg) {
    busy((long)arg);
    execv("/bin/true", true_argv);
    return NULL;
}

static void *exit_all(void *arg) {
    busy((long)arg);
    syscall(SYS_exit_group, 0);
    return NULL;
}

/* exit_group() from one thread while another is in execve(). */
static void exec_against_exit_group(int round) {
    pid_t c = fork();
    if (c == 0) {
        pthread_t a, b;
        pthread_create(&a, NULL, exec_true, (void *)(20000L + round * 7000));
        pthread_create(&b, NULL, exit_all, (void *)(20000L + (2 - round) * 7000));
        pthread_join(a, NULL);
        pthread_join(b, NULL);
        _exit(0);
    }
    waitpid(c, NULL, 0);
}

/* SIGKILL to a vfork() parent while its child runs on. */
static void kill_vfork_parent(int round) {
    int pipefd[2];
    if (pipe(pipefd) != 0) return;
    pid_t parent = fork();
    if (parent == 0) {
        close(pipefd[0]);
        pid_t c = vfork();
        if (c == 0) {
            /* a vfork child may only exec or _exit; busy-waiting here keeps the parent
             * blocked in wait_for_vfork_done() until it is killed */
            busy(3000000);
            execv("/bin/true", true_argv);
            _exit(0);
        }
        _exit(0);
    }
    close(pipefd[1]);
    nap(3000 + round * 2000);
    kill(parent, SIGKILL);
    waitpid(parent, NULL, 0);
    close(pipefd[0]);
    nap(20000);
}

static int futex_word;
static void *futex_sleeper(void *arg) {
    (void)arg;
    syscall(SYS_futex, &futex_word, FUTEX_WAIT, 0, NULL, NULL, 0);
    return NULL;
}

static void pidfd_kill(int round) {
    pid_t c = fork();
    if (c == 0) {
        pthread_t t[3];
        for (int i = 0; i < 3; i++) pthread_create(&t[i], NULL, futex_sleeper, NULL);
        pin(round);
        busy(100000000L);
        _exit(0);
    }
    nap(10000);
    int fd = (int)syscall(SYS_pidfd_open, c, 0);
    if (fd >= 0) {
        syscall(SYS_pidfd_send_signal, fd, SIGKILL, NULL, 0);
        close(fd);
    } else {
        kill(c, SIGKILL);
    }
    waitpid(c, NULL, 0);
}

static char *region;
static void *storm(void *arg) {
    long id = (long)arg;
    pin((int)id);
    for (int i = 0; i < 30; i++) {
        char *p = region + (size_t)((id * 7 + i) % 16) * 4096;
        p[0] = (char)i;
        if (i % 2) mprotect(p, 4096, PROT_READ);
        else madvise(p, 4096, MADV_DONTNEED);
        mprotect(p, 4096, PROT_READ | PROT_WRITE);
    }
    if (id % 2) syscall(SYS_exit, 0);  /* some leave early, mid-storm for the rest */
    return NULL;
}

static void storms(void) {
    pid_t c = fork();
    if (c == 0) {
        region = mmap(NULL, 16 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        pthread_t t[8];
        int n = ncpus * 2 > 8 ? 8 : ncpus * 2;
        for (long i = 0; i < n; i++) pthread_create(&t[i], NULL, storm, (void *)i);
        for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
        _exit(0);
    }
    waitpid(c, NULL, 0);
}

int main(void) {
    ncpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
    int broken = broken_copy("/tmp/doomed");
    for (int round = 0; round < 3; round++) {
        poke_and_exit(round);
        if (broken == 0) doomed_shared_execs(round);
        exec_against_exit_group(round);
        kill_vfork_parent(round);
        pidfd_kill(round);
        storms();
    }
    nap(50000);
    printf("unseen8 done\n");
    return 0;
}
