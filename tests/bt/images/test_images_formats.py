"""Each image format loads where it should, and `auto` detects it."""
import struct

import pytest

from bt.errors import BadInput
from bt.images import detect_format, load_image, parse_address
from bt.machine import MIB, MULTIBOOT_EAX, MULTIBOOT_INFO_ADDR
from images_testkit import bzimage, elf32, multiboot_header, tiny_kernel


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def seg_at(image, addr):
    return next(s for s in image.segments if s.addr == addr)


def read_guest(image, addr, size):
    """Bytes the guest would see at addr (zero-filled tails included)."""
    for s in image.segments:
        if s.addr <= addr and addr + size <= s.end:
            mem = s.data + bytes(s.memsize - len(s.data))
            return mem[addr - s.addr:addr - s.addr + size]
    raise AssertionError(f"0x{addr:x} not loaded")


@pytest.mark.parametrize("text,value", [
    ("0x100000", 0x100000), ("0X1f", 0x1F), ("4096", 4096), ("64k", 64 * 1024),
    ("1M", MIB), ("1MiB", MIB), ("16m", 16 * MIB), (" 0x10 ", 0x10), ("0xFFFFFFFF", 0xFFFFFFFF),
])
def test_parse_address(text, value):
    assert parse_address(text) == value


@pytest.mark.parametrize("text", ["", "0x", "12z", "-5", "0x1g0", "4G", "1.5M", "abc"])
def test_parse_address_rejects(text):
    with pytest.raises(BadInput, match="bad address"):
        parse_address(text)


def test_raw_loads_at_load_and_enters_there(tmp_path):
    path = write(tmp_path, "guest.bin", b"\xf4" * 10)
    img = load_image(path, "raw", load=0x100000)
    assert img.format == "raw" and img.entry == 0x100000
    assert [(s.addr, s.data) for s in img.segments] == [(0x100000, b"\xf4" * 10)]
    img = load_image(path, load=0x100000, entry=0x100004)   # auto falls back to raw with --load
    assert img.format == "raw" and img.entry == 0x100004


def test_elf_segments_at_physical_addresses_with_bss(tmp_path):
    data = elf32([(0xC0100000, 0x100000, b"\xf4\xeb\xfe", 0x10), (0xC0102000, 0x102000, b"AB", 0x1000)],
                 entry=0xC0100001, symbols={"main": 0xC0100000, "buf": 0xC0102000})
    img = load_image(write(tmp_path, "k.elf", data))
    assert img.format == "elf"
    assert [(s.addr, s.data, s.memsize) for s in img.segments] == [
        (0x100000, b"\xf4\xeb\xfe", 0x10), (0x102000, b"AB", 0x1000)]
    assert img.entry == 0x100001                 # virtual entry moved to its physical place
    assert img.symbols == {"main": 0xC0100000, "buf": 0xC0102000}
    assert read_guest(img, 0x102000, 4) == b"AB\0\0"
    assert img.info["virtual_entry"] == 0xC0100001


def test_elf_entry_already_physical(tmp_path):
    data = elf32([(0xC0100000, 0x100000, b"\x90" * 16, 16)], entry=0x100008)
    assert load_image(write(tmp_path, "k.elf", data), "elf").entry == 0x100008


def test_multiboot_elf_builds_info(tmp_path):
    code = multiboot_header(flags=0x3) + b"\xf4" * 20
    data = elf32([(0x100000, 0x100000, code, 0x1000)], entry=0x10000C)
    img = load_image(write(tmp_path, "mb.elf", data), mem_bytes=32 * MIB, cmdline="console=com1 x=1")
    assert img.format == "multiboot" and img.entry == 0x10000C
    assert img.regs == {"eax": MULTIBOOT_EAX, "ebx": MULTIBOOT_INFO_ADDR}
    flags, lower, upper = struct.unpack("<III", read_guest(img, MULTIBOOT_INFO_ADDR, 12))
    assert flags & 0x1 and flags & 0x4 and flags & 0x40
    assert (lower, upper) == (640, 31 * 1024)
    cmd_ptr = struct.unpack("<I", read_guest(img, MULTIBOOT_INFO_ADDR + 16, 4))[0]
    assert read_guest(img, cmd_ptr, 17) == b"console=com1 x=1\0"
    length, addr = struct.unpack("<II", read_guest(img, MULTIBOOT_INFO_ADDR + 44, 8))
    raw = read_guest(img, addr, length)
    entries = [struct.unpack_from("<IQQI", raw, i) for i in range(0, length, 24)]
    assert entries == [(20, 0, 0x9FC00, 1), (20, 0x9FC00, 0x100000 - 0x9FC00, 2),
                       (20, 0x100000, 31 * MIB, 1)]


def test_multiboot_address_fields(tmp_path):
    body = bytearray(0x40)
    hdr = multiboot_header(flags=1 << 16, addresses=(0x200010, 0x200000, 0, 0x203000, 0x200030))
    body[0x10:0x10 + len(hdr)] = hdr       # header at file offset 0x10 = header_addr - load_addr
    body[0x30] = 0xF4
    img = load_image(write(tmp_path, "mb.bin", bytes(body)))
    assert img.format == "multiboot" and img.entry == 0x200030
    image_seg = seg_at(img, 0x200000)
    assert image_seg.data == bytes(body) and image_seg.memsize == 0x3000
    assert img.info["loaded_by"] == "header addresses"


def test_multiboot_load_end_addr_limits_the_copy(tmp_path):
    body = bytearray(0x100)
    body[0:32] = multiboot_header(flags=1 << 16, addresses=(0x100000, 0x100000, 0x100040, 0, 0x100020))
    img = load_image(write(tmp_path, "mb.bin", bytes(body)), "multiboot")
    assert len(seg_at(img, 0x100000).data) == 0x40


def test_detection(tmp_path):
    cases = {
        "plain.elf": (elf32([(0x100000, 0x100000, b"\xf4", 1)], 0x100000), "elf"),
        "mb.elf": (elf32([(0x100000, 0x100000, multiboot_header() + b"\xf4", 13)], 0x10000C), "multiboot"),
        "vmlinux": (tiny_kernel(), "linux"),
        "vmlinux-sym": (elf32([(0x100000, 0x100000, b"\xf4", 1)], 0x100000, symbols={"start_kernel": 0x100000}),
                        "linux"),
        "bzImage": (bzimage(tiny_kernel()), "linux"),
    }
    for name, (data, fmt) in cases.items():
        assert detect_format(name, data) == fmt, name
        assert load_image(write(tmp_path, name, data)).format == fmt, name
    assert detect_format("blob", b"\x90" * 100, load=0x100000) == "raw"


def test_one_section_name_alone_is_not_linux(tmp_path):
    data = elf32([(0x100000, 0x100000, b"\xf4", 1)], 0x100000, sections=("__param",))
    assert detect_format("x", data) == "elf"


def test_explicit_linux_accepts_plain_elf_as_vmlinux(tmp_path):
    data = elf32([(0x100000, 0x100000, b"\xf4", 1)], 0x100000)
    img = load_image(write(tmp_path, "k", data), "linux")
    assert img.format == "linux" and img.boot_cs == 0x10 and img.boot_ds == 0x18


def test_demo_prefix_goes_to_the_demo_loader():
    img = load_image("demo:hello")
    assert img.format == "demo" and img.name == "hello" and img.segments


@pytest.mark.parametrize("kwargs", [{"load": 0x100000}, {"cmdline": "x"}, {"initrd": "rd"}, {"entry": 0}])
def test_demo_rejects_file_options(kwargs):
    with pytest.raises(BadInput, match="not applicable to demo guests"):
        load_image("demo:hello", **kwargs)
