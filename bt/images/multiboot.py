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
FLAG_PAGE_ALIGN = 1 << 0    # modules page aligned: they always are here
FLAG_MEMORY_INFO = 1 << 1   # mem_lower/upper wanted: always given
FLAG_VIDEO_MODE = 1 << 2    # video mode wanted: no framebuffer here, ignored (recorded in info)
FLAG_ADDRESSES = 1 << 16    # header carries load addresses (a.out kludge)
UNSUPPORTED_REQUIRED = 0xFFF8  # requirement bits 3..15 have no meaning we know: refuse

INFO_MEM = 1 << 0
INFO_CMDLINE = 1 << 2
INFO_MODS = 1 << 3
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


PAGE = 0x1000


def _page_up(addr: int) -> int:
    return (addr + PAGE - 1) & ~(PAGE - 1)


def load_multiboot(path: str, data: bytes, hdr: Header, mem_bytes: int, cmdline: str,
                   entry: int | None, modules: list[tuple[str, bytes]] | None = None) -> GuestImage:
    """`modules`: (command line, bytes) of each boot module, in order."""
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
    boot, info_addr = _boot_structures(segments, mem_bytes, cmdline, modules or [])
    if info_addr != MULTIBOOT_INFO_ADDR:
        info["info_addr"] = f"{info_addr:#x}"
    if modules:
        info["modules"] = [f"{m.addr:#x}-{m.end:#x}" for m in boot[:len(modules)]]
    check_layout(path, segments, boot, entry, mem_bytes, (BOOT_CS, BOOT_DS))
    return GuestImage(path=path, format="multiboot", entry=entry, segments=segments + boot,
                      regs={"eax": MULTIBOOT_EAX, "ebx": info_addr},
                      symbols=symbols, info=info)


def _boot_structures(segments: list[Segment], mem_bytes: int, cmdline: str,
                     modules: list[tuple[str, bytes]]) -> tuple[list[Segment], int]:
    """The modules and the information block, placed where the image is not.

    Modules go page aligned after the image's highest byte (its bss included),
    as QEMU's multiboot loader places them.  The information block stays at
    MULTIBOOT_INFO_ADDR (0x9000, below 1 MiB where a BIOS would keep it) unless
    one of the image's segments covers any of it; then it follows the image
    (and its modules), page aligned.  A kernel therefore never finds its own
    bytes overwritten by what the loader gives it."""
    top = _page_up(max(s.addr + s.memsize for s in segments))
    mods: list[Segment] = []
    for _, data in modules:
        mods.append(Segment(top, data))
        top = _page_up(top + max(len(data), 1))
    low = build_info(mem_bytes, cmdline, MULTIBOOT_INFO_ADDR, mods, modules)
    low_end = MULTIBOOT_INFO_ADDR + len(low)
    if not any(s.addr < low_end and MULTIBOOT_INFO_ADDR < s.addr + s.memsize for s in segments):
        return mods + [Segment(MULTIBOOT_INFO_ADDR, low)], MULTIBOOT_INFO_ADDR
    return mods + [Segment(top, build_info(mem_bytes, cmdline, top, mods, modules))], top


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


def build_info(mem_bytes: int, cmdline: str, base: int = MULTIBOOT_INFO_ADDR,
               mods: list[Segment] = (), modules: list[tuple[str, bytes]] = ()) -> bytes:
    """The multiboot information structure at `base`, followed by its mmap,
    command line, loader name, and (with modules) the module list and the
    modules' command lines; `mods` are the modules' placed segments."""
    mmap = b"".join(struct.pack("<IQQI", 20, addr, size, kind) for addr, size, kind in multiboot_mmap(mem_bytes))
    cmd = cmdline.encode() + b"\0"
    mmap_addr = base + INFO_SIZE
    cmd_addr = mmap_addr + len(mmap)
    name_addr = cmd_addr + len(cmd)
    list_addr = name_addr + len(LOADER_NAME)
    strings_addr = list_addr + 16 * len(mods)
    mod_list, mod_strings = b"", b""
    for seg, (mod_cmd, _) in zip(mods, modules):
        mod_list += struct.pack("<IIII", seg.addr, seg.addr + len(seg.data), strings_addr + len(mod_strings), 0)
        mod_strings += mod_cmd.encode() + b"\0"
    flags = INFO_MEM | INFO_CMDLINE | INFO_MMAP | INFO_LOADER_NAME | (INFO_MODS if mods else 0)
    info = bytearray(INFO_SIZE)
    struct.pack_into("<III", info, 0, flags, 640, (mem_bytes - (1 << 20)) // 1024)
    struct.pack_into("<I", info, 12, 0xFFFFFFFF)   # boot_device: none (flag bit 1 not set anyway)
    struct.pack_into("<I", info, 16, cmd_addr)
    if mods:
        struct.pack_into("<II", info, 20, len(mods), list_addr)
    struct.pack_into("<II", info, 44, len(mmap), mmap_addr)
    struct.pack_into("<I", info, 64, name_addr)
    return bytes(info) + mmap + cmd + LOADER_NAME + mod_list + mod_strings
