"""The guest as gdb sees it: registers, memory and breakpoints, in every mode.

Everything here is the guest's view, never the VMM's:
* registers: EFLAGS with the virtual IF/IOPL (`vm.guest_eflags`), segment
  selectors with ring compression undone (`vm.guest_selector`), EIP as a guest
  address even when the CPU stopped inside a bt stub (`mode.guest_address`);
* memory: guest linear addresses, through the guest's page tables
  (`GuestMemory.translate`), limited to guest RAM (the hypervisor area is not
  there for the guest), read through the mode's `guest_visible` (bt hides its
  patches there) with CSAM's int3 guards hidden as well;
* breakpoints (Z0 and Z1 alike): a Python UC_HOOK_CODE on the one address,
  never an 0xCC in guest memory, so the scanner, the patcher, the clock's
  decoded blocks and a guest reading its own code see exactly what they see
  without a debugger.  The hook ends the slice *before* the instruction runs
  (emu_stop from a code hook leaves EIP at it, unexecuted: fact test in
  tests/runtime/test_unicorn_facts.py) through `vm.halt_slice(abort=True)`,
  which is how the VMM already corrects the instruction clock for a started
  block that stops early (`clock.cut(eip, False)`): virtual time stays exact.
  In bt a breakpoint whose instruction now runs inside a stub (copied there by
  a jump patch) is caught by one more code hook over the hypervisor area that
  stops only at the stub's first instruction for that guest address.
"""
from __future__ import annotations

from unicorn import UC_HOOK_CODE, UcError
from unicorn import x86_const as X

from bt.x86 import PAGE

# gdb's i386 register numbers (its `g` packet order) -> Unicorn registers.
GPRS = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
REGISTERS = GPRS + ("eip", "eflags", "cs", "ss", "ds", "es", "fs", "gs")
SEGMENTS = ("cs", "ss", "ds", "es", "fs", "gs")
_UC = {name: getattr(X, f"UC_X86_REG_{name.upper()}") for name in REGISTERS}


class TargetError(Exception):
    """A request gdb made cannot be done (the reply is an `Enn` packet)."""

    def __init__(self, errno: int, why: str):
        super().__init__(why)
        self.errno = errno


EFAULT, EINVAL = 14, 22


class Target:
    def __init__(self, vm):
        self.vm = vm
        self.uc = vm.uc
        self.breakpoints: dict[int, int] = {}    # guest address -> hook handle
        self._stub_hook: tuple[int, int] | None = None   # (hyper base, hook) in bt
        self.hit: int | None = None              # guest address of the breakpoint that stopped us
        self._skip: int | None = None            # real address whose next hit is the resume itself

    # -- registers ------------------------------------------------------------------
    def read_register(self, name: str) -> int:
        vm = self.vm
        if name == "eip":
            return vm.mode.guest_address(self.uc.reg_read(X.UC_X86_REG_EIP))
        if name == "eflags":
            return vm.guest_eflags()
        value = self.uc.reg_read(_UC[name])
        if name in SEGMENTS:
            return vm.guest_selector(value)
        return value

    def write_register(self, name: str, value: int) -> None:
        vm, uc = self.vm, self.uc
        value &= 0xFFFFFFFF
        if value == self.read_register(name):
            return      # gdb writes back what it read (G): keep e.g. EIP inside a stub
        if name == "eflags":
            vm.set_guest_eflags(value)
        elif name in SEGMENTS:
            try:
                uc.reg_write(_UC[name], vm.real_selector(value & 0xFFFF, vm.guest_cpl()))
            except UcError as e:
                raise TargetError(EINVAL, f"cannot load {name}={value:#x}: {e}") from None
        else:
            uc.reg_write(_UC[name], value)

    # -- memory ---------------------------------------------------------------------
    def _pieces(self, addr: int, size: int):
        """(linear, physical, length) per page; TargetError where the guest has no memory."""
        from runtime.memory import PageFault
        ram = self.vm.config.mem_bytes
        end = addr + size
        while addr < end:
            n = min(end, (addr & ~(PAGE - 1)) + PAGE) - addr
            try:
                phys = self.vm.mem.translate(addr)
            except PageFault:
                raise TargetError(EFAULT, f"{addr:#x} is not mapped") from None
            if phys + n > ram:
                raise TargetError(EFAULT, f"{addr:#x} is outside guest RAM")
            yield addr, phys, n
            addr += n

    def read_memory(self, addr: int, size: int) -> bytes:
        out = bytearray()
        for _lin, phys, n in self._pieces(addr, size):
            out += self._visible(phys, n)
        return bytes(out)

    def _visible(self, phys: int, n: int) -> bytes:
        mode = self.vm.mode
        visible = getattr(mode, "guest_visible", None)
        data = bytearray(visible(phys, n) if visible else self.vm.fast.mem_read(phys, n))
        csam = getattr(mode, "csam", None)
        if csam is not None:                # bt's int3 guards are not the guest's bytes either
            for g, ins in csam.guards.items():
                if phys <= g < phys + n:
                    data[g - phys] = ins.data[0]
        return bytes(data)

    def write_memory(self, addr: int, data: bytes) -> None:
        """As if the guest stored `data`: trap's shadow GDT follows a write to the
        guest's GDT, bt drops the code (patches, guards, CFG) of a code page written
        (CSAM's self-modifying-code path), and no translated block keeps old bytes."""
        pieces = list(self._pieces(addr, len(data)))
        mode = self.vm.mode
        off = 0
        for lin, phys, n in pieces:
            chunk = data[off:off + n]
            off += n
            self.uc.mem_write(phys, chunk)
            self.uc.ctl_remove_cache(lin, lin + n)
            page = phys & ~(PAGE - 1)
            csam = getattr(mode, "csam", None)
            if csam is not None and (page in csam.code_pages
                                     or any(page <= g < page + PAGE for g in csam.guards)):
                csam._invalidate(page, [(phys, n)])
            if hasattr(mode, "on_watched_write"):
                mode.on_watched_write(page, phys, n)

    # -- breakpoints ----------------------------------------------------------------
    def add_breakpoint(self, addr: int) -> None:
        addr &= 0xFFFFFFFF
        if addr in self.breakpoints:
            return
        self.breakpoints[addr] = self.uc.hook_add(UC_HOOK_CODE, self.vm.guarded(self._on_code),
                                                  None, addr, addr)
        self.uc.ctl_remove_cache(addr, addr + 1)   # cached blocks lack the new hook
        self._hook_stubs()

    def remove_breakpoint(self, addr: int) -> bool:
        h = self.breakpoints.pop(addr & 0xFFFFFFFF, None)
        if h is None:
            return False
        self.uc.hook_del(h)
        self.uc.ctl_remove_cache(addr, addr + 1)
        self._hook_stubs()
        return True

    def clear_breakpoints(self) -> None:
        for addr in list(self.breakpoints):
            self.remove_breakpoint(addr)

    def _hook_stubs(self) -> None:
        """bt: one code hook over the hypervisor area while any breakpoint is set
        (it costs a Python call per stub instruction, so only then)."""
        cache = getattr(self.vm.mode, "cache", None)
        if cache is None:
            return
        hyper = self.vm.mode.hyper
        from bt.hyper_layout import HYPER_SIZE
        want = hyper.base if self.breakpoints else None
        have = self._stub_hook[0] if self._stub_hook else None
        if want == have:
            return
        if self._stub_hook is not None:
            self.uc.hook_del(self._stub_hook[1])
            self.uc.ctl_remove_cache(have, have + HYPER_SIZE)
            self._stub_hook = None
        if want is not None:
            h = self.uc.hook_add(UC_HOOK_CODE, self.vm.guarded(self._on_stub_code),
                                 None, want, want + HYPER_SIZE - 1)
            self.uc.ctl_remove_cache(want, want + HYPER_SIZE)
            self._stub_hook = (want, h)

    def before_resume(self) -> None:
        """The run goes on from here: an instruction at a breakpoint under EIP runs
        (once) instead of stopping again; the area may have moved (bt)."""
        self.hit = None
        eip = self.uc.reg_read(X.UC_X86_REG_EIP)
        guest = self.vm.mode.guest_address(eip)
        self._skip = eip if guest in self.breakpoints else None
        self._hook_stubs()

    def _on_code(self, address: int, size: int) -> None:
        self._maybe_stop(address, address)

    def _on_stub_code(self, address: int, size: int) -> None:
        patcher = self.vm.mode.patcher
        p = patcher.stub_owner(address)
        if p is None:
            return
        for lo, _hi, guest in p.stub_map:
            if lo == address and guest in self.breakpoints:
                self._maybe_stop(address, guest)
                return

    def _maybe_stop(self, address: int, guest: int) -> None:
        vm = self.vm
        if vm.stop is not None or self.hit is not None:
            return
        if address == self._skip:
            self._skip = self._follow(address)
            return
        self.hit = guest
        vm.halt_slice(abort=True)       # the instruction at `address` has not run

    def _follow(self, address: int) -> int | None:
        """bt: after a jump patch's site, the stub's first instruction for the same
        guest instruction is that instruction too: skip it as well."""
        patcher = getattr(self.vm.mode, "patcher", None)
        p = patcher.at(address) if patcher is not None else None
        if p is None or p.kind != "jump":
            return None
        return next((lo for lo, _hi, g in p.stub_map if g == address), None)
