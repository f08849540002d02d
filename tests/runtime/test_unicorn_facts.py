"""Facts about Unicorn 2.1 that the runtime is built on, each pinned by a test
(the project's rule: verify every claim about Unicorn before building on it)."""
import pytest
from unicorn import (UC_HOOK_CODE, UC_HOOK_INTR, UC_HOOK_INSN, UC_HOOK_MEM_FETCH_PROT, UC_PROT_ALL,
                     UC_PROT_EXEC, UC_PROT_READ, UC_PROT_WRITE)
from unicorn import x86_const as X

from conftest import assemble
from runtime.quirks import Quirks, calibrate, scratch_engine


def engine(code: bytes, at=0x1000):
    uc = scratch_engine(0x200000, 0x9000)
    uc.mem_write(at, code)
    return uc


def test_calibration_finds_every_field():
    off = calibrate()
    assert len({off.old_exception, off.error_code, off.is_int, off.hflags, *off.cr}) == 7
    assert off.pc_sync_flag > 0


def test_calibration_never_tries_a_byte_of_a_pointer():
    """Confirming a skip_sync_pc_on_exit candidate zeroes that byte in a scratch
    engine; a zeroed pointer byte made the engine's later uc_close crash (the rare
    native crash of issue 18).  Candidates must be 0 -> 1 in two pairs of engines
    and sit in an 8-byte word identical across the pairs, which a pointer is not."""
    from runtime.quirks import _flag_candidates
    flag_off, ptr_off = 10, 17
    plain1, wrote1 = bytearray(32), bytearray(32)
    plain2, wrote2 = bytearray(32), bytearray(32)
    wrote1[flag_off] = wrote2[flag_off] = 1
    # A heap pointer at 16: its byte 1 happens to be 0 -> 1 in both pairs, but the
    # pointers themselves differ between the engines.
    plain1[16:24] = (0x55d0_00a0_0010).to_bytes(8, "little")
    wrote1[16:24] = (0x55d0_00a0_0110).to_bytes(8, "little")
    plain2[16:24] = (0x55e3_0020_0010).to_bytes(8, "little")
    wrote2[16:24] = (0x55e3_0020_0110).to_bytes(8, "little")
    assert plain1[ptr_off] == plain2[ptr_off] == 0 and wrote1[ptr_off] == wrote2[ptr_off] == 1
    assert _flag_candidates(bytes(plain1), bytes(wrote1), bytes(plain2), bytes(wrote2)) == [flag_off]
    # Seen in one pair only: not a candidate either.
    wrote2[flag_off] = 0
    assert _flag_candidates(bytes(plain1), bytes(wrote1), bytes(plain2), bytes(wrote2)) == []


def test_the_live_state_link_holds_in_every_engine():
    """The link to the live CPU state is confirmed in three engines, not one: a
    pointer that reaches an engine's live state only through the heap's layout
    (seen: link (48, 52448)) made every later engine fail the live-state check."""
    from runtime.quirks import _env_link_holds
    links = calibrate().env_links
    assert links
    link = links[0]
    engines = [scratch_engine() for _ in range(5)]
    assert all(_env_link_holds(uc, link) for uc in engines)
    assert all(Quirks(uc).env is not None for uc in engines)
    wrong = (link[0], link[1] + 8)
    assert not any(_env_link_holds(uc, wrong) for uc in engines)


def test_second_handled_fault_becomes_double_fault_without_the_remedy():
    code = assemble("xor ebx, ebx\ndiv ebx\ndiv ebx\nhlt", 0x1000)
    seen = []
    for remedy in (False, True, "round trip"):
        uc = engine(code)
        q = Quirks(uc)
        if remedy == "round trip":
            q.env = None

        def on_intr(uc, intno, _):
            seen.append((remedy, intno))
            if remedy:
                q.take_fault()
            uc.reg_write(X.UC_X86_REG_EIP, uc.reg_read(X.UC_X86_REG_EIP) + 2)

        uc.hook_add(UC_HOOK_INTR, on_intr)
        uc.emu_start(0x1000, 0, count=10)
    assert seen == [(False, 0), (False, 8), (True, 0), (True, 0), ("round trip", 0), ("round trip", 0)]


def test_the_live_state_is_the_first_calibrated_link_that_matches_this_engine():
    """A link that held in the calibration engine only (a neighbouring heap block
    at a distance of that process's layout) is passed over, not fatal: it once
    made every trap/bt run of one process fail ("the hypervisor area's guard
    needs the live CPU state")."""
    import dataclasses
    uc = engine(assemble("nop\nhlt", 0x1000))
    q = Quirks(uc)
    good = q.env
    real = calibrate()
    bogus = (real.env_links[0][0], real.env_links[0][1] + 4096)
    q.off = dataclasses.replace(real, env_links=(bogus,) + real.env_links)
    assert q._live_env() == good
    q.off = dataclasses.replace(real, env_links=(bogus,))
    assert q._live_env() is None and "does not match a context save" in q.env_problem


def test_context_restore_is_a_copy_into_the_live_cpu_state():
    """Quirks edits fault fields in place (no context round trip, ~3.5 us per exit)
    because the engine's live CPU state is found and a context save is a copy of
    it: changing a register shows up there, and an edit there is what the CPU sees."""
    uc = engine(assemble("nop\nhlt", 0x1000))
    q = Quirks(uc)
    assert calibrate().env_links and q.env is not None
    import ctypes
    saved = uc.context_save()                  # held: its memory is read below
    ctx = saved.context.value
    lo = q.off.error_code - 64
    assert ctypes.string_at(q.env + lo, 128) == ctypes.string_at(ctx + lo, 128)
    # CPL bits edited in place: the next reg_read sees ring 3.
    q.set_cpl(3)
    assert ctypes.c_uint32.from_address(q.env + q.off.hflags).value & 3 == 3
    saved = uc.context_save()
    assert ctypes.c_uint32.from_address(saved.context.value + q.off.hflags).value & 3 == 3


@pytest.mark.parametrize("in_place", [True, False])
def test_take_fault_reports_error_code_and_int_n(in_place):
    # mov fs, [0x3000] with an out-of-GDT selector: #GP(selector)
    uc = engine(bytes.fromhex("8e2500300000") + b"\xcd\x0d\xf4")
    uc.mem_write(0x3000, b"\x40\x12")
    q = Quirks(uc)
    if not in_place:
        q.env = None            # the fallback: one context round trip
    got = []

    def on_intr(uc, intno, _):
        got.append((intno, *q.take_fault()))
        if len(got) == 1:
            uc.reg_write(X.UC_X86_REG_EIP, 0x1006)

    uc.hook_add(UC_HOOK_INTR, on_intr)
    uc.emu_start(0x1000, 0, count=3)
    assert got[0] == (13, 0x1240, False)
    assert got[1][0] == 13 and got[1][2] is True      # int 0x0d is software


def test_instruction_clock_is_exact_when_a_hook_reads_it():
    """The VM's clock (runtime/clock.py) counts per block; inside an I/O hook it
    still tells the exact position: the out is the 22nd instruction."""
    from runtime.clock import InstructionClock
    code = assemble("mov ecx, 10\nl: dec ecx\njnz l\nout 0x80, al\nnop\nnop", 0x1000)
    uc = engine(code)
    clock = InstructionClock(uc)
    at_hook = []

    def on_out(uc, port, size, value, _):
        at_hook.append(clock.started(uc.reg_read(X.UC_X86_REG_EIP)))
        uc.emu_stop()

    uc.hook_add(UC_HOOK_INSN, on_out, None, 1, 0, X.UC_X86_INS_OUT)
    clock.run(0x1000, 1000, lambda: False)
    assert at_hook == [1 + 10 * 2 + 1]


def test_io_at_cpl1_does_not_fault_but_reaches_the_insn_hooks():
    """Unicorn 2.1 skips the IOPL/TSS permission check: in/out (string forms too) at
    CPL 1 with IOPL 0 run and call the hooks.  The VMM therefore sees all port I/O
    through the hooks in every mode, never through #GP."""
    from bt.images.image import GuestImage, Segment
    from runtime.vm import VM
    from bt.machine import MachineConfig
    code = assemble("mov dx, 0x3f8\nmov al, 0x41\nout dx, al\nmov esi, 0x2000\nmov ecx, 2\n"
                    "rep outsb\nmov al, 0\nout 0xf4, al", 0x100000)
    img = GuestImage("t", "raw", 0x100000, [Segment(0x100000, code), Segment(0x2000, b"BC")])
    vm = VM(img, MachineConfig(mode="trap"), stdout=None)
    res = vm.run()
    assert res.serial == b"ABC" and res.exit_status == 0
    assert res.counters["faults_emulated"] == {}


def test_exec_only_page_is_still_readable():
    """Read protection is not enforced on an executable page: a VMM cannot hide
    patch bytes from guest reads by protecting the page (docs/patches.md)."""
    uc = engine(bytes.fromhex("a010100000") + b"\xf4" + bytes(10) + b"\xfa")
    uc.mem_protect(0x1000, 0x1000, UC_PROT_EXEC)
    uc.emu_start(0x1000, 0, count=2)
    assert uc.reg_read(X.UC_X86_REG_EAX) & 0xFF == 0xFA


def test_fetch_prot_hook_can_grant_exec_on_an_already_split_page():
    uc = engine(b"\x40\x40\xf4")
    uc.mem_protect(0x1000, 0x1000, UC_PROT_READ | UC_PROT_WRITE)
    hits = []

    def on_fetch(uc, access, addr, size, value, _):
        hits.append(addr)
        uc.mem_protect(0x1000, 0x1000, UC_PROT_ALL)   # same single-page region: no split
        return True

    uc.hook_add(UC_HOOK_MEM_FETCH_PROT, on_fetch)
    uc.emu_start(0x1000, 0, count=3)
    assert hits == [0x1000] and uc.reg_read(X.UC_X86_REG_EAX) == 2


def test_host_mem_write_ignores_guest_protection():
    uc = engine(b"\xf4")
    uc.mem_protect(0x4000, 0x1000, UC_PROT_READ | UC_PROT_EXEC)
    uc.mem_write(0x4000, b"\x90\x90")
    assert bytes(uc.mem_read(0x4000, 2)) == b"\x90\x90"


def test_translated_blocks_need_remove_cache_after_host_writes():
    """Executing a site, patching it from the host and executing it again: the
    patched path runs only after ctl_remove_cache over the changed bytes."""
    code = assemble("mov eax, 1\nret", 0x1000)
    uc = engine(code)
    uc.mem_write(0x8FFC, (0x2000).to_bytes(4, "little"))
    uc.mem_write(0x2000, b"\xf4")
    def call():
        uc.reg_write(X.UC_X86_REG_ESP, 0x8FFC)
        uc.emu_start(0x1000, 0, count=3)
        return uc.reg_read(X.UC_X86_REG_EAX)
    assert call() == 1
    uc.mem_write(0x1001, (7).to_bytes(4, "little"))
    uc.ctl_remove_cache(0x1000, 0x1006)
    assert call() == 7


def test_exit_path_reads_match_the_engine_at_every_cpl():
    """Quirks.eip/cpl read the live CPU state instead of calling reg_read (exit path):
    they must agree with reg_read at CPL 0 and after an iretd to CPL 3."""
    # push 0x23 ; push 0x7000 ; push 2 ; push 0x1b ; push 0x1100 ; iretd
    code = bytes.fromhex("6a23" "6800700000" "6a02" "6a1b" "6800110000" "cf")
    uc = engine(code)
    uc.mem_write(0x1100, b"\x90\x90\xf4")
    q = Quirks(uc)
    assert q.env is not None
    seen = []
    uc.hook_add(UC_HOOK_CODE, lambda uc, a, s, _: seen.append(
        (q.eip(), uc.reg_read(X.UC_X86_REG_EIP), q.cpl(), uc.reg_read(X.UC_X86_REG_CS) & 3)))
    uc.emu_start(0x1000, 0, count=8)
    assert {c for *_, c, _r in seen} == {0, 3}
    assert all(e == r and c == rc for e, r, c, rc in seen), seen


def test_emu_stop_between_runs_does_not_cut_the_next_run_short():
    """bt/interrupt.py calls `uc.emu_stop()` from a signal handler that may run
    between slices; Unicorn must then ignore it (emu_start clears the request),
    so the run loop, not a lost or early stop, decides when the run ends."""
    from unicorn import Uc, UC_ARCH_X86, UC_MODE_32
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    code = assemble("inc eax; inc eax; inc eax; inc eax", 0x1000)
    uc.mem_map(0x1000, 0x1000, UC_PROT_ALL)
    uc.mem_write(0x1000, code)
    uc.emu_stop()                                  # no run under way
    uc.emu_start(0x1000, 0x1000 + len(code))
    assert uc.reg_read(X.UC_X86_REG_EAX) == 4      # ran to its end
    seen = []

    def stop_in_hook(uc, addr, size, data):        # and a stop inside a run takes effect
        seen.append(addr)
        uc.emu_stop()
    uc.hook_add(UC_HOOK_CODE, stop_in_hook)
    uc.reg_write(X.UC_X86_REG_EAX, 0)
    uc.emu_start(0x1000, 0x1000 + len(code))
    assert uc.reg_read(X.UC_X86_REG_EAX) < 4 and len(seen) < 4


def test_loading_a_selector_sets_the_accessed_bit_through_a_hooked_store():
    """The CPU's accessed-bit store into the GDT (an instruction's segment load,
    and reg_write of a segment register from the host too) is seen by a
    UC_HOOK_MEM_WRITE on the table's range: a 4-byte store of the high dword.
    runtime/trap.py copies the bit from the shadow GDT to the guest's table so."""
    from unicorn import UC_HOOK_MEM_WRITE
    uc = engine(assemble("mov eax, 0x10\nmov es, ax\nhlt", 0x1000))
    raw = bytearray(uc.mem_read(0x500, 0x18))
    raw[0x15] &= ~1
    uc.mem_write(0x500, bytes(raw))
    seen = []
    uc.hook_add(UC_HOOK_MEM_WRITE, lambda u, a, addr, size, v, _: seen.append((addr, size, v)),
                begin=0x500, end=0x517)
    uc.emu_start(0x1000, 0, count=2)
    assert seen == [(0x514, 4, 0xCF9300)] and uc.mem_read(0x515, 1)[0] & 1
    uc.mem_write(0x515, bytes([raw[0x15]]))
    seen.clear()
    uc.reg_write(X.UC_X86_REG_GS, 0x10)
    assert seen == [(0x514, 4, 0xCF9300)]


_SLIDE = r"""
import sys
from unicorn import Uc, UC_ARCH_X86, UC_MODE_32
from unicorn import x86_const as X
from bt.machine import flat_gdt_bytes
uc = Uc(UC_ARCH_X86, UC_MODE_32)
if int(sys.argv[1]):
    uc.ctl_set_tcg_buffer_size(int(sys.argv[1]))      # before the engine's first use
uc.mem_map(0, 8 << 20)
gdt = flat_gdt_bytes()
uc.mem_write(0x500, gdt)
uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x500, len(gdt) - 1, 0))
uc.reg_write(X.UC_X86_REG_CS, 0x08)
for r in (X.UC_X86_REG_SS, X.UC_X86_REG_DS, X.UC_X86_REG_ES):
    uc.reg_write(r, 0x10)
n = 1_000_000                    # `add [eax], al` (00 00) at every address: all new code
uc.emu_start(0x100000, 0x100000 + 2 * n)
# VmHWM, not ru_maxrss: a child's ru_maxrss keeps the high-water mark of the
# process it was forked from (here pytest's), VmHWM is this program's own.
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(uc.reg_read(X.UC_X86_REG_EIP), uc.ctl_get_tcg_buffer_size(), hwm // 1024)
"""


def test_tcg_buffer_size_bounds_the_translated_code():
    """runtime/vm.py sets Unicorn's translation buffer (default 1 GiB, filled
    before any flush) right after creating the engine: a guest that keeps reaching
    new code then stays within the bound, and still runs correctly (the flush
    when the buffer is full is invisible to it)."""
    import subprocess
    import sys
    runs = {}
    for size in (0, 16 << 20):
        out = subprocess.run([sys.executable, "-c", _SLIDE, str(size)], capture_output=True,
                             text=True, check=True).stdout.split()
        runs[size] = [int(v) for v in out]
    default, bounded = runs[0], runs[16 << 20]
    assert default[0] == bounded[0] == 0x100000 + 2 * 1_000_000      # ran to the end both times
    assert default[1] == 1 << 30 and bounded[1] == 16 << 20
    assert default[2] - bounded[2] >= 60, (default, bounded)        # MB of peak RSS saved


@pytest.mark.parametrize("branch,wraps", [("jmp", True), ("jnz", False)])
def test_fact_a_jcc_across_2_32_is_not_wrapped_to_32_bits(branch, wraps):
    """A branch from the stub cache (top of the 4 GiB space) back to guest RAM
    crosses 2^32.  Unicorn 2.1 wraps a jmp's target to 32 bits but not a jcc's:
    the block after a taken jcc starts at 0x1_00001000, which address-range hooks
    and the instruction clock's block lookup do not recognise (it counted such a
    block as one instruction).  patcher/patches.py relocates a jcc as the
    inverse jcc over a jmp."""
    from unicorn import Uc, UC_ARCH_X86, UC_MODE_32, UC_HOOK_BLOCK
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x10000)
    uc.mem_map(0xFF000000, 0x10000)
    uc.mem_write(0xFF000000, assemble(f"xor eax, eax; inc eax; {branch} 0x1000", 0xFF000000))
    uc.mem_write(0x1000, b"\x90\xf4")
    blocks = []
    uc.hook_add(UC_HOOK_BLOCK, lambda u, a, s, _: blocks.append(a))
    uc.emu_start(0xFF000000, 0, count=4)
    assert blocks[1] == (0x1000 if wraps else 0x1_0000_1000)


def test_fact_the_undefined_flags_after_bts_depend_on_the_translation_block():
    """OF, SF, AF and PF are architecturally undefined after bt/bts/btr/btc.
    Unicorn (QEMU) derives them from the lazy-flags state it knows when it
    translates the bt: inside one block from the previous flag-setting
    instruction (here xor: OF = bit 31 of the result), at the start of a block
    from the materialised EFLAGS (xor's OF = 0).  Any block boundary between
    the two (a bt stub, an exit, a slice end) changes them, so neither bt nor a
    re-run of emulate can promise emulate's value.  A flag-defining instruction
    afterwards (the fuzzer's `adc r, 0`, bt/fuzz/features.py) makes the outcome
    defined again."""
    from unicorn import Uc, UC_ARCH_X86, UC_MODE_32

    def flags(text: str) -> int:
        uc = Uc(UC_ARCH_X86, UC_MODE_32)
        uc.mem_map(0, 0x10000)
        code = assemble(text, 0x1000)
        uc.mem_write(0x1000, code)
        uc.reg_write(X.UC_X86_REG_EAX, 0x2265A5F5)
        uc.reg_write(X.UC_X86_REG_EDX, 0xCD60D630)
        uc.emu_start(0x1000, 0x1000 + len(code))
        return uc.reg_read(X.UC_X86_REG_EFLAGS)

    OF = 0x800
    assert flags("xor eax, edx; bts eax, 25") & OF                   # one block
    assert not flags("xor eax, edx; jmp l; l: bts eax, 25") & OF      # bts starts a block
    assert flags("xor eax, edx; bts eax, 25; adc eax, 0") == flags("xor eax, edx; jmp l; l: bts eax, 25; adc eax, 0")


def test_code_hook_on_one_address_stops_before_it_once_the_cache_is_flushed():
    """bt-run --gdb's breakpoints (bt/gdb/target.py): a UC_HOOK_CODE on one address
    that calls emu_stop leaves EIP at that address with its instruction not run.
    A block translated before the hook was added does not call it: the cache
    must be flushed at the address."""
    code = assemble("mov eax, 1\nmov ebx, 2\nadd eax, ebx\nmov ecx, 7\nhlt", 0x1000)
    target = 0x1000 + 10                     # add eax, ebx
    uc = engine(code)
    uc.emu_start(0x1000, 0)                  # translates (caches) the block
    assert uc.reg_read(X.UC_X86_REG_EAX) == 3
    hits = []

    def on_code(uc, address, size, _):
        hits.append(address)
        uc.emu_stop()

    h = uc.hook_add(UC_HOOK_CODE, on_code, None, target, target)
    uc.emu_start(0x1000, 0)
    assert hits == [] and uc.reg_read(X.UC_X86_REG_EAX) == 3       # the cached block ran
    uc.ctl_remove_cache(target, target + 1)
    uc.reg_write(X.UC_X86_REG_EAX, 0)
    uc.emu_start(0x1000, 0)
    assert hits == [target]
    assert uc.reg_read(X.UC_X86_REG_EIP) == target
    assert uc.reg_read(X.UC_X86_REG_EAX) == 1                      # add did not run
    uc.hook_del(h)
    uc.ctl_remove_cache(target, target + 1)
    uc.emu_start(target, 0)
    assert hits == [target] and uc.reg_read(X.UC_X86_REG_EAX) == 3


# -- an unaligned store that rewrites the running block silences memory hooks ------
SMC_THEN_STORES = ("mov dword ptr [0x100b], 0xc750faae\n"      # unaligned, into the add's immediate
                   "add eax, 0x11111111\n"                      # at 0x100a: the store's own block
                   "jmp l\n"
                   "l: mov ecx, 3\n"
                   "x: mov dword ptr [0x8034], ecx\n"
                   "mov ebx, dword ptr [0x8034]\n"
                   "dec ecx\n"
                   "jnz x\n"
                   "nop")


def _smc_run(code: str, clear_at_blocks: int | None = None) -> dict:
    from unicorn import UC_HOOK_BLOCK, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE
    import ctypes
    prog = assemble(code, 0x1000)
    uc = engine(prog)
    uc.reg_write(X.UC_X86_REG_EAX, 0xa1b2c3d4)
    seen = {"write": 0, "read": 0}
    uc.hook_add(UC_HOOK_MEM_WRITE, lambda *a: seen.__setitem__("write", seen["write"] + 1))
    uc.hook_add(UC_HOOK_MEM_READ, lambda *a: seen.__setitem__("read", seen["read"] + 1))
    if clear_at_blocks is not None:
        field = ctypes.c_int32.from_address(ctypes.cast(uc._uch, ctypes.c_void_p).value + clear_at_blocks)
        uc.hook_add(UC_HOOK_BLOCK, lambda *a: setattr(field, "value", 0))
    uc.emu_start(0x1000, 0x1000 + len(prog))
    seen["eax"] = uc.reg_read(X.UC_X86_REG_EAX)
    return seen


def test_fact_an_unaligned_store_into_the_running_block_silences_every_memory_hook():
    """Unicorn 2.1.4 splits an unaligned store to a page holding translated code
    into byte stores and marks the split in `size_recur_mem` (hooks are skipped
    while it is set, so the bytes are not reported twice).  The first byte store
    finds the running block modified and longjmps out to re-run the store alone,
    leaving the mark set: no UC_HOOK_MEM_READ/WRITE fires again until the engine
    re-enters its CPU loop (the fuzzer's program 1825 of seed 3030: the shadow
    GDT missed a guest store).  An aligned store takes the direct path and is
    harmless.  Clearing the calibrated field at each block start (what the
    clock's block hook does) brings the hooks back; the code runs the new bytes
    either way (the rewritten add's sum)."""
    silenced = _smc_run(SMC_THEN_STORES)
    assert silenced["write"] == 1 and silenced["read"] == 0      # only the code store's first attempt
    assert silenced["eax"] == (0xa1b2c3d4 + 0xc750faae) & 0xFFFFFFFF
    revived = _smc_run(SMC_THEN_STORES, clear_at_blocks=calibrate().recur_mem)
    assert revived["write"] == 2 + 3 and revived["read"] == 3    # the store twice (aborted, re-run), the loop's
    # aligned: the same immediate bytes less one, and 0xeb where the jmp starts
    aligned = _smc_run(SMC_THEN_STORES.replace("[0x100b], 0xc750faae", "[0x100c], 0xeb50faae"))
    assert aligned["write"] == 2 + 3 and aligned["read"] == 3


def test_fact_a_code_hook_on_an_instruction_whose_helper_restores_state_garbles_the_flags():
    """A UC_HOOK_CODE site is translated as: write the lazy flags back, call the
    hook, then compute EFLAGS into CC_SRC and switch to CC_OP_EFLAGS -- but the
    instruction's restart point still records the operation from before.  cpuid
    (like rdtsc, in/out and memory hooks) restores the CPU state from that point
    before calling its UC_HOOK_INSN hook, which leaves cc_op = ADDL beside
    CC_SRC = the computed flags: the next block reads garbage flags.  Putting
    cc_op back to CC_OP_EFLAGS inside the hook (the clock's repair,
    runtime/_clock.c "Lazy flags at a sync-hook site") restores them."""
    import ctypes
    code = assemble("mov eax, 0xa1b2c3d4\nadd eax, 0xc750faae\nnop\ncpuid\njmp l\nl: pushfd\npop esi", 0x1000)
    cpuid_at = 0x1000 + 5 + 5 + 1

    def run(code_hook: bool, repair: bool) -> int:
        uc = engine(code)
        if code_hook:
            uc.hook_add(UC_HOOK_CODE, lambda *a: None, None, cpuid_at, cpuid_at)

        def on_cpuid(uc, _):
            if repair:
                env = Quirks(uc).env
                ctypes.c_uint32.from_address(env + calibrate().cc_op).value = 1   # CC_OP_EFLAGS
            return 1                                           # skip the engine's own cpuid
        uc.hook_add(UC_HOOK_INSN, on_cpuid, None, 1, 0, X.UC_X86_INS_CPUID)
        uc.emu_start(0x1000, 0x1000 + len(code))
        return uc.reg_read(X.UC_X86_REG_ESI) & 0x8D5        # the arithmetic flags

    assert run(False, False) == 0x815                          # CF OF AF PF of the add
    assert run(True, False) != 0x815
    assert run(True, True) == 0x815


@pytest.mark.parametrize("src,code_a,data_a", [
    (".byte 0xff, 0x2d\n.long 0x3000\n", 0, 0),                  # jmp far [0x3000]
    (".byte 0xff, 0x1d\n.long 0x3000\n", 0, 0),                  # call far [0x3000]
    ("push 0x08\npush 0x1100\nretf\n", 0, 0),
    ("pushfd\npush 0x08\npush 0x1100\niretd\n", 0, 0),
    ("mov eax, 0x08\nmov ds, ax\n", 1, 0),                       # a readable code segment in DS
    ("mov eax, 0x10\nmov ss, ax\n", 0, 1),
    (None, 1, 1),                                                # the host's reg_write of CS and SS
])
def test_far_transfers_leave_the_descriptor_accessed_bit_clear_segment_loads_set_it(src, code_a, data_a):
    """Unicorn (QEMU's helpers) sets a descriptor's accessed bit only where a
    segment register is loaded by mov/pop/lss (helper_load_seg) and in the
    host's reg_write; far jmp, far call, retf and iretd load CS without
    writing the bit.  So the VMM's emulation of a far transfer must not leave
    the bit its reg_write sets (runtime/trap.py `load_far`)."""
    import struct
    uc = engine(assemble((src or "") + "hlt", 0x1000))
    uc.mem_write(0x1100, b"\xf4")
    uc.mem_write(0x3000, struct.pack("<IH", 0x1100, 0x08))
    raw = bytearray(uc.mem_read(0x500, 0x18))
    raw[0x0D] &= ~1
    raw[0x15] &= ~1
    uc.mem_write(0x500, bytes(raw))
    uc.reg_write(X.UC_X86_REG_ESP, 0x8000)
    if src is None:
        uc.reg_write(X.UC_X86_REG_CS, 0x08)
        uc.reg_write(X.UC_X86_REG_SS, 0x10)
    else:
        uc.emu_start(0x1000, 0, count=6)
        assert uc.reg_read(X.UC_X86_REG_EIP) in (0x1101, 0x1000 + len(assemble(src, 0x1000)) + 1)
    gdt = uc.mem_read(0x500, 0x18)
    assert (gdt[0x0D] & 1, gdt[0x15] & 1) == (code_a, data_a)


def test_an_iretd_to_ring_3_leaves_both_accessed_bits_clear():
    """The return to an outer ring loads CS and SS from the frame; neither
    descriptor's accessed bit is written (runtime/emulation.py `_iret` loads
    both through `load_far`)."""
    uc = engine(assemble("push 0x23\npush 0x7000\npushfd\npush 0x1b\npush 0x1100\niretd\nhlt", 0x1000))
    uc.mem_write(0x1100, b"\x90\x90")
    raw = bytearray(uc.mem_read(0x500, 0x28))        # flat_gdt_bytes: ring-3 code 0x18, data 0x20
    raw[0x1D] &= ~1
    raw[0x25] &= ~1
    uc.mem_write(0x500, bytes(raw))
    uc.reg_write(X.UC_X86_REG_ESP, 0x8000)
    uc.emu_start(0x1000, 0, count=7)
    assert (uc.reg_read(X.UC_X86_REG_CS), uc.reg_read(X.UC_X86_REG_EIP)) == (0x1B, 0x1101)
    gdt = uc.mem_read(0x500, 0x28)
    assert (gdt[0x1D] & 1, gdt[0x25] & 1) == (0, 0)


def test_a_read_hook_added_later_misses_blocks_translated_without_one():
    """Blocks translated while no UC_HOOK_MEM_READ existed load through the
    inline fast path and never call a read hook added afterwards (a TLB flush
    does not change that beyond the one refill); after ctl_flush_tb they do.
    So runtime/paging.py drops the translation cache when it adds the slot's
    read hooks for the first time."""
    from unicorn import UC_HOOK_MEM_READ
    code = assemble("mov ecx, 4\nl: mov eax, [0x5000]\nnop\nloop l\nhlt", 0x1000)
    seen = {}
    for flush in (False, True):
        uc = engine(code)
        uc.emu_start(0x1000, 0, count=20)
        seen[flush] = []
        uc.hook_add(UC_HOOK_MEM_READ, lambda u, a, addr, size, v, d, out=seen[flush]: out.append(addr),
                    None, 0x5000, 0x5003)
        if flush:
            uc.ctl_flush_tb()
        uc.emu_start(0x1000, 0, count=20)
    assert seen == {False: [], True: [0x5000] * 4}


def test_fact_every_ram_store_takes_the_slow_path_and_any_write_hook_sends_loads_there_too():
    """Why trap and bt run Linux's xz decompressor 1.5-1.7x slower than emulate
    (docs/benchmarks.md, "Through the decompressor"): in Unicorn 2.1.4 every
    RAM page's TLB write entry is marked not-dirty (`cpu_physical_memory_is_clean`
    is a stub returning true), so every store goes through `store_helper`, which
    calls the UC_HOOK_MEM_WRITE hooks -- a write hook added after a block was
    translated still sees that block's stores.  Loads take the inline fast path
    unless a READ, READ_AFTER *or WRITE* hook existed when the block was
    translated (tcg_uc_has_hookmem): a write hook present at translation makes
    the block's loads reach a read hook added later, without a flush."""
    from unicorn import UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE
    code = assemble("mov ecx, 4\nl: mov eax, [0x5000]\nmov [0x6000], eax\nloop l\nhlt", 0x1000)
    seen = {}
    for write_hook_first in (False, True):
        uc = engine(code)
        got = seen[write_hook_first] = {"r": 0, "w": 0}

        def on_write(u, a, addr, size, v, d, got=got):
            got["w"] += 1

        if write_hook_first:        # a write hook on another range, present at translation
            uc.hook_add(UC_HOOK_MEM_WRITE, lambda *a: None, None, 0x7000, 0x7003)
        uc.emu_start(0x1000, 0, count=20)
        uc.hook_add(UC_HOOK_MEM_WRITE, on_write, None, 0x6000, 0x6003)
        uc.hook_add(UC_HOOK_MEM_READ, lambda u, a, addr, size, v, d, got=got: got.update(r=got["r"] + 1),
                    None, 0x5000, 0x5003)
        uc.emu_start(0x1000, 0, count=20)
    assert seen == {False: {"r": 0, "w": 4}, True: {"r": 4, "w": 4}}


def test_fact_a_memory_hook_moved_in_place_fires_on_its_new_range_only():
    """Writing a live hook's begin/end (runtime/quirks.py move_hook) moves it:
    Unicorn reads a memory hook's range at every access, in blocks translated
    before the move too, and no dead hook is left in its lists (a delete only
    marks a hook until the run ends, and every slow-path load walks the marked
    ones as well)."""
    import ctypes
    from unicorn import UC_HOOK_MEM_READ
    from runtime.fastuc import hook_add
    from runtime.quirks import move_hook
    code = assemble("l: mov eax, dword ptr [0x8000]\nmov ebx, dword ptr [0x9000]\ndec ecx\njnz l", 0x1000)
    uc = engine(code)
    seen = []
    cb = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64, ctypes.c_int,
                          ctypes.c_int64, ctypes.c_void_p)(lambda u, t, a, n, v, d: seen.append(a))
    h = hook_add(uc, UC_HOOK_MEM_READ, ctypes.cast(cb, ctypes.c_void_p).value, None, 0x8000, 0x8FFF)
    uc.reg_write(X.UC_X86_REG_ECX, 2)
    uc.emu_start(0x1000, 0x1000 + len(code))
    assert seen == [0x8000, 0x8000]
    seen.clear()
    move_hook(h, 0x9000, 0x9FFF)                 # the loop's block is translated already
    uc.reg_write(X.UC_X86_REG_ECX, 2)
    uc.emu_start(0x1000, 0x1000 + len(code))
    assert seen == [0x9000, 0x9000]
