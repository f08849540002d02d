"""`smsw r32` as the CPU executes it: the whole of CR0 in the register.

Unicorn 2.1.4 (QEMU 5.0's translator) stores only the low word for every form
of smsw, a 32-bit register included, whose bits 31:16 keep their old value
(tests/runtime/test_realmode_facts.py).  The SDM calls those bits undefined;
Intel's and AMD's CPUs, KVM's emulator and QEMU 7.2 write CR0 whole, and
kvm-unit-tests' realmode.flat checks it ("smsw").  Under emulate, and wherever
trap and bt let smsw run natively (real mode's native stretch, trap's ring 1),
the VMM completes it:

* the clock stops before a block holding an smsw it has not seen, as for
  cmpxchg8b (runtime/_clock.c, `fix_smsw`), and `install` puts a code hook on
  the instruction (Unicorn calls a code hook only where one is placed: every
  other instruction runs as before);
* the hook runs before the smsw: for a 32-bit register destination it loads
  CR0's high word into the register's high half, and Unicorn's smsw then
  writes the low word, so the register ends holding CR0.  When the smsw will
  fault instead (UMIP at CPL > 0: #GP) the register is left alone.

No state is carried from the hook to the instruction, so a slice may end or an
interrupt come anywhere around it.  The same register under bt's template and
the emulation routine (patcher/templates.py, runtime/emulation.py `_smsw`).
"""
from __future__ import annotations

from unicorn import UC_HOOK_CODE
from unicorn import x86_const as X

from bt.x86 import CR4_UMIP

PREFIXES = frozenset((0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65))
REG32 = (X.UC_X86_REG_EAX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX, X.UC_X86_REG_EBX,
         X.UC_X86_REG_ESP, X.UC_X86_REG_EBP, X.UC_X86_REG_ESI, X.UC_X86_REG_EDI)
MAX_INSN = 15


def smsw_register(code: bytes, code16: bool) -> int | None:
    """The ModRM register number when `code` starts with `smsw r32` in code of
    that default size (16-bit code: with a 0x66 prefix; 32-bit: without);
    None for any other instruction, smsw r16 and smsw m16."""
    i, opsize16 = 0, code16
    while i < len(code) and code[i] in PREFIXES:
        if code[i] == 0x66:
            opsize16 = not code16
        i += 1
    if code[i:i + 2] != b"\x0f\x01" or i + 2 >= len(code):
        return None
    modrm = code[i + 2]
    if modrm >> 6 != 3 or (modrm >> 3) & 7 != 4 or opsize16:
        return None
    return modrm & 7


class SmswFix:
    def __init__(self, vm):
        self.vm = vm
        self.sites = 0              # smsw sites hooked
        self.completed = 0          # smsw r32 executions given CR0's high word
        self._hook = vm.guarded(self._before)

    def install(self, site: int) -> bool:
        """Hook `site` (linear) when it holds an smsw; False for another
        instruction (the clock's no-op sync hook goes there instead)."""
        code = self.vm.mem.try_read(site, 3 + 4)     # up to four prefixes, 0F 01 ModRM
        if code is None or b"\x0f\x01" not in code:
            return False
        at = code.index(b"\x0f\x01")
        if any(b not in PREFIXES for b in code[:at]) or at + 2 >= len(code) \
                or (code[at + 2] >> 3) & 7 != 4:
            return False
        self.vm.uc.hook_add(UC_HOOK_CODE, self._hook, None, site, site)
        self.sites += 1
        return True

    def _before(self, address: int, size: int) -> None:
        vm, uc = self.vm, self.vm.uc
        code = vm.mem.try_read(address, min(size, MAX_INSN))
        reg = None if code is None else smsw_register(code, bool(vm.quirks.code16()))
        if reg is None:
            return
        if uc.reg_read(X.UC_X86_REG_CR4) & CR4_UMIP and vm.quirks.cpl() > 0:
            return                  # #GP: the instruction changes nothing
        rid = REG32[reg]
        high = uc.reg_read(X.UC_X86_REG_CR0) & 0xFFFF0000
        uc.reg_write(rid, (uc.reg_read(rid) & 0xFFFF) | high)
        self.completed += 1
