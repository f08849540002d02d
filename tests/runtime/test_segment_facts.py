"""What Unicorn's CPU does with segment loads and far jumps at CPL 0 (emulate,
the reference) and at CPL 1 (ring compression): the facts runtime/segments.py
reproduces for issue 15's cause 6 (RPL-1 selectors), each checked here on a
bare engine.  runtime/segments.py must give the same answer for every case."""
import pytest
from unicorn import UC_HOOK_INTR
from unicorn import x86_const as X

from bt.machine import ACCESS_CODE0, ACCESS_DATA0, descriptor
from conftest import assemble
from runtime.quirks import Quirks, scratch_engine

GDT = 0x600
DPL1 = 1 << 5
# selector -> (access, limit); DPL-0 code 0x08, data 0x10, as the kernel's
TABLE = {0x08: (ACCESS_CODE0, 0xFFFFF), 0x10: (ACCESS_DATA0, 0xFFFFF),
         0x18: (ACCESS_DATA0 | DPL1, 0xFFFFF),          # ring-1 data
         0x20: (ACCESS_DATA0 & ~0x80, 0xFFFFF),         # not present
         0x28: (ACCESS_CODE0 & ~0x02, 0xFFFFF),         # execute-only code
         0x30: (ACCESS_CODE0, 0x2),                     # code, limit 0x2fff (4 KiB units)
         0x38: (ACCESS_CODE0 | DPL1, 0xFFFFF),          # ring-1 code
         0x40: (ACCESS_DATA0 | 3 << 5, 0xFFFFF)}        # ring-3 data


def _engine(code: str):
    uc = scratch_engine(0x200000, 0x9000)
    raw = bytearray(0x48)
    for sel, (acc, limit) in TABLE.items():
        raw[sel:sel + 8] = descriptor(0, limit, acc | 1)
    uc.mem_write(GDT, bytes(raw))
    uc.reg_write(X.UC_X86_REG_GDTR, (0, GDT, len(raw) - 1, 0))
    uc.mem_write(0x1000, assemble(code, 0x1000))
    return uc


def run_cpl0(code: str, sreg: str | None = None):
    """(vector, error code) of the fault `code` raises at CPL 0, or the selector
    `sreg` holds afterwards (CS for a far jump)."""
    uc = _engine(code + "\nhlt")
    uc.mem_write(0x1100, b"\xf4")               # a far jump's target
    q = Quirks(uc)
    got = []

    def on_intr(uc, intno, _):
        got.append((intno, q.take_fault()[0]))
        uc.emu_stop()
    uc.hook_add(UC_HOOK_INTR, on_intr)
    uc.emu_start(0x1000, 0, count=20)
    if got:
        return got[0]
    return uc.reg_read(getattr(X, f"UC_X86_REG_{(sreg or 'cs').upper()}"))


DATA_CASES = [  # selector -> what DS holds, or (vector, error)
    (0x11, (13, 0x10)),      # RPL 1, DPL 0: the cause-6 case
    (0x19, 0x19),            # RPL 1, DPL 1: loads, and DS reads back RPL 1
    (0x41, 0x41),            # RPL 1, DPL 3
    (0x09, (13, 0x08)),      # readable DPL-0 code, RPL 1
    (0x21, (13, 0x20)),      # not present, RPL 1 > DPL 0: the privilege check comes first
    (0x20, (11, 0x20)),      # not present, RPL 0
    (0x29, (13, 0x28)),      # execute-only code
    (0x01, 0x01),            # a null selector with RPL 1 loads as it is
    (0x12, (13, 0x10)),
    (0x49, (13, 0x48)),      # past the GDT limit
]


@pytest.mark.parametrize("sel,want", DATA_CASES)
def test_fact_data_segment_loads_at_cpl0(sel, want):
    assert run_cpl0(f"mov eax, {sel:#x}\nmov ds, ax", "ds") == want


SS_CASES = [
    (0x10, 0x10), (0x11, (13, 0x10)), (0x19, (13, 0x18)), (0x18, (13, 0x18)),
    (0x01, (13, 0)), (0x09, (13, 0x08)), (0x43, (13, 0x40)),
]


@pytest.mark.parametrize("sel,want", SS_CASES)
def test_fact_stack_segment_loads_at_cpl0(sel, want):
    assert run_cpl0(f"mov eax, {sel:#x}\nmov ss, ax", "ss") == want


FAR_CASES = [  # (selector, offset) -> CS afterwards or (vector, error)
    (0x08, 0x1100, 0x08), (0x09, 0x1100, (13, 0x08)), (0x0B, 0x1100, (13, 0x08)),
    (0x38, 0x1100, (13, 0x38)), (0x10, 0x1100, (13, 0x10)), (0x00, 0x1100, (13, 0)),
    (0x30, 0x1100, 0x30),
    (0x30, 0x3000, (13, 0)),      # past the limit: #GP(0) (older QEMU: #GP(selector))
]


@pytest.mark.parametrize("sel,off,want", FAR_CASES)
def test_fact_far_jumps_at_cpl0(sel, off, want):
    assert run_cpl0(f".byte 0xea\n.long {off:#x}\n.word {sel:#x}") == want


def test_fact_reg_write_loads_an_rpl1_data_selector_at_cpl1():
    """runtime/segments.py loads what it checked with reg_write: at CPL 1 (the
    guest kernel's real ring) a DPL-1 descriptor with RPL 1 and a null selector
    with RPL 1 load and read back as written."""
    raw = bytearray(0x48)
    for sel, acc in ((0x08, ACCESS_CODE0 | DPL1), (0x10, ACCESS_DATA0 | DPL1), (0x18, ACCESS_DATA0 | DPL1),
                     (0x40, ACCESS_DATA0 | 3 << 5)):
        raw[sel:sel + 8] = descriptor(0, 0xFFFFF, acc)        # accessed bits clear
    uc = scratch_engine(0x200000, 0x9000)
    uc.mem_write(GDT, bytes(raw))
    uc.reg_write(X.UC_X86_REG_GDTR, (0, GDT, len(raw) - 1, 0))
    # into ring 1: iretd to 0x09:0x1100 with SS 0x19
    entry = assemble("push 0x19\npush 0x8000\npush 0x2\npush 0x09\npush 0x1100\niretd", 0x1000)
    uc.mem_write(0x1000, entry)
    uc.mem_write(0x1100, b"\x90\xf4")
    uc.emu_start(0x1000, 0x1101)
    assert uc.reg_read(X.UC_X86_REG_CS) == 0x09
    for sel in (0x11, 0x19, 0x01, 0x41):
        uc.reg_write(X.UC_X86_REG_DS, sel)
        assert uc.reg_read(X.UC_X86_REG_DS) == sel
    uc.reg_write(X.UC_X86_REG_SS, 0x11)
    assert uc.reg_read(X.UC_X86_REG_SS) == 0x11
    assert uc.mem_read(GDT + 0x15, 1)[0] & 1              # the CPU set the accessed bit
