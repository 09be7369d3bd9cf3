/* A fifty-first workload written after the model, for `activemm capture --program`: a seeded
 * random mix of the ways the kernel reparents, reaps and kills tasks around their exits.
 * Setup: each worker is a child subreaper (PR_SET_CHILD_SUBREAPER: orphans below it come back
 * to it, not to init). One worker per CPU takes 60 steps (x the scale given as the first
 * argument, the seed as the second), every step one of: start a PID namespace (its init forks
 * a few members that touch memory, start threads, fork, vfork and exec or spin, then the init
 * exits while they run: zap_pid_ns_processes() SIGKILLs them all and waits for them); start a
 * middle process that forks grandchildren and exits at once (they are reparented to the
 * worker through find_new_reaper() while they run, fork or exec); stop a process group whose
 * leader then exits (an orphaned, stopped group in a session of its own:
 * kill_orphaned_pgrp() sends SIGHUP and SIGCONT, the stopped members wake to die); clone a child with no exit signal (reaped with
 * __WALL) or with CLONE_PARENT (the worker's parent's child); start a child through clone3()
 * with CLONE_PIDFD, then signal it through the pidfd (pidfd_send_signal()) and reap it with
 * waitid(P_PIDFD); SIGSTOP a threaded target and SIGKILL it while stopped; have a target's
 * threads exec at once from two threads (one de_thread() wins, the other is killed); a
 * thread group whose leader exits first (a zombie leader until its last thread's exit
 * releases it); or yield or sleep a little. The same seed gives the same choices (not the
 * same timing). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
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
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef P_PIDFD
#define P_PIDFD 3
#endif

struct clone_args_v0 { /* struct clone_args of <linux/sched.h>, CLONE_ARGS_SIZE_VER0 */
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
};

static int ncpu = 1;
static uint64_t rng;
static int worker_id;
static int namespaces, orphans, stopped_groups, pidfds, kills, double_execs;

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

static char *region; /* 128 KiB a process's threads touch */
#define REGION (1 << 17)

static void touch(uint32_t r) {
    if (region == NULL || region == MAP_FAILED) {
        region = mmap(NULL, REGION, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (region == MAP_FAILED) return;
    }
    for (int i = (int)(r % 4) * 4096; i < REGION; i += 4096) ((volatile char *)region)[i]++;
}

static void *busy_thread(void *arg) {
    uint32_t r = (uint32_t)(uintptr_t)arg;
    touch(r);
    if (r % 3 == 0) spin_us(100 + r % 700);
    else usleep(100 + r % 1500);
    return NULL;
}

/* A member's life: threads, then one last act, each of which ends with its exit. */
static void member_life(uint32_t r) {
    touch(r);
    pthread_t t[2];
    int n = (int)(r % 3);
    for (int i = 0; i < n; i++)
        if (pthread_create(&t[i], NULL, busy_thread, (void *)(uintptr_t)(r >> (i + 1)))) n = i;
    switch ((r >> 4) % 6) {
    case 0: execl("/bin/program", "program", "--leaf", NULL); break;
    case 1: {
        pid_t c = vfork();
        if (c == 0) {
            execl("/bin/program", "program", "--leaf", NULL);
            _exit(1);
        }
        break;
    }
    case 2: {
        pid_t c = fork();
        if (c == 0) {
            touch(r >> 2);
            spin_us(50 + (r >> 6) % 400);
            _exit(0);
        }
        break;
    }
    case 3: spin_us(200 + (r >> 7) % 2000); break;
    case 4: usleep(500 + (r >> 7) % 3000); break;
    default: syscall(SYS_exit_group, 0); break;
    }
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    _exit(0);
}

/* The init of a new PID namespace: members, then its exit kills them (zap_pid_ns_processes()). */
static void step_namespace(uint32_t r) {
    pid_t c = fork();
    if (c != 0) {
        if (c > 0) namespaces++;
        return;
    }
    if (unshare(CLONE_NEWPID) != 0) _exit(0);
    pid_t init = fork(); /* the first child in the namespace is its init */
    if (init != 0) {
        if (init > 0 && (r & 1)) waitpid(init, NULL, 0);
        _exit(0); /* else the init is reparented to the worker */
    }
    int members = 1 + (int)(r >> 1) % 4;
    for (int i = 0; i < members; i++)
        if (fork() == 0) member_life(next() ^ r);
    if ((r >> 3) % 2) spin_us(100 + (r >> 5) % 800);
    else usleep(100 + (r >> 5) % 1500);
    if ((r >> 4) % 3 == 0) {
        pthread_t t;
        pthread_create(&t, NULL, busy_thread, (void *)(uintptr_t)r);
        syscall(SYS_exit_group, 0); /* the init's exit with a thread still running */
    }
    _exit(0);
}

/* A middle process that forks and exits at once: its children are orphans of the worker. */
static void step_orphans(uint32_t r) {
    pid_t c = fork();
    if (c != 0) {
        if (c > 0) orphans++;
        return;
    }
    int n = 1 + (int)(r % 3);
    for (int i = 0; i < n; i++)
        if (fork() == 0) {
            if (r & 8) usleep(50 + r % 400); /* reparented meanwhile */
            member_life(next() ^ r);
        }
    if (r & 16) spin_us(r % 150);
    _exit(0);
}

/* A stopped group orphaned by its leader's exit: SIGHUP and SIGCONT wake it to die. A
 * middle process starts a session (setsid()) so that the group's only tie outside it is
 * its leader's parent; the members, reparented to the worker (another session), then
 * leave the group orphaned (kill_orphaned_pgrp()). Members stop with SIGTSTP, which the
 * kernel discards once the group is orphaned, so a late one runs on instead. */
static void step_stopped_group(uint32_t r) {
    pid_t c = fork();
    if (c != 0) {
        if (c > 0) stopped_groups++;
        return;
    }
    setsid();
    pid_t leader = fork();
    if (leader != 0) {
        if (leader > 0) {
            waitpid(leader, NULL, 0);
            /* a member whose group stop was still completing when the leader exited missed
             * the SIGHUP (has_stopped_jobs() was false) and stays stopped: kill it */
            usleep(3000);
            kill(-leader, SIGKILL);
        }
        _exit(0);
    }
    setpgid(0, 0);
    int n = 1 + (int)(r % 3);
    for (int i = 0; i < n; i++)
        if (fork() == 0) {
            touch(r >> i);
            if (r & 4) {
                pthread_t t;
                pthread_create(&t, NULL, busy_thread, (void *)(uintptr_t)(r >> 3));
            }
            raise(SIGTSTP);
            spin_us(50 + (r >> 5) % 200); /* continued (SIGCONT) with SIGHUP pending dies */
            _exit(0);
        }
    usleep(200 + (r >> 4) % 800);
    _exit(0); /* the group is now orphaned with stopped members */
}

static int child_fn(void *arg) {
    member_life((uint32_t)(uintptr_t)arg);
    return 0;
}

/* A child with no exit signal (reaped with __WALL) or with CLONE_PARENT. */
static void step_clone(uint32_t r) {
    static char stacks[2][64 * 1024] __attribute__((aligned(16)));
    static int which;
    char *stack = stacks[which++ % 2] + sizeof stacks[0];
    if (r % 2) {
        pid_t c = clone(child_fn, stack, 0, (void *)(uintptr_t)(r >> 1));
        if (c > 0 && (r & 2)) waitpid(c, NULL, __WALL);
    } else {
        clone(child_fn, stack, CLONE_PARENT | SIGCHLD, (void *)(uintptr_t)(r >> 1));
    }
}

/* clone3() with CLONE_PIDFD; signal it through the pidfd and reap it with waitid(P_PIDFD). */
static void step_pidfd(uint32_t r) {
    int pidfd = -1;
    struct clone_args_v0 a;
    memset(&a, 0, sizeof a);
    a.flags = CLONE_PIDFD;
    a.pidfd = (uint64_t)(uintptr_t)&pidfd;
    a.exit_signal = SIGCHLD;
    long c = syscall(SYS_clone3, &a, sizeof a);
    if (c == 0) member_life(r);
    if (c < 0 || pidfd < 0) return;
    pidfds++;
    if (r & 1) spin_us(r % 300);
    else usleep(r % 600);
    if ((r >> 1) % 3) syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
    siginfo_t si;
    syscall(SYS_waitid, P_PIDFD, pidfd, &si, WEXITED, NULL);
    close(pidfd);
}

/* A threaded target stopped, then killed while stopped. */
static void step_stop_kill(uint32_t r) {
    pid_t c = fork();
    if (c == 0) {
        touch(r);
        pthread_t t[2];
        for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, busy_thread, (void *)(uintptr_t)(r >> i));
        for (;;) spin_us(1000);
    }
    if (c < 0) return;
    usleep(100 + r % 500);
    kill(c, SIGSTOP);
    if (r & 2) usleep(r % 300);
    kill(c, SIGKILL);
    kills++;
    waitpid(c, NULL, 0);
}

static void *exec_thread(void *arg) {
    (void)arg;
    execl("/bin/program", "program", "--leaf", NULL);
    return NULL;
}

/* Two threads of one target exec at once: de_thread() lets one through, kills the other. */
static void step_double_exec(uint32_t r) {
    pid_t c = fork();
    if (c == 0) {
        touch(r);
        pthread_t t[2];
        for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, exec_thread, NULL);
        if (r & 1) execl("/bin/program", "program", "--leaf", NULL); /* and the leader */
        for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
        _exit(0);
    }
    if (c > 0) {
        double_execs++;
        waitpid(c, NULL, 0);
    }
}

/* The leader exits first: a zombie leader until its last thread's exit. */
static void step_leader_first(uint32_t r) {
    pid_t c = fork();
    if (c == 0) {
        touch(r);
        pthread_t t;
        for (int i = 0; i < 1 + (int)(r % 3); i++)
            pthread_create(&t, NULL, busy_thread, (void *)(uintptr_t)(r >> i));
        pthread_exit(NULL);
    }
    if (c > 0 && (r & 4)) waitpid(c, NULL, 0);
}

static void reap_some(void) {
    while (waitpid(-1, NULL, WNOHANG | __WALL) > 0) {}
}

static void step(void) {
    uint32_t r = next();
    switch (next() % 12) {
    case 0:
    case 1: step_namespace(r); break;
    case 2: step_orphans(r); break;
    case 3: step_stopped_group(r); break;
    case 4: step_clone(r); break;
    case 5: step_pidfd(r); break;
    case 6: step_stop_kill(r); break;
    case 7: step_double_exec(r); break;
    case 8: step_leader_first(r); break;
    case 9: reap_some(); break;
    default:
        if (r % 2) sched_yield();
        else usleep(r % 400);
    }
}

static void worker(int steps) {
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    for (int i = 0; i < steps; i++) step();
    while (waitpid(-1, NULL, __WALL) > 0) {}
    printf("worker %d: %d namespaces, %d orphan batches, %d stopped groups, %d pidfd children,"
           " %d kills while stopped, %d double execs\n", worker_id, namespaces, orphans,
           stopped_groups, pidfds, kills, double_execs);
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--leaf") == 0) return 0;
    ncpu = (int)sysconf(_SC_NPROCESSORS_CONF);
    setvbuf(stdout, NULL, _IONBF, 0);
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1) scale = 1;
    rng = argc > 2 ? strtoull(argv[2], NULL, 10) | 1 : 51;
    unsigned long long seed = (unsigned long long)rng;
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
    while (waitpid(-1, NULL, __WALL) > 0) {} /* CLONE_PARENT children are ours */
    printf("reaping mix (seed %llu): %d workers done\n", seed, n);
    printf("done (%d CPUs)\n", ncpu);
    return 0;
}
