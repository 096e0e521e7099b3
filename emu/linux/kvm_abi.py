"""KVM's and guest_memfd's user ABI, and the stub's objects behind them.

Numbers are Linux's (include/uapi/linux/kvm.h, include/uapi/linux/falloc.h,
arch/x86/include/uapi/asm/stat.h) where Linux has them.  Two come from
series not merged in 6.18 (docs/guest_memfd.md says why each value):

- ``GUEST_MEMFD_FLAG_NO_DIRECT_MAP`` = bit 2: the direct-map-removal series
  ("Direct Map Removal Support for guest_memfd", Patrick Roy, then Nikita
  Kalyazin; v12, April 2026) defines it right after 6.18's INIT_SHARED (bit 1).
  Its v6 and earlier used bit 1, before INIT_SHARED was merged; bit 2 is the
  value every version on top of 6.18 uses.
- ``KVM_SET_MEMORY_ATTRIBUTES2``: the in-place conversion RFC (Ackerley Tng,
  Sean Christopherson, "guest_memfd: In-place conversion support", 2025/26):
  a guest_memfd ioctl, ``_IOWR(KVMIO, 0xd2, struct kvm_memory_attributes2)``
  (offset, size, attributes, flags, reserved[12]), with
  ``KVM_MEMORY_ATTRIBUTE_PRIVATE`` (bit 3, as 6.8's VM ioctl).
"""

from __future__ import annotations

from emu.hw.vmx import EPT_VIOLATION_ACC_WRITE, EXIT_REASONS

KVMIO = 0xAE
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    """_IOC(dir, KVMIO, nr, size) of include/uapi/asm-generic/ioctl.h."""
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


# struct sizes (include/uapi/linux/kvm.h; x86 kvm_regs of arch/x86/include/uapi/asm/kvm.h)
KVM_REGS = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12",
            "r13", "r14", "r15", "rip", "rflags"]
KVM_REGS_SIZE = 8 * len(KVM_REGS)                     # 144
KVM_CREATE_GUEST_MEMFD_SIZE = 64                      # size, flags, reserved[6]
KVM_MEMORY_ATTRIBUTES2_SIZE = 128                     # offset, size, attributes, flags, reserved[12]
KVM_USERSPACE_MEMORY_REGION2_SIZE = 160               # ... guest_memfd_offset, guest_memfd, pad1, pad2[14]

IOCTLS = {
    "KVM_CREATE_VM": _ioc(_IOC_NONE, 0x01, 0),
    "KVM_GET_VCPU_MMAP_SIZE": _ioc(_IOC_NONE, 0x04, 0),
    "KVM_CREATE_VCPU": _ioc(_IOC_NONE, 0x41, 0),
    "KVM_SET_USER_MEMORY_REGION2": _ioc(_IOC_WRITE, 0x49, KVM_USERSPACE_MEMORY_REGION2_SIZE),
    "KVM_RUN": _ioc(_IOC_NONE, 0x80, 0),
    "KVM_GET_REGS": _ioc(_IOC_READ, 0x81, KVM_REGS_SIZE),
    "KVM_SET_REGS": _ioc(_IOC_WRITE, 0x82, KVM_REGS_SIZE),
    "KVM_SET_MEMORY_ATTRIBUTES2": _ioc(_IOC_READ | _IOC_WRITE, 0xD2, KVM_MEMORY_ATTRIBUTES2_SIZE),
    "KVM_CREATE_GUEST_MEMFD": _ioc(_IOC_READ | _IOC_WRITE, 0xD4, KVM_CREATE_GUEST_MEMFD_SIZE),
}

GUEST_MEMFD_FLAGS = {"GUEST_MEMFD_FLAG_MMAP": 1 << 0, "GUEST_MEMFD_FLAG_INIT_SHARED": 1 << 1,
                     "GUEST_MEMFD_FLAG_NO_DIRECT_MAP": 1 << 2}
GUEST_MEMFD_VALID_FLAGS = sum(GUEST_MEMFD_FLAGS.values())
KVM_MEMORY_ATTRIBUTE_PRIVATE = 1 << 3
KVM_MEM_GUEST_MEMFD = 1 << 2                           # kvm_userspace_memory_region2.flags
KVM_MEMORY_EXIT_FLAG_PRIVATE = 1 << 3
KVM_EXITS = {"KVM_EXIT_UNKNOWN": 0, "KVM_EXIT_IO": 2, "KVM_EXIT_HLT": 5, "KVM_EXIT_SHUTDOWN": 8,
             "KVM_EXIT_INTR": 10, "KVM_EXIT_INTERNAL_ERROR": 17, "KVM_EXIT_MEMORY_FAULT": 39}
KVM_EXIT_IO_OUT = 1
KVM_INTERNAL_ERROR_EMULATION = 1
FALLOC = {"FALLOC_FL_KEEP_SIZE": 0x01, "FALLOC_FL_PUNCH_HOLE": 0x02}
O_RDWR = 2

# struct stat (arch/x86/include/uapi/asm/stat.h, x86-64)
STAT = {"st_dev": 0, "st_ino": 8, "st_nlink": 16, "st_mode": 24, "st_size": 48, "st_blksize": 56,
        "st_blocks": 64}
STAT_SIZE = 144
S_IFREG, S_IFCHR = 0o100000, 0o020000

# struct kvm_run: exit_reason at 8, the exit union at 32 (io: direction, size,
# port, count, data_offset; memory_fault: flags, gpa, size; internal: suberror)
KVM_RUN = {"exit_reason": 8, "io_direction": 32, "io_size": 33, "io_port": 34, "io_count": 36,
           "io_data_offset": 40, "memory_fault_flags": 32, "memory_fault_gpa": 40, "memory_fault_size": 48,
           "internal_suberror": 32}
KVM_RUN_IO_DATA = 0x100          # where an OUT's data is put (data_offset from the start of kvm_run)

# struct kvm_userspace_memory_region2 (include/uapi/linux/kvm.h)
REGION2 = {"slot": 0, "flags": 4, "guest_phys_addr": 8, "memory_size": 16, "userspace_addr": 24,
           "guest_memfd_offset": 32, "guest_memfd": 40}

# The guest's shared bit: an access to a guest-physical address with bit 47
# set is a shared access, without it a private one, as a TDX guest's
# GPA.SHARED with a 48-bit guest-physical width (KVM: kvm_gfn_direct_bits).
# docs/guest_memfd.md, "The VM".
KVM_GPA_SHARED = 1 << 47

# --- the stub's objects (a FILE's 'pages' area holds them: 64 quads) ---------------------
# guest_memfd: pages[0] the index page's kernel address (512 entries: a page's
# physical address | GMEM_PRIVATE), pages[1] the VM file it belongs to
GMEM_MAX_PAGES = 512                                   # at most 2 MiB per guest_memfd
GMEM_PRIVATE = 1                                       # entry bit 0: the page is private
# a VM: memslots {flags, gpa, size, uaddr, gmem file, gmem offset} from pages[0];
# then the number of vCPUs created
KVM_MAX_MEMSLOTS = 4
MEMSLOT = {"flags": 0, "gpa": 8, "size": 16, "uaddr": 24, "gmem": 32, "gmem_offset": 40, "used": 48}
MEMSLOT_SIZE = 56
VM_NR_VCPUS = KVM_MAX_MEMSLOTS * MEMSLOT_SIZE
KVM_MAX_VCPUS = 1                                      # one vCPU per VM (docs/guest_memfd.md)
KVM_MAX_VCPU_IDS = 4096                                # arch/x86/include/asm/kvm_host.h
X86_EFLAGS_FIXED = 1 << 1                              # RFLAGS bit 1, always set
# a vCPU: pages[0] the VM file, pages[1] the kvm_run page's physical address,
# pages[2..19] the registers (kvm_regs order), then the last VM exit
# {reason, qualification, gpa, value} as the vCPU device wrote it, and the id
VCPU_VM, VCPU_RUN, VCPU_REGS = 0, 8, 16
VCPU_EXIT = {"reason": 160, "qualification": 168, "gpa": 176, "value": 184}
VCPU_ID = 192

# The vCPU device (``out 0xf1, eax``; docs/architecture.md, the stub contract):
# eax = the operation, rdi = the vCPU file.  RUN enters the guest with the
# registers of the vCPU object and returns the basic exit reason (the
# registers and the exit written back); MAP makes guest-physical page rsi the
# host frame rdx; ZAP unmaps every guest-physical page; FREE forgets the vCPU.
PORT_VCPU = 0xF1
VCPU_OPS = {"VCPU_OP_RUN": 1, "VCPU_OP_MAP": 2, "VCPU_OP_ZAP": 3, "VCPU_OP_FREE": 4}
#: guest instructions per entry before the VMX-preemption timer exit
VCPU_TIMESLICE = 100_000

# the kernel's temporary mapping of a page out of the direct map: a fixed slot
# in vmalloc space, past the kernel stacks (docs/guest_memfd.md)
GMEM_KMAP_OFFSET = 1 << 30


def stub_symbols() -> dict[str, int]:
    """The names the stub and user programs use for all of the above."""
    s = dict(IOCTLS)
    s.update(GUEST_MEMFD_FLAGS)
    s.update(KVM_EXITS)
    s.update(FALLOC)
    s.update({"GUEST_MEMFD_VALID_FLAGS": GUEST_MEMFD_VALID_FLAGS,
              "NOT_GUEST_MEMFD_VALID_FLAGS": ~GUEST_MEMFD_VALID_FLAGS,
              "KVM_MEMORY_ATTRIBUTE_PRIVATE": KVM_MEMORY_ATTRIBUTE_PRIVATE,
              "KVM_MEM_GUEST_MEMFD": KVM_MEM_GUEST_MEMFD,
              "KVM_MEMORY_EXIT_FLAG_PRIVATE": KVM_MEMORY_EXIT_FLAG_PRIVATE,
              "O_RDWR": O_RDWR, "STAT_SIZE": STAT_SIZE, "S_IFREG": S_IFREG, "S_IFCHR": S_IFCHR,
              "KVM_REGS_SIZE": KVM_REGS_SIZE, "KVM_CREATE_GUEST_MEMFD_SIZE": KVM_CREATE_GUEST_MEMFD_SIZE,
              "KVM_MEMORY_ATTRIBUTES2_SIZE": KVM_MEMORY_ATTRIBUTES2_SIZE,
              "KVM_USERSPACE_MEMORY_REGION2_SIZE": KVM_USERSPACE_MEMORY_REGION2_SIZE, "KVM_RUN_IO_DATA": KVM_RUN_IO_DATA,
              "GMEM_MAX_PAGES": GMEM_MAX_PAGES, "GMEM_PRIVATE": GMEM_PRIVATE,
              "KVM_MAX_MEMSLOTS": KVM_MAX_MEMSLOTS, "MEMSLOT_SIZE": MEMSLOT_SIZE,
              "VCPU_VM": VCPU_VM, "VCPU_RUN": VCPU_RUN, "VCPU_REGS": VCPU_REGS, "VCPU_ID": VCPU_ID,
              "VM_NR_VCPUS": VM_NR_VCPUS, "KVM_MAX_VCPUS": KVM_MAX_VCPUS, "KVM_GPA_SHARED": KVM_GPA_SHARED,
              "KVM_EXIT_IO_OUT": KVM_EXIT_IO_OUT, "KVM_INTERNAL_ERROR_EMULATION": KVM_INTERNAL_ERROR_EMULATION,
              "PORT_VCPU": PORT_VCPU, "KVM_MAX_VCPU_IDS": KVM_MAX_VCPU_IDS, "X86_EFLAGS_FIXED": X86_EFLAGS_FIXED,
              "EPT_VIOLATION_ACC_WRITE": EPT_VIOLATION_ACC_WRITE})
    s.update(VCPU_OPS)
    s.update(EXIT_REASONS)
    s.update({f"VCPU_EXIT_{k}": v for k, v in VCPU_EXIT.items()})
    s.update({f"REGION2_{k}": v for k, v in REGION2.items()})
    s.update({k.upper(): v for k, v in STAT.items()})
    s.update({f"KVM_RUN_{k}": v for k, v in KVM_RUN.items()})
    s.update({f"MEMSLOT_{k}": v for k, v in MEMSLOT.items()})
    s.update({f"KVM_REGS_{r}": 8 * i for i, r in enumerate(KVM_REGS)})
    return s
