"""Multiboot boot modules and where the information block goes
(bt/images/multiboot.py): never over the image's own segments."""
import struct

import pytest

from bt.errors import BadInput
from bt.images import load_image
from bt.machine import MIB, MULTIBOOT_INFO_ADDR
from images_testkit import elf32, multiboot_header
from test_images_formats import read_guest, write


def _kernel(tmp_path, segs):
    code = multiboot_header(flags=0x3) + b"\xf4" * 20
    first = segs[0]
    data = elf32([(first[0], first[0], code, first[1])] + [(a, a, b"\x90" * 16, m) for a, m in segs[1:]],
                 entry=first[0] + 12)
    return write(tmp_path, "mb.elf", data)


def test_modules_follow_the_image_page_aligned_and_are_listed(tmp_path):
    kernel = _kernel(tmp_path, [(0x100000, 0x2345)])
    env = write(tmp_path, "env", b"NR_CPUS=1\nMEMSIZE=128\n")
    blob = write(tmp_path, "blob", bytes(range(256)) * 20)
    img = load_image(kernel, mem_bytes=32 * MIB, cmdline="x.flat", modules=[env, blob])
    assert img.regs["ebx"] == MULTIBOOT_INFO_ADDR
    flags, = struct.unpack("<I", read_guest(img, MULTIBOOT_INFO_ADDR, 4))
    count, addr = struct.unpack("<II", read_guest(img, MULTIBOOT_INFO_ADDR + 20, 8))
    assert flags & 0x8 and count == 2
    mods = [struct.unpack("<IIII", read_guest(img, addr + 16 * i, 16)) for i in range(2)]
    assert mods[0][:2] == (0x103000, 0x103000 + 22)
    assert mods[1][0] == 0x104000 and mods[1][1] - mods[1][0] == 5120
    assert read_guest(img, mods[0][0], 22) == b"NR_CPUS=1\nMEMSIZE=128\n"
    assert read_guest(img, mods[1][0], 5120) == bytes(range(256)) * 20
    assert read_guest(img, mods[0][2], len(env) + 1) == env.encode() + b"\0"


def test_the_info_block_moves_when_a_segment_covers_0x9000(tmp_path):
    # kvm-unit-tests' realmode.flat has a segment at 0x8000-0xa84c
    kernel = _kernel(tmp_path, [(0x100000, 0x1000), (0x8000, 0x284C)])
    img = load_image(kernel, mem_bytes=32 * MIB, cmdline="realmode.flat")
    info = img.regs["ebx"]
    assert info == 0x101000             # after the image's highest byte, page aligned
    cmd_ptr, = struct.unpack("<I", read_guest(img, info + 16, 4))
    assert read_guest(img, cmd_ptr, 14) == b"realmode.flat\0"
    flags, = struct.unpack("<I", read_guest(img, info, 4))
    assert not flags & 0x8              # no modules: the flag stays clear


def test_module_options_apply_to_multiboot_only(tmp_path):
    raw = write(tmp_path, "k.bin", b"\xf4")
    with pytest.raises(BadInput, match="--module applies to multiboot"):
        load_image(raw, "raw", load=0x100000, modules=[raw])


def test_a_missing_module_file_is_one_line_of_bad_input(tmp_path):
    kernel = _kernel(tmp_path, [(0x100000, 0x1000)])
    with pytest.raises(BadInput):
        load_image(kernel, mem_bytes=32 * MIB, modules=[str(tmp_path / "absent")])
