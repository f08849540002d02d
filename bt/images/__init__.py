"""Guest image loaders: file -> GuestImage (segments, entry, boot registers).

Formats: raw, elf, multiboot, linux (bzImage or vmlinux ELF), and `demo:NAME`
(built-in guests, loaded by bt.demos). docs/images.md describes each one and
how `auto` decides.
"""
from __future__ import annotations

from bt.errors import BadInput
from bt.images.elf import is_elf, parse_elf
from bt.images.files import parse_address, read_file
from bt.images.image import GuestImage, Segment
from bt.images.layout import check_layout
from bt.images.bootproto import load_bzimage
from bt.images.linux import is_bzimage, load_linux, looks_like_vmlinux
from bt.images.multiboot import find_header, load_multiboot
from bt.images.raw import load_raw
from bt.machine import BOOT_CS, BOOT_DS, MIB

FORMATS = ("auto", "raw", "elf", "multiboot", "linux")
DEMO_PREFIX = "demo:"

__all__ = ["FORMATS", "GuestImage", "Segment", "load_image", "parse_address"]


def load_image(path: str, fmt: str = "auto", load: int | None = None, entry: int | None = None,
               mem_bytes: int = 64 * MIB, cmdline: str = "", initrd: str | None = None,
               linux_unpack: bool = False, modules: list[str] | None = None) -> GuestImage:
    """Load `path` as `fmt`; every unusable input raises BadInput with one line.
    A bzImage starts through its own decompressor unless `linux_unpack`
    (bt/images/bootproto.py, docs/images.md).  `modules`: files given to a
    multiboot kernel as boot modules, in order."""
    path = str(path)
    if fmt not in FORMATS and fmt != "demo":
        raise BadInput(f"unknown image format '{fmt}' (choose from {', '.join(FORMATS)})")
    if path.startswith(DEMO_PREFIX) and fmt in ("auto", "demo"):
        given = [opt for opt, value in (("--load", load), ("--entry", entry), ("--cmdline", cmdline),
                                         ("--initrd", initrd), ("--module", modules))
                 if value is not None and value != "" and value != []]
        if given:
            raise BadInput(f"{', '.join(given)}: not applicable to demo guests")
        from bt.demos import load_demo  # lazily: demos assemble with Keystone
        return load_demo(path[len(DEMO_PREFIX):], mem_bytes=mem_bytes)
    data = read_file(path)
    kind, facts = _detect(path, data, load) if fmt == "auto" else (fmt, None)
    if load is not None and kind != "raw":
        raise BadInput(f"--load applies to raw images only; {path} is loaded as {kind}")
    if initrd is not None and kind != "linux":
        raise BadInput(f"--initrd applies to Linux kernels only; {path} is loaded as {kind}")
    if modules and kind != "multiboot":
        raise BadInput(f"--module applies to multiboot kernels only; {path} is loaded as {kind}")
    if cmdline and kind not in ("multiboot", "linux"):
        raise BadInput(f"--cmdline needs a multiboot or Linux image; {path} is loaded as {kind}")
    if entry is not None and kind == "linux":
        raise BadInput("--entry does not apply to Linux kernels (the boot protocol fixes it)")

    if kind == "raw":
        return load_raw(path, data, load, entry, mem_bytes)
    if kind == "elf":
        return _load_elf(path, data, entry, mem_bytes, facts)
    if kind == "multiboot":
        hdr, bad = find_header(data, path)
        if hdr is None:
            where = f" (a magic at 0x{bad:x} has a bad checksum)" if bad is not None else ""
            raise BadInput(f"{path} has no valid multiboot header in its first 8 KiB{where}")
        mods = [(m, read_file(m)) for m in modules or ()]
        return load_multiboot(path, data, hdr, mem_bytes, cmdline, entry, mods)
    if kind == "linux":
        if is_bzimage(data) and not linux_unpack:
            return load_bzimage(path, data, mem_bytes, cmdline, initrd)
        return load_linux(path, data, mem_bytes, cmdline, initrd, facts)
    raise BadInput(f"format '{kind}' needs a 'demo:NAME' image, not {path}")


def detect_format(path: str, data: bytes, load: int | None = None) -> str:
    """What `--format auto` would load `data` as (raw only when --load is given)."""
    return _detect(path, data, load)[0]


def _detect(path: str, data: bytes, load: int | None):
    """(format, parsed ELF facts or None): bzImage, then multiboot header, then
    ELF (a vmlinux by its sections/symbols, else plain), else raw if --load."""
    if is_bzimage(data):
        return "linux", None
    hdr, _ = find_header(data, path)
    if is_elf(data):
        if hdr is not None:
            return "multiboot", None
        facts = parse_elf(data, path)
        return ("linux" if looks_like_vmlinux(facts) else "elf"), facts
    if hdr is not None and hdr.flags & (1 << 16):
        return "multiboot", None
    if load is None:
        raise BadInput(f"cannot detect the format of {path}; give --format and --load")
    return "raw", None


def _load_elf(path: str, data: bytes, entry: int | None, mem_bytes: int, facts=None) -> GuestImage:
    facts = facts or parse_elf(data, path)
    entry = facts.entry if entry is None else entry
    check_layout(path, facts.segments, [], entry, mem_bytes, (BOOT_CS, BOOT_DS))
    return GuestImage(path=path, format="elf", entry=entry, segments=facts.segments,
                      symbols=facts.symbols,
                      info={"virtual_entry": facts.virtual_entry, "sections": len(facts.sections)})
