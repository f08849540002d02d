"""Every unusable input is one BadInput line that names the problem."""
import lzma
import struct

import pytest

from bt.errors import BadInput
from bt.images import load_image
from bt.machine import MIB
from images_testkit import EM_ARM, bzimage, elf32, multiboot_header, tiny_kernel

GOOD_ELF = elf32([(0x100000, 0x100000, b"\xf4" * 8, 8)], 0x100000)


def elf_with_machine(machine, elf_class=1):
    return elf32([(0x100000, 0x100000, b"\xf4", 1)], 0x100000, machine=machine, elf_class=elf_class)


def corrupt_xz():
    payload = bytearray(lzma.compress(tiny_kernel(), format=lzma.FORMAT_XZ))
    payload[40:60] = b"\xff" * 20
    return bzimage(tiny_kernel(), payload=bytes(payload))


CASES = {
    # name: (file bytes or None for "no file", kwargs, expected message part)
    "missing": (None, {}, "does not exist"),
    "empty": (b"", {}, "is empty"),
    "truncated ELF header": (GOOD_ELF[:40], {}, "truncated ELF"),
    "truncated ELF segment": (GOOD_ELF[:60], {"fmt": "elf"}, "truncated"),
    "x86-64 ELF": (b"\x7fELF\x02\x01\x01" + bytes(57), {}, "64-bit ELF"),
    "ARM ELF": (elf_with_machine(EM_ARM), {}, "ELF for ARM, not i386"),
    "big-endian ELF": (b"\x7fELF\x01\x02\x01" + bytes(60), {}, "not a little-endian ELF32"),
    "not ELF with --format elf": (b"\x90" * 64, {"fmt": "elf"}, "is not an ELF file"),
    "object file": (elf32([(0, 0, b"", 0)], 0, etype=1), {}, "not an executable"),
    "no PT_LOAD": (elf32([(0x100000, 0x100000, b"", 0)], 0x100000), {}, "no loadable"),
    "overlapping segments": (elf32([(0x100000, 0x100000, b"a" * 16, 0x100), (0x100080, 0x100080, b"b", 1)],
                                   0x100000), {}, "overlaps"),
    "outside RAM": (elf32([(0x100000, 0x3FFF000, b"a" * 16, 0x2000)], 0x3FFF000), {}, "outside RAM (64 MiB)"),
    "entry outside image": (elf32([(0x100000, 0x100000, b"a" * 16, 16)], 0x200000), {}, "entry point 0x200000"),
    "raw entry outside": (b"\x90" * 16, {"load": 0x100000, "entry": 0x100010}, "entry point 0x100010"),
    "raw over the boot GDT": (b"\x90" * 16, {"load": 0x500}, "boot GDT"),
    "raw outside RAM": (b"\x90" * 16, {"load": 64 * MIB - 8}, "outside RAM"),
    "undetectable": (b"\x90" * 16, {}, "cannot detect the format of"),
    "raw without --load": (b"\x90" * 16, {"fmt": "raw"}, "needs --load"),
    "unknown format": (GOOD_ELF, {"fmt": "pe"}, "unknown image format 'pe'"),
    "--load with ELF": (GOOD_ELF, {"load": 0x100000}, "--load applies to raw images only"),
    "--initrd with ELF": (GOOD_ELF, {"initrd": "/nonexistent"}, "--initrd applies to Linux kernels only"),
    "--cmdline with ELF": (GOOD_ELF, {"cmdline": "x"}, "--cmdline needs a multiboot or Linux image"),
    "no multiboot header": (GOOD_ELF, {"fmt": "multiboot"}, "no valid multiboot header"),
    "bad multiboot checksum": (elf32([(0x100000, 0x100000, struct.pack("<III", 0x1BADB002, 0, 0) + b"\xf4", 13)],
                                     0x10000C), {"fmt": "multiboot"}, "bad checksum"),
    "multiboot truncated by header": (multiboot_header(1 << 16, (0x100000, 0x100000, 0x110000, 0, 0x100020)),
                                      {}, "truncated"),
    "multiboot unknown requirement": (elf32([(0x100000, 0x100000, multiboot_header(1 << 5) + b"\xf4", 13)],
                                            0x10000C), {}, "requires features"),
    "multiboot without addresses, not ELF": (multiboot_header(0) + b"\xf4", {"fmt": "multiboot"},
                                             "not ELF"),
    "not linux": (b"\x90" * 1024, {"fmt": "linux"}, "neither a Linux bzImage"),
    "corrupt xz": (corrupt_xz(), {"linux_unpack": True}, "corrupt xz payload"),
    "truncated xz": (bzimage(tiny_kernel(), payload=lzma.compress(tiny_kernel(), format=lzma.FORMAT_XZ)[:-30]),
                     {"linux_unpack": True}, "truncated xz payload"),
    "zstd payload": (bzimage(tiny_kernel(), payload=b"\x28\xb5\x2f\xfd" + bytes(40)), {"linux_unpack": True}, "zstd-compressed"),
    "truncated bzImage": (bzimage(tiny_kernel())[:-40], {"linux_unpack": True}, "truncated: its payload ends"),
    "bzImage cut in its header": (bzimage(tiny_kernel())[:0x230], {}, "truncated bzImage"),
    "kernel larger than RAM": (bzimage(tiny_kernel(), init_size=0x4000000), {}, "needs RAM up to 0x5000000"),
    "initrd missing": (bzimage(tiny_kernel()), {"initrd": "/nonexistent/initrd"}, "initrd file /nonexistent"),
    "command line too long": (bzimage(tiny_kernel()), {"cmdline": "x" * 300}, "command line is 300 bytes"),
    "--entry with linux": (bzimage(tiny_kernel()), {"entry": 0x1000000}, "--entry does not apply"),
    "RAM of 1 MiB for linux": (bzimage(tiny_kernel()), {"mem_bytes": MIB}, "more than 1 MiB"),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_input(tmp_path, name):
    data, kwargs, expected = CASES[name]
    path = tmp_path / "image"
    if data is not None:
        path.write_bytes(data)
    with pytest.raises(BadInput) as err:
        load_image(str(path), **kwargs)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message and message.strip() == message


def test_directory_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="is a directory"):
        load_image(str(tmp_path))


def test_initrd_too_big(tmp_path):
    bz = tmp_path / "bz"
    bz.write_bytes(bzimage(tiny_kernel()))
    rd = tmp_path / "rd"
    rd.write_bytes(b"r" * (48 * MIB))     # 64 MiB RAM, kernel at 16 MiB: no room above it
    with pytest.raises(BadInput, match=r"initrd .*rd \(50331648 bytes\) does not fit"):
        load_image(str(bz), initrd=str(rd), linux_unpack=True)


from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

SAMPLES = {
    "elf": elf32([(0xC0100000, 0x100000, b"\xf4" * 8, 16)], 0xC0100000, sections=(".text",),
                 symbols={"main": 0xC0100000}),
    "multiboot": multiboot_header(1 << 16, (0x100000, 0x100000, 0, 0x101000, 0x100020)) + b"\xf4" * 32,
    "bzImage": bzimage(tiny_kernel()),
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(sorted(SAMPLES)), edits=st.lists(
    st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.integers(1, 4096)))
def test_corrupted_images_give_bad_input_or_load(tmp_path, kind, edits, cut):
    """Random byte edits and truncations never escape as anything but BadInput."""
    data = bytearray(SAMPLES[kind])
    for off, value in edits:
        if off < len(data):
            data[off] = value
    if cut is not None:
        data = data[:cut]
    path = tmp_path / f"fuzz-{kind}"
    path.write_bytes(bytes(data))
    try:
        load_image(str(path), mem_bytes=64 * MIB)
    except BadInput as e:
        assert "\n" not in str(e)
