"""bt/images/kernel_view.py and `bt-scan --kernel-exports`: a kernel at its
link addresses, with its exported functions as scan entries."""
import struct

import pytest
from images_testkit import bzimage, elf32

from bt.cli.scan import main as bt_scan
from bt.errors import BadInput
from bt.images.kernel_view import kernel_view

PADDR, VBASE = 0x1000000, 0xC0000000
TEXT = VBASE + PADDR
# startup_32 (cli; a hlt loop), then three exported functions: f1 (sti; ret), f2 (pushfd;
# pop eax; ret), f3 (in al, 0x60; ret), which a scan from the entry alone does not reach.
CODE = (b"\xfa\xf4\xeb\xfd" + b"\x90" * 12 + b"\xfb\xc3" + b"\x90" * 14 + b"\x9c\x58\xc3" + b"\x90" * 13
        + b"\xe4\x60\xc3" + b"\x90" * 13)
FUNCS = [TEXT + 16, TEXT + 32, TEXT + 48]
KSYMTAB = TEXT + 0x1000


def kernel(layout: str = "prel") -> bytes:
    raw = b""
    for k, f in enumerate(FUNCS):
        at = KSYMTAB + 12 * k if layout != "abs8" else KSYMTAB + 8 * k
        if layout == "prel":
            raw += struct.pack("<iii", f - at, 0, 0)
        elif layout == "abs12":
            raw += struct.pack("<III", f, 0, 0)
        else:
            raw += struct.pack("<II", f, 0)
    return elf32([(TEXT, PADDR, CODE, len(CODE)), (KSYMTAB, PADDR + 0x1000, raw, len(raw))],
                 entry=PADDR,                                      # linked physical, like startup_32
                 sections=[(".text", TEXT, CODE), ("__ksymtab", KSYMTAB, raw), ("__param", 0, b"")])


@pytest.mark.parametrize("layout,name", [("prel", "pc-relative, 12 bytes"), ("abs12", "absolute, 12 bytes"),
                                         ("abs8", "absolute, 8 bytes")])
def test_exports_entry_and_segments_at_link_addresses(layout, name):
    v = kernel_view("k", kernel(layout))
    assert v.exports == FUNCS and v.export_layout == name
    assert v.entry == TEXT                              # the physical e_entry, moved to its link address
    assert v.segments[0][0] == TEXT and v.segments[0][1] == CODE
    assert v.text == [(TEXT, TEXT + len(CODE))]


def test_a_bzimage_is_unpacked_first():
    assert kernel_view("bz", bzimage(kernel())).exports == FUNCS


def test_not_a_kernel_or_broken_is_one_clear_error():
    with pytest.raises(BadInput, match="neither a Linux bzImage nor a vmlinux"):
        kernel_view("x", b"\x00" * 4096)
    with pytest.raises(BadInput, match="corrupt or truncated"):
        kernel_view("x", kernel()[:60])


def test_bt_scan_kernel_exports_scans_the_exported_code(tmp_path, capsys):
    path = tmp_path / "vmlinuz"
    path.write_bytes(bzimage(kernel()))
    assert bt_scan([str(path), "--format", "linux", "--kernel-exports", "--sites"]) == 0
    out = capsys.readouterr().out
    assert f"entry {TEXT:#x} (link address)" in out
    assert "exported functions: 3, table entries pc-relative, 12 bytes" in out
    for name in ("cli", "sti", "pushfd", "in"):
        assert f" {name}" in out
    # Without the flag the same file, unpacked, is scanned where the boot protocol
    # puts the kernel, from startup_32 only: the exported functions are not reached.
    assert bt_scan([str(path), "--format", "linux", "--linux-unpack", "--sites"]) == 0
    plain = capsys.readouterr().out
    assert "sti" not in plain and "entry 0x1000000" in plain


def test_bt_scan_kernel_exports_refuses_other_images(capsys):
    assert bt_scan(["demo:hello", "--kernel-exports"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs a Linux kernel" in err
