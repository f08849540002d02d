"""The hypervisor area's layout: regions apart, and the lookup table the
segment-load stubs use (bt/hyper_layout.py, flag_tables) equal to its definition."""
import struct

from bt.hyper_layout import (FLAG_TABLES, FLAG_TABLES_SIZE, HYPER_SIZE, RPL1_BYTE,
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
    assert FLAG_TABLES <= RPL1_BYTE and RPL1_BYTE + 256 <= FLAG_TABLES + FLAG_TABLES_SIZE


def test_vflags_holds_the_iopl_only():
    """The guest's IF is the real IF (docs/fidelity.md, "IF in the real EFLAGS")."""
    assert VFLAGS_MASK == IOPL_MASK


def test_rpl1_table_marks_exactly_the_rpl1_selectors():
    for sel in range(0x10000):
        assert entry(RPL1_BYTE, sel & 0xFF) == (sel & 3 == 1)


def test_selector_view_reads_rpl1_as_rpl0_and_leaves_the_rest():
    from bt.hyper_layout import selector_view_table
    view = struct.unpack("<65536H", selector_view_table())
    assert view == tuple(sel & ~3 if sel & 3 == 1 else sel for sel in range(0x10000))
    assert view[0x09] == 0x08 and view[0x0B] == 0x0B and view[0x13] == 0x13 and view[0xFFFD] == 0xFFFC
