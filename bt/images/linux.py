"""Linux kernels (bzImage or bare vmlinux ELF) through the 32-bit boot protocol.

Two ways to start a bzImage (docs/images.md): by default bt is a boot loader
(bt/images/bootproto.py: the protected-mode code at its load address, the
kernel's own decompressor runs in the guest).  With `--linux-unpack`, and for
a bare vmlinux, this module does what the decompressor would: it takes
the compressed vmlinux out of the payload (xz or gzip), loads its PT_LOAD
segments at their physical addresses and enters at the 32-bit entry with ESI
pointing at boot_params (Documentation/arch/x86/boot.rst, "32-bit boot protocol").
"""
from __future__ import annotations

import lzma
import struct
import zlib

from bt.errors import BadInput
from bt.images.elf import ElfFacts, is_elf, parse_elf
from bt.images.files import read_file
from bt.images.image import GuestImage, Segment
from bt.images.layout import check_layout, check_mem, e820_map
from bt.machine import BOOT_CMDLINE_ADDR, BOOT_PARAMS_ADDR
from bt.x86 import PAGE

# The 32-bit boot protocol's selectors: __BOOT_CS / __BOOT_DS in the kernel's GDT.
LINUX_BOOT_CS = 0x10
LINUX_BOOT_DS = 0x18

BOOT_PARAMS_SIZE = 4096
SETUP_HEADER_START = 0x1F1
# boot_params / setup header offsets (boot.rst, "THE REAL-MODE KERNEL HEADER")
ALT_MEM_K = 0x1E0
E820_ENTRIES = 0x1E8
SETUP_SECTS = 0x1F1
BOOT_FLAG = 0x1FE
JUMP = 0x200
HEADER_MAGIC = 0x202
VERSION = 0x206
KERNEL_VERSION = 0x20E
TYPE_OF_LOADER = 0x210
LOADFLAGS = 0x211
RAMDISK_IMAGE = 0x218
RAMDISK_SIZE = 0x21C
CMD_LINE_PTR = 0x228
INITRD_ADDR_MAX = 0x22C
KERNEL_ALIGNMENT = 0x230
CMDLINE_SIZE = 0x238
PAYLOAD_OFFSET = 0x248
PAYLOAD_LENGTH = 0x24C
PREF_ADDRESS = 0x258
INIT_SIZE = 0x260
E820_TABLE = 0x2D0
E820_MAX = 128

LOADED_HIGH = 0x01
LOADER_UNDEFINED = 0xFF
SYNTH_VERSION = 0x020F
DEFAULT_INITRD_ADDR_MAX = 0x37FFFFFF   # what the protocol says for versions before 2.03

_COMPRESSIONS = [  # magic -> name, for payloads we cannot unpack
    (b"\x5d\x00\x00", "lzma"), (b"BZh", "bzip2"), (b"\x02\x21\x4c\x18", "lz4"),
    (b"\x28\xb5\x2f\xfd", "zstd"), (b"\x89\x4c\x5a\x4f", "lzo"),
]
XZ_MAGIC = b"\xfd7zXZ\x00"
GZIP_MAGIC = b"\x1f\x8b"

# Sections only a Linux kernel has; two of them (or a kernel symbol) make a
# bare ELF count as a vmlinux in `--format auto`.
LINUX_SECTIONS = {"__ksymtab", "__ksymtab_strings", "__param", "__ex_table", ".data..percpu", "__bug_table"}
LINUX_SYMBOLS = {"linux_banner", "start_kernel"}


def is_bzimage(data: bytes) -> bool:
    return (len(data) >= HEADER_MAGIC + 4 and data[HEADER_MAGIC:HEADER_MAGIC + 4] == b"HdrS"
            and data[BOOT_FLAG:BOOT_FLAG + 2] == b"\x55\xaa")


def looks_like_vmlinux(facts: ElfFacts) -> bool:
    return bool(LINUX_SYMBOLS & facts.symbols.keys()) or len(LINUX_SECTIONS.intersection(facts.sections)) >= 2


def load_linux(path: str, data: bytes, mem_bytes: int, cmdline: str, initrd: str | None,
               vmlinux: ElfFacts | None = None) -> GuestImage:
    """Load a bzImage's kernel unpacked on the host, or a vmlinux ELF (`data`
    is ELF; `vmlinux` its facts if already parsed)."""
    check_mem(mem_bytes, "Linux")
    if is_bzimage(data):
        header, kernel, info = _unpack_bzimage(path, data)
        vmlinux = parse_elf(kernel, f"{path} (decompressed vmlinux)")
        info["kernel_version"] = _bzimage_version(data) or _banner(kernel)
    elif is_elf(data):
        vmlinux = vmlinux or parse_elf(data, path)
        header = _synthetic_header(vmlinux)
        info = {"container": "vmlinux", "protocol": _protocol(SYNTH_VERSION) + " (synthesized)",
                "kernel_version": _banner(data)}
    else:
        raise BadInput(f"{path} is neither a Linux bzImage (no 'HdrS' at 0x202) nor a vmlinux ELF")
    params = bytearray(BOOT_PARAMS_SIZE)
    params[SETUP_HEADER_START:SETUP_HEADER_START + len(header)] = header
    version = _u16(params, VERSION)

    kernel_start = min(s.addr for s in vmlinux.segments)
    kernel_end = max(s.end for s in vmlinux.segments)
    init_size = _u32(params, INIT_SIZE) if version >= 0x020A else 0
    needed_end = max(kernel_end, kernel_start + init_size)
    boot = fill_boot_params(path, params, needed_end, mem_bytes, cmdline, initrd, info)
    check_layout(path, vmlinux.segments, boot, vmlinux.entry, mem_bytes, (LINUX_BOOT_CS, LINUX_BOOT_DS))
    info.update(loader="unpacked on the host", kernel_start=kernel_start, kernel_end=kernel_end,
                init_size=init_size)
    return GuestImage(path=path, format="linux", entry=vmlinux.entry, segments=vmlinux.segments + boot,
                      regs={"esi": BOOT_PARAMS_ADDR, "ebx": 0, "ebp": 0, "edi": 0},
                      boot_cs=LINUX_BOOT_CS, boot_ds=LINUX_BOOT_DS,
                      symbols=vmlinux.symbols, info=info)


def fill_boot_params(path: str, params: bytearray, needed_end: int, mem_bytes: int, cmdline: str,
                     initrd: str | None, info: dict) -> list[Segment]:
    """Complete the zero page `params` (its setup header already copied in) as
    a boot loader does: loader type, LOADED_HIGH, command line, memory size and
    e820 map, the initrd (placed above `needed_end`, the end of what the kernel
    occupies while it starts); return the boot structures to load, the zero page
    last."""
    version = _u16(params, VERSION)
    if needed_end > mem_bytes:
        raise BadInput(f"{path}: the kernel needs RAM up to 0x{needed_end:x} "
                       f"({-(-needed_end // (1 << 20))} MiB); give more --mem")
    boot = [Segment(BOOT_CMDLINE_ADDR, _cmdline_bytes(path, cmdline, params, version))]
    params[TYPE_OF_LOADER] = LOADER_UNDEFINED
    params[LOADFLAGS] |= LOADED_HIGH
    struct.pack_into("<I", params, CMD_LINE_PTR, BOOT_CMDLINE_ADDR)
    struct.pack_into("<I", params, ALT_MEM_K, (mem_bytes - (1 << 20)) // 1024)
    _write_e820(params, mem_bytes)
    if initrd is not None:
        ramdisk = read_file(initrd, "initrd")
        max_addr = _u32(params, INITRD_ADDR_MAX) if version >= 0x0203 else DEFAULT_INITRD_ADDR_MAX
        addr = _place_initrd(initrd, len(ramdisk), needed_end, mem_bytes, max_addr)
        struct.pack_into("<II", params, RAMDISK_IMAGE, addr, len(ramdisk))
        boot.append(Segment(addr, ramdisk))
        info.update(initrd=initrd, initrd_addr=addr, initrd_size=len(ramdisk))
    boot.append(Segment(BOOT_PARAMS_ADDR, bytes(params)))
    info.update(boot_params=BOOT_PARAMS_ADDR, cmdline=cmdline)
    return boot


def bzimage_header(path: str, data: bytes) -> tuple[int, int, int]:
    """(protocol version, end of the setup header, file offset of the
    protected-mode code) of a bzImage; what the protocol cannot load is refused."""
    if len(data) < INIT_SIZE + 4:
        raise BadInput(f"{path} is a truncated bzImage ({len(data)} bytes)")
    version = _u16(data, VERSION)
    if version < 0x0200 or not data[LOADFLAGS] & LOADED_HIGH:
        raise BadInput(f"{path} is an old zImage (protocol {_protocol(version)}, not loaded high); "
                       "only bzImages are supported")
    header_end = HEADER_MAGIC + data[JUMP + 1]
    if header_end > len(data):
        raise BadInput(f"{path} is truncated inside its setup header")
    setup_sects = data[SETUP_SECTS] or 4
    pm_start = (setup_sects + 1) * 512
    if pm_start >= len(data):
        raise BadInput(f"{path} is truncated: its {setup_sects} setup sectors leave no protected-mode code")
    return version, header_end, pm_start


def _unpack_bzimage(path: str, data: bytes) -> tuple[bytes, bytes, dict]:
    """(setup header bytes, decompressed vmlinux, info) of a bzImage."""
    version, header_end, pm_start = bzimage_header(path, data)
    setup_sects = data[SETUP_SECTS] or 4
    if version >= 0x0208 and header_end >= PAYLOAD_LENGTH + 4:
        offset, length = struct.unpack_from("<II", data, PAYLOAD_OFFSET)
        if length == 0:
            raise BadInput(f"{path}: its setup header gives no compressed kernel "
                           f"(payload_offset 0x{offset:x}, payload_length 0)")
        start, end = pm_start + offset, pm_start + offset + length
        if end > len(data):
            raise BadInput(f"{path} is truncated: its payload ends at 0x{end:x}, the file has 0x{len(data):x}")
    else:
        start = data.find(XZ_MAGIC, pm_start)
        if start < 0:
            raise BadInput(f"{path}: no xz-compressed kernel found after the setup sectors")
        end = len(data)
    payload = data[start:end]
    compression, kernel = _decompress(path, payload)
    info = {"container": "bzImage", "protocol": _protocol(version), "setup_sects": setup_sects,
            "compression": compression, "payload_bytes": len(payload), "vmlinux_bytes": len(kernel)}
    return data[SETUP_HEADER_START:header_end], kernel, info


def _decompress(path: str, payload: bytes) -> tuple[str, bytes]:
    # A decompressor object, not lzma.decompress(): the kernel appends the
    # uncompressed size (4 bytes) after the stream, which is not a second stream.
    if payload.startswith(XZ_MAGIC):
        name, dec = "xz", lzma.LZMADecompressor(lzma.FORMAT_XZ)
        errors = (lzma.LZMAError,)
    elif payload.startswith(GZIP_MAGIC):
        name, dec = "gzip", zlib.decompressobj(16 + zlib.MAX_WBITS)
        errors = (zlib.error,)
    else:
        known = next((n for magic, n in _COMPRESSIONS if payload.startswith(magic)), None)
        what = f"{known}-compressed" if known else f"an unknown payload (first bytes {payload[:6].hex()})"
        raise BadInput(f"{path} carries {what}; bt can unpack xz and gzip kernels")
    try:
        out = dec.decompress(payload)
    except errors as e:
        raise BadInput(f"{path}: corrupt {name} payload ({e})") from None
    done = dec.eof
    if not done:
        raise BadInput(f"{path}: truncated {name} payload (the stream ends early)")
    return name, out


def _synthetic_header(vmlinux: ElfFacts) -> bytes:
    """A minimal setup header for a bare vmlinux, as a bzImage would carry."""
    params = bytearray(0x268)
    start = min(s.addr for s in vmlinux.segments)
    span = max(s.end for s in vmlinux.segments) - start
    struct.pack_into("<H", params, BOOT_FLAG, 0xAA55)
    params[JUMP + 1] = 0x268 - HEADER_MAGIC
    params[HEADER_MAGIC:HEADER_MAGIC + 4] = b"HdrS"
    struct.pack_into("<H", params, VERSION, SYNTH_VERSION)
    params[LOADFLAGS] = LOADED_HIGH
    struct.pack_into("<I", params, INITRD_ADDR_MAX, 0x7FFFFFFF)
    struct.pack_into("<I", params, KERNEL_ALIGNMENT, 0x200000)
    struct.pack_into("<I", params, CMDLINE_SIZE, 2047)
    struct.pack_into("<Q", params, PREF_ADDRESS, start)
    struct.pack_into("<I", params, INIT_SIZE, span)
    return bytes(params[SETUP_HEADER_START:])


def _cmdline_bytes(path: str, cmdline: str, params: bytearray, version: int) -> bytes:
    limit = _u32(params, CMDLINE_SIZE) if version >= 0x0206 else 255
    raw = cmdline.encode()
    if len(raw) > limit:
        raise BadInput(f"{path}: command line is {len(raw)} bytes, the kernel accepts {limit}")
    return raw + b"\0"


def _write_e820(params: bytearray, mem_bytes: int) -> None:
    entries = e820_map(mem_bytes)
    params[E820_ENTRIES] = len(entries)
    for i, (addr, size, kind) in enumerate(entries):
        struct.pack_into("<QQI", params, E820_TABLE + 20 * i, addr, size, kind)


def _place_initrd(name: str, size: int, kernel_end: int, mem_bytes: int, max_addr: int) -> int:
    """Page-aligned, as high as RAM and initrd_addr_max allow, above the kernel."""
    top = min(mem_bytes, max_addr + 1)
    addr = (top - size) & ~(PAGE - 1)
    floor = -(-kernel_end // PAGE) * PAGE
    if addr < floor:
        raise BadInput(f"initrd {name} ({size} bytes) does not fit in RAM between the kernel end "
                       f"0x{floor:x} and 0x{top:x}; give more --mem")
    return addr


def _bzimage_version(data: bytes) -> str:
    ptr = _u16(data, KERNEL_VERSION)
    if not ptr or ptr + 0x200 >= len(data):
        return ""
    return data[ptr + 0x200:ptr + 0x400].split(b"\0", 1)[0].decode("ascii", "replace")


def _banner(data: bytes) -> str:
    at = data.find(b"Linux version ")
    if at < 0:
        return ""
    text = data[at:at + 256].split(b"\0", 1)[0].split(b"\n", 1)[0]
    return text.decode("ascii", "replace")


def _protocol(version: int) -> str:
    return f"{version >> 8}.{version & 0xFF:02d}"


def _u16(buf, off: int) -> int:
    return struct.unpack_from("<H", buf, off)[0]


def _u32(buf, off: int) -> int:
    return struct.unpack_from("<I", buf, off)[0]
