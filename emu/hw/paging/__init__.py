"""x86-64 paging: entry bits, paging modes as data, the reference walker,
the tree visitor and the page-table object.

The independent oracle for the CPU's MMU: this package never imports the
CPU layer.  Modules: :mod:`~emu.hw.paging.bits` (entry bits, protections,
error codes), :mod:`~emu.hw.paging.modes` (4- and 5-level geometry),
:mod:`~emu.hw.paging.walker` (one translation: ``translate``, ``WalkCache``,
``read_virt``), :mod:`~emu.hw.paging.visit` (every entry of a tree),
:mod:`~emu.hw.paging.table` (``PageTable`` and its policies).
"""

from emu.hw.paging.bits import (ACCESS_NAMES, ADDR_MASK, FETCH, FLAGS_MASK, INVALID_CLEARS, KERNPG_TABLE,
                                MAXPHYADDR, NX, PAGE_KERNEL, PAGE_KERNEL_EXEC, PAGE_KERNEL_RO, PAGE_KERNEL_RX,
                                PAGE_READONLY, PAGE_READONLY_EXEC, PAGE_SHARED, PAGE_SHARED_EXEC, PAGE_SIZE,
                                PAGE_TABLE, PAT, PAT_LARGE, PCD, PF_I, PF_P, PF_PK, PF_RSVD, PF_SS, PF_U, PF_W,
                                PKEY_MASK, PKEY_SHIFT, PS, PWT, READ, RW, US, VEC_GP, VEC_PF, WRITE, A, D, G, P,
                                error_code_words, fmt_size, fourk_to_large, large_to_4k, parse_access,
                                rsvd_hi_mask)
from emu.hw.paging.modes import FIVE_LEVEL, FOUR_LEVEL, Level, PagingMode, level_names, mode_for
from emu.hw.paging.table import FrameRefs, PageTable, Policy, PtiMirror, alloc_pgd_pair
from emu.hw.paging.visit import Leaf, TableVisitor, iter_leaves
from emu.hw.paging.walker import (DEFAULT_CTL, ControlState, Fault, Step, Translation, WalkCache,
                                  control_state_of, permits, read_virt, translate, write_virt)
from emu.hw.x86 import CR0_WP, CR4_LA57, CR4_PKE, CR4_SMAP, CR4_SMEP

__all__ = [
    'A', 'ACCESS_NAMES', 'ADDR_MASK', 'CR0_WP', 'CR4_LA57', 'CR4_PKE', 'CR4_SMAP', 'CR4_SMEP',
    'ControlState', 'D', 'DEFAULT_CTL', 'FETCH', 'FIVE_LEVEL', 'FLAGS_MASK', 'FOUR_LEVEL', 'Fault',
    'FrameRefs', 'G', 'INVALID_CLEARS', 'KERNPG_TABLE', 'Leaf', 'Level', 'MAXPHYADDR', 'NX', 'P',
    'PAGE_KERNEL', 'PAGE_KERNEL_EXEC', 'PAGE_KERNEL_RO', 'PAGE_KERNEL_RX', 'PAGE_READONLY',
    'PAGE_READONLY_EXEC', 'PAGE_SHARED', 'PAGE_SHARED_EXEC', 'PAGE_SIZE', 'PAGE_TABLE', 'PAT',
    'PAT_LARGE', 'PCD', 'PF_I', 'PF_P', 'PF_PK', 'PF_RSVD', 'PF_SS', 'PF_U', 'PF_W', 'PKEY_MASK',
    'PKEY_SHIFT', 'PS', 'PWT', 'PageTable', 'PagingMode', 'Policy', 'PtiMirror', 'READ', 'RW',
    'Step', 'TableVisitor', 'Translation', 'US', 'VEC_GP', 'VEC_PF', 'WRITE', 'WalkCache',
    'alloc_pgd_pair', 'control_state_of', 'error_code_words', 'fmt_size', 'fourk_to_large',
    'iter_leaves', 'large_to_4k', 'level_names', 'mode_for', 'parse_access', 'permits', 'read_virt',
    'rsvd_hi_mask', 'sign_extend', 'translate', 'write_virt',
]


def sign_extend(va: int, levels: int) -> int:
    """The canonical form of an index-space address under ``levels``-level paging."""
    return mode_for(levels).sign_extend(va)
