/* A twentieth workload written after the model, for `activemm capture --program` with
 * `--module usb-common --module usbcore --module udc-core --module dummy_hcd
 *  --module gadgetfs` (a USB device and its host in one machine: dummy_hcd):
 *  - a gadgetfs user-mode USB device (a bulk OUT endpoint) whose reads are Linux AIO
 *    (io_submit): when the host's data arrives, ep_aio_complete() hands the copy to a
 *    kworker, ep_user_copy_worker(), which runs kthread_use_mm() on the reader's mm,
 *    copies, and kthread_unuse_mm(): a kernel thread taking a user mm as its own, then
 *    keeping it lazily; on 6.12 no other workload reaches kthread_use_mm (vhost and
 *    io_uring use user workers there);
 *  - the readers: the device process itself, its threads, and forked children that submit
 *    one read each on the inherited endpoint and exit as soon as it completes, so that the
 *    kworker may still borrow the mm of a process that is gone (a zombie mm, freed at the
 *    kworker's next switch);
 *  - the host: a child process that finds the device in sysfs, claims its interface through
 *    usbfs (/dev/bus/usb) and sends one bulk OUT packet per pending read, forking and
 *    exiting short-lived helpers on the way. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <linux/usb/ch9.h>
#include <linux/usb/gadgetfs.h>
#include <linux/usbdevice_fs.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define VENDOR 0x0525
#define PRODUCT 0xa4a4
#define EP_OUT 0x02
#define READY "/tmp/gadget.ready"

static char ep0_path[256], out_path[256];
static int ep0 = -1;

static void die(const char *what) {
    fprintf(stderr, "unseen20: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void nap(long usec) {
    struct timespec ts = {usec / 1000000, (usec % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

/* -- the device (gadgetfs) ------------------------------------------------------------- */

static size_t put_config(uint8_t *p, int hs) {
    struct usb_config_descriptor c = {
        .bLength = USB_DT_CONFIG_SIZE,
        .bDescriptorType = USB_DT_CONFIG,
        .bNumInterfaces = 1,
        .bConfigurationValue = 1,
        .bmAttributes = USB_CONFIG_ATT_ONE | USB_CONFIG_ATT_SELFPOWER,
        .bMaxPower = 1,
    };
    struct usb_interface_descriptor i = {
        .bLength = USB_DT_INTERFACE_SIZE,
        .bDescriptorType = USB_DT_INTERFACE,
        .bInterfaceNumber = 0,
        .bNumEndpoints = 1,
        .bInterfaceClass = USB_CLASS_VENDOR_SPEC,
    };
    struct usb_endpoint_descriptor e = {
        .bLength = USB_DT_ENDPOINT_SIZE,
        .bDescriptorType = USB_DT_ENDPOINT,
        .bEndpointAddress = EP_OUT,
        .bmAttributes = USB_ENDPOINT_XFER_BULK,
        .wMaxPacketSize = hs ? 512 : 64,
    };
    size_t n = 0;
    c.wTotalLength = USB_DT_CONFIG_SIZE + USB_DT_INTERFACE_SIZE + USB_DT_ENDPOINT_SIZE;
    memcpy(p + n, &c, USB_DT_CONFIG_SIZE);
    n += USB_DT_CONFIG_SIZE;
    memcpy(p + n, &i, USB_DT_INTERFACE_SIZE);
    n += USB_DT_INTERFACE_SIZE;
    memcpy(p + n, &e, USB_DT_ENDPOINT_SIZE);
    n += USB_DT_ENDPOINT_SIZE;
    return n;
}

static void find_files(void) {
    DIR *d = opendir("/dev/gadget");
    struct dirent *de;
    if (!d)
        die("opendir /dev/gadget");
    while ((de = readdir(d)) != NULL) {
        if (strncmp(de->d_name, "dummy_udc", 9) == 0)
            snprintf(ep0_path, sizeof ep0_path, "/dev/gadget/%.200s", de->d_name);
        else if (strncmp(de->d_name, "ep2out", 6) == 0)
            snprintf(out_path, sizeof out_path, "/dev/gadget/%.200s", de->d_name);
    }
    closedir(d);
}

static void device_start(void) {
    uint8_t buf[256];
    size_t n = 0;
    uint32_t tag = 0;
    struct usb_device_descriptor dev = {
        .bLength = USB_DT_DEVICE_SIZE,
        .bDescriptorType = USB_DT_DEVICE,
        .bcdUSB = 0x0200,
        .bDeviceClass = USB_CLASS_VENDOR_SPEC,
        .bMaxPacketSize0 = 64,
        .idVendor = VENDOR,
        .idProduct = PRODUCT,
        .bNumConfigurations = 1,
    };
    mkdir("/dev/gadget", 0755);
    if (mount("gadgetfs", "/dev/gadget", "gadgetfs", 0, NULL) < 0 && errno != EBUSY)
        die("mount gadgetfs");
    find_files();
    if (!ep0_path[0]) {
        errno = ENODEV;
        die("no dummy_udc in /dev/gadget");
    }
    ep0 = open(ep0_path, O_RDWR);
    if (ep0 < 0)
        die(ep0_path);
    memcpy(buf, &tag, 4);
    n = 4;
    n += put_config(buf + n, 0);
    n += put_config(buf + n, 1);
    memcpy(buf + n, &dev, USB_DT_DEVICE_SIZE);
    n += USB_DT_DEVICE_SIZE;
    if (write(ep0, buf, n) != (ssize_t)n)
        die("gadgetfs device config");
    find_files(); /* the endpoint files exist once the device is bound */
}

/* ep0 events: a SETUP the kernel delegates is acknowledged (OUT) or stalled (IN) */
static void *ep0_events(void *arg) {
    struct usb_gadgetfs_event ev[4];
    (void)arg;
    for (;;) {
        ssize_t r = read(ep0, ev, sizeof ev);
        if (r < 0) {
            if (errno == EINTR || errno == EIDRM)
                continue;
            return NULL;
        }
        for (int i = 0; i < (int)(r / (ssize_t)sizeof ev[0]); i++) {
            if (ev[i].type != GADGETFS_SETUP)
                continue;
            if (ev[i].u.setup.bRequestType & USB_DIR_IN)
                (void)!read(ep0, &r, 0); /* stall: nothing to say */
            else
                (void)!read(ep0, &r, 0); /* status stage: ack */
        }
    }
    return NULL;
}

static int configured(void) {
    DIR *d = opendir("/sys/bus/usb/devices");
    struct dirent *de;
    int found = 0;
    if (!d)
        return 0;
    while (!found && (de = readdir(d)) != NULL) {
        char p[512], v[32] = "", c[8] = "";
        FILE *f;
        snprintf(p, sizeof p, "/sys/bus/usb/devices/%s/idVendor", de->d_name);
        if (!(f = fopen(p, "r")))
            continue;
        if (!fgets(v, sizeof v, f))
            v[0] = 0;
        fclose(f);
        if (strtol(v, NULL, 16) != VENDOR)
            continue;
        snprintf(p, sizeof p, "/sys/bus/usb/devices/%s/bConfigurationValue", de->d_name);
        if ((f = fopen(p, "r"))) {
            if (fgets(c, sizeof c, f) && atoi(c) == 1)
                found = 1;
            fclose(f);
        }
    }
    closedir(d);
    return found;
}

static int endpoint_open(void) {
    uint8_t buf[4 + 2 * USB_DT_ENDPOINT_SIZE];
    uint32_t tag = 1;
    struct usb_endpoint_descriptor e = {
        .bLength = USB_DT_ENDPOINT_SIZE,
        .bDescriptorType = USB_DT_ENDPOINT,
        .bEndpointAddress = EP_OUT,
        .bmAttributes = USB_ENDPOINT_XFER_BULK,
        .wMaxPacketSize = 64,
    };
    int fd;
    if (!out_path[0])
        find_files();
    fd = open(out_path, O_RDWR);
    if (fd < 0)
        die(out_path[0] ? out_path : "no ep2out endpoint file");
    memcpy(buf, &tag, 4);
    memcpy(buf + 4, &e, USB_DT_ENDPOINT_SIZE);
    e.wMaxPacketSize = 512;
    memcpy(buf + 4 + USB_DT_ENDPOINT_SIZE, &e, USB_DT_ENDPOINT_SIZE);
    if (write(fd, buf, sizeof buf) != (ssize_t)sizeof buf)
        die("gadgetfs endpoint config");
    return fd;
}

/* -- Linux AIO reads on the endpoint ----------------------------------------------------- */

static long io_setup_(unsigned n, aio_context_t *ctx) { return syscall(SYS_io_setup, n, ctx); }
static long io_destroy_(aio_context_t ctx) { return syscall(SYS_io_destroy, ctx); }
static long io_submit_(aio_context_t ctx, long n, struct iocb **p) {
    return syscall(SYS_io_submit, ctx, n, p);
}
static long io_getevents_(aio_context_t ctx, long min, long max, struct io_event *ev,
                          struct timespec *t) {
    return syscall(SYS_io_getevents, ctx, min, max, ev, t);
}

static long with_data, failed; /* reads that returned data, and the others */

/* k AIO reads at once, waited for (up to 3 s: the host may be slow under emulation) */
static int aio_reads(int fd, int k) {
    aio_context_t ctx = 0;
    struct iocb cb[8], *cbs[8];
    struct io_event ev[8];
    static __thread char bufs[8][512];
    static __thread struct iovec iov[8][2];
    struct timespec t = {3, 0};
    int got = 0;
    if (k > 8)
        k = 8;
    if (io_setup_(8, &ctx) < 0)
        die("io_setup");
    memset(cb, 0, sizeof cb);
    for (int i = 0; i < k; i++) {
        cb[i].aio_fildes = fd;
        /* two segments: an ITER_IOVEC that ep_read_iter() duplicates for the kworker (a
         * plain PREAD, or a PREADV of one segment, is an ITER_UBUF on 6.x, which dup_iter()
         * does not copy: the read then completes without the worker) */
        iov[i][0].iov_base = bufs[i];
        iov[i][0].iov_len = sizeof bufs[i] / 2;
        iov[i][1].iov_base = bufs[i] + sizeof bufs[i] / 2;
        iov[i][1].iov_len = sizeof bufs[i] / 2;
        cb[i].aio_lio_opcode = IOCB_CMD_PREADV;
        cb[i].aio_buf = (uint64_t)(uintptr_t)iov[i];
        cb[i].aio_nbytes = 2;
        cbs[i] = &cb[i];
    }
    if (io_submit_(ctx, k, cbs) != k)
        die("io_submit");
    while (got < k) {
        long r = io_getevents_(ctx, 1, k - got, ev, &t);
        if (r <= 0)
            break;
        for (long i = 0; i < r; i++) {
            if ((long long)ev[i].res > 0)
                __atomic_add_fetch(&with_data, 1, __ATOMIC_RELAXED);
            else if (__atomic_add_fetch(&failed, 1, __ATOMIC_RELAXED) <= 3)
                fprintf(stderr, "unseen20: a read ended with %lld\n", (long long)ev[i].res);
        }
        got += (int)r;
    }
    io_destroy_(ctx); /* cancels what did not complete, and waits for it */
    return got;
}

static int ep_fd = -1;

static void *reader_thread(void *arg) {
    long rounds = (long)arg;
    for (long i = 0; i < rounds; i++)
        aio_reads(ep_fd, 1 + (int)(i % 3));
    return NULL;
}

/* -- the host (usbfs) --------------------------------------------------------------------- */

static int host_open(void) {
    DIR *d = opendir("/sys/bus/usb/devices");
    struct dirent *de;
    int fd = -1;
    if (!d)
        die("opendir /sys/bus/usb/devices");
    while (fd < 0 && (de = readdir(d)) != NULL) {
        char p[512], v[32] = "";
        int bus = 0, dev = 0;
        FILE *f;
        snprintf(p, sizeof p, "/sys/bus/usb/devices/%s/idVendor", de->d_name);
        if (!(f = fopen(p, "r")))
            continue;
        if (!fgets(v, sizeof v, f))
            v[0] = 0;
        fclose(f);
        if (strtol(v, NULL, 16) != VENDOR)
            continue;
        snprintf(p, sizeof p, "/sys/bus/usb/devices/%s/busnum", de->d_name);
        if ((f = fopen(p, "r"))) {
            if (fscanf(f, "%d", &bus) != 1)
                bus = 0;
            fclose(f);
        }
        snprintf(p, sizeof p, "/sys/bus/usb/devices/%s/devnum", de->d_name);
        if ((f = fopen(p, "r"))) {
            if (fscanf(f, "%d", &dev) != 1)
                dev = 0;
            fclose(f);
        }
        snprintf(p, sizeof p, "/dev/bus/usb/%03d/%03d", bus, dev);
        fd = open(p, O_RDWR);
        if (fd < 0) { /* no devtmpfs node: make one (usb_device major 189) */
            mknod("/tmp/usbdev", S_IFCHR | 0600, makedev(189, (bus - 1) * 128 + dev - 1));
            fd = open("/tmp/usbdev", O_RDWR);
        }
    }
    closedir(d);
    return fd;
}

static void host(void) {
    int fd = -1, ifnum = 0;
    char data[64];
    long sent = 0;
    for (int i = 0; i < 600 && access(READY, F_OK) != 0; i++)
        nap(50000);
    fd = host_open();
    if (fd < 0)
        die("host: open the device");
    if (ioctl(fd, USBDEVFS_CLAIMINTERFACE, &ifnum) < 0)
        die("host: USBDEVFS_CLAIMINTERFACE");
    fprintf(stderr, "unseen20: host: device open, interface claimed\n");
    memset(data, 'x', sizeof data);
    for (;;) {
        struct usbdevfs_bulktransfer b = {
            .ep = EP_OUT, .len = sizeof data, .timeout = 500, .data = data};
        if (ioctl(fd, USBDEVFS_BULK, &b) >= 0)
            sent++;
        else if (errno != ETIMEDOUT && errno != EINTR) {
            fprintf(stderr, "unseen20: host: bulk OUT: %s\n", strerror(errno));
            break; /* the device went away */
        }
        if (sent % 16 == 15) { /* a short-lived helper now and then */
            pid_t p = fork();
            if (p == 0)
                _exit(0);
            if (p > 0)
                waitpid(p, NULL, 0);
        }
        if (getppid() == 1)
            break;
    }
    printf("host: %ld packets sent\n", sent);
    exit(0);
}

int main(int argc, char **argv) {
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    int rounds = 6 * (scale > 0 ? scale : 1);
    pthread_t ev_thread, readers[2];
    pid_t host_pid;
    long done = 0;

    unlink(READY);
    device_start();
    if (pthread_create(&ev_thread, NULL, ep0_events, NULL) != 0)
        die("pthread_create");
    host_pid = fork();
    if (host_pid < 0)
        die("fork");
    if (host_pid == 0)
        host();
    for (int i = 0; i < 400 && !configured(); i++)
        nap(50000);
    if (!configured()) {
        errno = ETIMEDOUT;
        die("the host never configured the device");
    }
    ep_fd = endpoint_open();
    close(open(READY, O_CREAT | O_WRONLY, 0644));

    for (int r = 0; r < rounds; r++) {
        /* the device process itself, then two threads of it, then forked readers */
        done += aio_reads(ep_fd, 2);
        for (int t = 0; t < 2; t++)
            pthread_create(&readers[t], NULL, reader_thread, (void *)2L);
        for (int t = 0; t < 2; t++)
            pthread_join(readers[t], NULL);
        pid_t kids[3];
        for (int c = 0; c < 3; c++) {
            kids[c] = fork();
            if (kids[c] == 0)
                _exit(aio_reads(ep_fd, 1) == 1 ? 0 : 1); /* exit as soon as it is done */
        }
        for (int c = 0; c < 3; c++)
            if (kids[c] > 0)
                waitpid(kids[c], NULL, 0);
        if (waitpid(host_pid, NULL, WNOHANG) == host_pid) {
            fprintf(stderr, "unseen20: the host side stopped early\n");
            return 1;
        }
        nap(20000);
    }
    kill(host_pid, SIGKILL);
    waitpid(host_pid, NULL, 0);
    close(ep_fd);
    close(ep0); /* unbinds the device */
    pthread_cancel(ev_thread);
    umount("/dev/gadget");
    printf("device: %ld reads by the device process, rounds %d; in it %ld returned data, %ld "
           "did not\n", done, rounds, with_data, failed);
    return 0;
}
