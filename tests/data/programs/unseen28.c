/* A twenty-eighth workload written after the model, for `activemm capture --program`, best
 * with an Intel CPU model under TCG (`--cpu Skylake-Client`: Meltdown-affected, so the
 * kernel turns page table isolation on):
 *  - x86 LDTs (modify_ldt()): write_ldt() installs a new LDT with an IPI to every CPU in
 *    mm_cpumask (flush_ldt(), lazy CPUs included), and under PTI maps it into the mm's
 *    page tables and unmaps the old one with a TLB flush of the mm; a fork copies it
 *    (ldt_dup_context()); exit_mmap() starts with arch_exit_mmap(), whose
 *    free_ldt_pgtables() frees the LDT's page tables and flushes the mm on every CPU in
 *    mm_cpumask, lazy ones too, before any VMA is unmapped;
 *  - threads rewriting their LDT while siblings on other CPUs exit, and processes with an
 *    LDT that fork, exec and exit (and are SIGKILLed), their threads still running;
 *  - mremap(MREMAP_DONTUNMAP) moves of a buffer the siblings touch. */
#define _GNU_SOURCE
#include <asm/ldt.h>
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

#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif
#define MB (1L << 20)

static volatile int stop;
static volatile long sink;
static int ncpu = 1, ldt_ok;
static void nap(long us) { struct timespec t = {us / 1000000, (us % 1000000) * 1000}; nanosleep(&t, NULL); }
static void busy(long n) { for (volatile long i = 0; i < n; i++) sink += i; }

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu % ncpu, &set);
    sched_setaffinity(0, sizeof(set), &set);
}

/* One 32-bit data segment in LDT slot `entry` (write_ldt(): a new LDT each time it grows,
 * or a copy with the entry changed). */
static void set_ldt(int entry, unsigned base) {
    struct user_desc d;
    memset(&d, 0, sizeof(d));
    d.entry_number = (unsigned)entry;
    d.base_addr = base;
    d.limit = 0xfff;
    d.seg_32bit = 1;
    d.useable = 1;
    if (syscall(SYS_modify_ldt, 1, &d, sizeof(d)) == 0) ldt_ok = 1;
}

struct shared { char *p; long len; int cpu; int rounds; };

static void *toucher(void *arg) {
    struct shared *s = arg;
    pin(s->cpu);
    for (int k = 0; k < s->rounds && !stop; k++) {
        char *p = s->p;
        for (long i = 0; i < s->len; i += 4096) p[i]++;
        if (k % 3 == 0) set_ldt(k % 16, 0x1000u * (unsigned)k);
        busy(20000);
        nap(400 + 150 * s->cpu);
    }
    return NULL;
}

/* A thread that leaves early, while its siblings run on (its CPU then lazy on the mm). */
static void *leaver(void *arg) {
    struct shared *s = arg;
    pin(s->cpu);
    set_ldt(20, 0x2000);
    busy(50000);
    return NULL;
}

static void worker(int how) {
    long len = 2 * MB;
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) _exit(1);
    memset(p, 1, (size_t)len);
    set_ldt(how % 8, 0x3000);
    struct shared s[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        s[i] = (struct shared){p, len, how + i, 10 + how % 7};
        pthread_create(&t[i], NULL, i == 3 ? leaver : toucher, &s[i]);
    }
    nap(3000);
    /* move the buffer, the old range left mapped and empty */
    char *q = mremap(p, len, len, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, NULL);
    if (q != MAP_FAILED) {
        q[0]++;
        munmap(q, len);
    }
    switch (how % 5) {
    case 0:
        _exit(0); /* exit_group() with the touchers running */
    case 1:
        if (fork() == 0) { /* the child has a copy of the LDT */
            set_ldt(5, 0x5000);
            busy(100000);
            _exit(0);
        }
        _exit(0);
    case 2:
        execl("/proc/self/exe", "program", "child", NULL);
        _exit(1);
    case 3:
        for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
        _exit(0);
    default:
        for (;;) nap(1000); /* killed by the parent */
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "child") == 0) {
        set_ldt(1, 0x1000);
        busy(100000);
        return 0;
    }
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1) scale = 1;
    setvbuf(stdout, NULL, _IONBF, 0);
    ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (ncpu < 1) ncpu = 1;
    set_ldt(0, 0);
    printf("unseen28: %d CPUs, modify_ldt %s\n", ncpu, ldt_ok ? "works" : "refused");
    for (int round = 0; round < 8 * scale; round++) {
        pid_t kids[5];
        for (int i = 0; i < 5; i++) {
            kids[i] = fork();
            if (kids[i] == 0) worker(round + i);
        }
        nap(30000);
        for (int i = 0; i < 5; i++)
            if ((round + i) % 5 == 4) kill(kids[i], SIGKILL);
        while (wait(NULL) > 0) {}
    }
    stop = 1;
    printf("unseen28: done\n");
    return 0;
}
