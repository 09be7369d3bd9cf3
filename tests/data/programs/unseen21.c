/* A twenty-first workload written after the model, for `activemm capture --program` with
 * `--module binder_linux` (Android's binder IPC, /dev/binder; a module on Debian's kernels):
 *  - every process that opens /dev/binder has its mm mmgrab()bed by the driver
 *    (binder_open() -> binder_alloc_init(): alloc->mm = current->mm); the reference outlives
 *    the process: closing the file (binder_release(), at exit in exit_files()) only queues
 *    the proc's teardown, and binder_free_proc() -> binder_alloc_deferred_release()
 *    mmdrop()s it later, in a kworker's binder_deferred_func() or in a task whose temporary
 *    reference on the proc was the last: a zombie mm whose last holder is neither a task
 *    nor a lazy CPU;
 *  - a context manager process (BINDER_SET_CONTEXT_MGR) receiving one-way transactions from
 *    short-lived clients with threads: each transaction's buffer is allocated in the
 *    receiver's mm, its pages installed under mmget_not_zero(alloc->mm) by the sender
 *    (put back with mmput_async(): a kworker's __mmput when it was the last);
 *  - the context manager restarted every round while clients still send to it, so that a
 *    sender may hold the receiver's mm when the receiver exits;
 *  - a binder file inherited by a forked child that outlives its parent: the parent's mm is
 *    held by the file the child closes much later;
 *  - a client thread blocked in BINDER_WRITE_READ (waiting for work) when another thread
 *    calls exit_group(). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/android/binder.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAP_BYTES (128 * 1024)

static void die(const char *what) {
    fprintf(stderr, "unseen21: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void nap(long usec) {
    struct timespec ts = {usec / 1000000, (usec % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

/* A binder file mapped for receiving: binder_open() grabs the mm, mmap() gives the buffer. */
static int binder_open_mapped(void) {
    int fd = open("/dev/binder", O_RDWR);
    if (fd < 0)
        return -1;
    if (mmap(NULL, MAP_BYTES, PROT_READ, MAP_PRIVATE, fd, 0) == MAP_FAILED) {
        close(fd);
        return -1;
    }
    return fd;
}

static int write_read(int fd, void *wbuf, size_t wlen, void *rbuf, size_t rlen, size_t *got) {
    struct binder_write_read bwr = {
        .write_size = wlen,
        .write_buffer = (binder_uintptr_t)(uintptr_t)wbuf,
        .read_size = rlen,
        .read_buffer = (binder_uintptr_t)(uintptr_t)rbuf,
    };
    int r = ioctl(fd, BINDER_WRITE_READ, &bwr);
    if (got)
        *got = r == 0 ? bwr.read_consumed : 0;
    return r;
}

/* -- the context manager: frees every buffer it is sent -------------------------------- */

static void manager(int ready) {
    int fd = binder_open_mapped();
    uint32_t enter = BC_ENTER_LOOPER;
    int tries = 0;
    if (fd < 0)
        die("manager: open /dev/binder");
    /* the previous manager's node goes only when its deferred release has run: retry */
    while (ioctl(fd, BINDER_SET_CONTEXT_MGR, 0) < 0) {
        if (errno != EBUSY || ++tries > 2000)
            die("BINDER_SET_CONTEXT_MGR");
        nap(1000);
    }
    if (write_read(fd, &enter, sizeof enter, NULL, 0, NULL) < 0)
        die("BC_ENTER_LOOPER");
    if (write(ready, "r", 1) != 1)
        die("manager: ready");
    close(ready);
    for (;;) {
        uint8_t rbuf[1024];
        uint8_t wbuf[512];
        size_t got = 0, wlen = 0;
        if (write_read(fd, NULL, 0, rbuf, sizeof rbuf, &got) < 0) {
            if (errno == EINTR)
                continue;
            die("manager: BINDER_WRITE_READ");
        }
        for (size_t at = 0; at + sizeof(uint32_t) <= got;) {
            uint32_t cmd;
            memcpy(&cmd, rbuf + at, sizeof cmd);
            at += sizeof cmd;
            if (cmd == BR_TRANSACTION) {
                struct binder_transaction_data td;
                uint32_t fr = BC_FREE_BUFFER;
                memcpy(&td, rbuf + at, sizeof td);
                if (wlen + sizeof fr + sizeof(binder_uintptr_t) <= sizeof wbuf) {
                    memcpy(wbuf + wlen, &fr, sizeof fr);
                    memcpy(wbuf + wlen + sizeof fr, &td.data.ptr.buffer,
                           sizeof(binder_uintptr_t));
                    wlen += sizeof fr + sizeof(binder_uintptr_t);
                }
            }
            at += _IOC_SIZE(cmd);
        }
        if (wlen && write_read(fd, wbuf, wlen, NULL, 0, NULL) < 0)
            die("manager: BC_FREE_BUFFER");
    }
}

static pid_t start_manager(void) {
    int p[2];
    char c;
    if (pipe(p) < 0)
        die("pipe");
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        close(p[0]);
        manager(p[1]);
        _exit(0);
    }
    close(p[1]);
    if (read(p[0], &c, 1) != 1) {
        fprintf(stderr, "unseen21: the context manager did not start\n");
        exit(1);
    }
    close(p[0]);
    return pid;
}

/* -- clients ----------------------------------------------------------------------------- */

static int send_oneway(int fd, int n) {
    struct __attribute__((packed)) {
        uint32_t cmd;
        struct binder_transaction_data td;
    } w;
    char payload[256];
    int sent = 0;
    memset(payload, 'a', sizeof payload);
    for (int i = 0; i < n; i++) {
        memset(&w, 0, sizeof w);
        w.cmd = BC_TRANSACTION;
        w.td.target.handle = 0;
        w.td.flags = TF_ONE_WAY;
        w.td.data_size = 64 + 64 * (i % 3);
        w.td.data.ptr.buffer = (binder_uintptr_t)(uintptr_t)payload;
        if (write_read(fd, &w, sizeof w, NULL, 0, NULL) == 0)
            sent++;
    }
    return sent;
}

static int client_fd = -1;

static void *client_thread(void *arg) {
    long blocked = (long)arg;
    if (blocked) { /* waits for work that never comes, until exit_group() */
        uint8_t rbuf[256];
        uint32_t enter = BC_REGISTER_LOOPER;
        size_t got;
        write_read(client_fd, &enter, sizeof enter, NULL, 0, NULL);
        for (;;)
            write_read(client_fd, NULL, 0, rbuf, sizeof rbuf, &got);
    }
    send_oneway(client_fd, 3);
    return NULL;
}

/* A process with threads: opens binder (its mm grabbed), sends, and exits; the last
 * reference on its mm is dropped by a kworker's binder_deferred_func(), later. */
static void client(int with_blocked) {
    pthread_t t[3];
    int n = 0;
    client_fd = binder_open_mapped();
    if (client_fd < 0)
        _exit(2);
    for (long i = 0; i < 2; i++)
        if (pthread_create(&t[n], NULL, client_thread, (void *)0L) == 0)
            n++;
    if (with_blocked && pthread_create(&t[n], NULL, client_thread, (void *)1L) == 0)
        nap(2000); /* not joined: exit() takes it down in its ioctl */
    send_oneway(client_fd, 2);
    for (int i = 0; i < 2 && i < n; i++)
        pthread_join(t[i], NULL);
    exit(0); /* exit_group() */
}

/* The parent opens binder and forks; the child keeps the file and outlives the parent,
 * then execs or closes it: the parent's mm lives as long as the file. */
static void inheritance(int round) {
    pid_t mid = fork();
    if (mid != 0) {
        if (mid > 0)
            waitpid(mid, NULL, 0);
        return;
    }
    int fd = binder_open_mapped();
    if (fd < 0)
        _exit(2);
    send_oneway(fd, 1);
    pid_t heir = fork();
    if (heir == 0) {
        nap(5000 + 1000 * (round % 4)); /* the parent exits meanwhile */
        send_oneway(fd, 1);             /* a transaction on the dead parent's proc */
        if (round % 2)
            close(fd);
        else
            execl("/bin/true", "true", (char *)NULL); /* exec keeps the file, then exit */
        _exit(0);
    }
    _exit(0); /* the mm stays held by binder until the heir lets the file go */
}

int main(int argc, char **argv) {
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    int rounds = 6 * (scale > 0 ? scale : 1);
    long clients = 0, restarts = 0;
    pid_t mgr;

    if (access("/dev/binder", R_OK | W_OK) != 0)
        die("/dev/binder (capture with --module binder_linux)");
    mgr = start_manager();
    for (int r = 0; r < rounds; r++) {
        pid_t kids[4];
        for (int c = 0; c < 4; c++) {
            kids[c] = fork();
            if (kids[c] == 0)
                client(c == 3);
            clients += kids[c] > 0;
        }
        if (r % 2 == 1) { /* the manager goes while the clients may still send to it */
            kill(mgr, SIGKILL);
            waitpid(mgr, NULL, 0);
            mgr = start_manager();
            restarts++;
        }
        inheritance(r);
        for (int c = 0; c < 4; c++)
            if (kids[c] > 0)
                waitpid(kids[c], NULL, 0);
        while (waitpid(-1, NULL, WNOHANG) > 0)
            ;
        nap(10000);
    }
    nap(30000); /* the heirs' last closes and the deferred releases */
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
    kill(mgr, SIGKILL);
    waitpid(mgr, NULL, 0);
    nap(20000);
    printf("binder: %d rounds, %ld clients, %ld manager restarts\n", rounds, clients, restarts);
    return 0;
}
