/*
 * kexec_crash: load the capture kernel for kdump (scripts/realkernel.py --kdump).
 *
 *   kexec_crash KERNEL INITRD CMDLINE
 *
 * kexec_file_load(2) with KEXEC_FILE_ON_CRASH: the kernel builds the ELF
 * headers of /proc/vmcore (elfcorehdr) itself, so no kexec-tools are needed.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef KEXEC_FILE_ON_CRASH
#define KEXEC_FILE_ON_CRASH 0x00000002
#endif

int main(int argc, char **argv)
{
	int kernel, initrd;

	if (argc != 4) {
		fprintf(stderr, "usage: kexec_crash KERNEL INITRD CMDLINE\n");
		return 2;
	}
	kernel = open(argv[1], O_RDONLY);
	initrd = open(argv[2], O_RDONLY);
	if (kernel < 0 || initrd < 0) {
		perror("kexec_crash: open");
		return 1;
	}
	if (syscall(SYS_kexec_file_load, kernel, initrd, strlen(argv[3]) + 1, argv[3], KEXEC_FILE_ON_CRASH)) {
		perror("kexec_crash: kexec_file_load");
		return 1;
	}
	return 0;
}
