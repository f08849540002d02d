"""The hypervisor area's layout: regions apart, and the flag lookup tables the
stubs use (bt/hyper_layout.py, flag_tables) equal to their definition, written
here on whole EFLAGS values rather than on byte 1."""
from itertools import product

from bt.hyper_layout import (CLI_BYTE, FLAG_TABLES, FLAG_TABLES_SIZE, HYPER_SIZE, IF_BYTE, PUSHF_BYTE, PUSHF_ROWS,
                             SELECTOR_VIEW, SELECTOR_VIEW_SIZE, SHADOW_GDT, SHADOW_GDT_SIZE, STI_BYTE, STUBS,
                             VFLAGS_MASK, VMM_STACK, VMM_STACK_SIZE, flag_tables)
from bt.x86 import IF_BIT, IOPL_MASK

TABLES = flag_tables()


def entry(region: int, index: int) -> int:
    return TABLES[region - FLAG_TABLES + index]


def test_regions_do_not_overlap_and_fit_the_area():
    spans = sorted([(SHADOW_GDT, SHADOW_GDT_SIZE), (VMM_STACK, VMM_STACK_SIZE), (FLAG_TABLES, FLAG_TABLES_SIZE),
                    (SELECTOR_VIEW, SELECTOR_VIEW_SIZE), (STUBS, HYPER_SIZE - STUBS)])
    for (a, n), (b, _) in zip(spans, spans[1:]):
        assert a + n <= b, hex(a)
    assert len(TABLES) == FLAG_TABLES_SIZE
    for region, size in ((CLI_BYTE, 256), (STI_BYTE, 256), (IF_BYTE, 256), (PUSHF_BYTE, PUSHF_ROWS * 256)):
        assert FLAG_TABLES <= region and region + size <= FLAG_TABLES + FLAG_TABLES_SIZE


def test_cli_sti_and_if_tables_act_on_the_interrupt_flag_of_byte_1():
    for flags in range(0, 0x10000, 0x100):         # every byte 1, byte 0 irrelevant
        b = flags >> 8
        assert entry(CLI_BYTE, b) == (flags & ~IF_BIT) >> 8
        assert entry(STI_BYTE, b) == (flags | IF_BIT) >> 8
        assert entry(IF_BYTE, b) == (flags & IF_BIT) >> 8


def test_pushf_table_puts_the_virtual_if_iopl_into_the_pushed_flags():
    """Every vflags value (IF x IOPL) against every pushed byte 1: the result is
    the pushed flags with IF/IOPL taken from vflags, everything else kept."""
    assert VFLAGS_MASK >> 8 < PUSHF_ROWS
    for vif, iopl, real_hi in product((0, IF_BIT), range(4), range(256)):
        vflags = vif | (iopl << 12)
        assert vflags & ~(IF_BIT | IOPL_MASK) == 0
        pushed = (real_hi << 8) | 0x57                    # byte 0 arbitrary: never read
        want = (pushed & ~VFLAGS_MASK) | vflags
        # the stub's index: EAX = vflags (v << 8) with the pushed byte 1 as AL
        assert entry(PUSHF_BYTE, vflags | real_hi) == (want >> 8) & 0xFF, (hex(vflags), hex(real_hi))
