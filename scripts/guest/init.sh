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
if grep -q isoemu.kdump /proc/cmdline; then
	# kdump: the probe's report, then a crash into the capture kernel
	# (capture.sh), which saves /proc/vmcore
	/probe > /report 2>&1 &
	until grep -q "=== READY" /report; do sleep 1; done
	cat /report > /dev/ttyS1
	/kexec_crash /vmlinuz /capture.cpio "console=ttyS0 irqpoll nr_cpus=1 reset_devices panic=-1" &&
		echo c > /proc/sysrq-trigger
	echo "=== KEXEC FAILED" > /dev/ttyS1
	exec sleep 100000
fi
/probe > /dev/ttyS1 2>&1
