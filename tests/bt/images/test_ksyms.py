"""bt/images/ksyms.py: names for kernel addresses from the export table."""
import struct

import pytest
from images_testkit import bzimage, elf32

from bt.errors import BadInput
from bt.images.ksyms import kernel_symbols

PADDR, TEXT = 0x1000000, 0xC1000000
CODE = b"\x90" * 0x100
FUNCS = {"alpha": TEXT + 0x10, "beta": TEXT + 0x40, "gamma": TEXT + 0x80}
KSYMTAB = TEXT + 0x1000
STRINGS = TEXT + 0x2000
NAMES = b"alpha\0beta\0gamma\0data_sym\0"


def kernel(layout: str = "prel") -> bytes:
    entries = [(v, STRINGS + NAMES.index(n.encode() + b"\0")) for n, v in FUNCS.items()]
    entries.append((KSYMTAB + 0x800, STRINGS + NAMES.index(b"data_sym")))   # not in text: not a function
    raw = b""
    for k, (value, name) in enumerate(entries):
        if layout == "prel":
            at = KSYMTAB + 12 * k
            raw += struct.pack("<iii", value - at, name - (at + 4), 0)
        elif layout == "abs12":
            raw += struct.pack("<III", value, name, 0)
        else:
            raw += struct.pack("<II", value, name)
    return elf32([(TEXT, PADDR, CODE, len(CODE)), (KSYMTAB, PADDR + 0x1000, raw, len(raw)),
                  (STRINGS, PADDR + 0x2000, NAMES, len(NAMES))], entry=PADDR,
                 sections=[(".text", TEXT, CODE), ("__ksymtab_gpl", KSYMTAB, raw),
                           ("__ksymtab_strings", STRINGS, NAMES)])


@pytest.mark.parametrize("layout,name", [("prel", "pc-relative, 12 bytes"), ("abs12", "absolute, 12 bytes"),
                                         ("abs8", "absolute, 8 bytes")])
def test_every_layout_names_the_exported_functions(layout, name):
    ks = kernel_symbols("k", kernel(layout))
    assert ks.layout == name
    assert dict(zip(ks.names, ks.addrs)) == FUNCS


def test_lookup_gives_the_export_at_or_below_and_unknown_outside_text():
    ks = kernel_symbols("k", bzimage(kernel()))          # a bzImage is unpacked first
    assert ks.lookup(TEXT + 0x40) == ("beta", 0)
    assert ks.lookup(TEXT + 0x7F) == ("beta", 0x3F)      # unexported code after beta: beta's
    assert ks.label(TEXT + 0x7F) == "beta+0x3f" and ks.label(TEXT + 0x80) == "gamma"
    assert ks.lookup(TEXT + 0x7F, max_offset=0x20) is None
    assert ks.lookup(TEXT + 0x5) is None                 # before the first export
    assert ks.lookup(TEXT + len(CODE)) is None           # past the text section
    assert ks.label(0x1234) == "?"
    assert ks.group([TEXT + 0x41, TEXT + 0x10, TEXT + 0x90, TEXT + 0x2]) == {
        "alpha": [TEXT + 0x10], "beta": [TEXT + 0x41], "gamma": [TEXT + 0x90], "?": [TEXT + 0x2]}


def test_not_a_kernel_is_one_clear_error():
    with pytest.raises(BadInput, match="neither a Linux bzImage nor a vmlinux"):
        kernel_symbols("x", b"\x00" * 4096)


def test_debians_kernel_has_pc_relative_exports_with_names():
    """The fact the module is built on, on the real kernel (when fetched: CI has it)."""
    from bt.images.linux_guest import linux_available
    from bt.images.fetch import linux_paths
    if not linux_available():
        pytest.skip("the Linux guest is not fetched (bt-images fetch linux)")
    path = linux_paths()["kernel"]
    ks = kernel_symbols(str(path), path.read_bytes())
    assert ks.layout == "pc-relative, 12 bytes" and len(ks) > 5000
    named = dict(zip(ks.names, ks.addrs))
    for fn in ("_printk", "schedule", "memcpy"):
        assert ks.lookup(named[fn]) == (fn, 0)
    assert ks.lookup(named["schedule"] + 1) == ("schedule", 1)
