"""Invalid opcodes: INVPCID (Intel SDM Vol. 2A, which Unicorn's TCG lacks)
done here, anything else delivered as #UD; and port I/O (OUT) to the
devices registered in ``ports``."""

from __future__ import annotations

import struct

from unicorn import x86_const as X

from emu.hw.x86 import CR4_LA57, CR4_PCIDE
from emu.hw.microcode.regs import RegFile
from emu.hw.paging import VEC_GP, VEC_PF, Fault


class InvalidOpcode:
    """Mixed into :class:`emu.hw.microcode.System`."""

    # -- port I/O ------------------------------------------------------------------------------------
    def _on_out(self, uch, port, size, value, ud):
        fn = self.ports.get(port)
        if fn is None:
            self.sink("port_out", port=port, size=size, value=value)
            return
        ret = fn(port, size, value)
        if ret is not None:
            self._write_reg(X.UC_X86_REG_RAX, ret)

    # -- invalid opcodes: INVPCID, else #UD ----------------------------------------------------
    def _on_invalid(self, uch, ud) -> bool:
        r = self.regs
        r.read()
        rip = r["rip"]
        cpl = r["cs"] & 3
        if self._code_bytes(rip, cpl, len(_STUB_INVPCID)) == _STUB_INVPCID:
            # the stub's own form (kernel_stub/tlb.S), read without loading capstone
            ea = self._read_reg(X.UC_X86_REG_RSP)
            return self._invpcid_do(self._read_reg(X.UC_X86_REG_RAX), ea, len(_STUB_INVPCID), r, cpl)
        ins = self._decode(rip, cpl)
        if ins is not None and ins.mnemonic == "invpcid":
            return self._invpcid(ins, r, cpl)
        self.deliver(6, None, reported=True)
        return True

    def _code_bytes(self, rip: int, cpl: int, n: int) -> bytes | None:
        """Up to ``n`` code bytes at ``rip`` (fewer if the next page is not
        executable), or None if ``rip``'s own page is not."""
        t = self.walks.translate(self.regs["cr3"], rip, 2, cpl, self.ctl())
        if t.fault:
            return None
        avail = min(n, 4096 - (t.pa & 0xFFF))
        code = self.mem.read(t.pa, avail)
        if avail < n:
            t2 = self.walks.translate(self.regs["cr3"], rip + avail, 2, cpl, self.ctl())
            if not t2.fault:
                code += self.mem.read(t2.pa, n - avail)
        return code

    def _decode(self, rip: int, cpl: int):
        code = self._code_bytes(rip, cpl, 15)
        if code is None:
            return None
        key = (rip, code)
        ins = self._decode_cache.get(key)
        if ins is None:
            ins = next(self._cs.disasm(code, rip, 1), None)
            self._decode_cache[key] = ins
        return ins

    def _invpcid(self, ins, r: RegFile, cpl: int) -> bool:
        """INVPCID (SDM Vol. 2A).  Unicorn's TLB has no PCID tags, so every
        type flushes the whole TLB: never less than the instruction asks."""
        ops = ins.operands
        type_ = self._read_reg(_uc_reg(ins.reg_name(ops[0].reg)))
        m = ops[1].mem
        ea = m.disp
        if m.base:
            ea += self._read_reg(_uc_reg(ins.reg_name(m.base)))
        if m.index:
            ea += self._read_reg(_uc_reg(ins.reg_name(m.index))) * m.scale
        return self._invpcid_do(type_, ea & 0xFFFFFFFFFFFFFFFF, ins.size, r, cpl)

    def _invpcid_do(self, type_: int, ea: int, size: int, r: RegFile, cpl: int) -> bool:
        """INVPCID of ``type_`` with its descriptor at ``ea``; ``size``: the instruction's."""
        if cpl != 0 or type_ > 3:
            self.deliver(VEC_GP, 0, reported=True)
            return True
        desc = self._read_virt(r["cr3"], ea, 16, self.ctl())
        if isinstance(desc, Fault):
            self.deliver(desc.vector, desc.error_code, cr2=desc.va if desc.vector == VEC_PF else None,
                         reported=True)
            return True
        pcid, addr = struct.unpack("<QQ", desc)
        pcide = bool(r["cr4"] & CR4_PCIDE)
        canon = (addr >> 47) in (0, 0x1FFFF) or (r["cr4"] & CR4_LA57 and (addr >> 56) in (0, 0xFF))
        if pcid >> 12 or (type_ == 0 and not canon) or (not pcide and type_ in (0, 1) and pcid):
            self.deliver(VEC_GP, 0, reported=True)
            return True
        self.sink("invpcid", rip=r["rip"], type=type_, pcid=pcid & 0xFFF, addr=addr)
        self.flush_tlb()
        self._after_invpcid(type_, pcid & 0xFFF, addr)
        self._write_reg(X.UC_X86_REG_RIP, r["rip"] + size)
        return True


#: 'invpcid rax, [rsp]', the only form the stub uses (66 0f 38 82 /r, ModRM 04, SIB 24)
_STUB_INVPCID = bytes.fromhex("660f38820424")


def _uc_reg(name: str) -> int:
    return getattr(X, f"UC_X86_REG_{name.upper()}")
