#!/bin/busybox sh
# The init of the kdump capture kernel (scripts/realkernel.py --kdump):
# copy /proc/vmcore, the crashed kernel's memory as an ELF core, to the
# virtio disk the host reads, then power off.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t devtmpfs devtmpfs /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do
	insmod /$m.ko
done
sleep 1
echo "=== VMCORE $(wc -c < /proc/vmcore)" > /dev/ttyS1
dd if=/proc/vmcore of=/dev/vda bs=1M 2>/dev/ttyS1
sync
echo "=== VMCORE DONE" > /dev/ttyS1
poweroff -f
