/* A thirty-first workload written after the model, for `activemm capture --program` with
 * `--cpu max --module irqbypass --module kvm --module ccp --module kvm-amd` (QEMU's TCG
 * emulates AMD SVM, so the guest's own KVM runs nested guests), on 2 CPUs or more:
 *  - KVM virtual machines: kvm_create_vm() mmgrab()s the creating task's mm (kvm->mm) and
 *    kvm_destroy_vm(), when the last reference on the VM goes (its fd and every vCPU's fd
 *    closed), mmdrop()s it, after mmu_notifier_unregister() dropped the one its notifier's
 *    registration took;
 *  - VM fds that outlive their creator: inherited across fork() and closed by the child
 *    after the parent exited, passed to an unrelated process over a unix socket
 *    (SCM_RIGHTS), kept open across execve() (FD_CLOEXEC cleared), or closed by exit_files()
 *    of the exiting creator itself, after its exit_mm();
 *  - vCPUs run (KVM_RUN) from a thread on another CPU: a real-mode guest that writes to an
 *    I/O port and halts, its memory a mapping of the creator's mm (the notifier's range);
 *  - VMs created from a thread while siblings exit and exec. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int ncpus;
static volatile long sink;
static const char *self;
static void pin(int cpu) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(cpu % ncpus, &s); sched_setaffinity(0, sizeof(s), &s); }
static void busy(long n) { for (volatile long i = 0; i < n; i++) sink += i; }
static void nap(long us) { struct timespec t = {us / 1000000, (us % 1000000) * 1000}; nanosleep(&t, NULL); }

static int kvm_fd = -1;

/* A VM, optionally with its memory (guest physical 0, 8 KiB) holding a real-mode guest at
 * 0x1000: out %al, $0x10; hlt. Returns the VM fd (FD_CLOEXEC cleared when `keep`). */
static int new_vm(int with_memory, int keep, void **memory) {
    int vm = ioctl(kvm_fd, KVM_CREATE_VM, 0);
    if (vm < 0) { perror("KVM_CREATE_VM"); return -1; }
    if (keep) fcntl(vm, F_SETFD, 0);
    if (with_memory) {
        unsigned char *m = mmap(NULL, 0x2000, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) { perror("mmap"); return vm; }
        const unsigned char code[] = {0xb0, 0x2a, 0xe6, 0x10, 0xf4}; /* mov $42,%al; out %al,$0x10; hlt */
        memcpy(m + 0x1000, code, sizeof(code));
        struct kvm_userspace_memory_region r = {.slot = 0, .guest_phys_addr = 0, .memory_size = 0x2000,
                                                .userspace_addr = (unsigned long)m};
        if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0) perror("KVM_SET_USER_MEMORY_REGION");
        if (memory) *memory = m;
    }
    return vm;
}

/* One vCPU of `vm` run until its guest halts (or a few exits); its fd closed after. */
static int run_vcpu(int vm) {
    int cpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (cpu < 0) { perror("KVM_CREATE_VCPU"); return -1; }
    int size = ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, cpu, 0);
    if (run == MAP_FAILED) { perror("mmap kvm_run"); close(cpu); return -1; }
    struct kvm_sregs s;
    ioctl(cpu, KVM_GET_SREGS, &s);
    s.cs.base = 0; s.cs.selector = 0;
    ioctl(cpu, KVM_SET_SREGS, &s);
    struct kvm_regs r = {.rip = 0x1000, .rflags = 2};
    ioctl(cpu, KVM_SET_REGS, &r);
    int outs = 0, reason = -1;
    for (int i = 0; i < 4; i++) {
        if (ioctl(cpu, KVM_RUN, 0) < 0) { if (errno == EINTR) continue; perror("KVM_RUN"); break; }
        reason = run->exit_reason;
        if (reason == KVM_EXIT_IO) outs++;
        else break;
    }
    munmap(run, size);
    close(cpu);
    return reason == KVM_EXIT_HLT && outs == 1 ? 0 : -1;
}

struct vcpu_arg { int vm; int cpu; int ok; };
static void *vcpu_thread(void *p) {
    struct vcpu_arg *a = p;
    pin(a->cpu);
    a->ok = run_vcpu(a->vm) == 0;
    return NULL;
}

/* 1. A VM made and closed by a process that lives on: never its mm's last reference. */
static void closed_alive(int rounds) {
    for (int i = 0; i < rounds; i++) {
        if (fork() == 0) {
            pin(i);
            int vm = new_vm(i & 1, 0, NULL);
            if (vm >= 0 && (i & 1)) run_vcpu(vm);
            close(vm);
            busy(30000);
            _exit(0);
        }
    }
    while (wait(NULL) > 0) {}
}

/* 2. The VM fd inherited by a child that closes it after its parent (the VM's creator)
 * exited: the child's close destroys the VM and drops the creator's (zombie) mm. */
static void inherited(int rounds) {
    for (int i = 0; i < rounds; i++) {
        if (fork() == 0) {
            pin(i + 1);
            int vm = new_vm(1, 0, NULL);
            if (vm < 0) _exit(1);
            struct vcpu_arg a = {vm, i, 0};
            pthread_t t;
            if (i % 3 == 0 && pthread_create(&t, NULL, vcpu_thread, &a) == 0) pthread_join(t, NULL);
            if (fork() == 0) {
                pin(i);
                nap(3000 + 1000 * (i % 4));
                if (i & 1) busy(50000);
                close(vm);
                busy(20000);
                _exit(0);
            }
            busy(10000 * (i % 3));
            _exit(0);
        }
        if (i % 2) nap(500);
    }
    while (wait(NULL) > 0) {}
}

/* 3. The VM fd passed over a unix socket to an unrelated process (a sibling), which closes
 * it after the creator exited. */
static void passed(int rounds) {
    for (int i = 0; i < rounds; i++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) < 0) { perror("socketpair"); return; }
        if (fork() == 0) { /* receiver */
            close(sv[0]);
            pin(i);
            char b;
            struct iovec io = {&b, 1};
            char ctl[CMSG_SPACE(sizeof(int))];
            struct msghdr m = {.msg_iov = &io, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof(ctl)};
            if (recvmsg(sv[1], &m, 0) == 1) {
                struct cmsghdr *c = CMSG_FIRSTHDR(&m);
                int vm;
                memcpy(&vm, CMSG_DATA(c), sizeof(int));
                nap(2000);
                close(vm); /* (its ioctls would fail: KVM answers only its creator's mm) */
            }
            _exit(0);
        }
        if (fork() == 0) { /* creator */
            close(sv[1]);
            pin(i + 1);
            int vm = new_vm(1, 0, NULL);
            char b = 'v';
            struct iovec io = {&b, 1};
            char ctl[CMSG_SPACE(sizeof(int))];
            memset(ctl, 0, sizeof(ctl));
            struct msghdr m = {.msg_iov = &io, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof(ctl)};
            struct cmsghdr *c = CMSG_FIRSTHDR(&m);
            c->cmsg_level = SOL_SOCKET; c->cmsg_type = SCM_RIGHTS; c->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(c), &vm, sizeof(int));
            if (sendmsg(sv[0], &m, 0) < 0) perror("sendmsg");
            busy(20000);
            _exit(0);
        }
        close(sv[0]);
        close(sv[1]);
    }
    while (wait(NULL) > 0) {}
}

/* 4. A VM fd kept across execve(): the old mm's __mmput runs in exec_mmap(), the VM keeps
 * it until the new image closes the fd (its number passed as an argument). */
static void across_exec(int rounds) {
    for (int i = 0; i < rounds; i++) {
        if (fork() == 0) {
            pin(i);
            int vm = new_vm(i & 1, 1, NULL);
            char arg[16];
            snprintf(arg, sizeof(arg), "%d", vm);
            execl(self, self, "close-later", arg, (char *)NULL);
            _exit(127);
        }
    }
    while (wait(NULL) > 0) {}
}

/* 5. The creator exits holding the VM (and a vCPU run from a thread on another CPU):
 * exit_files(), after exit_mm(), destroys the VM; siblings exit and exec meanwhile. */
static void *sibling(void *arg) {
    long k = (long)arg;
    pin(k);
    busy(20000 + 10000 * k);
    if (k == 2) execl("/bin/true", "true", (char *)NULL);
    return NULL;
}

static void exits_holding(int rounds) {
    for (int i = 0; i < rounds; i++) {
        if (fork() == 0) {
            pin(i);
            pthread_t ts[3];
            for (long k = 0; k < 3; k++) pthread_create(&ts[k], NULL, sibling, (void *)(k + i));
            int vm = new_vm(1, 0, NULL);
            struct vcpu_arg a = {vm, i + 1, 0};
            pthread_t t;
            if (vm >= 0 && pthread_create(&t, NULL, vcpu_thread, &a) == 0) pthread_join(t, NULL);
            if (i % 2) _exit(0); /* group exit with siblings running */
            for (int k = 0; k < 3; k++) pthread_join(ts[k], NULL);
            _exit(0);
        }
    }
    while (wait(NULL) > 0) {}
}

/* 6. A VM made from a thread, its fd closed by another thread after the first exited. */
static int shared_vm = -1;
static void *maker(void *arg) {
    pin((long)arg);
    shared_vm = new_vm(1, 0, NULL);
    return NULL;
}

static void from_thread(int rounds) {
    for (int i = 0; i < rounds; i++) {
        if (fork() == 0) {
            pthread_t t;
            pthread_create(&t, NULL, maker, (void *)(long)(i + 1));
            pthread_join(t, NULL);
            if (shared_vm >= 0) {
                struct vcpu_arg a = {shared_vm, i, 0};
                vcpu_thread(&a);
                if (fork() == 0) { nap(1000); close(shared_vm); _exit(0); }
                close(shared_vm);
            }
            _exit(0);
        }
    }
    while (wait(NULL) > 0) {}
}

int main(int argc, char **argv) {
    self = argv[0][0] == '/' ? argv[0] : "/bin/program";
    ncpus = sysconf(_SC_NPROCESSORS_ONLN);
    if (argc == 3 && strcmp(argv[1], "close-later") == 0) {
        int vm = atoi(argv[2]);
        pin(vm);
        busy(30000);
        nap(1500);
        close(vm);
        return 0;
    }
    kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm_fd < 0) {
        perror("/dev/kvm (capture with --cpu max --module irqbypass --module kvm --module ccp --module kvm-amd)");
        return 1;
    }
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1) scale = 1;
    int vm = new_vm(1, 0, NULL);
    printf("kvm: a vCPU %s\n", run_vcpu(vm) == 0 ? "ran its guest to hlt" : "did not run");
    close(vm);
    for (int s = 0; s < scale; s++) {
        closed_alive(4);
        inherited(6);
        passed(4);
        across_exec(4);
        exits_holding(4);
        from_thread(3);
    }
    printf("kvm: done\n");
    return 0;
}
