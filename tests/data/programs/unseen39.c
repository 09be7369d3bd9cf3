/* A thirty-ninth workload written after the model, for `activemm capture --program`, on 2
 * CPUs or more: vfork() in the shapes no program before took.
 *  - nested vfork chains, three deep: each child vforks the next while its own parent waits
 *    in vfork wait on the same mm (mm_users counts four tasks on one address space), the
 *    deepest execs or _exits, and each level then execs or _exits in turn;
 *  - a vfork parent thread killed while it waits: a sibling thread calls exit_group() (or
 *    the process gets SIGKILL from outside) while the vfork child still runs on the mm, the
 *    child then execs or exits last, so the mm's last mm_users reference is the child's;
 *  - clone(CLONE_VM | CLONE_VFORK | CLONE_THREAD | CLONE_SIGHAND): a thread the parent waits
 *    for as for a vfork child, which exits without exec (exit_mm of a thread, mm_release()
 *    completing the parent's vfork_done);
 *  - vfork from a signal handler running on an alternate stack, the child exec'ing.
 * Each part counts what it did and prints it. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile int stop;
static int ncpu = 1;
static void nap(long us) { struct timespec t = {us / 1000000, (us % 1000000) * 1000}; nanosleep(&t, NULL); }
static void spin_us(long us) {
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    do clock_gettime(CLOCK_MONOTONIC, &b);
    while ((b.tv_sec - a.tv_sec) * 1000000L + (b.tv_nsec - a.tv_nsec) / 1000 < us);
}

static void leaf(int how) {
    if (how == 0) execl("/bin/true", "true", NULL);
    if (how == 1) execl("/bin/program", "program", "--leaf", NULL);
    _exit(0);
}

/* A vfork chain `depth` deep below the calling process. */
static void chain(int depth, int how) {
    pid_t p = vfork();
    if (p == 0) {
        if (depth > 1) chain(depth - 1, (how + 1) % 3);
        leaf(how);
    }
    if (p > 0) waitpid(p, NULL, 0);
}

static void chains_part(int rounds) {
    int done = 0;
    for (int r = 0; r < rounds; r++) {
        pid_t p = fork();
        if (p == 0) { chain(3, r % 3); leaf(r % 2); }
        waitpid(p, NULL, 0);
        done++;
    }
    printf("vfork chains: %d, three deep\n", done);
}

static void *killer(void *arg) {
    nap((long)arg);
    syscall(SYS_exit_group, 0);
    return NULL;
}

static void *spinner(void *arg) {
    (void)arg;
    while (!stop) spin_us(200), sched_yield();
    return NULL;
}

/* The vfork parent thread dies while its child runs on the mm. */
static void killed_parent_part(int rounds) {
    int done = 0;
    for (int r = 0; r < rounds; r++) {
        pid_t p = fork();
        if (p == 0) {
            pthread_t k, s;
            pthread_create(&s, NULL, spinner, NULL);
            if (r % 2 == 0) pthread_create(&k, NULL, killer, (void *)(long)(300 + r * 50));
            pid_t c = vfork();
            if (c == 0) {
                spin_us(1500 + (r % 4) * 500);  /* outlive the parent's group */
                if (r % 3 == 0) _exit(0);
                execl("/bin/true", "true", NULL);
                _exit(1);
            }
            _exit(0);
        }
        if (r % 2 == 1) { nap(400 + r * 30); kill(p, SIGKILL); }
        waitpid(p, NULL, 0);
        done++;
    }
    nap(20000);
    while (waitpid(-1, NULL, WNOHANG) > 0) {}
    printf("vfork parents killed while waiting: %d\n", done);
}

static int vthread_fn(void *arg) {
    (void)arg;
    spin_us(300);
    syscall(SYS_exit, 0);  /* this thread only */
    return 0;
}

static void vfork_thread_part(int rounds) {
    int done = 0;
    size_t sz = 64 * 1024;
    for (int r = 0; r < rounds; r++) {
        char *stack = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
        if (stack == MAP_FAILED) break;
        int t = clone(vthread_fn, stack + sz, CLONE_VM | CLONE_VFORK | CLONE_THREAD | CLONE_SIGHAND | CLONE_FS | CLONE_FILES, NULL);
        if (t > 0) done++;
        nap(200);
        munmap(stack, sz);
    }
    printf("CLONE_VFORK threads: %d\n", done);
}

static volatile int handled;
static void on_usr1(int sig) {
    (void)sig;
    pid_t c = vfork();
    if (c == 0) { execl("/bin/true", "true", NULL); _exit(1); }
    if (c > 0) waitpid(c, NULL, 0);
    handled++;
}

static void handler_part(int rounds) {
    stack_t ss = {.ss_sp = malloc(1 << 16), .ss_size = 1 << 16};
    sigaltstack(&ss, NULL);
    struct sigaction sa = {.sa_handler = on_usr1, .sa_flags = SA_ONSTACK};
    sigaction(SIGUSR1, &sa, NULL);
    for (int r = 0; r < rounds; r++) { raise(SIGUSR1); if (r % 2) sched_yield(); }
    printf("vforks from a signal handler: %d\n", handled);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--leaf") == 0) return 0;
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1) scale = 1;
    ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    setvbuf(stdout, NULL, _IONBF, 0);
    pthread_t s[4];
    int n = ncpu < 4 ? ncpu - 1 : 3;
    for (int i = 0; i < n; i++) pthread_create(&s[i], NULL, spinner, NULL);
    chains_part(12 * scale);
    killed_parent_part(12 * scale);
    vfork_thread_part(10 * scale);
    handler_part(10 * scale);
    stop = 1;
    for (int i = 0; i < n; i++) pthread_join(s[i], NULL);
    printf("done\n");
    return 0;
}
