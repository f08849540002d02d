"""The VMM out of the guest's reach: trap and bt guard the hypervisor area so
that a guest access to it ends the run exactly as under emulate, where no
memory is mapped there (docs/machine.md, "Isolation").

The area is mapped without guest permissions (runtime/hyper.py: no access
below the stub cache, execute only in it), and one native protection hook
over the area (runtime/_isolation.c) decides each protection event in C:
code in the stub cache and the CPU's own descriptor lookups in the shadow GDT
pass, everything else is refused.  A descriptor lookup also sets the accessed
bits of the entries mapping the guest's own GDT page, which the CPU's walk
sets under emulate (docs/fidelity.md, "Accessed bits of the GDT's page").
A refused access is abandoned by Unicorn on the same path as an access to
unmapped memory, so the instruction, the retired count and the registers end
as under emulate; after the slice the VM asks `claim` and ends the run with
emulate's outcome and message.

The VMM itself reads and writes the area with uc.mem_read/mem_write and the
host pointer, which no protection or hook sees.
"""
from __future__ import annotations

from unicorn import UC_HOOK_MEM_FETCH_PROT, UC_HOOK_MEM_READ_PROT, UC_HOOK_MEM_WRITE, UC_HOOK_MEM_WRITE_PROT
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from bt.errors import VMMError
from bt.hyper_layout import FIELDS, HYPER_SIZE, SHADOW_GDT, SHADOW_GDT_SIZE, STATE, STUBS
from bt.outcome import Outcome, RunStop
from runtime.fastuc import hook_add

try:
    from runtime import _isolation
except ImportError as e:        # pragma: no cover - the package build compiles it
    _isolation = None
    _IMPORT_ERROR = e

# The guest GDTR's base in the state page (sgdt layout: the limit, then the
# base): the guard maps a shadow-GDT read to the guest's own table with it.
GDTR_BASE = FIELDS["gdtr"][0] + 2
PROT_EVENTS = UC_HOOK_MEM_READ_PROT | UC_HOOK_MEM_WRITE_PROT | UC_HOOK_MEM_FETCH_PROT

_ESP_OFFSET: int | None = None
# The keeper's range: physical addresses no 32-bit guest or stub can store to.
KEEPER_RANGE = (1 << 40, (1 << 40) + 0xFFF)


def unmapped_access(address: int) -> RunStop:
    """How a run ends when the guest touches memory that is not there (emulate's
    UC_HOOK_MEM_UNMAPPED, and the guarded hypervisor area in trap and bt)."""
    return Outcome.UNMAPPED_ACCESS.stop(f"guest touched unmapped physical memory at {address:#x}")


def _esp_offset() -> int:
    """ESP's field in the CPU state, calibrated like EIP's (runtime/quirks.py)."""
    global _ESP_OFFSET
    if _ESP_OFFSET is None:
        from runtime.quirks import _find_reg_offset
        _ESP_OFFSET = _find_reg_offset(X.UC_X86_REG_ESP, 0x00123450, 0x00ABC560)
    return _ESP_OFFSET


class Isolation:
    def __init__(self, vm, hyper):
        if _isolation is None:
            raise VMMError(f"runtime._isolation is not built ({_IMPORT_ERROR}); "
                           "reinstall with `pip install -e .` (needs a C compiler)")
        if vm.quirks.env is None:
            raise VMMError("the hypervisor area's guard needs the live CPU state, which was "
                           f"not found: {vm.quirks.env_problem} (runtime/quirks.py)")
        self.vm = vm
        self.hyper = hyper
        self.guard = _isolation.Guard(*self._args())
        self._fn = _isolation.callback()
        self._keeper = _isolation.keeper()
        self._hook: int | None = None
        self._keep_hook: int | None = None
        self.arm()

    def _args(self) -> tuple:
        vm, base = self.vm, self.hyper.base
        return (vm.quirks.env, vm.quirks.off.eip, _esp_offset(), base, HYPER_SIZE,
                base + STUBS, base + HYPER_SIZE, base + SHADOW_GDT, base + SHADOW_GDT + SHADOW_GDT_SIZE,
                self.hyper.host, vm._ram_ptr, vm.config.mem_bytes, STATE + GDTR_BASE, *vm.quirks.off.cr)

    def arm(self) -> None:
        """(Re)register the hook over the area where it is now (after a relocation)."""
        uc = self.vm.uc
        if self._hook is not None:
            uclib.uc_hook_del(uc._uch, self._hook)
            uclib.uc_hook_del(uc._uch, self._keep_hook)
            self.guard.__init__(*self._args())
        lo, hi = self.hyper.base, self.hyper.base + HYPER_SIZE - 1
        self._hook = hook_add(uc, PROT_EVENTS, self._fn, id(self.guard), lo, hi)
        # Without some write hook, a read the guard allowed (a stub's) would be
        # cached by Unicorn and later guest reads of that page would pass unseen
        # (runtime/_isolation.c, keep_checking).  Its range is one no access can
        # reach (above 4 GiB): the hook's presence is what counts, and a hook
        # whose range an access hits costs that access a state restore in
        # Unicorn, which over the area every stub store would pay.
        self._keep_hook = hook_add(uc, UC_HOOK_MEM_WRITE, self._keeper, None, *KEEPER_RANGE)

    def claim(self, first=None) -> bool:
        """After a slice that Unicorn ended with an error: True (and the run's
        end set) when the error was a refused access to the area.  `first(hit)`
        may claim the refusal as the mode's own (runtime/taskreturn.py)."""
        hit = self.guard.take()
        if hit is None:
            return False
        if first is not None and first(hit):
            return True
        if self.vm.stop is None:
            self.vm.stop = unmapped_access(hit[1])
        return True

    def stats(self) -> dict:
        return self.guard.stats()
