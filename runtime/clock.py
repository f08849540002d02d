"""Virtual time: guest instructions, counted per translated block in C.

`InstructionClock` owns the engine's native block hook (runtime/_clock.c) and
runs one slice of at most `budget` instructions:

* every block Unicorn is about to run is counted whole as it starts (its
  instruction count is decoded once per address, size and bytes);
* a block that would pass the budget is not entered; the clock then runs that
  block once more with a Unicorn exit at the budget's instruction inside it,
  so a slice ends at exactly `budget` instructions;
* a block that a fault or an aborted store cuts short is corrected by
  `cut(eip, started)` from the VMM's hook (vm.py).

This replaced `emu_start(count=N)`, whose per-instruction counting hook held a
CPU-bound guest to ~0.3 of the bare engine (docs/benchmarks.md, cpu-ratio).
What stays exact: slice ends (timer interrupts land on the same instruction
every run), faults, and the time a device or rdtsc reads (the position of EIP
inside the current block), and a stop the VMM requests from an I/O hook:
Unicorn checks for a stop request between instructions only where a code hook
is, so the instruction after every in/out gets a no-op native one
(`stop_after_io`) and an interrupt an `out` makes deliverable is injected right
after it.  What is coarser: a stop from any other hook (a device ending the run:
`VM.request_stop` takes the count and EIP at the instruction instead, and what
is left of the block reaches neither devices nor the VMM).  Blocks are addressed by linear address; the guest's
segments must be flat (CS base 0), as every supported guest's are.
"""
from __future__ import annotations

import ctypes

import capstone
from capstone.x86_const import X86_INS_CMPXCHG8B
from unicorn import UC_HOOK_BLOCK, UC_HOOK_CODE, UcError
from unicorn.x86_const import UC_X86_REG_EIP
from unicorn.unicorn_py3.unicorn import uclib

from bt.errors import VMMError
from runtime.fastuc import hook_add

try:
    from runtime import _clock
except ImportError as e:        # pragma: no cover - the package build compiles it
    _clock = None
    _IMPORT_ERROR = e

STOP_NONE, STOP_BEFORE, STOP_AT, STOP_FIX, STOP_SCAN, STOP_IRQ = 0, 1, 2, 3, 4, 5


def _fn(f) -> int:
    return ctypes.cast(f, ctypes.c_void_p).value


class InstructionClock:
    def __init__(self, uc):
        if _clock is None:
            raise VMMError(f"runtime._clock is not built ({_IMPORT_ERROR}); "
                           "reinstall with `pip install -e .` (needs a C compiler)")
        from scanner.decode import new_capstone
        self.uc = uc
        self._md = new_capstone()        # kept alive: the clock decodes with its handle
        cs = capstone._cs
        self.c = _clock.Clock(_fn(uclib.uc_emu_stop), _fn(uclib.uc_vmem_read),
                              self._md.csh.value, _fn(cs.cs_disasm_iter),
                              _fn(cs.cs_malloc), _fn(cs.cs_free), X86_INS_CMPXCHG8B)
        (self._block_cb, self._noop_cb, self._write_cb, self._read_before_cb,
         self._read_after_cb, self.rdtsc_cb, self.rdtscp_cb) = _clock.callbacks()
        self.on_unscanned = None         # bt: CSAM's handler of a refused block start
        self.fix_handlers = []           # fix_smsw, fix_model_sites: the VMM's own hooks for a site
        self._user = id(self.c)          # the C object itself is the hooks' user data
        self.exact_stops = 0             # slices ended inside a block (re-runs to an exit)
        self.breakpoint_stop = None      # the budget's instruction, where QEMU's #DB ends the slice
        hook_add(uc, UC_HOOK_BLOCK, self._block_cb, self._user, 1, 0)

    # -- configuration ----------------------------------------------------------
    def set_memory(self, regions: list[tuple[int, int, int]]) -> None:
        """(physical base, size, host address) of every host buffer that holds code."""
        self.c.set_regions(regions)

    def set_cpu_state(self, env: int | None, cr0: int, cr3: int, cr4: int, efer: int = -1) -> None:
        """The live CPU state and its CR0/CR3/CR4 (and EFER) offsets: lets the clock
        read code through the guest's page tables, two-level or PAE, without
        calling into Unicorn (runtime/pagewalk.h)."""
        if env is not None:
            self.c.set_env(env, cr0, cr3, cr4, efer)

    def decode_code16(self, hflags_off: int) -> None:
        """Decode blocks of 16-bit code (real mode, a 16-bit code segment) as
        16-bit code: their instruction sizes differ from the 32-bit decoding
        (tests/runtime/test_realmode.py counts a real-mode loop exactly)."""
        md16 = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_16)
        md16.detail = False
        self._md16 = md16                # kept alive: the clock decodes with its handle
        self.c.decode_code16(md16.csh.value, hflags_off)

    def watch_site_flags(self, cc_op_off: int, eip_off: int) -> None:
        """Where the lazy flags' operation and EIP live in the live CPU state:
        hooks called inside an instruction at a sync site put the operation
        back (runtime/_clock.c, "Lazy flags at a sync-hook site")."""
        self.c.watch_site_flags(cc_op_off, eip_off)

    def repair_site_flags(self) -> None:
        """From a hook called inside an instruction (cpuid): see watch_site_flags."""
        self.c.repair_site_flags()

    def revive_memory_hooks(self, recur_mem_address: int) -> None:
        """Clear the engine's `size_recur_mem` at every block start: Unicorn can
        leave it set and silence all memory hooks (runtime/quirks.py
        _find_recur_mem)."""
        self.c.set_recur_mem(recur_mem_address)

    def enable_fast_stores(self, ram_bytes: int, hflags_off: int | bool) -> str:
        """Let guest stores to RAM pages without translated code take Unicorn's
        inline fast path (runtime/faststores.h, runtime/softtlb.py): the block
        hook keeps TLB_NOTDIRTY only on pages it has seen code run on.
        `hflags_off`: the calibrated offset of hflags (which MMU mode is in
        use), False without the live CPU state (set_cpu_state).  Returns "" when
        enabled, else why not (the engine's TLB not found: the run is only
        slower; tests/runtime/test_store_facts.py fails loudly).  In every
        mode: with trap's and bt's memory hooks every store reaches Unicorn's
        helper anyway, which calls the write hooks before it looks at the
        mark, so unmarking only skips the per-store code check there."""
        from runtime import softtlb
        from runtime.fastuc import TLB_FLUSH
        if hflags_off is False:
            return "the live CPU state was not found (runtime/quirks.py)"
        try:
            lay = softtlb.layout()
        except softtlb.TLBError as e:
            return str(e)
        self.c.enable_fast_stores(_fn(uclib.uc_ctl), TLB_FLUSH, lay.fast, lay.modes, lay.entry_bits,
                                  lay.write, lay.paddr, hflags_off, ram_bytes)
        self.watch_generation()
        return ""

    def watch_generation(self) -> None:
        """A block compared at the current translation generation needs no
        second comparison (runtime/tbgen.py; runtime/_clock.c, "Blocks known
        unchanged") as long as every page that holds translated code keeps
        TLB_NOTDIRTY, so that a guest store into it invalidates the block.
        That holds in every mode: fast stores unmark only pages that never ran
        code (docs/benchmarks.md, "bt through the decompressor").  Without the counters every
        block is compared, as before."""
        from runtime import tbgen
        try:
            self.c.watch_generation(*tbgen.addresses(self.uc))
            self.generation_problem = ""
        except tbgen.TBGenError as e:
            self.generation_problem = str(e)

    # -- the virtual TSC (runtime/tsc.py) ------------------------------------------------
    def enable_tsc(self, eip_off: int) -> int:
        """Lets the clock's rdtsc/rdtscp hooks answer (runtime/_clock.c,
        "Time-stamp counter"); returns their user data for
        UC_HOOK_INSN.  Needs the live CPU state (set_cpu_state)."""
        from unicorn.x86_const import UC_X86_REG_EAX, UC_X86_REG_ECX, UC_X86_REG_EDX
        self.c.enable_tsc(_fn(uclib.uc_reg_write), UC_X86_REG_EAX, UC_X86_REG_EDX,
                          UC_X86_REG_ECX, eip_off)
        return self._user

    def set_tsc_base(self, value: int) -> None:
        """The TSC at the coming slice's first instruction."""
        self.c.set_tsc_base(value)

    def set_vtime_base(self, value: int) -> None:
        """The virtual time at the coming slice's first instruction (the C
        side's vtime_now, which native hooks such as the PIT's reads use)."""
        self.c.set_vtime_base(value)

    @property
    def tsc_reads(self) -> int:
        return self.c.tsc_reads

    # -- the interrupt window (emulate) -----------------------------------------------
    def watch_irq_window(self, eflags_off: int, hflags_off: int) -> None:
        """Where IF and the sti shadow live in the live CPU state (runtime/quirks.py):
        enables `set_irq_wait` (runtime/_clock.c, "Interrupt window")."""
        self.c.watch_irq_window(eflags_off, hflags_off)

    def stop_after_io(self) -> None:
        """A stop the VMM requests from an in/out hook takes effect right after
        that instruction (a no-op code hook on the next one, as for cmpxchg8b)
        instead of at the end of its block (runtime/_clock.c)."""
        from capstone.x86_const import X86_INS_IN, X86_INS_OUT
        self.c.stop_after_io(X86_INS_IN, X86_INS_OUT)

    def fix_smsw(self, on_site) -> None:
        """Stop before every block holding an smsw whose site is not hooked yet,
        as for cmpxchg8b, and let `on_site(linear address)` hook it instead of
        the no-op (runtime/smswfix.py: Unicorn's smsw r32 writes 16 bits)."""
        from capstone.x86_const import X86_INS_SMSW
        self.fix_handlers.append(on_site)
        self.c.fix_smsw(X86_INS_SMSW)

    def fix_model_sites(self, on_site) -> None:
        """The same for rdmsr, wrmsr and `mov cr4, r32` (runtime/cpucheck.py:
        the CPU model's #GP under emulate)."""
        from capstone.x86_const import X86_INS_RDMSR, X86_INS_WRMSR
        self.fix_handlers.append(on_site)
        self.c.fix_model_sites(X86_INS_RDMSR, X86_INS_WRMSR)

    def set_irq_wait(self, on: bool) -> None:
        """While on, the slice ends (reason STOP_IRQ) before the first block that
        starts with IF set outside an sti/mov-ss shadow: the instruction boundary
        where the CPU takes a waiting interrupt."""
        self.c.set_irq_wait(on)

    # -- CSAM's code check (bt) ----------------------------------------------------
    def enable_code_check(self, ram_bytes: int, hflags_off: int, on_unscanned) -> None:
        """From now on every block the guest kernel starts in RAM must begin at a
        scanned instruction; `on_unscanned(addr)` is called (between two engine
        runs, never from a hook) for each one that does not, and the block is
        run after it returns."""
        self.c.enable_code_check(ram_bytes, hflags_off)
        self.on_unscanned = on_unscanned

    def watch_code_writes(self, ranges: list[tuple[int, int]]) -> None:
        """The native write hooks, one per [begin, end] range (physical), that mark
        pages whose scanned bytes the guest stores into (runtime/_clock.c write_hook,
        which checks each stored byte against the page's scanned flags: a page in
        a range without code costs a lookup, and Unicorn's precise-state restore
        before the call: runtime/hookspans.py).  A few ranges for the engine
        (runtime/hookspans.py MAX_SPANS), replacing the old ones: Unicorn checks
        every slow-path store against every write hook's range -- 1,000 ranged
        hooks made each store ~17-34 us (docs/benchmarks.md, "Stores as code
        grows").  Unicorn 2.1.4 has no call that changes a hook's range: the old
        hooks are deleted (they no longer fire, already translated blocks
        included: tests/runtime/test_write_hook_span.py) and new ones added."""
        from unicorn import UC_HOOK_MEM_WRITE
        from unicorn.unicorn_py3.unicorn import uclib
        for h in getattr(self, "_code_write_hooks", ()):
            uclib.uc_hook_del(self.uc._uch, h)
        self._code_write_hooks = [hook_add(self.uc, UC_HOOK_MEM_WRITE, self._write_cb, self._user, b, e)
                                  for b, e in ranges]

    def code_write_hooks(self) -> int:
        """How many code-write hooks are alive."""
        return len(getattr(self, "_code_write_hooks", ()))

    def hide_patch_bytes(self, ranges: list[tuple[int, int]]) -> None:
        """The native read hooks, a pair per [begin, end] range (physical), through
        which every guest load of a byte marked in a page's hidden-bytes table
        (`c.set_page(2, ...)`) sees the guest's own byte (runtime/_clock.c,
        "Patches hidden from guest loads"); a page with no table costs a lookup
        (and the state restore: runtime/hookspans.py).  A few pairs for the
        engine, replacing the old ones, because Unicorn checks every slow-path
        load against every read hook's range -- 1,000 ranged hooks made each
        load ~13 us (docs/fidelity.md, "Reads of patched code")."""
        from unicorn import UC_HOOK_MEM_READ, UC_HOOK_MEM_READ_AFTER
        from unicorn.unicorn_py3.unicorn import uclib
        for h in getattr(self, "_read_hooks", ()):
            uclib.uc_hook_del(self.uc._uch, h)      # freed by Unicorn when the run ends
        self._read_hooks = [h for b, e in ranges for h in (
            hook_add(self.uc, UC_HOOK_MEM_READ, self._read_before_cb, self._user, b, e),
            hook_add(self.uc, UC_HOOK_MEM_READ_AFTER, self._read_after_cb, self._user, b, e))]

    # -- reading ------------------------------------------------------------------
    @property
    def count(self) -> int:
        return self.c.count

    # The block tables are keyed by linear address (QEMU's tb->pc: CS base +
    # EIP); the VMM asks with EIP.  `code_base()` answers the CS base where it
    # is not 0: in real mode CS * 16 (the VM sets it: runtime/realmode.py);
    # protected-mode guests run flat code (base 0).
    @staticmethod
    def code_base() -> int:
        return 0

    def started(self, eip: int) -> int:
        """Instructions started in this slice, the one at `eip` included (hooks)."""
        return self.c.started((eip + self.code_base()) & 0xFFFFFFFF)

    def next(self, eip: int) -> int | None:
        """The address after the instruction at `eip` in the running block."""
        base = self.code_base()
        after = self.c.next((eip + base) & 0xFFFFFFFF)
        return None if after is None else (after - base) & 0xFFFFFFFF

    def cut(self, eip: int, started: bool, linear: bool = False) -> bool:
        """The current block ended at `eip` (a linear address if `linear`: a
        code hook's): the instruction there was started
        (a fault, counted as Unicorn's count hook did) or not (an aborted store)."""
        return self.c.cut(eip if linear else (eip + self.code_base()) & 0xFFFFFFFF, started)

    def stats(self) -> dict:
        d = self.c.stats()
        d["exact_stops"] = self.exact_stops
        return d

    # -- running ------------------------------------------------------------------
    def run(self, pc: int, budget: int, interrupted) -> UcError | None:
        """Run from `pc` until `budget` instructions have started, Unicorn stops
        on its own, or `interrupted()` (a VMM stop) is true."""
        uc, c = self.uc, self.c
        c.begin(budget)
        self.breakpoint_stop = None
        err = self._emu(pc)
        while err is None and not interrupted():
            if c.reason == STOP_FIX:
                err = self._hook_fix_sites()
                continue
            if c.reason == STOP_SCAN:
                block = self.on_unscanned(c.stop_block)
                c.resume()
                if interrupted():
                    break
                err = self._emu_linear(block)
                continue
            if c.reason != STOP_BEFORE:
                break
            left = budget - c.count
            # left 0: the block starts inside a template; its first guest
            # instruction's stub code is the boundary (runtime/_clock.c find_boundary)
            where = c.boundary(left) if left >= 0 else None
            if where is None:
                break                   # exactly at the budget, before a block
            addr, size = where
            block = c.stop_block
            # Re-run the block with a Unicorn exit at the budget's instruction.
            # Exits are checked when a block is translated, so the cached block
            # goes first; at the end of the run Unicorn drops the block that
            # ends at the exit.  (A one-address code hook would work too, but
            # Unicorn frees a deleted hook only when the next run ends.)
            # The block and the exit are linear (tb->pc); emu_start takes EIP,
            # which differs by the CS base in real and virtual-8086 mode
            # (tests/runtime/test_v86.py, ticks in V86 code).
            base = self.code_base()
            count = c.count
            uc.ctl_set_exits([addr])
            try:
                uc.ctl_remove_cache(block, block + size)
                c.resume()
                err = self._emu_linear(block)
            finally:
                uc.ctl_set_exits([])
            self.exact_stops += 1
            if err is None and c.reason == STOP_BEFORE and (c.stop_block, c.count) == (block, count):
                # The exit did not shorten the block: QEMU ended it at an
                # instruction breakpoint on the budget's instruction before
                # Unicorn checks the exit there (emulate; trap and bt hook
                # breakpoints instead).  It runs whole: its #DB at `addr` is
                # the slice's end, the instruction not started
                # (runtime/vm.py `_on_interrupt`), and an interrupt due at
                # the boundary is taken before it, as the CPU's priorities say.
                self.breakpoint_stop = addr
                c.run_whole()
                err = self._emu_linear(block)
            if err is None and c.reason == STOP_NONE and c.count == budget \
                    and uc.reg_read(UC_X86_REG_EIP) == (addr - base) & 0xFFFFFFFF:
                c.reached()
        return err

    def _hook_fix_sites(self) -> UcError | None:
        """Hook the sites of the block stopped before (its fix list,
        runtime/_clock.c): the VMM's own hook where a handler claims the site
        (`fix_smsw`, `fix_model_sites`), else a no-op sync hook.

        The no-op's reason: Unicorn 2.1.4 translates cmpxchg8b without writing the lazy flags state
        back first, so its helper computes the other flags from a stale state:
        after `add edi, edi; cmpxchg8b [esi]`, pushfd shows a garbage EFLAGS
        (high bits, even TF; tests/runtime/test_clock.py).  Unicorn does write the
        state back before a code hook, so every cmpxchg8b gets a no-op native
        code hook before its block first runs (the clock sees each block's
        instructions before it runs and stops in front of such a block)."""
        uc, c = self.uc, self.c
        for site in c.unhooked():
            # the VMM's own hook (an smsw, a CPU-model site) is a code hook there
            # too: the sync holds
            if not any(handler(site) for handler in self.fix_handlers):
                hook_add(uc, UC_HOOK_CODE, self._noop_cb, 0, site, site)   # for the engine's life
            c.mark_hooked(site)
            uc.ctl_remove_cache(site, site + 1)        # every cached block holding it
        block = c.stop_block
        c.resume()
        return self._emu_linear(block)

    def _emu_linear(self, block: int) -> UcError | None:
        """Resume at a block the clock stopped in front of: its address is
        linear, emu_start's is EIP (an offset within CS).  They differ in real
        and virtual-8086 mode, where CS's base is selector * 16 (a BIOS handler
        at F000:E000)."""
        return self._emu((block - self.code_base()) & 0xFFFFFFFF)

    def _emu(self, pc: int) -> UcError | None:
        try:
            self.uc.emu_start(pc, 0)
        except UcError as e:
            return e
        return None

    @property
    def reason(self) -> int:
        return self.c.reason
