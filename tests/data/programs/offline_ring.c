/* A CPU taken offline while its idle task lazily borrows a zombie mm that an io_uring ring
 * still holds (ctx->mm_account, mmgrab()ed at io_uring_setup): for `activemm capture
 * --program`, on 2 or more CPUs.
 *
 * Each round: a child sets up a ring, forks a grandchild that inherits the ring's file,
 * moves to the last CPU and exits there, so that the CPU's idle task borrows the child's
 * mm (nothing else runs there); the last CPU goes offline (idle_task_exit() with that mm, then
 * finish_cpu() drops the idle task's reference in the hotplug teardown on another CPU), and
 * only then does the grandchild close the ring: io_ring_ctx_free(), in a kworker, drops
 * the last reference, long after finish_cpu() ran and before the CPU comes back. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/io_uring.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void nap(long us) { struct timespec t = {us / 1000000, (us % 1000000) * 1000}; nanosleep(&t, NULL); }

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof(set), &set);
}

static void cpu_online(int cpu, int on) {
    char path[64];
    snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu%d/online", cpu);
    int fd = open(path, O_WRONLY);
    if (fd < 0) return;
    if (write(fd, on ? "1" : "0", 1) < 0) perror(path);
    close(fd);
}

int main(void) {
    int ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (ncpu < 2) {
        puts("offline_ring: needs 2 CPUs or more");
        return 0;
    }
    int last = ncpu - 1;
    pin(0);
    for (int round = 0; round < 6; round++) {
        int go[2], done[2];
        if (pipe(go) || pipe(done)) return 1;
        pid_t child = fork();
        if (child == 0) {
            struct io_uring_params p;
            memset(&p, 0, sizeof(p));
            int ring = (int)syscall(SYS_io_uring_setup, 4, &p);
            pid_t grandchild = fork();  /* on CPU 0, like its parent so far */
            if (grandchild == 0) {  /* holds the ring's file until told to close it */
                char c;
                close(go[1]);
                if (read(go[0], &c, 1) < 0) c = 0;
                if (ring >= 0) close(ring);
                if (write(done[1], "d", 1) < 0) _exit(1);
                _exit(0);
            }
            pin(last);  /* alone there: its last switch leaves the CPU idle, borrowing its mm */
            for (volatile long i = 0; i < 200000; i++) {
            }
            _exit(ring < 0);
        }
        close(go[0]);
        close(done[1]);
        waitpid(child, NULL, 0);
        nap(20000);            /* the last CPU idles on the child's zombie mm */
        cpu_online(last, 0);   /* idle_task_exit(), then finish_cpu() on another CPU */
        nap(20000);
        if (write(go[1], "g", 1) < 0) return 1;  /* the ring goes: io_ring_ctx_free() */
        char c;
        if (read(done[0], &c, 1) < 0) c = 0;
        nap(50000);            /* the kworker frees the ring (and the mm) */
        cpu_online(last, 1);
        close(go[1]);
        close(done[0]);
        while (waitpid(-1, NULL, WNOHANG) > 0) {
        }
        nap(20000);
    }
    puts("offline_ring: done");
    return 0;
}
