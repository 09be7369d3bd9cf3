/* A thirty-eighth workload written after the model, for `activemm capture --program` with
 * `--module binfmt_misc`, on 2 CPUs or more:
 *  - binfmt_misc: a handler registered for a magic prefix, whose interpreter is this very
 *    program (load_misc_binary() opens it and goes round search_binary_handler() again:
 *    one exec_mmap() for two binary formats), with the "O" (open-binary), "C"
 *    (credentials) and "F" (interpreter opened at registration) flags, from processes,
 *    from a non-leader thread while siblings spin, and from vfork() children; a handler
 *    whose interpreter does not exist (the exec fails after bprm_mm_init(): a new mm born
 *    and freed in the task) and one unregistered and registered again while execs run;
 *  - execs with a huge argument list (about 1 MiB in thousands of strings): copy_strings()
 *    fills the new mm for a long time, where a preemption finds the task with its old mm
 *    and a second, not yet installed one;
 *  - core-scheduling cookies (prctl(PR_SCHED_CORE)) shared between threads and processes
 *    that fork, exec and exit (only an SMT topology makes the core scheduler force idle;
 *    elsewhere the cookies are kept and do nothing).
 * Without binfmt_misc it says so and runs the other parts. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef PR_SCHED_CORE
#define PR_SCHED_CORE 62
#define PR_SCHED_CORE_CREATE 1
#define PR_SCHED_CORE_SHARE_TO 2
#endif
#define BM "/proc/sys/fs/binfmt_misc/"

static int ncpu = 1;
static volatile int stop;
static void nap(long us) { struct timespec t = {us / 1000000, (us % 1000000) * 1000}; nanosleep(&t, NULL); }

static int put(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -errno;
    ssize_t n = write(fd, text, strlen(text));
    int err = n < 0 ? -errno : 0;
    close(fd);
    return err;
}

/* A file starting with the handler's magic: executable only through binfmt_misc. */
static void script(const char *path, const char *magic) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0755);
    if (fd < 0) return;
    if (write(fd, magic, strlen(magic)) < 0 || write(fd, "\npayload\n", 9) < 0) {}
    close(fd);
}

static void *spin(void *arg) {
    (void)arg;
    while (!stop) { for (volatile int i = 0; i < 20000; i++) {} sched_yield(); }
    return NULL;
}

static void reap_all(void) { while (waitpid(-1, NULL, __WALL) > 0) {} }

/* The interpreter side: this program run by binfmt_misc as `program --interp FILE...`. */
static int interp(int argc, char **argv) {
    long sum = 0;
    for (int i = 0; i < argc; i++) sum += (long)strlen(argv[i]);
    if (sum % 7 == 3) sched_yield();
    if (argc > 3 && fork() == 0) _exit(0);  /* a child of the interpreted run */
    wait(NULL);
    return 0;
}

static void exec_magic(const char *file) {
    char *av[] = {(char *)file, "a", "b", NULL};
    execv(file, av);
    _exit(127);
}

struct th { const char *file; int exec; };

static void *thread_exec(void *arg) {
    struct th *t = arg;
    nap(200 + rand() % 800);
    if (t->exec) exec_magic(t->file);
    return NULL;
}

/* A threaded process whose non-leader thread execs the magic file (de_thread() first). */
static void threaded_exec(const char *file) {
    pid_t p = fork();
    if (p != 0) return;
    pthread_t s[4], e;
    int n = ncpu < 4 ? ncpu : 4;
    for (int i = 0; i < n; i++) pthread_create(&s[i], NULL, spin, NULL);
    struct th t = {file, 1};
    pthread_create(&e, NULL, thread_exec, &t);
    pthread_join(e, NULL);
    _exit(0);
}

static void binfmt_part(int rounds) {
    if (access(BM "register", W_OK) != 0) {
        mkdir("/proc/sys/fs/binfmt_misc", 0755);
        mount("binfmt_misc", "/proc/sys/fs/binfmt_misc", "binfmt_misc", 0, NULL);
    }
    if (access(BM "register", W_OK) != 0) {
        printf("binfmt_misc: not available (%s), skipped\n", strerror(errno));
        return;
    }
    /* :name:type:offset:magic:mask:interpreter:flags */
    const char *regs[] = {
        ":amA:M::AMMA::/bin/program:",
        ":amO:M::AMMO::/bin/program:O",
        ":amC:M::AMMC::/bin/program:OC",
        ":amF:M::AMMF::/bin/program:F",
        ":amX:M::AMMX::/bin/no-such-interpreter:",
    };
    int ok = 0;
    for (unsigned i = 0; i < sizeof regs / sizeof *regs; i++) {
        int err = put(BM "register", regs[i]);
        if (err == 0) ok++;
        else printf("binfmt_misc: register %s: %s\n", regs[i], strerror(-err));
    }
    const char *files[] = {"/tmp/m.A", "/tmp/m.O", "/tmp/m.C", "/tmp/m.F", "/tmp/m.X"};
    const char *magic[] = {"AMMA", "AMMO", "AMMC", "AMMF", "AMMX"};
    for (int i = 0; i < 5; i++) script(files[i], magic[i]);
    int execs = 0, failed = 0, rereg = 0;
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < 5; i++) {
            pid_t p = fork();
            if (p == 0) exec_magic(files[i]);
            execs++;
            if (i == r % 5) {
                pid_t v = vfork();
                if (v == 0) exec_magic(files[i]);
                execs++;
            }
        }
        threaded_exec(files[r % 4]);
        execs++;
        if (r % 3 == 2) {  /* unregister amA and register it again while execs run */
            pid_t p = fork();
            if (p == 0) { for (int k = 0; k < 4; k++) { pid_t c = fork(); if (c == 0) exec_magic(files[0]); } reap_all(); _exit(0); }
            if (put(BM "amA", "-1") == 0 && put(BM "register", regs[0]) == 0) rereg++;
        }
        int st;
        while (waitpid(-1, &st, __WALL) > 0)
            if (WIFEXITED(st) && WEXITSTATUS(st) == 127) failed++;
    }
    for (int i = 0; i < 5; i++) put(i == 0 ? BM "amA" : i == 1 ? BM "amO" : i == 2 ? BM "amC" : i == 3 ? BM "amF" : BM "amX", "-1");
    printf("binfmt_misc: %d handlers, %d execs (%d failed), %d re-registrations\n", ok, execs, failed, rereg);
}

/* execs whose argument list is about 1 MiB (copy_strings() into the new mm). */
static void big_argv_part(int rounds) {
    int n = 4000;
    char **av = calloc(n + 3, sizeof *av);
    av[0] = "/bin/program";
    av[1] = "--interp";
    for (int i = 2; i < n + 2; i++) {
        av[i] = malloc(256);
        memset(av[i], 'a' + i % 26, 255);
        av[i][255] = 0;
    }
    int done = 0;
    for (int r = 0; r < rounds; r++) {
        pid_t p = fork();
        if (p == 0) {
            if (r % 2) {  /* from a non-leader thread with spinning siblings */
                pthread_t s[2];
                for (int i = 0; i < 2; i++) pthread_create(&s[i], NULL, spin, NULL);
            }
            execv("/bin/program", av);
            _exit(127);
        }
        if (r % 3 == 0) {  /* and a vfork child doing the same: the parent waits */
            pid_t v = vfork();
            if (v == 0) { execv("/bin/program", av); _exit(127); }
        }
        done++;
        reap_all();
    }
    printf("big argv: %d execs of %d strings\n", done, n);
}

static void *core_thread(void *arg) {
    long k = (long)arg;
    if (k % 2 == 0) prctl(PR_SCHED_CORE, PR_SCHED_CORE_CREATE, 0, 0 /* PIDTYPE_PID */, 0);
    for (int i = 0; i < 200 && !stop; i++) {
        for (volatile int j = 0; j < 5000; j++) {}
        if (i % 50 == 0) { pid_t c = fork(); if (c == 0) { execl("/bin/true", "true", NULL); _exit(0); } waitpid(c, NULL, 0); }
        sched_yield();
    }
    return NULL;
}

static void core_part(int rounds) {
    int cookies = 0;
    for (int r = 0; r < rounds; r++) {
        pid_t p = fork();
        if (p == 0) {
            if (prctl(PR_SCHED_CORE, PR_SCHED_CORE_CREATE, 0, 1 /* PIDTYPE_TGID */, 0) != 0) _exit(3);
            pthread_t t[4];
            for (long i = 0; i < 4; i++) pthread_create(&t[i], NULL, core_thread, (void *)i);
            for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
            _exit(0);
        }
        int st;
        waitpid(p, &st, 0);
        if (WIFEXITED(st) && WEXITSTATUS(st) == 0) cookies++;
    }
    printf("core scheduling: %d of %d processes with a cookie\n", cookies, rounds);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--interp") == 0) return interp(argc, argv);
    if (argc > 1 && strncmp(argv[1], "/tmp/m.", 7) == 0) return interp(argc, argv);
    ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1) scale = 1;
    srand(38);
    setvbuf(stdout, NULL, _IONBF, 0);
    binfmt_part(6 * scale);
    big_argv_part(6 * scale);
    core_part(3 * scale);
    stop = 1;
    printf("done\n");
    return 0;
}
