/* A twenty-ninth workload written after the model, for `activemm capture --program`, on 2
 * CPUs or more:
 *  - suspend test cycles (/sys/power/pm_test "processors", then "mem" written to
 *    /sys/power/state, mem_sleep "deep"): the freezer stops every user task and freezable
 *    kernel thread, devices suspend, and freeze_secondary_cpus() takes every CPU but the
 *    boot one down in a row (idle_task_exit() with whatever mm each idle task borrowed,
 *    finish_cpu() on the boot CPU dropping it), then thaw_secondary_cpus() brings them back;
 *    processes on those CPUs exit just before, so that their idle tasks borrow mms whose
 *    last real user is gone (freed in finish_cpu()), and others are frozen mid-work;
 *  - without S3 in the machine (no "mem" in /sys/power/state): every secondary CPU taken
 *    offline in a row from one thread and brought back, the same work around it;
 *  - eBPF programs JIT-compiled (BPF_PROG_LOAD of socket filters of one to several pages of
 *    code): bpf_jit_binary_pack_finalize() copies the code in with text_poke_copy(), one
 *    use_temporary_mm(poking_mm) and back per page in the loading task, from processes
 *    that exec or exit right after; closing a program's last fd frees it in a kworker
 *    (bpf_prog_free_deferred(): text_poke_set() over the freed code, from a kernel thread
 *    lazy on a user mm). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/bpf.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile int stop;

static void nap(long us) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

static void busy(long n) {
    for (volatile long i = 0; i < n; i++) {
    }
}

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof(set), &set);
}

static int put(const char *path, const char *value) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    int ok = write(fd, value, strlen(value)) == (ssize_t)strlen(value);
    close(fd);
    return ok ? 0 : -1;
}

static int has_word(const char *path, const char *word) {
    char buf[256] = {0};
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    return n > 0 && strstr(buf, word) != NULL;
}

/* A socket filter of `n` instructions: n - 1 moves into r0, then exit (about 5 bytes of x86
 * code each once JIT-compiled). */
static int load_prog(int n) {
    static struct bpf_insn insns[4096];
    if (n < 2) n = 2;
    if (n > 4096) n = 4096;
    for (int i = 0; i < n - 1; i++) {
        memset(&insns[i], 0, sizeof(insns[i]));
        insns[i].code = BPF_ALU64 | BPF_MOV | BPF_K;
        insns[i].dst_reg = 0;
        insns[i].imm = i + 1;
    }
    memset(&insns[n - 1], 0, sizeof(insns[n - 1]));
    insns[n - 1].code = BPF_JMP | BPF_EXIT;
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
    attr.insns = (uint64_t)(uintptr_t)insns;
    attr.insn_cnt = (uint32_t)n;
    attr.license = (uint64_t)(uintptr_t)"GPL";
    return (int)syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof(attr));
}

static const int sizes[] = {2, 300, 900, 2500, 4000};

/* A process on `cpu`: two threads spin and sleep, then it loads a program or not, and execs
 * this program as a short-lived child or exits. */
static void *spin(void *arg) {
    long n = (long)arg;
    for (int i = 0; i < 6; i++) {
        busy(20000 + n * 3000);
        nap(300 + n * 100);
    }
    return NULL;
}

static void worker(int cpu, int seed) {
    pin(cpu);
    pthread_t t[2];
    for (long i = 0; i < 2; i++) pthread_create(&t[i], NULL, spin, (void *)(i + seed % 3));
    if (seed % 2) {
        int fd = load_prog(sizes[seed % 5]);
        if (fd >= 0 && seed % 4 == 1) fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    busy(30000);
    if (seed % 3 == 0) {
        char *argv[] = {"unseen29", "child", NULL};
        execv("/proc/self/exe", argv);
    }
    if (seed % 5 == 0) pthread_join(t[0], NULL);
    _exit(0);
}

/* Runs until stopped: a process started on every CPU in turn, and reaped. */
static void *churn(void *arg) {
    int ncpu = (int)(long)arg;
    for (int seed = 0; !stop; seed++) {
        pid_t pid = fork();
        if (pid == 0) worker(seed % ncpu, seed);
        if (pid > 0) waitpid(pid, NULL, 0);
        nap(500);
    }
    return NULL;
}

/* Loads programs of every size and closes them, some right away, some a while later. */
static void *loader(void *arg) {
    (void)arg;
    int held[8];
    for (int i = 0; i < 8; i++) held[i] = -1;
    for (int i = 0; !stop; i++) {
        int fd = load_prog(sizes[i % 5]);
        if (held[i % 8] >= 0) close(held[i % 8]);
        held[i % 8] = fd;
        if (i % 3 == 0 && fd >= 0) {
            close(fd);
            held[i % 8] = -1;
        }
        nap(2000);
    }
    for (int i = 0; i < 8; i++)
        if (held[i] >= 0) close(held[i]);
    return NULL;
}

/* Short-lived processes pinned to every secondary CPU, exiting just before the CPUs go down:
 * their idle tasks borrow the exited mms. */
static void leave_on_every_cpu(int ncpu) {
    for (int cpu = 1; cpu < ncpu; cpu++) {
        pid_t pid = fork();
        if (pid == 0) {
            pin(cpu);
            busy(50000);
            _exit(0);
        }
    }
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

static void all_secondary(int ncpu, int on) {
    char path[64];
    for (int cpu = 1; cpu < ncpu; cpu++) {
        snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu%d/online", cpu);
        put(path, on ? "1" : "0");
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "child") == 0) {
        busy(20000);
        int fd = load_prog(300);
        nap(500);
        return fd < 0;
    }
    int ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (ncpu < 2) {
        puts("unseen29: needs 2 CPUs or more");
        return 0;
    }
    int probe = load_prog(2);
    printf("unseen29: eBPF %s\n", probe >= 0 ? "loads" : "does not load");
    if (probe >= 0) close(probe);
    int s3 = has_word("/sys/power/state", "mem") && put("/sys/power/pm_test", "processors") == 0;
    if (s3) {
        put("/sys/power/mem_sleep", "deep");
        put("/sys/module/suspend/parameters/pm_test_delay", "0");
    }
    printf("unseen29: %s\n", s3 ? "suspend test cycles (pm_test processors)" : "no S3: CPUs offline in a row");
    fflush(stdout);
    pthread_t c[2], l;
    for (long i = 0; i < 2; i++) pthread_create(&c[i], NULL, churn, (void *)(long)ncpu);
    pthread_create(&l, NULL, loader, NULL);
    int cycles = 0;
    for (int round = 0; round < 5; round++) {
        nap(150000);
        leave_on_every_cpu(ncpu);
        if (s3) {
            pin(0);
            if (put("/sys/power/state", "mem") == 0) cycles++;
        } else {
            all_secondary(ncpu, 0);
            nap(30000);
            all_secondary(ncpu, 1);
            cycles++;
        }
        cpu_set_t all;
        CPU_ZERO(&all);
        for (int cpu = 0; cpu < ncpu; cpu++) CPU_SET(cpu, &all);
        sched_setaffinity(0, sizeof(all), &all);
    }
    stop = 1;
    for (int i = 0; i < 2; i++) pthread_join(c[i], NULL);
    pthread_join(l, NULL);
    while (wait(NULL) > 0) {
    }
    if (s3) put("/sys/power/pm_test", "none");
    printf("unseen29: %d of 5 cycles done\n", cycles);
    return 0;
}
