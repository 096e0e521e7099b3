"""Memory out of the direct map: the flushes each page costs, /dev/xpfo's
batch against secretmem's per-page path, and the lifecycle rates of a
secret page, a guest_memfd NO_DIRECT_MAP page and an xpfo page, each beside
an ordinary page's lifecycle in the same run (docs/xpfo.md, docs/performance.md)."""

from __future__ import annotations

from emu.dev.bench.core import bench, figure
from emu.dev.bench.machine import time_program

#: pages in the flush comparison: one xpfo file's worth (XPFO_MAX_BYTES)
FLUSH_PAGES = 64

_PROLOGUE = '.include "kvm.inc"\n.include "xpfo.inc"\n.include "isoemu.inc"\n.text\n_start:\n'
_LOOP = "{setup}    mov ebx, {n}\n.Lloop:\n{body}    dec ebx\n    jnz .Lloop\n" \
        "    mov eax, SYS_exit\n    xor edi, edi\n    syscall\n"
_TOUCH_UNMAP = """    mov byte ptr [r14], 1
    mov eax, SYS_munmap
    mov rdi, r14
    mov esi, 4096
    syscall
"""
_CLOSE = "    mov eax, SYS_close\n    mov rdi, r13\n    syscall\n"

#: each lifecycle: (name, what, set-up before the loop, one iteration)
LIFECYCLES = (
    ("secret_page_lifecycles_per_s", "memfd_secret, ftruncate, mmap, first-touch fault removing the direct "
     "map with its flush, munmap, close restoring it", "",
     "    secret_map r14, 4096, 4096, r13\n" + _TOUCH_UNMAP + _CLOSE),
    ("guest_memfd_page_lifecycles_per_s", "KVM_CREATE_GUEST_MEMFD with MMAP, INIT_SHARED and NO_DIRECT_MAP, "
     "mmap, first-touch fault removing the direct map with its flush, munmap, close zeroing the page "
     "through the temporary mapping and restoring it", "    kvm_vm r12\n",
     "    gmem_fd r13, r12, 0x1000, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED | "
     "GUEST_MEMFD_FLAG_NO_DIRECT_MAP\n    gmem_map r14, r13, 0x1000\n" + _TOUCH_UNMAP + _CLOSE),
    ("xpfo_page_lifecycles_per_s", "open /dev/xpfo, fallocate one page (from the cache of unmapped pages "
     "after the first), mmap, touch, munmap, close zeroing the page through the temporary mapping into "
     "the cache", "",
     "    xpfo_fd r13, 0x1000\n    gmem_map r14, r13, 0x1000\n" + _TOUCH_UNMAP + _CLOSE),
)
#: the baseline: an ordinary page's lifecycle on the same machine
BASELINE = ("anonymous page lifecycle (mmap MAP_ANONYMOUS, first-touch fault, munmap freeing it), same run",
            """    xor edi, edi
    mov esi, 4096
    mov edx, PROT_READ | PROT_WRITE
    mov r10d, MAP_PRIVATE | MAP_ANONYMOUS
    mov r8, -1
    xor r9d, r9d
    mov eax, SYS_mmap
    syscall
    mov r14, rax
""" + _TOUCH_UNMAP)


def lifecycle_program(setup: str, body: str, n: int) -> str:
    return _PROLOGUE + _LOOP.format(setup=setup, body=body, n=n)


def flushes_per_page(cfg, body: str, pages: int) -> float:
    """Kernel TLB flushes (each an IPI round on SMP) per page that ``body``
    takes out of the direct map, splits of 2M direct-map pages not counted."""
    from emu.linux.machine import BudgetExhausted, Machine

    def stats(src: str) -> dict[str, int]:
        m = Machine(cfg, programs=[("A", _PROLOGUE + src + ".Lspin:\n    jmp .Lspin\n")],
                    record_events=False)
        try:
            m.run(5_000_000)
        except BudgetExhausted:
            pass
        return m.stats()

    base, s = stats(""), stats(body)
    splits = s["direct_map_level2_splits"] - base["direct_map_level2_splits"]
    return (s["kernel_tlb_flushes"] - base["kernel_tlb_flushes"] - splits) / pages


@bench("secret")
def bench_secret(quick: bool) -> list[dict]:
    from emu.linux.machine import MachineConfig

    cfg = MachineConfig()
    size = FLUSH_PAGES * 0x1000
    xpfo = flushes_per_page(cfg, f"    xpfo_fd r12, {size}\n", FLUSH_PAGES)
    secret = flushes_per_page(cfg, f"    secret_map r13, {size}, {size}, r12\n    xor ecx, ecx\n.Ltouch:\n"
                                   f"    mov byte ptr [r13 + rcx], 1\n    add ecx, 0x1000\n    cmp ecx, {size}\n"
                                   "    jb .Ltouch\n", FLUSH_PAGES)
    figs = [figure(f"xpfo_flushes_per_page (one fallocate of {FLUSH_PAGES} pages: one batch, one flush)", xpfo,
                   "flushes/page", baseline=secret,
                   baseline_name=f"secretmem's first-touch faults of the same {FLUSH_PAGES} pages, one "
                                 "flush each", higher_is_better=False, target="ratio <= 0.05",
                   note="a count, not a time: the ratio is xpfo's flushes over secretmem's")]
    n = 100 if quick else 1000
    base = 1 / time_program(cfg, lifecycle_program("", BASELINE[1], n), n)
    for name, what, setup, body in LIFECYCLES:
        rate = 1 / time_program(cfg, lifecycle_program(setup, body, n), n)
        figs.append(figure(f"{name} ({what})", rate, "1/s", baseline=base, baseline_name=BASELINE[0]))
    return figs
