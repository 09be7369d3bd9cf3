/* A fifty-third workload written after the model, for `activemm capture --program` with
 * `--firmware uefi --module efivarfs` (OVMF: Debian's ovmf package), best on a kernel from
 * 6.15 on, where an EFI runtime call and a text_poke() are the same use_temporary_mm() pair
 * of CR3 loads (efi_mm or the poking mm, then back): a seeded random mix of EFI calls and
 * static keys flipped, from kernel threads as well as from user tasks, while processes fork,
 * exec and exit. One worker per CPU takes 40 steps (x the scale given as the first argument,
 * the seed as the second), every step one of:
 *  - a child with a thread reads a few EFI variables (efivarfs: GetVariable, queued to
 *    efi_rts_wq, whose unbound kworker makes the call), killed now and then while it waits;
 *  - a UDP socket with SO_TIMESTAMP set, held a little and closed: net_enable_timestamp()
 *    and net_disable_timestamp() flip netstamp_needed_key from netstamp_work, that is from
 *    a per-CPU kworker (system_wq), when the count of such sockets leaves or reaches zero;
 *  - a perf software event counting comm events opened and closed: the first one flips
 *    perf_sched_events on from the opening task, its close off a second later from
 *    perf_sched_work, a kworker's delayed work;
 *  - kernel.sched_schedstats written 1 then 0 (a static key flipped by the writing task);
 *  - a child whose threads touch memory and which then execs, forks, vforks or exits;
 *  - yield or sleep a little.
 * Without EFI it says so and does the rest. The same seed gives the same choices (not the
 * same timing). Each worker prints what it did. */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <linux/perf_event.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define VARS "/sys/firmware/efi/efivars"

static int ncpu = 1, efi = 0;
static uint64_t rng;
static int worker_id;
static int efi_reads, killed, stamps, perfs, schedstats, children, vforks;
static char names[64][256];
static int nnames;

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

static int put(const char *path, const char *value) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    ssize_t n = write(fd, value, strlen(value));
    close(fd);
    return n < 0 ? -1 : 0;
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
    if (r % 3 == 0) spin_us(100 + r % 900);
    else usleep(100 + r % 2000);
    return NULL;
}

/* The names of the EFI variables, read once by the parent. */
static void list_vars(void) {
    DIR *d = opendir(VARS);
    if (d == NULL) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && nnames < 64) {
        if (e->d_name[0] == '.') continue;
        snprintf(names[nnames++], sizeof names[0], "%s", e->d_name);
    }
    closedir(d);
}

static void step_efi(uint32_t r) {
    if (!efi || nnames == 0) return;
    pid_t c = fork();
    if (c == 0) {
        pthread_t t;
        int th = pthread_create(&t, NULL, busy_thread, (void *)(uintptr_t)(r >> 3)) == 0;
        char buf[4096], path[320];
        for (int i = 0; i < 2 + (int)(r % 6); i++) {
            snprintf(path, sizeof path, VARS "/%s", names[(r >> (i + 2)) % (uint32_t)nnames]);
            int fd = open(path, O_RDONLY);
            if (fd < 0) continue;
            if (read(fd, buf, sizeof buf) < 0) {}
            close(fd);
        }
        if (th && (r & 8)) pthread_join(t, NULL);
        _exit(0);
    }
    if (c > 0) {
        efi_reads++;
        if ((r >> 4) % 4 == 0) { /* killed while a read waits on the kworker */
            usleep(500 + (r >> 6) % 3000);
            kill(c, SIGKILL);
            killed++;
        }
        if (r & 1) waitpid(c, NULL, 0);
    }
}

static void step_stamp(uint32_t r) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    if (s < 0) return;
    int on = 1;
    if (setsockopt(s, SOL_SOCKET, SO_TIMESTAMP, &on, sizeof on) == 0) stamps++;
    if (r % 3 == 0) spin_us(200 + r % 2000);
    else usleep(500 + r % 20000);
    if (r & 4) {
        on = 0;
        setsockopt(s, SOL_SOCKET, SO_TIMESTAMP, &on, sizeof on);
    }
    close(s);
}

static void step_perf(uint32_t r) {
    struct perf_event_attr a;
    memset(&a, 0, sizeof a);
    a.size = sizeof a;
    a.type = PERF_TYPE_SOFTWARE;
    a.config = PERF_COUNT_SW_DUMMY;
    a.comm = 1;
    a.disabled = 1;
    int fd = (int)syscall(SYS_perf_event_open, &a, 0, -1, -1, 0);
    if (fd < 0) return;
    perfs++;
    usleep(200 + r % 5000);
    close(fd);
}

static void step_schedstats(uint32_t r) {
    if (put("/proc/sys/kernel/sched_schedstats", "1") != 0) return;
    schedstats++;
    usleep(100 + r % 3000);
    put("/proc/sys/kernel/sched_schedstats", "0");
}

static void step_child(uint32_t r) {
    pid_t c = fork();
    if (c == 0) {
        touch(r);
        pthread_t t[2];
        int n = 1 + (int)(r % 2);
        for (int i = 0; i < n; i++)
            if (pthread_create(&t[i], NULL, busy_thread, (void *)(uintptr_t)(r >> (i + 1)))) n = i;
        switch ((r >> 5) % 4) {
        case 0: execl("/bin/program", "program", "--leaf", NULL); break;
        case 1:
            if (fork() == 0) {
                touch(r >> 3);
                _exit(0);
            }
            break;
        case 2: spin_us(300 + (r >> 8) % 3000); break;
        default: usleep(300 + (r >> 8) % 4000); break;
        }
        for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
        _exit(0);
    }
    if (c > 0) {
        children++;
        if (r & 1) waitpid(c, NULL, 0);
    }
}

static void step_vfork(uint32_t r) {
    touch(r);
    pid_t c = vfork();
    if (c == 0) {
        if (r & 1) execl("/bin/program", "program", "--leaf", NULL);
        _exit(0);
    }
    if (c > 0) {
        vforks++;
        waitpid(c, NULL, 0);
    }
}

static void step(void) {
    uint32_t r = next();
    switch (next() % 10) {
    case 0:
    case 1: step_efi(r); break;
    case 2:
    case 3: step_stamp(r); break;
    case 4: step_perf(r); break;
    case 5: step_schedstats(r); break;
    case 6: step_child(r); break;
    case 7: step_vfork(r); break;
    case 8: while (waitpid(-1, NULL, WNOHANG) > 0) {} break;
    default:
        if (r % 2) sched_yield();
        else usleep(r % 600);
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--leaf") == 0) return 0;
    ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    setvbuf(stdout, NULL, _IONBF, 0);
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1) scale = 1;
    rng = argc > 2 ? strtoull(argv[2], NULL, 10) | 1 : 53;
    unsigned long long seed = (unsigned long long)rng;
    mkdir(VARS, 0755);
    efi = mount("efivarfs", VARS, "efivarfs", 0, NULL) == 0 && access(VARS, R_OK) == 0;
    if (efi) list_vars();
    else puts("unseen53: no EFI variables here (boot with --firmware uefi, --module efivarfs)");
    int n = ncpu < 64 ? ncpu : 64;
    pid_t w[64];
    for (int i = 0; i < n; i++) {
        next();
        w[i] = fork();
        if (w[i] == 0) {
            rng = rng * 2654435761u + (uint64_t)i * 40503u + 1;
            worker_id = i;
            for (int k = 0; k < 40 * scale; k++) step();
            while (waitpid(-1, NULL, 0) > 0) {}
            printf("worker %d: %d EFI readers (%d killed), %d timestamp sockets, %d perf events,"
                   " %d schedstats flips, %d children, %d vforks\n", worker_id, efi_reads, killed,
                   stamps, perfs, schedstats, children, vforks);
            _exit(0);
        }
    }
    for (int i = 0; i < n; i++) waitpid(w[i], NULL, 0);
    printf("seed %llu, scale %d, %d workers, %d EFI variables: done\n", seed, scale, n, nnames);
    return 0;
}
