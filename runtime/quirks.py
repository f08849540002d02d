"""Workarounds for Unicorn behaviour that a VMM cannot live with, in one place.

Each workaround reaches into Unicorn's private state (the CPU context bytes, the
engine's control registers).  None of the offsets is hard-coded: every one is
found at start-up by *calibration* -- run a tiny experiment in a scratch engine,
diff the raw bytes before and after, and keep the offset that changed the way the
experiment predicts.  If a calibration fails (a Unicorn release changed the
layout), :func:`calibrate` raises :class:`QuirkError` naming the field, so the
failure is loud instead of a silent double fault later.

The facts behind each workaround are pinned by tests in tests/runtime/test_unicorn_facts.py:

* exception in flight (unicorn issue #1883): after a handled fault Unicorn leaves
  ``old_exception`` set and the next contributory fault becomes a #DF.  We reset it
  to -1 after each delivered fault.
* error code: the architectural error code of the last fault lives next to it.
* hflags: the low two bits are the CPL.  ``reg_write`` refuses to load a more
  privileged SS/CS, so lowering the CPL (ring 3 -> ring 0/1 on an interrupt) edits
  these bits through the context first.
* stale EIP in hooks: ``reg_write(EIP)`` inside a hook leaves the uc_struct's
  ``skip_sync_pc_on_exit`` set until a per-instruction exit check runs; with no
  per-instruction hook that is never, and later hooks read a stale EIP.  The
  VMM clears it after each of its hooks.
* control registers: CR0/CR3/CR4 in the CPU state, read by the instruction
  clock (runtime/clock.py) to walk the guest's page tables itself.
* EFLAGS: the non-arithmetic bits (IF among them) live in one field of the CPU
  state; the clock's interrupt-window check reads IF there (runtime/_clock.c).
* live CPU state: ``context_save``/``context_restore`` are plain copies of the
  engine's CPUX86State (Unicorn's unicorn/uc.c).  Calibration also finds where the engine
  keeps that state (a pointer in the uc_struct plus a delta), so the fault fields
  are read and reset in place on every exit instead of through two 5.6 KB copies
  (measured: ~4 us of a ~16 us exit).  Each engine's address is checked against a
  fresh context save before use; when it cannot be found or does not match, the
  round trip is used (same result, slower).
"""
from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass

from unicorn import Uc, UcError, UC_ARCH_X86, UC_MODE_32, UC_HOOK_INTR, UC_PROT_ALL
from unicorn import x86_const as X

from bt.machine import flat_gdt_bytes
from bt.x86 import EFER, EFER_NXE


HF_INHIBIT_IRQ = 0x8         # hflags: interrupts inhibited for one instruction
HF_CS32 = 0x10               # hflags: the code segment is 32-bit (runtime/_clock.c reads it too)


class QuirkError(RuntimeError):
    """A calibration could not find the field it looks for."""


def _ctx_bytes(ctx) -> bytes:
    # Exactly the context's allocation (header + CPU state): reading past it is
    # a heap over-read (it used to read 16 bytes more).
    return bytes(ctx)


def _i32_offsets(before: bytes, after: bytes, old: int, new: int) -> list[int]:
    hits = []
    for off in range(0, min(len(before), len(after)) - 3, 4):
        a = struct.unpack_from("<i", before, off)[0]
        b = struct.unpack_from("<i", after, off)[0]
        if a == old and b == new:
            hits.append(off)
    return hits


def once_per_process(calibrate, error: type[Exception]):
    """`calibrate()` run on the first call and its result returned ever after;
    a failure is kept and raised again on every later call without trying
    again (an `error`, or any other exception wrapped in one: an engine whose
    memory looks nothing like 2.1.4's).  For the calibrations of Unicorn
    internals outside this module (runtime/softtlb.py, runtime/tbgen.py)."""
    state: dict = {}

    def found():
        if "failed" in state:
            raise state["failed"]
        if "value" not in state:
            try:
                state["value"] = calibrate()
            except error as e:
                state["failed"] = e
                raise
            except Exception as e:
                state["failed"] = error(f"calibration failed: {e!r}")
                raise state["failed"] from e
        return state["value"]
    return found


def scratch_engine(ram: int = 0x10000, esp: int = 0x8000, host_backed: bool = False) -> Uc:
    """A bare engine at CPL 0: `ram` bytes from 0, the flat GDT of bt.machine at
    0x500 (code 0x08, data 0x10, user 0x1b/0x23), ESP set.  For calibration
    here and for the Unicorn fact tests.  `host_backed`: the RAM is host memory
    mapped with mem_map_ptr, as runtime/vm.py maps the guest's (Unicorn then
    takes other paths for it); its mmap is kept on the engine as `host_buf`
    and its address as `host_ram`."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    if host_backed:
        import mmap
        uc.host_buf = mmap.mmap(-1, ram)
        uc.host_ram = ctypes.addressof(ctypes.c_char.from_buffer(uc.host_buf))
        uc.mem_map_ptr(0, ram, UC_PROT_ALL, uc.host_ram)
    else:
        uc.mem_map(0, ram)
    gdt = flat_gdt_bytes()
    uc.mem_write(0x500, gdt)
    uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x500, len(gdt) - 1, 0))
    uc.reg_write(X.UC_X86_REG_CS, 0x08)
    for r in (X.UC_X86_REG_SS, X.UC_X86_REG_DS, X.UC_X86_REG_ES):
        uc.reg_write(r, 0x10)
    uc.reg_write(X.UC_X86_REG_ESP, esp)
    return uc


def _provoke_gp(selector: int, eax: int = 0) -> tuple[bytes, bytes]:
    """Context bytes before and after one #GP caused by loading `selector` into FS
    from memory (so the selector value is not also sitting in a general register)."""
    uc = scratch_engine()
    uc.mem_write(0x3000, struct.pack("<H", selector))
    # mov fs, word [0x3000] ; hlt
    uc.mem_write(0x1000, bytes.fromhex("8e2500300000") + b"\xf4")
    uc.reg_write(X.UC_X86_REG_EAX, eax)
    before = _ctx_bytes(uc.context_save())
    seen = []

    def on_intr(uc, intno, _):
        seen.append(intno)
        uc.emu_stop()

    uc.hook_add(UC_HOOK_INTR, on_intr)
    uc.emu_start(0x1000, 0x1007, count=2)
    if seen != [13]:
        raise QuirkError(f"calibration expected #GP, Unicorn reported {seen}")
    after = _ctx_bytes(uc.context_save())
    return before, after


def _find_is_int_offset(error_code_off: int, after_gp: bytes) -> int:
    """`exception_is_int` follows error_code in CPUX86State: 1 after `int n`, 0 after a fault."""
    def after(code: bytes) -> bytes:
        uc = scratch_engine()
        uc.mem_write(0x1000, code)
        uc.hook_add(UC_HOOK_INTR, lambda uc, n, _: uc.emu_stop())
        uc.emu_start(0x1000, 0, count=1)
        return _ctx_bytes(uc.context_save())
    soft = after(b"\xcd\x0d")                    # int 0x0d
    off = error_code_off + 4
    if struct.unpack_from("<i", soft, off)[0] == 1 and struct.unpack_from("<i", after_gp, off)[0] == 0:
        return off
    raise QuirkError("could not find exception_is_int next to the error code")


def _find_cpl_offset() -> int:
    """Diff a context at CPL 0 with one at CPL 3 reached through an iretd."""
    uc = scratch_engine()
    before = _ctx_bytes(uc.context_save())
    # push 0x23 (ss) ; push 0x7000 ; push 2 ; push 0x1b (cs) ; push 0x1100 ; iretd
    code = bytes.fromhex("6a23" "6800700000" "6a02" "6a1b" "6800110000" "cf")
    uc.mem_write(0x1000, code)
    uc.mem_write(0x1100, b"\x90\x90\x90")
    uc.emu_start(0x1000, 0, count=7)
    if uc.reg_read(X.UC_X86_REG_CS) != 0x1B:
        raise QuirkError("calibration could not reach CPL 3")
    after = _ctx_bytes(uc.context_save())
    for off in range(0, len(before) - 3, 4):
        a = struct.unpack_from("<I", before, off)[0]
        b = struct.unpack_from("<I", after, off)[0]
        # hflags: low two bits 0 -> 3 and few other bits changed.
        if a & 3 == 0 and b & 3 == 3 and (a ^ b) & ~0x3 & 0xFFFF0000 == 0 and a > 0xFF:
            return off
    raise QuirkError("could not find hflags (CPL) in the CPU context")


def _find_reg_offset(reg: int, a: int, b: int) -> int:
    """A register's 8-byte field in the CPU state: written as `a`, then `b`, and
    found where the context changed exactly so."""
    uc = scratch_engine()
    uc.reg_write(reg, a)
    before = _ctx_bytes(uc.context_save())
    uc.reg_write(reg, b)
    after = _ctx_bytes(uc.context_save())
    hits = [off for off in range(0, min(len(before), len(after)) - 7, 8)
            if struct.unpack_from("<Q", before, off)[0] == a
            and struct.unpack_from("<Q", after, off)[0] == b]
    if len(hits) != 1:
        raise QuirkError(f"could not find register {reg} in the CPU context ({hits})")
    return hits[0]


def _find_cr_offsets() -> tuple[int, int, int]:
    """CR0, CR3 and CR4, each changed in harmless bits.  The instruction clock
    reads them to walk the guest's page tables."""
    found = (_find_reg_offset(X.UC_X86_REG_CR0, 0x60000011, 0x60010011),   # toggle WP
             _find_reg_offset(X.UC_X86_REG_CR3, 0x00123000, 0x00456000),
             _find_reg_offset(X.UC_X86_REG_CR4, 0x00000200, 0x00000600))   # +OSXMMEXCPT
    if not found[0] < found[1] < found[2]:
        raise QuirkError(f"control registers out of order in the CPU context: {found}")
    return found


def _find_hook_range_offsets() -> tuple[int, int]:
    """`begin` and `end` in Unicorn's `struct hook` (a hook handle is its
    address).  Unicorn 2.1.4 has no call that changes a hook's range, and
    deleting a hook only marks it until the engine's run ends, so a hook moved
    by delete-and-add on every guest CR3 load left hundreds of dead hooks that
    every slow-path load walked (bt's Linux boot took twice the CPU time:
    docs/benchmarks.md "Moving a hook").  Memory hooks' ranges are read at each
    access, so writing the two fields moves the hook (tests/runtime/
    test_unicorn_facts.py).  Found as the two 8-byte words holding a hook's
    begin and end, for two different ranges."""
    from unicorn import UC_HOOK_MEM_READ
    from runtime.fastuc import hook_add
    found = []
    for lo, hi in ((0x12345000, 0x12346FFF), (0x0ABCD000, 0x0ABCE7FF)):
        uc = scratch_engine()
        noop = ctypes.CFUNCTYPE(None)(lambda: None)
        h = hook_add(uc, UC_HOOK_MEM_READ, ctypes.cast(noop, ctypes.c_void_p).value, None, lo, hi)
        raw = _peek(h, 64)
        found.append([(off, off + 8) for off in range(0, len(raw) - 15, 8)
                      if struct.unpack_from("<Q", raw, off)[0] == lo
                      and struct.unpack_from("<Q", raw, off + 8)[0] == hi])
        _close_engines([uc])
    hits = sorted(set(found[0]) & set(found[1]))
    if len(hits) != 1:
        raise QuirkError(f"could not find a hook's begin/end ({found})")
    return hits[0]


def move_hook(handle: int, begin: int, end: int) -> None:
    """Give a live memory hook a new [begin, end] range in place (see
    _find_hook_range_offsets)."""
    b, e = calibrate().hook_range
    ctypes.c_uint64.from_address(handle + b).value = begin
    ctypes.c_uint64.from_address(handle + e).value = end


CC_OP_EFLAGS = 1          # QEMU's CCOp: "all flags computed, CC_SRC = flags" (CC_OP_DYNAMIC is 0)


def _find_cc_op_offset() -> int:
    """`cc_op` in the CPU state: which operation the lazy flags (CC_SRC/CC_DST)
    describe.  Found as the int that is CC_OP_ADDL (8) after `add`, CC_OP_SUBL
    (16) after `sub` and CC_OP_EFLAGS (1) after `popfd` (the engine stores it
    when a run ends).  The instruction clock repairs it at its sync-hook sites
    (runtime/_clock.c, "Lazy flags at a sync-hook site")."""
    def after(code: bytes) -> bytes:
        uc = scratch_engine()
        uc.mem_write(0x1000, code)
        uc.reg_write(X.UC_X86_REG_EAX, 5)
        uc.reg_write(X.UC_X86_REG_EBX, 3)
        uc.emu_start(0x1000, 0x1000 + len(code))
        return _ctx_bytes(uc.context_save())
    add, sub, popf = after(b"\x01\xd8"), after(b"\x29\xd8"), after(b"\x68\x02\x02\x00\x00\x9d")
    hits = [off for off in range(0, min(len(add), len(sub), len(popf)) - 3, 4)
            if struct.unpack_from("<I", add, off)[0] == 8 and struct.unpack_from("<I", sub, off)[0] == 16
            and struct.unpack_from("<I", popf, off)[0] == CC_OP_EFLAGS]
    if len(hits) != 1:
        raise QuirkError(f"could not find cc_op in the CPU context ({hits})")
    return hits[0]


def _find_efer_offset() -> int:
    """EFER's 8-byte field (written with msr_write, NXE then NXE|SCE): the VMM's
    native page walk (runtime/_walk.c) reads NXE there for PAE tables."""
    uc = scratch_engine()
    uc.msr_write(EFER, EFER_NXE)
    before = _ctx_bytes(uc.context_save())
    uc.msr_write(EFER, EFER_NXE | 1)
    after = _ctx_bytes(uc.context_save())
    hits = [off for off in range(0, min(len(before), len(after)) - 7, 8)
            if struct.unpack_from("<Q", before, off)[0] == EFER_NXE
            and struct.unpack_from("<Q", after, off)[0] == EFER_NXE | 1]
    if len(hits) != 1:
        raise QuirkError(f"could not find EFER in the CPU context ({hits})")
    return hits[0]


def _find_pc_sync_flag() -> int:
    """`skip_sync_pc_on_exit` in the uc_struct: `reg_write(EIP)` inside a hook sets
    it (so the exit that follows keeps the new EIP), and only Unicorn's
    per-instruction exit check clears it again.  Without a per-instruction hook
    (runtime/clock.py) it stays set for the rest of the emu_start, and every
    later I/O or memory hook sees the EIP of its block's start instead of its
    own.  Found as the byte a hook's EIP write sets, confirmed by clearing it and
    seeing an `out` hook report its own EIP again.

    Confirming a candidate writes a zero into that byte of a scratch engine, so a
    wrong candidate corrupts that engine (a zeroed byte of a heap pointer makes
    its later `uc_close` crash or double-free: the rare native crash of issue
    18, docs/reliability.md).  Hence only bytes that are 0 -> 1 in two
    independent pairs of engines, kept alive together so that no two share
    heap addresses, and whose aligned 8-byte word is identical across the pairs,
    are ever tried: a pointer differs between two live engines, a flag does not."""
    alive = []                   # every scratch engine, until the search is over

    def run(write_eip: bool, clear: int | None = None):
        return _pc_sync_probe(alive, write_eip, clear)

    try:
        plain1, _ = run(False)
        wrote1, stale = run(True)
        if stale == [0x1005, 0x1008]:
            raise QuirkError("hooks already see their own EIP after an EIP write (Unicorn changed)")
        plain2, _ = run(False)
        wrote2, _ = run(True)
        for off in _flag_candidates(plain1, wrote1, plain2, wrote2):
            if run(True, off)[1] == [0x1005, 0x1008]:
                return off
        raise QuirkError("could not find skip_sync_pc_on_exit in the uc_struct")
    finally:
        _close_engines(alive)


def _pc_sync_probe(alive: list, write_eip: bool, clear: int | None = None):
    """One run of _find_pc_sync_flag's experiment in a new scratch engine (kept
    in `alive`): (the uc_struct's first 32 KiB afterwards, the EIPs the two
    `out` hooks saw)."""
    from unicorn import UC_HOOK_INSN
    # int3 ; nop ; jmp l ; l: nop ; out 0x80, al ; nop ; out 0x81, al ; hlt
    code = bytes.fromhex("cc90eb0090e680" "90e681" "f4")
    uc = scratch_engine()
    alive.append(uc)
    uc.mem_write(0x1000, code)
    base = ctypes.cast(uc._uch, ctypes.c_void_p).value
    seen = []

    def intr(uc, n, _):
        if write_eip:
            uc.reg_write(X.UC_X86_REG_EIP, 0x1001)
            if clear is not None:
                ctypes.c_uint8.from_address(base + clear).value = 0
        else:
            uc.reg_write(X.UC_X86_REG_EAX, 5)

    def out(uc, port, size, value, _):
        seen.append(uc.reg_read(X.UC_X86_REG_EIP))

    uc.hook_add(UC_HOOK_INTR, intr)
    uc.hook_add(UC_HOOK_INSN, out, None, 1, 0, X.UC_X86_INS_OUT)
    uc.emu_start(0x1000, 0x1010)
    return _peek(base, 0x8000), seen


# mov dword ptr [0x100b], IMM (an unaligned store into the next instruction's
# immediate) ; add eax, imm32 ; nop.  The word form: mov word ptr [0x100b],
# IMM ; nop ; add eax, imm32 ; nop (the add at 0x100a in both).
_SMC_DWORD = bytes.fromhex("c7050b100000aefa50c7" "0511111111" "90")
_SMC_WORD = bytes.fromhex("66c7050b100000aefa" "90" "0511111111" "90")


def _find_recur_mem() -> int:
    """`size_recur_mem` in the uc_struct (an int): Unicorn 2.1.4 sets it while it
    splits an unaligned store to a page with TLB flags (a page holding translated
    code) into byte stores, and skips every UC_HOOK_MEM_READ/WRITE while it is
    non-zero (that is its purpose: the bytes are not reported again).  When one
    of those byte stores rewrites the running translation block, QEMU's
    precise-SMC path longjmps out of the loop and the field is never restored:
    every memory hook stays silent until the engine re-enters its CPU loop
    (tests/runtime/test_unicorn_facts.py; the fuzzer's program 1825 of seed
    3030, docs/fidelity.md).  A page-crossing load or store whose second half
    faults leaves it set the same way.  The clock's block hook clears it
    (runtime/_clock.c `block_hook`).

    Found as the int that is 0 in two plain runs and 4 after the dword store, 2
    after the word store, in engines kept alive together (a pointer would not
    hold the same small value in all of them)."""
    alive = []

    def run(code: bytes) -> bytes:
        uc = scratch_engine()
        alive.append(uc)
        uc.mem_write(0x1000, code)
        uc.emu_start(0x1000, 0x1000 + len(code))
        return _peek(ctypes.cast(uc._uch, ctypes.c_void_p).value, 0x8000)

    try:
        plain_code = b"\x90" * len(_SMC_DWORD)
        plain1, dword1, plain2, word2, dword2 = (run(plain_code), run(_SMC_DWORD), run(plain_code),
                                                 run(_SMC_WORD), run(_SMC_DWORD))
        n = min(map(len, (plain1, dword1, plain2, word2, dword2))) & ~3
        hits = [off for off in range(0, n, 4)
                if struct.unpack_from("<i", plain1, off)[0] == 0 == struct.unpack_from("<i", plain2, off)[0]
                and struct.unpack_from("<i", dword1, off)[0] == 4 == struct.unpack_from("<i", dword2, off)[0]
                and struct.unpack_from("<i", word2, off)[0] == 2]
        if len(hits) != 1:
            raise QuirkError(f"could not find size_recur_mem in the uc_struct ({hits})")
        return hits[0]
    finally:
        _close_engines(alive)


def _flag_candidates(plain1: bytes, wrote1: bytes, plain2: bytes, wrote2: bytes) -> list[int]:
    """Byte offsets that are 0 in both plain dumps and 1 in both written ones, and
    whose aligned 8-byte word is the same in the two plain dumps and the same in
    the two written ones (so never a byte of a pointer: see _find_pc_sync_flag)."""
    n = min(len(plain1), len(wrote1), len(plain2), len(wrote2)) & ~7
    out = []
    for off in range(n):
        if not (plain1[off] == plain2[off] == 0 and wrote1[off] == wrote2[off] == 1):
            continue
        w = off & ~7
        if plain1[w:w + 8] == plain2[w:w + 8] and wrote1[w:w + 8] == wrote2[w:w + 8]:
            out.append(off)
    return out


def _close_engines(engines: list) -> None:
    """Close calibration's scratch engines now, in order, instead of whenever the
    garbage collector reaches their reference cycles (the binding's callbacks
    refer back to the engine): a native crash must not hide in a random later
    moment of the run.  When reference counting has already freed every one
    of them (no hooks, so no cycles) there is nothing left to collect, and the
    collection (~7 ms after the imports of a run) is skipped; an empty list
    always collects (the engines of experiments that kept none)."""
    import gc
    import weakref
    refs = [weakref.ref(uc) for uc in engines]
    engines.clear()
    if refs and all(r() is None for r in refs):
        return
    gc.collect()


def _peek(addr: int, n: int) -> bytes:
    """Up to n bytes of this process's memory from addr, through /proc/self/mem:
    a read that runs into an unmapped page stops there instead of crashing, and
    the calibration's deliberate scans of engine memory whose extent it does not
    know are not reported as over-reads by AddressSanitizer
    (benchmarks/sanitized_runs.py).  b"" when nothing there is readable."""
    global _MEM_FD
    out = b""
    try:
        if _MEM_FD is None:
            _MEM_FD = os.open("/proc/self/mem", os.O_RDONLY)
        while len(out) < n:                 # page by page: stop at the first hole
            at = addr + len(out)
            chunk = os.pread(_MEM_FD, min(n - len(out), 4096 - at % 4096), at)
            if not chunk:
                break
            out += chunk
    except OSError:
        pass
    return out


_MEM_FD: int | None = None


_SIG_REGS = (X.UC_X86_REG_EAX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX, X.UC_X86_REG_EBX)


def _find_env_links() -> tuple[tuple[int, int], ...]:
    """Where the engine keeps its live CPU state (QEMU's CPUX86State, the bytes
    `context_save` copies and `context_restore` copies back): a pointer at
    `uc + link` plus `delta`, so that a calibrated context offset `off` is at
    address `*(uc + link) + delta + off`.  Found in a scratch engine by giving four
    registers distinctive values and searching the memory the uc_struct's
    pointers lead to for them; then confirmed by changing a register.  Every
    link that passes, in order: a pointer to a neighbouring heap block can reach
    the state too, at a distance that holds in this engine only (seen: the live
    check of runtime/isolation.py failing in a process whose heap layout differed),
    so only links that hold in two more engines are kept (seen: link (48, 52448)
    beside the real (440, 35368)), and the live engine takes the first of them
    whose target matches a context save (`Quirks._live_env`).  Empty when the
    search fails (the context round trip is used instead)."""
    first, *others = [scratch_engine() for _ in range(3)]
    return tuple(link for link in _env_links(first)
                 if all(_env_link_holds(uc, link) for uc in others))


def _env_links(uc) -> list[tuple[int, int]]:
    """Every (link, delta) that leads to this engine's live CPU state."""
    for i, r in enumerate(_SIG_REGS):
        uc.reg_write(r, 0x5AC30000 + i * 0x1111)
    ctx = _ctx_bytes(uc.context_save())
    # The saved context is a small header (size, mode, arch, ...) and then the
    # state itself, which begins with EAX (all calibrated offsets count from
    # the header's start).
    head = ctx.find(struct.pack("<Q", 0x5AC30000))
    if head < 0 or head % 8:
        return ()
    sig = ctx[head:head + 32]
    uc_addr = ctypes.cast(uc._uch, ctypes.c_void_p).value
    raw = _peek(uc_addr, 8192)
    found = []
    for link in range(0, len(raw) - 7, 8):
        p = struct.unpack_from("<Q", raw, link)[0]
        if p < 0x10000 or p >= 1 << 47:     # not a user-space pointer
            continue
        at = _peek(p, 0x10000).find(sig)
        if at < 0 or at % 8:
            continue
        if _env_link_holds(uc, (link, at - head), head):
            found.append((link, at - head))
    return found


def _env_link_holds(uc, link: tuple[int, int], eax_off: int | None = None) -> bool:
    """Writing EAX through the engine shows up at *(uc + link) + delta + EAX's offset."""
    if eax_off is None:                 # EAX's offset in a saved context
        uc.reg_write(X.UC_X86_REG_EAX, 0x5AC3_9A11)
        eax_off = _ctx_bytes(uc.context_save()).find(struct.pack("<Q", 0x5AC3_9A11))
        if eax_off < 0:
            return False
    uc_addr = ctypes.cast(uc._uch, ctypes.c_void_p).value
    p = struct.unpack("<Q", _peek(uc_addr + link[0], 8).ljust(8, b"\0"))[0]
    if p < 0x10000 or p >= 1 << 47:
        return False
    env = p + link[1] + eax_off
    old = uc.reg_read(X.UC_X86_REG_EAX)
    ok = True
    for probe in (0x12345678, 0x0BADF00D):
        uc.reg_write(X.UC_X86_REG_EAX, probe)
        ok = ok and _peek(env, 4) == struct.pack("<I", probe)
    uc.reg_write(X.UC_X86_REG_EAX, old)
    return ok


@dataclass(frozen=True)
class Offsets:
    old_exception: int
    error_code: int
    is_int: int
    hflags: int
    cr: tuple[int, int, int]             # CR0, CR3, CR4
    pc_sync_flag: int                    # uc_struct.skip_sync_pc_on_exit
    eip: int
    eflags: int                          # the field holding IF (the arithmetic flags are lazy)
    env_links: tuple[tuple[int, int], ...]   # (pointer offset in uc_struct, delta), see _find_env_links
    efer: int                            # EFER (NXE matters to PAE walks)
    recur_mem: int                       # uc_struct.size_recur_mem, see _find_recur_mem
    cc_op: int                           # the lazy flags' operation, see _find_cc_op_offset
    hook_range: tuple[int, int]          # struct hook's begin and end, see _find_hook_range_offsets


_OFFSETS: Offsets | None = None


def calibrate() -> Offsets:
    """Every private offset the workarounds need, found once per process: from
    the calibration cache when its key matches and `_verify_offsets` accepts
    them, else by calibration (runtime/calcache.py)."""
    global _OFFSETS
    if _OFFSETS is None:
        from runtime import calcache
        _OFFSETS = calcache.cached("quirks", _calibrate_all, Offsets, _verify_offsets)
    return _OFFSETS


def _calibrate_all() -> Offsets:
    b1, a1 = _provoke_gp(0x5550)
    b2, a2 = _provoke_gp(0x6660)
    old_exc = sorted(set(_i32_offsets(b1, a1, -1, 13)) & set(_i32_offsets(b2, a2, -1, 13)))
    err = sorted(set(_i32_offsets(b1, a1, 0, 0x5550)) & set(_i32_offsets(b2, a2, 0, 0x6660)))
    if len(old_exc) < 1:
        raise QuirkError("could not find the exception-in-flight field (old_exception)")
    if len(err) < 1:
        raise QuirkError("could not find the fault error-code field")
    # error_code follows exception_index/old_exception in CPUX86State; take the first
    # match after old_exception.
    ec = [o for o in err if o > old_exc[0]] or err
    found = Offsets(old_exc[0], ec[0], _find_is_int_offset(ec[0], a1), _find_cpl_offset(),
                       _find_cr_offsets(), _find_pc_sync_flag(),
                       _find_reg_offset(X.UC_X86_REG_EIP, 0x00123450, 0x00ABC560),
                       _find_reg_offset(X.UC_X86_REG_EFLAGS, 0x00000002, 0x00000202),
                       _find_env_links(), _find_efer_offset(), _find_recur_mem(),
                       _find_cc_op_offset(), _find_hook_range_offsets())
    _close_engines([])           # the remaining scratch engines die here, not later
    return found


def _verify_offsets(off: Offsets) -> bool:
    """Cached offsets still behave as calibration found them: each experiment
    replayed once in scratch engines (~3 ms, against ~80 ms of calibration).
    Memory is read through _peek and only the scratch engines' own fields
    are written, so a wrong offset gives False, never a crash."""
    def u32(data: bytes, at: int) -> int:
        return struct.unpack_from("<I", data, at)[0]

    def q64(data: bytes, at: int) -> int:
        return struct.unpack_from("<Q", data, at)[0]

    import gc
    # Everything older than this check is frozen, so the collection that closes
    # its engines (_close_engines) walks only the check's own objects: ~1 ms
    # instead of ~7 (emulate) or ~25 (bt, networkx loaded) of a full collection.
    gc.freeze()
    alive = []
    try:
        if not off.env_links:        # a search that failed once is tried again
            return False
        b, a = _provoke_gp(0x5550)
        if not (u32(b, off.old_exception) == 0xFFFFFFFF and u32(a, off.old_exception) == 13
                and u32(b, off.error_code) == 0 and u32(a, off.error_code) == 0x5550
                and _find_is_int_offset(off.error_code, a) == off.is_int):
            return False
        uc = scratch_engine()
        alive.append(uc)
        values = ((X.UC_X86_REG_EIP, off.eip, 0x00ABC560), (X.UC_X86_REG_EFLAGS, off.eflags, 0x202),
                  (X.UC_X86_REG_CR0, off.cr[0], 0x60010011), (X.UC_X86_REG_CR3, off.cr[1], 0x00456000),
                  (X.UC_X86_REG_CR4, off.cr[2], 0x00000600))
        for reg, _, v in values:
            uc.reg_write(reg, v)
        uc.msr_write(EFER, EFER_NXE | 1)
        ctx = _ctx_bytes(uc.context_save())
        if any(q64(ctx, at) != v for _, at, v in values) or q64(ctx, off.efer) != EFER_NXE | 1:
            return False
        if u32(ctx, off.hflags) & 3 != 0 or u32(ctx, off.hflags) <= 0xFF:
            return False
        if not any(_env_link_holds(uc, link) for link in off.env_links):
            return False
        uc.mem_write(0x1000, _SMC_DWORD)
        uc_addr = ctypes.cast(uc._uch, ctypes.c_void_p).value
        if _peek(uc_addr + off.recur_mem, 4) != struct.pack("<i", 0):
            return False
        uc.emu_start(0x1000, 0x1000 + len(_SMC_DWORD))
        if _peek(uc_addr + off.recur_mem, 4) != struct.pack("<i", 4):
            return False
        uc.mem_write(0x1000, b"\x01\xd8")                     # add eax, ebx
        uc.emu_start(0x1000, 0x1002)
        if u32(_ctx_bytes(uc.context_save()), off.cc_op) != 8:
            return False
        plain, _ = _pc_sync_probe(alive, False)
        wrote, stale = _pc_sync_probe(alive, True)
        if plain[off.pc_sync_flag] != 0 or wrote[off.pc_sync_flag] != 1 or stale == [0x1005, 0x1008]:
            return False
        from unicorn import UC_HOOK_MEM_READ
        from runtime.fastuc import hook_add
        noop = ctypes.CFUNCTYPE(None)(lambda: None)
        h = hook_add(uc, UC_HOOK_MEM_READ, ctypes.cast(noop, ctypes.c_void_p).value, None,
                     0x0ABCD000, 0x0ABCE7FF)
        b_off, e_off = off.hook_range
        return (_peek(h + b_off, 8) == struct.pack("<Q", 0x0ABCD000)
                and _peek(h + e_off, 8) == struct.pack("<Q", 0x0ABCE7FF))
    finally:
        _close_engines(alive)
        gc.unfreeze()


class Quirks:
    """Per-engine helpers built on the calibrated offsets."""

    def __init__(self, uc: Uc):
        self.uc = uc
        self.off = calibrate()
        self._ctx = uc.context_save()
        self._uc_addr = ctypes.cast(uc._uch, ctypes.c_void_p).value
        self._pc_sync = ctypes.c_uint8.from_address(self._uc_addr + self.off.pc_sync_flag)
        # The live CPU state, when found: fault fields are then read and
        # written in place, with no context round trip (two 5.6 KB copies,
        # ~3.5 us of every exit).  `context_restore` is itself a memcpy into
        # this memory (Unicorn's unicorn/uc.c), so an edit in place is the same edit.
        self.env = self._live_env()
        if self.env is not None:
            self._eip = ctypes.c_uint32.from_address(self.env + self.off.eip)
            self._hflags = ctypes.c_uint32.from_address(self.env + self.off.hflags)
            self._fault = (ctypes.c_uint32.from_address(self.env + self.off.error_code),
                           ctypes.c_int32.from_address(self.env + self.off.is_int),
                           ctypes.c_int32.from_address(self.env + self.off.old_exception))

    def _live_env(self) -> int | None:
        self.env_problem = ""            # why the live state is not used, for error messages
        if not self.off.env_links:
            self.env_problem = "calibration found no pointer to it"
            return None
        problems = []
        for link in self.off.env_links:
            env = self._env_at(link, problems)
            if env is not None:
                return env
        self.env_problem = "; ".join(problems)
        return None

    def _env_at(self, link: tuple[int, int], problems: list[str]) -> int | None:
        p = ctypes.c_uint64.from_address(self._uc_addr + link[0]).value
        if not p:
            problems.append(f"the engine's pointer to it is NULL (link {link})")
            return None
        env = p + link[1]           # + a calibrated offset = that field, live
        # Trust it only when it holds exactly what a context save copies.  (The
        # mismatch once seen under load came from comparing with a context that
        # had already been freed; the saved context is now held while read.)  The
        # check keeps three tries: the hypervisor area's guard (runtime/isolation.py)
        # cannot run without it.
        windows = (self.off.hflags, self.off.error_code - 64)
        for _ in range(3):
            saved = self.uc.context_save()     # kept alive while its bytes are read
            ctx = saved.context.value
            live = [ctypes.string_at(env + off, 128) for off in windows]
            copy = [ctypes.string_at(ctx + off, 128) for off in windows]
            if live == copy:
                return env
        differ = [off + i for off, a, b in zip(windows, live, copy) for i in range(128) if a[i] != b[i]]
        problems.append(f"it does not match a context save at offsets {differ[:8]} "
                        f"(link {link}, env {env:#x})")
        return None

    # -- exit-path reads (the live CPU state, else the engine) -------------------
    def eip(self) -> int:
        """EIP as reg_read gives it (the same field), without a call into Unicorn."""
        if self.env is not None:
            return self._eip.value
        return self.uc.reg_read(X.UC_X86_REG_EIP)

    def cpl(self) -> int:
        """The CPU's current privilege level (hflags' low two bits, = CS.RPL)."""
        if self.env is not None:
            return self._hflags.value & 3
        return self.uc.reg_read(X.UC_X86_REG_CS) & 3

    def irq_inhibited(self) -> bool:
        """The CPU is inside an sti / mov-ss shadow (QEMU's HF_INHIBIT_IRQ, hflags
        bit 3: tests/runtime/test_unicorn_block_facts.py)."""
        if self.env is not None:
            return bool(self._hflags.value & HF_INHIBIT_IRQ)
        return False

    def code16(self) -> bool | None:
        """Is the CPU running 16-bit code (QEMU's HF_CS32 clear: real mode, or a
        16-bit code segment)?  Kept current by reg_write of CS
        (tests/runtime/test_realmode_facts.py).  None without the live state."""
        if self.env is not None:
            return not self._hflags.value & HF_CS32
        return None

    def pc_sync_address(self) -> int:
        """Where the engine's PC-sync flag lives (a native hook clears it after
        writing EIP, as resync_pc does: runtime/_exits.c)."""
        return self._uc_addr + self.off.pc_sync_flag

    def recur_mem_address(self) -> int:
        """Where the engine's `size_recur_mem` lives (see _find_recur_mem): the
        clock's block hook clears it."""
        return self._uc_addr + self.off.recur_mem

    def end_irq_shadow(self) -> None:
        """The VMM completed the instruction in an sti shadow (an exit that
        emulated it): the shadow is over, as on the CPU.  Unicorn leaves
        HF_INHIBIT_IRQ set when that instruction raised an exception (the reset
        sits at its block's end), so the next block would still be shadowed
        (tests/runtime/test_realif_facts.py)."""
        if self.env is not None and self._hflags.value & HF_INHIBIT_IRQ:
            self._hflags.value &= ~HF_INHIBIT_IRQ

    def open_irq_shadow(self) -> None:
        """The VMM emulated a `mov ss` / `pop ss` outside a shadow: the next
        instruction runs in its shadow, as after the CPU's own (QEMU sets the
        bit after an SS load only when it was clear: a load in sti's shadow
        opens none; tests/runtime/test_irq_window.py pins it)."""
        if self.env is not None:
            self._hflags.value |= HF_INHIBIT_IRQ

    def resync_pc(self) -> None:
        """After a hook that may have written EIP: let later hooks in this slice
        see their own EIP again (see _find_pc_sync_flag)."""
        self._pc_sync.value = 0

    # -- fault state -----------------------------------------------------------
    def _edit(self, off: int, mask: int, value: int) -> None:
        if self.env is not None:
            p = ctypes.c_uint32.from_address(self.env + off)
            p.value = (p.value & ~mask & 0xFFFFFFFF) | value
            return
        uc, ctx = self.uc, self._ctx
        uc.context_update(ctx)
        p = ctypes.c_uint32.from_address(ctx.context.value + off)
        p.value = (p.value & ~mask & 0xFFFFFFFF) | value
        uc.context_restore(ctx)

    def take_fault(self) -> tuple[int, bool]:
        """At a fault: read (error code, raised-by-int-n) and clear the exception in
        flight (this is on every exit's path): in place in the live CPU state,
        else with one context round trip."""
        f = self._fault if self.env is not None else None
        if f is not None:
            error = f[0].value
            is_int = f[1].value == 1
            f[2].value = -1
            return error, is_int
        uc, ctx = self.uc, self._ctx
        uc.context_update(ctx)
        base = ctx.context.value
        error = ctypes.c_uint32.from_address(base + self.off.error_code).value
        is_int = ctypes.c_int32.from_address(base + self.off.is_int).value == 1
        ctypes.c_int32.from_address(base + self.off.old_exception).value = -1
        uc.context_restore(ctx)
        return error, is_int

    def set_cpl(self, cpl: int) -> None:
        """Force the CPL; afterwards reg_write may load segments of that ring."""
        self._edit(self.off.hflags, 3, cpl & 3)


__all__ = ["Quirks", "QuirkError", "calibrate", "Offsets", "UcError"]
