"""A bzImage started as a boot loader starts it: its own decompressor runs in the guest.

Documentation/arch/x86/boot.rst, "32-bit boot protocol", which QEMU's
`-kernel` and GRUB follow: the protected-mode code (the file after the setup
sectors) is loaded at 0x100000, or at `pref_address` when the kernel is
relocatable; the zero page (`boot_params`: the file's setup header, the
command line pointer, the e820 map, the initrd) is filled in; `code32_start`
says where the code was put; the CPU enters there in flat 32-bit protected
mode, paging and interrupts off, CS=__BOOT_CS, DS=ES=SS=__BOOT_DS, ESI =
boot_params, EBX=EBP=EDI=0.  The image's own code then decompresses the kernel
(any compression Linux supports, or none), relocates it and jumps to it.  It
also works for programs that are not Linux but use the protocol.

What the kernel occupies while it starts is reserved for it: from the load
address to the end of the code, and `init_size` bytes from where the
decompressor runs (the larger of the load address and `pref_address`, as
arch/x86/boot/compressed/head_32.S chooses); the initrd goes above that.
Refused, with one line each: a zImage (loaded low, real-mode start), a
protocol before 2.02 (no `cmd_line_ptr`), RAM too small for the above.
"""
from __future__ import annotations

import struct

from bt.errors import BadInput
from bt.images.image import GuestImage, Segment
from bt.images.layout import check_layout, check_mem
from bt.images.linux import (BOOT_PARAMS_SIZE, INIT_SIZE, KERNEL_ALIGNMENT, LINUX_BOOT_CS, LINUX_BOOT_DS,
                             PREF_ADDRESS, SETUP_HEADER_START, SETUP_SECTS, _bzimage_version,
                             _protocol, _u32, bzimage_header, fill_boot_params)
from bt.machine import BOOT_PARAMS_ADDR

CODE32_START = 0x214
RELOCATABLE_KERNEL = 0x234
DEFAULT_LOAD = 0x100000          # where a non-relocatable bzImage's protected-mode code goes
MIN_PROTOCOL = 0x0202            # cmd_line_ptr

# Payload magics, to say in the image's info what the decompressor will meet.
_PAYLOADS = [(b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b", "gzip"), (b"\x5d\x00\x00", "lzma"), (b"BZh", "bzip2"),
             (b"\x02\x21\x4c\x18", "lz4"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"\x89\x4c\x5a\x4f", "lzo"),
             (b"\x7fELF", "none")]


def load_bzimage(path: str, data: bytes, mem_bytes: int, cmdline: str, initrd: str | None) -> GuestImage:
    check_mem(mem_bytes, "Linux")
    version, header_end, pm_start = bzimage_header(path, data)
    if version < MIN_PROTOCOL:
        raise BadInput(f"{path}: boot protocol {_protocol(version)} predates 2.02 (no cmd_line_ptr); "
                       "it cannot be started through the 32-bit boot protocol")
    code = data[pm_start:]
    relocatable = version >= 0x0205 and data[RELOCATABLE_KERNEL] != 0
    pref = struct.unpack_from("<Q", data, PREF_ADDRESS)[0] if version >= 0x020A else DEFAULT_LOAD
    init_size = _u32(data, INIT_SIZE) if version >= 0x020A else 0
    load = DEFAULT_LOAD
    if relocatable and pref and pref + len(code) <= mem_bytes:
        align = _u32(data, KERNEL_ALIGNMENT) or 1
        load = -(-pref // align) * align if align & (align - 1) == 0 else pref
    runs_at = max(load, pref if version >= 0x020A else load)
    needed_end = max(load + len(code), runs_at + init_size)

    params = bytearray(BOOT_PARAMS_SIZE)
    params[SETUP_HEADER_START:header_end] = data[SETUP_HEADER_START:header_end]
    struct.pack_into("<I", params, CODE32_START, load)
    info = {"container": "bzImage", "loader": "boot protocol (the image's own decompressor)",
            "protocol": _protocol(version), "setup_sects": data[SETUP_SECTS] or 4,
            "payload": _payload_kind(data, pm_start, version), "load_addr": load,
            "code_bytes": len(code), "relocatable": relocatable, "init_size": init_size,
            "kernel_version": _bzimage_version(data)}
    boot = fill_boot_params(path, params, needed_end, mem_bytes, cmdline, initrd, info)
    segments = [Segment(load, code)]
    check_layout(path, segments, boot, load, mem_bytes, (LINUX_BOOT_CS, LINUX_BOOT_DS))
    return GuestImage(path=path, format="linux", entry=load, segments=segments + boot,
                      regs={"esi": BOOT_PARAMS_ADDR, "ebx": 0, "ebp": 0, "edi": 0},
                      boot_cs=LINUX_BOOT_CS, boot_ds=LINUX_BOOT_DS, symbols={}, info=info)


def _payload_kind(data: bytes, pm_start: int, version: int) -> str:
    if version < 0x0208:
        return "unknown"
    offset, length = struct.unpack_from("<II", data, 0x248)
    head = data[pm_start + offset:pm_start + offset + 8] if length else b""
    return next((name for magic, name in _PAYLOADS if head.startswith(magic)), "unknown")

