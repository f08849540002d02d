"""The guest as gdb sees it: registers, memory and breakpoints, in every mode.

Everything here is the guest's view, never the VMM's:
* registers: EFLAGS with the guest's IOPL (`vm.guest_eflags`), segment
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
  a jump patch) gets one more code hook, on the stub's first instruction for
  that guest address, kept in step with the patches as they come and go.
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
        self._stub_hooks: dict[int, int] = {}    # bt: stub address -> hook handle
        self.hit: int | None = None              # guest address of the breakpoint that stopped us
        self._skip: int | None = None            # real address whose next hit is the resume itself
        patcher = getattr(vm.mode, "patcher", None)
        self._chained = None
        if patcher is not None:                  # bt: follow patches (CSAM listens too)
            self._chained = patcher.on_change
            patcher.on_change = self._patches_changed

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
        self.breakpoints[addr] = self._hook(addr, self._on_code)
        self._sync_stub_hooks()

    def remove_breakpoint(self, addr: int) -> bool:
        addr &= 0xFFFFFFFF
        h = self.breakpoints.pop(addr, None)
        if h is None:
            return False
        self._unhook(addr, h)
        self._sync_stub_hooks()
        return True

    def clear_breakpoints(self) -> None:
        for addr in list(self.breakpoints):
            self.remove_breakpoint(addr)

    def _hook(self, addr: int, fn) -> int:
        h = self.uc.hook_add(UC_HOOK_CODE, self.vm.guarded(fn), None, addr, addr)
        self.uc.ctl_remove_cache(addr, addr + 1)     # cached blocks lack the new hook
        return h

    def _unhook(self, addr: int, h: int) -> None:
        self.uc.hook_del(h)
        self.uc.ctl_remove_cache(addr, addr + 1)

    def _patches_changed(self, lo: int, hi: int) -> None:
        if self._chained is not None:
            self._chained(lo, hi)
        self._sync_stub_hooks()

    def _sync_stub_hooks(self) -> None:
        """bt: a code hook on the stub instruction that runs each breakpoint's guest
        instruction when a jump patch copied it into its stub.  Not for a patch's
        site: the guest runs the site's `jmp` at the site, whose hook stops there.
        Kept in step with every patch installed or removed (the patcher's
        `on_change`, which may come from inside a hook: Unicorn takes new hooks and
        deletes old ones there, freeing them when the run ends)."""
        patcher = getattr(self.vm.mode, "patcher", None)
        if patcher is None:
            return
        want = set()
        for bp in self.breakpoints:
            p = patcher.covering(bp)
            if p is None or p.kind != "jump" or p.site == bp:
                continue
            want.update(lo for lo, _hi, guest in p.stub_map if guest == bp)
        for addr in set(self._stub_hooks) - want:
            self._unhook(addr, self._stub_hooks.pop(addr))
        for addr in want - set(self._stub_hooks):
            self._stub_hooks[addr] = self._hook(addr, self._on_stub_code)

    def before_resume(self) -> None:
        """The run goes on from here: an instruction at a breakpoint under EIP runs
        (once) instead of stopping again."""
        self.hit = None
        eip = self.uc.reg_read(X.UC_X86_REG_EIP)
        guest = self.vm.mode.guest_address(eip)
        self._skip = eip if guest in self.breakpoints else None
        self._sync_stub_hooks()         # bt may have moved its stubs (relocation)

    def _on_code(self, address: int, size: int) -> None:
        self._maybe_stop(address, address)

    def _on_stub_code(self, address: int, size: int) -> None:
        p = self.vm.mode.patcher.stub_owner(address)
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
            self._skip = None
            return
        self.hit = guest
        vm.halt_slice(abort=True)       # the instruction at `address` has not run
