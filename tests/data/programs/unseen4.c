/* A fourth workload written after the model, for `activemm capture --program`:
 *  - ptrace with PTRACE_O_TRACEEXIT: the tracee stops inside do_exit(), before exit_mm();
 *  - exec of a #! script (binfmt_script, then the interpreter's exec in the same bprm);
 *  - a multithreaded process killed by SIGSEGV (coredump_wait() zaps its threads);
 *  - pidfd_open() + pidfd_getfd(): a userfaultfd taken from another process, which exits;
 *  - process_madvise() on a child that is exiting (its mm_users reference, __mmput);
 *  - io_setup()/io_destroy() (aio rings live in the mm: exit_aio() in __mmput);
 *  - sched_yield() between processes synchronised by pipes. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
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

static void traced_exit(int round) {
    pid_t c = fork();
    if (c == 0) {
        ptrace(PTRACE_TRACEME, 0, NULL, NULL);
        raise(SIGSTOP);
        pin(round);
        busy(10000);
        _exit(3);
    }
    int st;
    waitpid(c, &st, 0);  /* the SIGSTOP */
    ptrace(PTRACE_SETOPTIONS, c, NULL, (void *)(long)PTRACE_O_TRACEEXIT);
    ptrace(PTRACE_CONT, c, NULL, NULL);
    waitpid(c, &st, 0);  /* stopped in do_exit(), its mm still there */
    nap(2000);
    pid_t f = fork();  /* something else runs on its CPU meanwhile */
    if (f == 0) { pin(round); busy(5000); _exit(0); }
    waitpid(f, NULL, 0);
    ptrace(PTRACE_CONT, c, NULL, NULL);
    waitpid(c, &st, 0);
}

static void script_exec(void) {
    const char *path = "/tmp/unseen4.sh";
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0755);
    if (fd < 0) return;
    const char body[] = "#!/bin/sh\nexit 0\n";
    write(fd, body, sizeof body - 1);
    close(fd);
    for (int k = 0; k < 3; k++) {
        pid_t c = fork();
        if (c == 0) { execl(path, path, (char *)NULL); _exit(1); }
        waitpid(c, NULL, 0);
    }
}

static void *spin(void *arg) { (void)arg; for (;;) busy(1000); return NULL; }

static void segv_threads(int round) {
    pid_t c = fork();
    if (c == 0) {
        struct rlimit no = {0, 0};
        setrlimit(RLIMIT_CORE, &no);
        pthread_t t[3];
        for (int k = 0; k < 3; k++) pthread_create(&t[k], NULL, spin, NULL);
        pin(round);
        busy(20000);
        *(volatile int *)0 = 1;  /* SIGSEGV: the whole group goes, threads first */
        _exit(0);
    }
    waitpid(c, NULL, 0);
}

static void stolen_uffd(int round) {
    int p[2];
    if (pipe(p)) return;
    pid_t owner = fork();
    if (owner == 0) {
        close(p[0]);
        int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
        write(p[1], &uffd, sizeof uffd);
        close(p[1]);
        nap(5000);  /* long enough for the thief */
        _exit(0);
    }
    close(p[1]);
    int remote = -1;
    read(p[0], &remote, sizeof remote);
    close(p[0]);
    int pidfd = (int)syscall(SYS_pidfd_open, owner, 0);
    int fd = pidfd >= 0 && remote >= 0 ? (int)syscall(SYS_pidfd_getfd, pidfd, remote, 0) : -1;
    waitpid(owner, NULL, 0);
    pid_t f = fork();  /* a user task where the owner's mm was lazily held */
    if (f == 0) { pin(round); busy(5000); _exit(0); }
    waitpid(f, NULL, 0);
    nap(2000);
    if (fd >= 0) close(fd);  /* the owner's mm goes with the context */
    if (pidfd >= 0) close(pidfd);
}

static void madvise_exiting(int round) {
    int p[2];
    if (pipe(p)) return;
    pid_t c = fork();
    if (c == 0) {
        char *m = mmap(NULL, 16 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        memset(m, 1, 16 * 4096);
        close(p[0]);
        write(p[1], &m, sizeof m);
        close(p[1]);
        pin(round + 1);
        busy(3000);
        _exit(0);
    }
    close(p[1]);
    char *addr = NULL;
    read(p[0], &addr, sizeof addr);
    close(p[0]);
    int pidfd = (int)syscall(SYS_pidfd_open, c, 0);
    struct iovec v = {addr, 16 * 4096};
    for (int k = 0; k < 20 && pidfd >= 0; k++)
        syscall(SYS_process_madvise, pidfd, &v, 1, MADV_COLD, 0);
    waitpid(c, NULL, 0);
    if (pidfd >= 0) close(pidfd);
}

static void aio_rings(void) {
    pid_t c = fork();
    if (c == 0) {
        aio_context_t ctx[2] = {0, 0};
        syscall(SYS_io_setup, 8, &ctx[0]);
        syscall(SYS_io_setup, 8, &ctx[1]);
        syscall(SYS_io_destroy, ctx[0]);
        _exit(0);  /* the second ring goes in exit_aio() */
    }
    waitpid(c, NULL, 0);
}

static void yielders(int round) {
    int a[2], b[2];
    if (pipe(a) || pipe(b)) return;
    pid_t c = fork();
    char x = 0;
    if (c == 0) {
        pin(round);
        for (int k = 0; k < 30; k++) { read(a[0], &x, 1); sched_yield(); write(b[1], &x, 1); }
        _exit(0);
    }
    pin(round);
    for (int k = 0; k < 30; k++) { write(a[1], &x, 1); sched_yield(); read(b[0], &x, 1); }
    waitpid(c, NULL, 0);
    close(a[0]); close(a[1]); close(b[0]); close(b[1]);
}

int main(void) {
    ncpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
    for (int round = 0; round < 3; round++) {
        traced_exit(round);
        script_exec();
        segv_threads(round);
        stolen_uffd(round);
        madvise_exiting(round);
        aio_rings();
        yielders(round);
    }
    nap(50000);
    printf("unseen4 done\n");
    return 0;
}
