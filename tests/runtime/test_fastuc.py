"""runtime/fastuc.py's direct uc_reg_read/uc_reg_write agree with the binding for
the registers the exit path now moves through them: the general registers and
the segment registers (an emulated iretd's CS, seg_base's selector reads),
including Unicorn's refusal to load a selector the CPL forbids."""
import pytest
from unicorn import UcError
from unicorn import x86_const as X

from bt.machine import flat_gdt_bytes
from runtime.fastuc import FastUc
from runtime.quirks import scratch_engine

SEGS = (X.UC_X86_REG_CS, X.UC_X86_REG_SS, X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_FS, X.UC_X86_REG_GS)


def test_general_registers_read_and_write_as_the_binding():
    uc = scratch_engine()
    fast = FastUc(uc)
    for reg, value in ((X.UC_X86_REG_ESP, 0x8000FFFC), (X.UC_X86_REG_EAX, 0xFFFFFFFF), (X.UC_X86_REG_EDX, 0)):
        fast.reg_write(reg, value)
        assert uc.reg_read(reg) == value == fast.reg_read(reg)


def test_segment_registers_read_as_the_binding():
    uc = scratch_engine()
    fast = FastUc(uc)
    for reg in SEGS:
        assert fast.reg_read(reg) == uc.reg_read(reg)


def test_a_segment_write_loads_the_selector_or_is_refused_as_the_binding():
    uc = scratch_engine()
    fast = FastUc(uc)
    gdt = 0x6000
    uc.mem_write(gdt, flat_gdt_bytes(0x08, 0x10))
    uc.reg_write(X.UC_X86_REG_GDTR, (0, gdt, 0x17, 0))
    fast.reg_write(X.UC_X86_REG_DS, 0x10)
    assert uc.reg_read(X.UC_X86_REG_DS) == 0x10
    with pytest.raises(UcError) as fast_err:
        fast.reg_write(X.UC_X86_REG_SS, 0x08)          # a code segment in SS
    with pytest.raises(UcError) as binding_err:
        uc.reg_write(X.UC_X86_REG_SS, 0x08)
    assert fast_err.value.errno == binding_err.value.errno
