/* /proc/PID files that hold their process's mm: proc_mem_open() mmgrab()s it when the file
 * is opened (mem, environ, auxv, maps, smaps, smaps_rollup, pagemap) and the release
 * mmdrop()s it. Half the files are closed while the process lives, half only after it
 * exited and was reaped, so that the last reference on its mm is the file's. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int ncpus;
static volatile long sink;
static void pin(int cpu) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(cpu % ncpus, &s); sched_setaffinity(0, sizeof(s), &s); }
static void busy(long n) { for (volatile long i = 0; i < n; i++) sink += i; }
static void nap(long us) { struct timespec t = {0, us * 1000}; nanosleep(&t, NULL); }

static const char *files[] = {"maps", "environ", "smaps_rollup", "mem", "smaps", "auxv", "pagemap"};

int main(void) {
    ncpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
    for (int round = 0; round < 14; round++) {
        int p[2];
        if (pipe(p)) return 1;
        pid_t c = fork();
        if (c == 0) {
            char x;
            pin(round + 1);
            close(p[1]);
            read(p[0], &x, 1);  /* until the parent opened its files */
            busy(20000);
            _exit(0);
        }
        close(p[0]);
        pin(round);
        int fds[7], n = 0;
        char path[64], buf[512];
        for (int k = 0; k < 7; k++) {
            snprintf(path, sizeof path, "/proc/%d/%s", (int)c, files[(k + round) % 7]);
            fds[n] = open(path, O_RDONLY);
            if (fds[n] >= 0) n++;
        }
        write(p[1], "x", 1);
        close(p[1]);
        if (round % 2 == 0) {  /* close while it lives */
            for (int k = 0; k < n; k++) { read(fds[k], buf, sizeof buf); close(fds[k]); }
            waitpid(c, NULL, 0);
        } else {  /* the files outlive the process */
            waitpid(c, NULL, 0);
            /* a user task on the CPU that held the exited mm lazily lets go of it there */
            pid_t f = fork();
            if (f == 0) { pin(round + 1); busy(5000); _exit(0); }
            waitpid(f, NULL, 0);
            nap(2000);
            for (int k = 0; k < n; k++) { read(fds[k], buf, sizeof buf); close(fds[k]); }
        }
    }
    printf("procfiles done\n");
    return 0;
}
