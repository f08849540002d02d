"""The hypervisor area's layout: regions apart, and the flag lookup tables the
stubs use (bt/hyper_layout.py, flag_tables) equal to their definition, written
here on whole EFLAGS values rather than on byte 1."""
from itertools import product

from bt.hyper_layout import (FLAG_TABLES, FLAG_TABLES_SIZE, HYPER_SIZE, PUSHF_BYTE, PUSHF_ROWS, RPL1_BYTE,
                             SELECTOR_VIEW, SELECTOR_VIEW_SIZE, SHADOW_GDT, SHADOW_GDT_SIZE, STUBS,
                             VFLAGS_MASK, VMM_STACK, VMM_STACK_SIZE, flag_tables)
from bt.x86 import IOPL_MASK

TABLES = flag_tables()


def entry(region: int, index: int) -> int:
    return TABLES[region - FLAG_TABLES + index]


def test_regions_do_not_overlap_and_fit_the_area():
    spans = sorted([(SHADOW_GDT, SHADOW_GDT_SIZE), (VMM_STACK, VMM_STACK_SIZE), (FLAG_TABLES, FLAG_TABLES_SIZE),
                    (SELECTOR_VIEW, SELECTOR_VIEW_SIZE), (STUBS, HYPER_SIZE - STUBS)])
    for (a, n), (b, _) in zip(spans, spans[1:]):
        assert a + n <= b, hex(a)
    assert len(TABLES) == FLAG_TABLES_SIZE
    for region, size in ((RPL1_BYTE, 256), (PUSHF_BYTE, PUSHF_ROWS * 256)):
        assert FLAG_TABLES <= region and region + size <= FLAG_TABLES + FLAG_TABLES_SIZE


def test_vflags_holds_the_iopl_only():
    """The guest's IF is the real IF (docs/fidelity.md, "IF in the real EFLAGS")."""
    assert VFLAGS_MASK == IOPL_MASK


def test_pushf_table_puts_the_guest_iopl_into_the_pushed_flags():
    """Every vflags value (IOPL) against every pushed byte 1 (the real IF and
    IOPL 1 among them): the result is the pushed flags with IOPL taken from
    vflags, everything else -- IF included -- kept."""
    assert VFLAGS_MASK >> 8 < PUSHF_ROWS
    for iopl, real_hi in product(range(4), range(256)):
        vflags = iopl << 12
        pushed = (real_hi << 8) | 0x57                    # byte 0 arbitrary: never read
        want = (pushed & ~VFLAGS_MASK) | vflags
        # the stub's index: EAX = vflags (v << 8) with the pushed byte 1 as AL
        assert entry(PUSHF_BYTE, vflags | real_hi) == (want >> 8) & 0xFF, (hex(vflags), hex(real_hi))
