"""Multiboot v1 kernels: the header, the a.out-kludge address fields, and the
multiboot information structure the kernel finds through EBX."""
from __future__ import annotations

import struct
from dataclasses import dataclass

from bt.errors import BadInput
from bt.images.elf import is_elf, parse_elf
from bt.images.image import GuestImage, Segment
from bt.images.layout import check_layout, check_mem, multiboot_mmap
from bt.machine import BOOT_CS, BOOT_DS, MULTIBOOT_EAX, MULTIBOOT_INFO_ADDR

MAGIC = 0x1BADB002
SEARCH_BYTES = 8192
FLAG_PAGE_ALIGN = 1 << 0    # modules page aligned: we load no modules
FLAG_MEMORY_INFO = 1 << 1   # mem_lower/upper wanted: always given
FLAG_VIDEO_MODE = 1 << 2    # video mode wanted: no framebuffer here, ignored (recorded in info)
FLAG_ADDRESSES = 1 << 16    # header carries load addresses (a.out kludge)
UNSUPPORTED_REQUIRED = 0xFFF8  # requirement bits 3..15 have no meaning we know: refuse

INFO_MEM = 1 << 0
INFO_CMDLINE = 1 << 2
INFO_MMAP = 1 << 6
INFO_LOADER_NAME = 1 << 9
INFO_SIZE = 0x80            # the v1 structure (0x74 bytes) rounded up; mmap follows
LOADER_NAME = b"bt\0"


@dataclass
class Header:
    offset: int
    flags: int
    header_addr: int = 0
    load_addr: int = 0
    load_end_addr: int = 0
    bss_end_addr: int = 0
    entry_addr: int = 0


def find_header(data: bytes, path: str = "the image") -> tuple[Header | None, int | None]:
    """The first valid header in the first 8 KiB (4-aligned), and the offset of
    the first magic with a bad checksum (for error messages, which name `path`)."""
    bad = None
    limit = min(len(data), SEARCH_BYTES) - 12
    for off in range(0, limit + 1, 4):
        magic, flags, checksum = struct.unpack_from("<III", data, off)
        if magic != MAGIC:
            continue
        if (magic + flags + checksum) & 0xFFFFFFFF:
            bad = off if bad is None else bad
            continue
        hdr = Header(off, flags)
        if flags & FLAG_ADDRESSES:
            if off + 32 > len(data):
                raise BadInput(f"{path}: multiboot header at 0x{off:x} is truncated "
                               "(address fields missing)")
            (hdr.header_addr, hdr.load_addr, hdr.load_end_addr,
             hdr.bss_end_addr, hdr.entry_addr) = struct.unpack_from("<5I", data, off + 12)
        return hdr, bad
    return None, bad


def load_multiboot(path: str, data: bytes, hdr: Header, mem_bytes: int, cmdline: str,
                   entry: int | None) -> GuestImage:
    check_mem(mem_bytes, "multiboot")
    if hdr.flags & UNSUPPORTED_REQUIRED:
        raise BadInput(f"{path}: multiboot header requires features bt does not provide "
                       f"(flags 0x{hdr.flags:x})")
    info = {"header_offset": hdr.offset, "header_flags": hdr.flags}
    symbols = {}
    if hdr.flags & FLAG_ADDRESSES:
        segments, hdr_entry = _segments_from_addresses(path, data, hdr)
        info["loaded_by"] = "header addresses"
    elif is_elf(data):
        facts = parse_elf(data, path)
        segments, hdr_entry, symbols = facts.segments, facts.entry, facts.symbols
        info["loaded_by"] = "ELF program headers"
    else:
        raise BadInput(f"{path}: multiboot header has no address fields (flag 16) and the file is not ELF")
    if hdr.flags & FLAG_VIDEO_MODE:
        info["video_mode_request"] = "ignored (no framebuffer)"
    entry = hdr_entry if entry is None else entry
    boot = [Segment(MULTIBOOT_INFO_ADDR, build_info(mem_bytes, cmdline))]
    check_layout(path, segments, boot, entry, mem_bytes, (BOOT_CS, BOOT_DS))
    return GuestImage(path=path, format="multiboot", entry=entry, segments=segments + boot,
                      regs={"eax": MULTIBOOT_EAX, "ebx": MULTIBOOT_INFO_ADDR},
                      symbols=symbols, info=info)


def _segments_from_addresses(path: str, data: bytes, hdr: Header) -> tuple[list[Segment], int]:
    if hdr.load_addr > hdr.header_addr:
        raise BadInput(f"{path}: multiboot load_addr 0x{hdr.load_addr:x} is above header_addr 0x{hdr.header_addr:x}")
    start = hdr.offset - (hdr.header_addr - hdr.load_addr)
    if start < 0:
        raise BadInput(f"{path}: multiboot header_addr/load_addr place the image before the file start")
    if hdr.load_end_addr == 0:
        size = len(data) - start
    elif hdr.load_end_addr <= hdr.load_addr:
        raise BadInput(f"{path}: multiboot load_end_addr 0x{hdr.load_end_addr:x} is not above load_addr")
    else:
        size = hdr.load_end_addr - hdr.load_addr
    if start + size > len(data):
        raise BadInput(f"{path} is truncated: multiboot header asks for 0x{size:x} bytes from file offset "
                       f"0x{start:x}, the file has 0x{len(data):x}")
    memsize = size
    if hdr.bss_end_addr:
        if hdr.bss_end_addr < hdr.load_addr + size:
            raise BadInput(f"{path}: multiboot bss_end_addr 0x{hdr.bss_end_addr:x} is below the loaded image end")
        memsize = hdr.bss_end_addr - hdr.load_addr
    return [Segment(hdr.load_addr, data[start:start + size], memsize)], hdr.entry_addr


def build_info(mem_bytes: int, cmdline: str) -> bytes:
    """The multiboot information structure, followed by its mmap, command line and loader name."""
    base = MULTIBOOT_INFO_ADDR
    mmap = b"".join(struct.pack("<IQQI", 20, addr, size, kind) for addr, size, kind in multiboot_mmap(mem_bytes))
    cmd = cmdline.encode() + b"\0"
    mmap_addr = base + INFO_SIZE
    cmd_addr = mmap_addr + len(mmap)
    name_addr = cmd_addr + len(cmd)
    info = bytearray(INFO_SIZE)
    struct.pack_into("<III", info, 0, INFO_MEM | INFO_CMDLINE | INFO_MMAP | INFO_LOADER_NAME,
                     640, (mem_bytes - (1 << 20)) // 1024)
    struct.pack_into("<I", info, 12, 0xFFFFFFFF)   # boot_device: none (flag bit 1 not set anyway)
    struct.pack_into("<I", info, 16, cmd_addr)
    struct.pack_into("<II", info, 44, len(mmap), mmap_addr)
    struct.pack_into("<I", info, 64, name_addr)
    return bytes(info) + mmap + cmd + LOADER_NAME
