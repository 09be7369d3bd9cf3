/* EFI runtime service calls, for `activemm capture --program` with `--firmware uefi
 * --module efivarfs` (OVMF: Debian's ovmf package):
 *  - every EFI variable read through efivarfs (GetVariable, GetNextVariableName) and the
 *    filesystem's statfs() (QueryVariableInfo), from short-lived processes with a thread, on
 *    every CPU: each call is queued to efi_rts_wq, whose kworker runs it between
 *    efi_enter_mm() and efi_leave_mm() (x86 before 6.15: current->active_mm is efi_mm for
 *    the call, switch_mm() there and back, no leave_mm() first), lazy on whatever mm its
 *    CPU last ran, often one whose process has just exited;
 *  - readers that exit while their reads are queued (SIGKILL from the parent).
 * Without EFI (no --firmware uefi) it says so and exits 0 having done nothing. */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define VARS "/sys/firmware/efi/efivars"

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof(set), &set);
}

static void nap(long us) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

/* Reads every variable once (and statfs()s the filesystem): how many reads succeeded. */
static int read_all(void) {
    struct statfs sf;
    statfs(VARS, &sf);
    DIR *d = opendir(VARS);
    if (d == NULL) return 0;
    char buf[4096], path[512];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof(path), VARS "/%s", e->d_name);
        int fd = open(path, O_RDONLY);
        if (fd < 0) continue;
        if (read(fd, buf, sizeof(buf)) > 0) n++;
        close(fd);
    }
    closedir(d);
    return n;
}

static void *spin(void *arg) {
    (void)arg;
    for (volatile long i = 0; i < 300000; i++) {
    }
    return NULL;
}

int main(void) {
    mkdir(VARS, 0755);
    if (mount("efivarfs", VARS, "efivarfs", 0, NULL) != 0 || access(VARS, R_OK) != 0) {
        puts("efivars: no EFI variables here (boot with --firmware uefi, --module efivarfs)");
        return 0;
    }
    int ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    int reads = 0, killed = 0;
    for (int round = 0; round < 24; round++) {
        int status[2];
        if (pipe(status) != 0) return 1;
        pid_t pid = fork();
        if (pid == 0) {
            close(status[0]);
            pin(round % ncpu);
            pthread_t t;
            pthread_create(&t, NULL, spin, NULL);
            int n = read_all();
            if (write(status[1], &n, sizeof(n)) < 0) _exit(1);
            if (round % 3 == 0) pthread_join(t, NULL);
            _exit(0);
        }
        close(status[1]);
        if (round % 4 == 3) {  /* killed while its reads are queued to the kworker */
            nap(2000);
            kill(pid, SIGKILL);
            killed++;
        }
        int n = 0;
        if (read(status[0], &n, sizeof(n)) == sizeof(n)) reads += n;
        close(status[0]);
        waitpid(pid, NULL, 0);
    }
    printf("efivars: %d variable reads, %d readers killed\n", reads, killed);
    return 0;
}
