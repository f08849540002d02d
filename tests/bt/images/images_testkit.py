"""Builders for tiny guest image files, written with struct so the tests do
not depend on the ELF library the loader uses."""
from __future__ import annotations

import lzma
import struct

EM_386 = 3
EM_ARM = 40
PT_LOAD = 1
SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB = 1, 2, 3


def elf32(segments, entry, machine=EM_386, sections=(), symbols=None, etype=2, elf_class=1):
    """An ELF32 executable.  segments: (vaddr, paddr, data, memsz) tuples;
    sections: names of empty PROGBITS sections, or (name, addr, data) for ones
    with an address and contents; symbols: name -> value."""
    symbols = symbols or {}
    sections = [(n, 0, b"") if isinstance(n, str) else n for n in sections]
    phoff = 52
    offset = phoff + 32 * len(segments)
    body = bytearray()
    phdrs = b""
    for vaddr, paddr, data, memsz in segments:
        off = offset + len(body)
        phdrs += struct.pack("<8I", PT_LOAD, off, vaddr, paddr, len(data), memsz, 7, 4)
        body += data + b"\0" * (-len(data) % 4)
    # section contents: .shstrtab, then (if symbols) .strtab and .symtab
    names = ["", *(n for n, _a, _d in sections)] + ([".strtab", ".symtab"] if symbols else []) + [".shstrtab"]
    shstr = b"\0" + b"".join(n.encode() + b"\0" for n in names[1:])
    name_off = {n: shstr.index(n.encode() + b"\0") if n else 0 for n in names}
    shdrs = [struct.pack("<10I", *([0] * 10))]
    for n, addr, data in sections:
        shdrs.append(struct.pack("<10I", name_off[n], SHT_PROGBITS, 0, addr, offset + len(body), len(data),
                                 0, 0, 1, 0))
        body += data + b"\0" * (-len(data) % 4)
    if symbols:
        strtab = b"\0" + b"".join(s.encode() + b"\0" for s in symbols)
        strtab_index = len(shdrs)
        shdrs.append(struct.pack("<10I", name_off[".strtab"], SHT_STRTAB, 0, 0, offset + len(body),
                                 len(strtab), 0, 0, 1, 0))
        body += strtab + b"\0" * (-len(strtab) % 4)
        syms = bytes(16)
        for s, value in symbols.items():
            syms += struct.pack("<IIIBBH", strtab.index(s.encode() + b"\0"), value, 0, 0x12, 0, 1)
        shdrs.append(struct.pack("<10I", name_off[".symtab"], SHT_SYMTAB, 0, 0, offset + len(body),
                                 len(syms), strtab_index, 1, 4, 16))
        body += syms
    shstrndx = len(shdrs)
    shdrs.append(struct.pack("<10I", name_off[".shstrtab"], SHT_STRTAB, 0, 0, offset + len(body),
                             len(shstr), 0, 0, 1, 0))
    body += shstr + b"\0" * (-len(shstr) % 4)
    shoff = offset + len(body)
    ident = b"\x7fELF" + bytes([elf_class, 1, 1]) + bytes(9)
    header = ident + struct.pack("<HHIIIIIHHHHHH", etype, machine, 1, entry, phoff, shoff, 0,
                                 52, 32, len(segments), 40, len(shdrs), shstrndx)
    return header + phdrs + bytes(body) + b"".join(shdrs)


def multiboot_header(flags=0, addresses=None):
    """12 bytes (or 32 with the address fields) of a valid multiboot v1 header."""
    magic = 0x1BADB002
    out = struct.pack("<III", magic, flags, (-(magic + flags)) & 0xFFFFFFFF)
    if addresses is not None:
        out += struct.pack("<5I", *addresses)
    return out


def bzimage(vmlinux, version=0x020F, setup_sects=1, initrd_addr_max=0x7FFFFFFF, init_size=0,
            payload=None, kernel_version=b"6.1.0-test (tests) #1"):
    """A bzImage around `vmlinux`: a setup area with a protocol-2.15 header and an
    xz payload (plus the 4-byte size trailer the kernel's build appends)."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x201] = 0x268 - 0x202
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x300:0x300 + len(kernel_version) + 1] = kernel_version + b"\0"
    struct.pack_into("<H", setup, 0x20E, 0x100)
    setup[0x211] = 0x01
    struct.pack_into("<I", setup, 0x22C, initrd_addr_max)
    struct.pack_into("<I", setup, 0x230, 0x200000)
    struct.pack_into("<I", setup, 0x238, 255)
    if payload is None:
        payload = lzma.compress(vmlinux, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
        payload += struct.pack("<I", len(vmlinux))
    pre = b"\x90" * 0x40   # the decompressor's code would be here
    struct.pack_into("<II", setup, 0x248, len(pre), len(payload))
    struct.pack_into("<Q", setup, 0x258, 0x1000000)
    struct.pack_into("<I", setup, 0x260, init_size)
    return bytes(setup) + pre + payload + b"\xcc" * 16


def tiny_kernel(paddr=0x1000000, vbase=0xC0000000):
    """A vmlinux-like ELF: linked at vbase+paddr, loaded at paddr, entry physical."""
    text = b"\xfa\xf4" + b"\x90" * 62
    return elf32([(vbase + paddr, paddr, text, 0x40), (vbase + paddr + 0x1000, paddr + 0x1000, b"D" * 16, 0x2000)],
                 entry=paddr, sections=("__ksymtab", "__param", ".text"), symbols={"startup_32": vbase + paddr})
