// SPDX-License-Identifier: GPL-2.0
/*
 * isoemu_ptdump: the kernel's own page-table dumps of the reading process,
 * for comparison with `isoemu ptdump --image` (scripts/realkernel.py).
 *
 * Linux 6.1 distribution kernels have no CONFIG_PTDUMP_DEBUGFS, but
 * ptdump_walk_pgd_level_debugfs() (arch/x86/mm/dump_pagetables.c) is
 * exported: this module calls it from three /proc files, in the context of
 * the process that reads them, so the dump is of that process's tables.
 *
 *   /proc/isoemu/kernel   dump of current->mm (user and kernel halves)
 *   /proc/isoemu/user     dump of its PTI user page table
 *   /proc/isoemu/info     the roots and the layout the kernel uses
 */
#include <linux/module.h>
#include <linux/proc_fs.h>
#include <linux/seq_file.h>
#include <linux/sched.h>
#include <linux/mm.h>
#include <asm/pgtable.h>
#include <asm/fixmap.h>
#include <asm/special_insns.h>
#include <asm/msr.h>
#include <asm/processor.h>

static int dump_kernel(struct seq_file *m, void *v)
{
	ptdump_walk_pgd_level_debugfs(m, current->mm, false);
	return 0;
}

static int dump_user(struct seq_file *m, void *v)
{
	ptdump_walk_pgd_level_debugfs(m, current->mm, true);
	return 0;
}

static int info(struct seq_file *m, void *v)
{
	u64 efer;

	rdmsrl(MSR_EFER, efer);
	seq_printf(m, "pgd %#llx\n", (u64)__pa(current->mm->pgd));
	seq_printf(m, "cr0 %#lx\ncr3 %#lx\ncr4 %#lx\nefer %#llx\n",
		   read_cr0(), __read_cr3(), __read_cr4(), efer);
	seq_printf(m, "la57 %d\n", pgtable_l5_enabled());
	seq_printf(m, "phys_bits %u\n", boot_cpu_data.x86_phys_bits);
	seq_printf(m, "page_offset_base %#lx\n", (unsigned long)PAGE_OFFSET);
	seq_printf(m, "vmalloc_base %#lx\n", (unsigned long)VMALLOC_START);
	seq_printf(m, "vmemmap_base %#lx\n", (unsigned long)VMEMMAP_START);
	seq_printf(m, "ldt_base %#lx\n", (unsigned long)LDT_BASE_ADDR);
	seq_printf(m, "cpu_entry_area %#lx\n", (unsigned long)CPU_ENTRY_AREA_BASE);
	seq_printf(m, "espfix_base %#lx\n", (unsigned long)ESPFIX_BASE_ADDR);
	seq_printf(m, "efi_va_end %#lx\n", (unsigned long)EFI_VA_END);
	seq_printf(m, "kernel_map %#lx\n", (unsigned long)__START_KERNEL_map);
	seq_printf(m, "modules_vaddr %#lx\n", (unsigned long)MODULES_VADDR);
	seq_printf(m, "modules_end %#lx\n", (unsigned long)MODULES_END);
	seq_printf(m, "fixaddr_start %#lx\n", (unsigned long)FIXADDR_START);
	return 0;
}

static struct proc_dir_entry *dir;

static int __init isoemu_ptdump_init(void)
{
	dir = proc_mkdir("isoemu", NULL);
	if (!dir)
		return -ENOMEM;
	proc_create_single("kernel", 0400, dir, dump_kernel);
	proc_create_single("user", 0400, dir, dump_user);
	proc_create_single("info", 0400, dir, info);
	return 0;
}

static void __exit isoemu_ptdump_exit(void)
{
	proc_remove(dir);
}

module_init(isoemu_ptdump_init);
module_exit(isoemu_ptdump_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("the kernel's own page-table dumps for isoemu's comparisons");
