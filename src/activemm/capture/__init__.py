"""Capture ground truth from a real Linux kernel: a stock Debian kernel booted in QEMU with a
busybox initramfs, kprobes on the very functions the model mirrors, a workload, and the
tracefs trace shipped out over a serial port. See docs/validate.md."""
