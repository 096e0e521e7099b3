#!/bin/busybox sh
# The init of the probe initramfs (scripts/realkernel.py builds it).
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo 4 > /proc/sys/vm/nr_hugepages
insmod /isoemu_ptdump.ko
# QEMU's vmcoreinfo device: dump-guest-memory then carries the kernel's VMCOREINFO note
insmod /qemu_fw_cfg.ko 2>/dev/null
# kallsyms on the third serial port, the probe's report on the second
cat /proc/kallsyms > /dev/ttyS2
/probe > /dev/ttyS1 2>&1
