/* A sixteenth workload written after the model, for `activemm capture --program`:
 *  - memory compaction: /proc/sys/vm/compact_memory written while processes whose anonymous
 *    memory is fragmented run threads, fork, exec and exit on other CPUs, and kcompactd's
 *    proactive compaction (vm.compaction_proactiveness): migrating a page flushes its mm's
 *    TLB from the writer (a foreign mm) or from kcompactd (a kernel thread, maybe lazy on
 *    that very mm);
 *  - a global OOM kill from a kworker (sysrq 'f': moom_callback(), out_of_memory()) of a
 *    process chosen by its oom_score_adj, with threads on other CPUs and a clone(CLONE_VM)
 *    process sharing its mm (killed with it), the rest protected;
 *  - PTRACE_POKEDATA into a tracee's copy-on-write page (shared with its fork child): the
 *    tracer breaks COW in the tracee's mm (access_process_vm(): get_task_mm(), a flush of a
 *    foreign mm) while the tracee's other threads run; the tracee then exits;
 *  - MADV_FREE'd memory of a process with a thread running, taken back by its memory cgroup's
 *    proactive reclaim (memory.reclaim). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void nap(long us) { struct timespec t = {us / 1000000, (us % 1000000) * 1000}; nanosleep(&t, NULL); }
static char *const true_argv[] = {"true", NULL};
static volatile int stop_spinning;

static int put(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    return n < 0 ? -1 : 0;
}

static void *spinner(void *arg) {
    volatile char *p = arg;
    while (!stop_spinning) {
        if (p) p[0]++;
        sched_yield();
    }
    return NULL;
}

/* `mb` MiB of anonymous memory touched page by page, every other page given back: the free
 * pages left between used ones are what compaction moves pages into. */
static char *fragmented(long mb) {
    size_t len = (size_t)mb << 20;
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    for (size_t i = 0; i < len; i += 4096) p[i] = 1;
    for (size_t i = 4096; i < len; i += 8192) madvise(p + i, 4096, MADV_DONTNEED);
    return p;
}

/* A process holding fragmented memory with `threads` spinning threads; forks and execs a
 * child now and then; exits after `ms` milliseconds. */
static pid_t holder(int threads, long mb, int ms) {
    pid_t pid = fork();
    if (pid != 0) return pid;
    char *mem = fragmented(mb);
    pthread_t t[8];
    for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, spinner, mem);
    for (int waited = 0; waited < ms; waited += 20) {
        if (waited % 100 == 0) {
            pid_t c = fork();
            if (c == 0) {
                if (waited % 200 == 0) execve("/bin/true", true_argv, NULL);
                _exit(0);
            }
            if (c > 0) waitpid(c, NULL, 0);
        }
        nap(20000);
    }
    _exit(0);
}

static int compaction(void) {
    int runs = 0;
    put("/proc/sys/vm/compaction_proactiveness", "100");
    for (int round = 0; round < 2; round++) {
        pid_t h[3];
        for (int i = 0; i < 3; i++) h[i] = holder(2, 3, 500 + 200 * i);
        nap(150000);
        for (int i = 0; i < 4; i++) {
            if (put("/proc/sys/vm/compact_memory", "1") == 0) runs++;
            nap(60000);
        }
        for (int i = 0; i < 3; i++) waitpid(h[i], NULL, 0);
    }
    put("/proc/sys/vm/compaction_proactiveness", "20");
    return runs;
}

static int shared_mm_child(void *arg) {
    (void)arg;
    for (;;) nap(10000);
    return 0;
}

/* One OOM victim: threads spinning, a CLONE_VM process sharing its mm, its score at the top. */
static int oom_round(void) {
    int ready[2];
    if (pipe(ready) != 0) return 0;
    pid_t victim = fork();
    if (victim == 0) {
        put("/proc/self/oom_score_adj", "1000");
        char *mem = fragmented(2);
        pthread_t t[3];
        for (int i = 0; i < 3; i++) pthread_create(&t[i], NULL, spinner, mem);
        char *stack = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (stack != MAP_FAILED) clone(shared_mm_child, stack + 65536, CLONE_VM | SIGCHLD, NULL);
        if (write(ready[1], "x", 1) < 0) _exit(1);
        for (;;) nap(10000);
    }
    close(ready[1]);
    char c;
    int ok = read(ready[0], &c, 1) == 1;
    close(ready[0]);
    nap(50000);
    if (!ok || put("/proc/sysrq-trigger", "f") != 0) {
        kill(victim, SIGKILL);
        waitpid(victim, NULL, 0);
        return 0;
    }
    int status;
    for (int i = 0; i < 100 && waitpid(victim, &status, WNOHANG) == 0; i++) nap(20000);
    if (waitpid(victim, &status, WNOHANG) == 0) {  /* not chosen: kill it ourselves */
        kill(victim, SIGKILL);
        waitpid(victim, &status, 0);
        return 0;
    }
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
}

static int oom_kills(void) {
    put("/proc/sys/kernel/sysrq", "1");
    put("/proc/self/oom_score_adj", "-1000");  /* this program and what it forks later */
    int killed = 0;
    for (int i = 0; i < 3; i++) killed += oom_round();
    return killed;
}

/* The tracee: a private page written before fork (shared copy-on-write with its child),
 * threads spinning on other CPUs; the main thread waits to be poked, then exits. */
static int poke_round(void) {
    int ready[2];
    if (pipe(ready) != 0) return 0;
    static char *page;
    page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) return 0;
    page[0] = 1;
    pid_t tracee = fork();
    if (tracee == 0) {
        pid_t child = fork();  /* shares the page copy-on-write */
        if (child == 0) {
            nap(400000);
            _exit(page[0] == 1 ? 0 : 1);
        }
        pthread_t t[2];
        for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, spinner, NULL);
        if (write(ready[1], "x", 1) < 0) _exit(1);
        while (*(volatile char *)page != 42) nap(1000);
        stop_spinning = 1;
        for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
        waitpid(child, NULL, 0);
        _exit(0);
    }
    close(ready[1]);
    char c;
    int ok = read(ready[0], &c, 1) == 1;
    close(ready[0]);
    int poked = 0;
    if (ok && ptrace(PTRACE_SEIZE, tracee, NULL, NULL) == 0) {
        ptrace(PTRACE_INTERRUPT, tracee, NULL, NULL);
        waitpid(tracee, NULL, __WALL);
        poked = ptrace(PTRACE_POKEDATA, tracee, page, (void *)42L) == 0;
        ptrace(PTRACE_DETACH, tracee, NULL, NULL);
    }
    if (!poked) kill(tracee, SIGKILL);
    waitpid(tracee, NULL, 0);
    munmap(page, 4096);
    return poked;
}

/* MADV_FREE'd pages of a process with a thread running, taken back by proactive reclaim of
 * its memory cgroup (memory.reclaim): lazily freed pages are discarded, without swap, by
 * try_to_unmap() from the writer, a TLB flush of the owner's mm. 1 when reclaim was asked. */
static int lazy_free(void) {
    int ready[2];
    if (pipe(ready) != 0) return 0;
    pid_t owner = fork();
    if (owner == 0) {
        size_t len = 24 << 20;
        char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) _exit(1);
        for (size_t i = 0; i < len; i += 4096) p[i] = 1;
        madvise(p, len, MADV_FREE);
        pthread_t t;
        pthread_create(&t, NULL, spinner, NULL);
        if (write(ready[1], "x", 1) < 0) _exit(1);
        nap(800000);
        stop_spinning = 1;
        pthread_join(t, NULL);
        _exit(0);
    }
    close(ready[1]);
    char c, me[32];
    int ok = read(ready[0], &c, 1) == 1;
    close(ready[0]);
    mkdir("/sys/fs/cgroup", 0755);
    mount("none", "/sys/fs/cgroup", "cgroup2", 0, NULL);  /* EBUSY when mounted already */
    put("/sys/fs/cgroup/cgroup.subtree_control", "+memory");
    mkdir("/sys/fs/cgroup/lazyfree", 0755);
    snprintf(me, sizeof(me), "%d", owner);
    int asked = ok && put("/sys/fs/cgroup/lazyfree/cgroup.procs", me) == 0;
    for (int i = 0; asked && i < 3; i++) {
        put("/sys/fs/cgroup/lazyfree/memory.reclaim", "16M");  /* fails when short: fine */
        nap(100000);
    }
    put("/proc/sys/vm/drop_caches", "3");
    waitpid(owner, NULL, 0);
    return asked;
}

int main(void) {
    int compactions = compaction();
    int pokes = 0;
    for (int i = 0; i < 4; i++) pokes += poke_round();
    int reclaims = lazy_free();
    int kills = oom_kills();
    printf("unseen16: %d compactions, %d pokes, %d reclaims, %d OOM kills\n", compactions, pokes,
           reclaims, kills);
    return 0;
}
