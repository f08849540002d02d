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
