"""The 32-bit Linux boot protocol: bzImage unpacking and boot_params."""
import struct

import pytest

from bt.images import load_image
from bt.machine import BOOT_CMDLINE_ADDR, BOOT_PARAMS_ADDR, MIB
from images_testkit import bzimage, tiny_kernel

KERNEL = tiny_kernel()


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def params_of(img):
    seg = next(s for s in img.segments if s.addr == BOOT_PARAMS_ADDR)
    assert len(seg.data) == 4096
    return seg.data


def u32(buf, off):
    return struct.unpack_from("<I", buf, off)[0]


@pytest.fixture
def booted(tmp_path):
    image = bzimage(KERNEL, init_size=0x80000)
    initrd = write(tmp_path, "initrd", b"I" * 5000)
    path = write(tmp_path, "bzImage", image)
    img = load_image(path, mem_bytes=64 * MIB, cmdline="console=ttyS0 rdinit=/init", initrd=initrd,
                     linux_unpack=True)
    return image, img


def test_kernel_segments_and_entry(booted):
    _, img = booted
    assert img.format == "linux" and img.entry == 0x1000000
    assert img.segments[0].addr == 0x1000000 and img.segments[0].data.startswith(b"\xfa\xf4")
    assert img.segments[1].addr == 0x1001000 and img.segments[1].memsize == 0x2000
    assert (img.boot_cs, img.boot_ds) == (0x10, 0x18)
    assert img.regs["esi"] == BOOT_PARAMS_ADDR
    assert img.info["kernel_version"] == "6.1.0-test (tests) #1"
    assert img.info["protocol"] == "2.15" and img.info["compression"] == "xz"


def test_setup_header_copied_and_loader_fields_set(booted):
    image, img = booted
    params = params_of(img)
    header_end = 0x202 + image[0x201]
    changed = {0x210, 0x211, *range(0x218, 0x220), *range(0x228, 0x22C)}
    for off in range(0x1F1, header_end):
        if off not in changed:
            assert params[off] == image[off], hex(off)
    assert params[0x202:0x206] == b"HdrS" and struct.unpack_from("<H", params, 0x1FE)[0] == 0xAA55
    assert params[0x210] == 0xFF
    assert params[0x211] & 1
    assert u32(params, 0x228) == BOOT_CMDLINE_ADDR
    cmd = next(s for s in img.segments if s.addr == BOOT_CMDLINE_ADDR)
    assert cmd.data == b"console=ttyS0 rdinit=/init\0"
    assert params[:0x1F1] == bytes(0x1E0) + params[0x1E0:0x1F1]   # nothing but our fields below the header


def test_initrd_placed_high_page_aligned(booted):
    _, img = booted
    params = params_of(img)
    addr, size = u32(params, 0x218), u32(params, 0x21C)
    assert size == 5000 and addr % 4096 == 0
    assert addr + size <= 64 * MIB and addr + size > 64 * MIB - 4096 - 5000
    assert addr >= 0x1000000 + 0x80000          # above kernel start + init_size
    assert next(s for s in img.segments if s.addr == addr).data == b"I" * 5000


def test_e820_map(booted):
    _, img = booted
    params = params_of(img)
    count = params[0x1E8]
    entries = [struct.unpack_from("<QQI", params, 0x2D0 + 20 * i) for i in range(count)]
    assert entries == [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xF0000, 0x10000, 2), (MIB, 63 * MIB, 1)]


def test_initrd_respects_initrd_addr_max(tmp_path):
    image = bzimage(KERNEL, initrd_addr_max=0x2FFFFFF)
    img = load_image(write(tmp_path, "bz", image), mem_bytes=128 * MIB,
                     initrd=write(tmp_path, "rd", b"x" * 10000))
    addr = u32(params_of(img), 0x218)
    assert addr + 10000 <= 0x3000000 and addr % 4096 == 0 and addr > 0x2000000


def test_bare_vmlinux_gets_a_synthesized_header(tmp_path):
    img = load_image(write(tmp_path, "vmlinux", KERNEL), cmdline="quiet")
    params = params_of(img)
    assert struct.unpack_from("<H", params, 0x1FE)[0] == 0xAA55
    assert params[0x202:0x206] == b"HdrS" and struct.unpack_from("<H", params, 0x206)[0] == 0x020F
    assert params[0x210] == 0xFF and params[0x211] & 1 and u32(params, 0x228) == BOOT_CMDLINE_ADDR
    assert u32(params, 0x218) == 0 and u32(params, 0x21C) == 0      # no initrd
    assert img.symbols == {"startup_32": 0xC1000000}
    assert img.info["container"] == "vmlinux"


def test_gzip_payload_is_accepted(tmp_path):
    import gzip
    payload = gzip.compress(KERNEL, mtime=0) + struct.pack("<I", len(KERNEL))
    img = load_image(write(tmp_path, "bz", bzimage(KERNEL, payload=payload)), linux_unpack=True)
    assert img.info["compression"] == "gzip" and img.entry == 0x1000000


def test_same_input_same_image(tmp_path):
    path = write(tmp_path, "bz", bzimage(KERNEL))
    a, b = (load_image(path, cmdline="x", initrd=write(tmp_path, "rd", b"r" * 99)) for _ in range(2))
    assert a == b
