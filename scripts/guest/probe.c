/*
 * probe: the user process whose page tables the real-kernel fixtures hold
 * (scripts/realkernel.py boots it as the init of a busybox initramfs).
 *
 * It builds the mappings worth checking a page-table reader against:
 *   - a memfd_secret page (removed from the direct map: a non-present
 *     kernel PTE with its PFN inverted, arch/x86/include/asm/pgtable-invert.h),
 *   - a transparent huge page (a 2 MiB user PMD leaf),
 *   - a hugetlb page (2 MiB; 1 GiB too when the kernel reserved one),
 *   - PROT_NONE pages (non-present user PTEs, PFN inverted),
 *   - read-only, read-write and read-execute pages,
 * then prints the kernel's own dumps of its tables (/proc/isoemu, made by
 * isoemu_ptdump.ko) between markers on stdout, says READY and sleeps so
 * that the host can take the memory image of exactly these tables.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef MAP_HUGE_1GB
#define MAP_HUGE_1GB (30 << 26)
#endif

static void cat(const char *name, const char *path)
{
	char buf[65536];
	int fd = open(path, O_RDONLY);
	ssize_t n;

	printf("=== BEGIN %s\n", name);
	fflush(stdout);
	if (fd < 0) {
		printf("(cannot open %s)\n", path);
	} else {
		while ((n = read(fd, buf, sizeof(buf))) > 0)
			fwrite(buf, 1, n, stdout);
		close(fd);
	}
	printf("=== END %s\n", name);
	fflush(stdout);
}

static void *must(void *p, const char *what)
{
	if (p == MAP_FAILED) {
		printf("probe: %s failed\n", what);
		return NULL;
	}
	printf("probe: %s at %p\n", what, p);
	return p;
}

/* fault in the stack the report will use, so that the two dumps agree */
static void prefault_stack(void)
{
	volatile char pad[256 << 10];
	size_t i;

	for (i = 0; i < sizeof(pad); i += 4096)
		pad[i] = 1;
}

int main(void)
{
	long ps = 4096;
	char *p;
	int fd;

	prefault_stack();

	/* memfd_secret: the page leaves the direct map while it is mapped */
	fd = syscall(SYS_memfd_secret, 0);
	if (fd >= 0 && ftruncate(fd, ps) == 0) {
		p = must(mmap(NULL, ps, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), "memfd_secret page");
		if (p)
			strcpy(p, "secret");
	} else {
		printf("probe: memfd_secret unavailable\n");
	}

	/* a transparent huge page: a 2 MiB-aligned, fully touched anonymous range */
	p = must(mmap(NULL, 8 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), "THP range");
	if (p) {
		char *a = (char *)(((unsigned long)p + (2 << 20) - 1) & ~((2UL << 20) - 1));
		madvise(a, 2 << 20, MADV_HUGEPAGE);
		memset(a, 1, 2 << 20);
	}

	/* hugetlb pages (the init script reserves them) */
	p = must(mmap(NULL, 2 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB,
		      -1, 0), "hugetlb 2M page");
	if (p)
		p[0] = 1;
	if (getenv("PROBE_1G")) {
		p = must(mmap(NULL, 1 << 30, PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_1GB, -1, 0), "hugetlb 1G page");
		if (p)
			p[0] = 1;
	}

	/* PROT_NONE between touched pages, a read-only and an executable page */
	p = must(mmap(NULL, 4 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), "four pages");
	if (p) {
		memset(p, 2, 4 * ps);
		mprotect(p + ps, ps, PROT_NONE);
		mprotect(p + 2 * ps, ps, PROT_READ);
		p[3 * ps] = (char)0xc3;          /* ret */
		mprotect(p + 3 * ps, ps, PROT_READ | PROT_EXEC);
	}

	cat("info", "/proc/isoemu/info");
	cat("kernel", "/proc/isoemu/kernel");
	cat("user", "/proc/isoemu/user");
	/* the same dumps again: the host compares them to know the tables were still */
	cat("kernel2", "/proc/isoemu/kernel");
	printf("=== READY\n");
	fflush(stdout);
	for (;;)
		pause();
}
