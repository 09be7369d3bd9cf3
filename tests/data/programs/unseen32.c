/* A thirty-second workload written after the model, for `activemm capture --program`:
 *  - PID namespaces torn down by their init's exit: zap_pid_ns_processes() kills every
 *    member (threads spinning with sched_yield() on every CPU), the init waiting for them
 *    after its own exit_mm();
 *  - PR_SET_PDEATHSIG chains: each child SIGKILLed when its parent exits;
 *  - pthread_cancel() of threads blocked in read() and nanosleep();
 *  - execveat(AT_EMPTY_PATH) of a memfd holding a copy of busybox;
 *  - system() and popen() (vfork + exec of sh) from a threaded process;
 *  - unshare(CLONE_NEWNS) then exec, setns() into a sibling's mount namespace. */
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
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int ncpus;
static volatile long sink;
static void pin(int cpu) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(cpu % ncpus, &s); sched_setaffinity(0, sizeof(s), &s); }
static void busy(long n) { for (volatile long i = 0; i < n; i++) sink += i; }
static void nap(long us) { struct timespec t = {us / 1000000, (us % 1000000) * 1000}; nanosleep(&t, NULL); }

static void *spinner(void *arg) { pin((long)arg); for (;;) { busy(5000); sched_yield(); } return NULL; }

/* 1. A PID namespace whose init forks members (threads, lazy-exiting children), then exits. */
static void pid_namespaces(int rounds) {
    for (int i = 0; i < rounds; i++) {
        if (fork() == 0) {
            if (unshare(CLONE_NEWPID) < 0) { perror("unshare(CLONE_NEWPID)"); _exit(1); }
            pid_t init = fork();
            if (init == 0) { /* pid 1 of the namespace */
                for (int k = 0; k < 4; k++) {
                    if (fork() == 0) {
                        pin(k);
                        pthread_t t;
                        pthread_create(&t, NULL, spinner, (void *)(long)(k + 1));
                        for (;;) pause();
                    }
                }
                nap(3000 + 1000 * i);
                _exit(0); /* zap_pid_ns_processes(): every member killed, init waits */
            }
            waitpid(init, NULL, 0);
            _exit(0);
        }
    }
    while (wait(NULL) > 0) {}
}

/* 2. PR_SET_PDEATHSIG chains: each child dies by SIGKILL when its parent exits. */
static void death_chain(int depth, int cpu) {
    for (; depth > 0; depth--, cpu++) {
        if (fork() != 0) { nap(2000); _exit(0); } /* the parent exits: its child is killed */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() == 1) _exit(0); /* the parent was gone before the prctl */
        pin(cpu + 1);
    }
    for (;;) busy(10000); /* the last one spins until its parent's exit kills it */
}

static void pdeathsig(int rounds) {
    for (int i = 0; i < rounds; i++) if (fork() == 0) death_chain(4, i);
    while (wait(NULL) > 0) {}
    nap(20000);
}

/* 3. Threads cancelled while blocked in read() and nanosleep(). */
static void *blocked(void *arg) {
    int *p = arg;
    char b;
    if (p[0] >= 0) { if (read(p[0], &b, 1) < 0) return NULL; }
    else nap(1000000);
    return NULL;
}

static void cancels(int rounds) {
    for (int i = 0; i < rounds; i++) {
        if (fork() == 0) {
            int fds[2];
            if (pipe(fds) < 0) _exit(1);
            pthread_t t[4];
            int none[2] = {-1, -1};
            for (int k = 0; k < 4; k++) pthread_create(&t[k], NULL, blocked, k & 1 ? fds : none);
            nap(1000);
            for (int k = 0; k < 4; k++) pthread_cancel(t[k]);
            for (int k = 0; k < 4; k++) pthread_join(t[k], NULL);
            _exit(0);
        }
    }
    while (wait(NULL) > 0) {}
}

/* 4. execveat() of a memfd holding a copy of /bin/busybox (AT_EMPTY_PATH). */
static void memfd_exec(int rounds) {
    int src = open("/bin/busybox", O_RDONLY);
    if (src < 0) return;
    int mfd = memfd_create("bb", 0);
    char buf[65536];
    ssize_t n;
    while ((n = read(src, buf, sizeof(buf))) > 0) if (write(mfd, buf, n) != n) break;
    close(src);
    for (int i = 0; i < rounds; i++) {
        if (fork() == 0) {
            pin(i);
            char *argv[] = {"true", NULL}, *envp[] = {NULL};
            syscall(SYS_execveat, mfd, "", argv, envp, AT_EMPTY_PATH);
            _exit(127);
        }
    }
    close(mfd);
    while (wait(NULL) > 0) {}
}

/* 5. system() and popen() from a threaded process (vfork + exec of sh). */
static void shells(int rounds) {
    if (fork() == 0) {
        pthread_t t;
        pthread_create(&t, NULL, spinner, (void *)1L);
        for (int i = 0; i < rounds; i++) {
            if (system("true") < 0) perror("system");
            FILE *f = popen("echo x", "r");
            if (f) { char l[8]; if (!fgets(l, sizeof(l), f)) l[0] = 0; pclose(f); }
        }
        _exit(0);
    }
    while (wait(NULL) > 0) {}
}

/* 6. unshare(CLONE_NEWNS) then exec; setns() into a sibling's mount namespace then exit. */
static void namespaces_exec(int rounds) {
    for (int i = 0; i < rounds; i++) {
        if (fork() == 0) {
            pin(i + 1);
            if (unshare(CLONE_NEWNS) == 0) execl("/bin/true", "true", (char *)NULL);
            _exit(1);
        }
        pid_t holder = fork();
        if (holder == 0) { if (unshare(CLONE_NEWNS) == 0) nap(5000); _exit(0); }
        if (fork() == 0) {
            nap(1000);
            char path[64];
            snprintf(path, sizeof(path), "/proc/%d/ns/mnt", holder);
            int fd = open(path, O_RDONLY);
            if (fd >= 0 && setns(fd, CLONE_NEWNS) == 0) busy(10000);
            _exit(0);
        }
    }
    while (wait(NULL) > 0) {}
}

int main(int argc, char **argv) {
    ncpus = sysconf(_SC_NPROCESSORS_ONLN);
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    for (int s = 0; s < scale; s++) {
        pid_namespaces(3);
        pdeathsig(3);
        cancels(4);
        memfd_exec(4);
        shells(3);
        namespaces_exec(3);
    }
    printf("ns: done\n");
    return 0;
}
