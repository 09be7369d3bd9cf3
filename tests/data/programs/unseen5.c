/* A fifth workload written after the model, for `activemm capture --program`:
 *  - clone3(CLONE_VM | CLONE_VFORK) children that exit without exec;
 *  - a main thread leaving with pthread_exit() while the last thread execs;
 *  - fexecve(); SIGKILL of a process in the middle of execve();
 *  - a subreaper adopting orphans;
 *  - memfd shared mappings across fork() with munmap(), mlock(), process_vm_writev(). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/sched.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int ncpus;
static volatile long sink;
static void pin(int cpu) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(cpu % ncpus, &s); sched_setaffinity(0, sizeof(s), &s); }
static void busy(long n) { for (volatile long i = 0; i < n; i++) sink += i; }
static void nap(long us) { struct timespec t = {0, us * 1000}; nanosleep(&t, NULL); }

static void clone3_vfork(int round) {
    for (int k = 0; k < 3; k++) {
        struct clone_args a;
        memset(&a, 0, sizeof a);
        a.flags = CLONE_VM | CLONE_VFORK;
        a.exit_signal = SIGCHLD;
        /* no stack of its own: like vfork(), it borrows the suspended parent's */
        long c = syscall(SYS_clone3, &a, sizeof a);
        if (c == 0) { busy(2000 * (round + 1)); syscall(SYS_exit, 0); }
        if (c > 0) waitpid((pid_t)c, NULL, 0);
    }
}

static void *last_exec(void *arg) {
    (void)arg;
    nap(3000);  /* the main thread has left by now */
    execl("/bin/true", "true", (char *)NULL);
    return NULL;
}

static void main_leaves_first(void) {
    pid_t c = fork();
    if (c == 0) {
        pthread_t t;
        pthread_create(&t, NULL, last_exec, NULL);
        pthread_exit(NULL);
    }
    waitpid(c, NULL, 0);
}

static void fexec(void) {
    int fd = open("/bin/true", O_RDONLY | O_CLOEXEC);
    pid_t c = fork();
    if (c == 0) {
        char *argv[] = {"true", NULL}, *envp[] = {NULL};
        fexecve(fd, argv, envp);
        _exit(1);
    }
    waitpid(c, NULL, 0);
    close(fd);
}

static void kill_mid_exec(int round) {
    for (int k = 0; k < 4; k++) {
        pid_t c = fork();
        if (c == 0) { pin(round + k); execl("/bin/busybox", "sh", "-c", "exit 0", (char *)NULL); _exit(1); }
        if (k % 2) busy(300 * k);
        kill(c, SIGKILL);
        waitpid(c, NULL, 0);
    }
}

static void subreaper(void) {
    pid_t r = fork();
    if (r == 0) {
        prctl(PR_SET_CHILD_SUBREAPER, 1);
        pid_t mid = fork();
        if (mid == 0) {
            for (int k = 0; k < 3; k++)
                if (fork() == 0) { nap(2000); busy(3000); _exit(0); }
            _exit(0);  /* its children are reparented to the subreaper */
        }
        while (wait(NULL) > 0) {}
        _exit(0);
    }
    waitpid(r, NULL, 0);
}

static void memfd_shared(int round) {
    int fd = (int)syscall(SYS_memfd_create, "shm", 0);
    if (fd < 0) return;
    ftruncate(fd, 16 * 4096);
    char *m = mmap(NULL, 16 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    mlock(m, 4096);
    pid_t c = fork();
    if (c == 0) {
        pin(round + 1);
        for (int k = 0; k < 16; k++) m[k * 4096] = 1;
        munmap(m + 8 * 4096, 8 * 4096);
        busy(3000);
        _exit(0);
    }
    pin(round);
    for (int k = 0; k < 16; k++) m[k * 4096] = 2;
    char buf[64] = "written";
    struct iovec local = {buf, sizeof buf}, remote = {m, sizeof buf};
    syscall(SYS_process_vm_writev, c, &local, 1, &remote, 1, 0);
    waitpid(c, NULL, 0);
    munlock(m, 4096);
    munmap(m, 16 * 4096);
    close(fd);
}

int main(void) {
    ncpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
    for (int round = 0; round < 3; round++) {
        clone3_vfork(round);
        main_leaves_first();
        fexec();
        kill_mid_exec(round);
        subreaper();
        memfd_shared(round);
    }
    nap(50000);
    printf("unseen5 done\n");
    return 0;
}
