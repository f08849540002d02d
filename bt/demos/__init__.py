"""Built-in demo guests (`bt-run demo:NAME`).

Each demo is an assembly source `NAME.asm` next to this file, assembled with
Keystone at LOAD_ADDR between a shared prelude (`_prelude.asm`: constants, stack,
`call main`, exit) and a shared library (`_lib.asm`: serial printing, GDT/IDT/PIC/
PIT set-up).  `NAME.expected` is the serial output the demo gives on real
hardware at CPL 0; docs/demos.md says what each line means and which lines the
deprivileged `trap` mode is expected to get wrong.
"""
from __future__ import annotations

import functools
from importlib import resources

from bt.errors import BadInput
from bt.images.image import GuestImage, Segment

LOAD_ADDR = 0x100000
# RAM the demos touch beyond their own image: fixed tables and stacks below 1 MiB.
LOW_RAM_END = 0x90000

_PRELUDE = "_prelude.asm"
_LIB = "_lib.asm"


def _files():
    return resources.files(__name__)


def list_demos() -> list[str]:
    """Names of the built-in demos, sorted (files starting with '_' are shared parts)."""
    return sorted(
        entry.name[:-4]
        for entry in _files().iterdir()
        if entry.name.endswith(".asm") and not entry.name.startswith("_")
    )


def _check(name: str) -> None:
    if name not in list_demos():
        raise BadInput(f"unknown demo guest {name!r}; known: {', '.join(list_demos())}")


def demo_source(name: str) -> str:
    """The demo's own assembly text (without the shared prelude and library)."""
    _check(name)
    return _files().joinpath(f"{name}.asm").read_text()


def full_source(name: str) -> str:
    """The text Keystone assembles: prelude + demo + library."""
    parts = [_files().joinpath(_PRELUDE).read_text(), demo_source(name),
             _files().joinpath(_LIB).read_text()]
    return "\n".join(parts)


def program_image(main: str, name: str) -> GuestImage:
    """A guest written like a demo -- `main` (its `main:` and handlers) between
    the demos' prelude and library -- assembled at LOAD_ADDR: for tests that
    build their own small guests on the demos' GDT/IDT helpers."""
    from keystone import Ks, KS_ARCH_X86, KS_MODE_32

    src = "\n".join([_files().joinpath(_PRELUDE).read_text(), main, _files().joinpath(_LIB).read_text()])
    code, _ = Ks(KS_ARCH_X86, KS_MODE_32).asm(src, LOAD_ADDR)
    return GuestImage(path=f"code:{name}", format="raw", entry=LOAD_ADDR,
                      segments=[Segment(LOAD_ADDR, bytes(code))], name=name)


# real_mode_image: where its 16-bit code goes, and the GDT that gets there
# (flat 32-bit code/data, then 16-bit code 0x18 and data 0x20, limit 64 KiB).
REAL_MODE_CODE = 0x6000
REAL_MODE_GDT = (0, 0x00CF9B000000FFFF, 0x00CF93000000FFFF, 0x00009B000000FFFF, 0x000093000000FFFF)
TO_REAL_MODE = """
    mov ax, 0x20
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov eax, cr0
    and eax, 0xfffffffe
    mov cr0, eax
"""


def real_mode_image(body16: str, name: str) -> GuestImage:
    """A guest that leaves protected mode and runs `body16` (16-bit assembly)
    in real mode at REAL_MODE_CODE with CS = DS = ES = SS = 0, SP = 0x5F00 and
    IDTR = the IVT at 0 (limit 0x3FF); `body16` ends the run itself (e.g.
    `out 0xf4, al`).  For tests of real-mode behaviour in every mode."""
    import struct
    from keystone import Ks, KS_ARCH_X86, KS_MODE_16

    ks = Ks(KS_ARCH_X86, KS_MODE_16)
    idtr = REAL_MODE_CODE - 0x10
    prefix = bytes(ks.asm(TO_REAL_MODE, REAL_MODE_CODE)[0])
    entry = REAL_MODE_CODE + len(prefix) + 5          # past `ljmp 0:entry` (EA iw iw)
    setup = f"xor ax, ax\nmov ds, ax\nmov es, ax\nmov ss, ax\nmov sp, 0x5f00\nlidt [{idtr:#x}]\n"
    body = bytes(ks.asm(setup + body16, entry)[0])
    blob = prefix + b"\xea" + struct.pack("<HH", entry, 0) + body
    gdt = b"".join(struct.pack("<Q", d) for d in REAL_MODE_GDT)

    def data(b: bytes) -> str:
        return "\n".join("    .byte " + ", ".join(f"{x:#x}" for x in b[i:i + 16])
                         for i in range(0, len(b), 16))
    main = f"""
main:
    mov esi, rm_blob
    mov edi, {REAL_MODE_CODE:#x}
    mov ecx, {len(blob)}
    .byte 0xf3, 0xa4
    mov dword ptr [{idtr:#x}], 0x3ff
    mov word ptr [{idtr + 4:#x}], 0
    .byte 0x0f, 0x01, 0x15
    .long rm_gdtr
    .byte 0xea
    .long {REAL_MODE_CODE:#x}
    .word 0x18
rm_gdtr:
    .word {len(gdt) - 1}
    .long rm_gdt
rm_gdt:
{data(gdt)}
rm_blob:
{data(blob)}
"""
    return program_image(main, name)


def expected_output(name: str) -> bytes:
    """Serial output the demo gives on real hardware at CPL 0."""
    _check(name)
    return _files().joinpath(f"{name}.expected").read_bytes()


@functools.lru_cache(maxsize=None)
def assemble(name: str) -> bytes:
    """Machine code of the demo at LOAD_ADDR (cached per process: Keystone is slow)."""
    from keystone import Ks, KsError, KS_ARCH_X86, KS_MODE_32

    src = full_source(name)
    try:
        encoding, _count = Ks(KS_ARCH_X86, KS_MODE_32).asm(src, LOAD_ADDR)
    except KsError as exc:  # a bug in a shipped source, not user input
        raise RuntimeError(f"demo {name!r} does not assemble: {exc}") from exc
    if not encoding:
        raise RuntimeError(f"demo {name!r} assembled to nothing")
    return bytes(encoding)


def load_demo(name: str, mem_bytes: int) -> GuestImage:
    """The demo as a bootable image: one segment at LOAD_ADDR, entered at its start."""
    _check(name)
    code = assemble(name)
    end = LOAD_ADDR + len(code)
    if mem_bytes < end:
        raise BadInput(
            f"demo {name!r} needs at least {end:#x} bytes of RAM "
            f"(it loads at {LOAD_ADDR:#x}); got {mem_bytes:#x}"
        )
    return GuestImage(
        path=f"demo:{name}",
        format="demo",
        entry=LOAD_ADDR,
        segments=[Segment(LOAD_ADDR, code)],
        name=name,
        info={"load": LOAD_ADDR, "size": len(code)},
    )
