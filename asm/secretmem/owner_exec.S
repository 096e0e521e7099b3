; Secret memory is never executable: secretmem's mount is noexec and the
; mapping lacks VM_EXEC, so the page is mapped NX.  Executing it before the
; first touch faults as not present (#PF 0x14, the VMA refuses the fetch:
; SEGV_ACCERR); after a write has faulted it in, on NX: #PF 0x15.
; expect: exec_untouched fault 14 0x14
; expect: touch ok
; expect: exec_touched fault 14 0x15
.include "isoemu.inc"
.text
_start:
    secret_map r13              # memfd_secret, ftruncate 4 KiB, mmap shared: r13 (untouched)
exec_untouched:
    call r13
touch:
    mov byte ptr [r13], 0xc3            # ret
exec_touched:
    call r13
    sys_exit 0
