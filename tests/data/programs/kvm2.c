/* A second KVM program, written after the KVM markers to try them (the first is unseen31.c),
 * for `activemm capture --program` with `--cpu max --module irqbypass --module kvm --module
 * ccp --module kvm-amd`:
 *  - vCPUs looping in their guest (jmp .) on every CPU while their process is SIGKILLed;
 *  - a VM made by a vfork() child (kvm->mm is the parent's), closed at the child's _exit();
 *  - a VM made by a clone(CLONE_VM) process of its own, its fd closed by a forked child
 *    after both exited;
 *  - a VM fd spread over a fork tree whose last holder execs (FD_CLOEXEC closes it there);
 *  - guest memory unmapped while a vCPU runs (the MMU notifier invalidates its range). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int ncpus, kvm_fd;
static volatile long sink;
static void pin(int cpu) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(cpu % ncpus, &s); sched_setaffinity(0, sizeof(s), &s); }
static void busy(long n) { for (volatile long i = 0; i < n; i++) sink += i; }
static void nap(long us) { struct timespec t = {us / 1000000, (us % 1000000) * 1000}; nanosleep(&t, NULL); }

static unsigned char *mem_of(int vm, int loop) {
    unsigned char *m = mmap(NULL, 0x2000, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return NULL;
    const unsigned char halt[] = {0xf4}, spin[] = {0xeb, 0xfe}; /* hlt / jmp . */
    if (loop) memcpy(m + 0x1000, spin, 2); else memcpy(m + 0x1000, halt, 1);
    struct kvm_userspace_memory_region r = {.slot = 0, .guest_phys_addr = 0, .memory_size = 0x2000,
                                            .userspace_addr = (unsigned long)m};
    ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r);
    return m;
}

static int vcpu(int vm, int id) {
    int c = ioctl(vm, KVM_CREATE_VCPU, id);
    if (c < 0) return -1;
    struct kvm_sregs s;
    ioctl(c, KVM_GET_SREGS, &s);
    s.cs.base = 0; s.cs.selector = 0;
    ioctl(c, KVM_SET_SREGS, &s);
    struct kvm_regs r = {.rip = 0x1000, .rflags = 2};
    ioctl(c, KVM_SET_REGS, &r);
    return c;
}

struct runner { int vm, id; };
static void *run_forever(void *p) {
    struct runner *r = p;
    pin(r->id);
    int c = vcpu(r->vm, r->id);
    if (c < 0) return NULL;
    for (;;) if (ioctl(c, KVM_RUN, 0) < 0 && errno != EINTR) break;
    return NULL;
}

/* 1. vCPUs spinning in their guest on every CPU, the process SIGKILLed from outside. */
static void killed_while_running(int rounds) {
    for (int i = 0; i < rounds; i++) {
        pid_t p = fork();
        if (p == 0) {
            int vm = ioctl(kvm_fd, KVM_CREATE_VM, 0);
            if (vm < 0) _exit(1);
            mem_of(vm, 1);
            static struct runner rs[8];
            pthread_t t;
            for (int k = 0; k < ncpus && k < 8; k++) { rs[k] = (struct runner){vm, k}; pthread_create(&t, NULL, run_forever, &rs[k]); }
            for (;;) pause();
        }
        nap(20000 + 5000 * i);
        kill(p, SIGKILL);
        waitpid(p, NULL, 0);
    }
}

/* 2. A VM made by a vfork child (kvm->mm is the parent's), closed at the child's _exit. */
static void from_vfork(int rounds) {
    for (int i = 0; i < rounds; i++) {
        pid_t p = fork();
        if (p == 0) {
            pin(i);
            if (vfork() == 0) {
                int vm = ioctl(kvm_fd, KVM_CREATE_VM, 0);
                (void)vm;
                _exit(0);
            }
            busy(20000);
            _exit(0);
        }
    }
    while (wait(NULL) > 0) {}
}

/* 3. A VM made by a clone(CLONE_VM) process (its own tgid, the parent's mm), which exits
 * while the parent lives on, then the parent exits too; the VM fd went to a forked child. */
static char stack[65536] __attribute__((aligned(16)));
static int cloned_vm = -1;
static int cloned(void *arg) {
    (void)arg;
    cloned_vm = ioctl(kvm_fd, KVM_CREATE_VM, 0);
    return 0;
}

static void from_clone_vm(int rounds) {
    for (int i = 0; i < rounds; i++) {
        pid_t p = fork();
        if (p == 0) {
            pin(i + 1);
            pid_t c = clone(cloned, stack + sizeof(stack), CLONE_VM | SIGCHLD, NULL);
            waitpid(c, NULL, 0);
            if (cloned_vm >= 0 && fork() == 0) { nap(2000); close(cloned_vm); _exit(0); }
            _exit(0);
        }
    }
    while (wait(NULL) > 0) {}
}

/* 4. A VM fd spread over a fork tree; the last holder execs (FD_CLOEXEC set: the exec
 * closes it, in exec's flush of the old files after the new mm is in). */
static void tree_then_exec(int rounds) {
    for (int i = 0; i < rounds; i++) {
        pid_t p = fork();
        if (p == 0) {
            pin(i);
            int vm = ioctl(kvm_fd, KVM_CREATE_VM, 0);
            for (int k = 0; k < 3; k++) {
                if (fork() == 0) {
                    pin(i + k);
                    nap(1000 * (k + 1));
                    if (k == 2) { nap(3000); execl("/bin/true", "true", (char *)NULL); }
                    close(vm);
                    _exit(0);
                }
            }
            _exit(0);
        }
    }
    while (wait(NULL) > 0) {}
}

/* 5. Guest memory unmapped while a vCPU halts in and out (the notifier invalidates). */
static void unmap_while_running(int rounds) {
    for (int i = 0; i < rounds; i++) {
        if (fork() == 0) {
            pin(i);
            int vm = ioctl(kvm_fd, KVM_CREATE_VM, 0);
            unsigned char *m = mem_of(vm, 0);
            int c = vcpu(vm, 0);
            for (int k = 0; k < 3 && c >= 0; k++) ioctl(c, KVM_RUN, 0);
            munmap(m, 0x2000);
            if (c >= 0) ioctl(c, KVM_RUN, 0);
            _exit(0);
        }
    }
    while (wait(NULL) > 0) {}
}

int main(int argc, char **argv) {
    ncpus = sysconf(_SC_NPROCESSORS_ONLN);
    kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm_fd < 0) { perror("/dev/kvm"); return 1; }
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    for (int s = 0; s < scale; s++) {
        killed_while_running(3);
        from_vfork(3);
        from_clone_vm(3);
        tree_then_exec(4);
        unmap_while_running(3);
    }
    printf("kvm2: done\n");
    return 0;
}
