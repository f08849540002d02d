"""Builds the C extensions; everything else is in pyproject.toml.

scanner/_walk.c is the scanner's worklist walk; runtime/_clock.c is the VM's
instruction clock (a native Unicorn block hook); runtime/_walk.c is the VMM's
page walk (runtime/pagewalk.h, which the clock shares); runtime/_exits.c is the
VM's interrupt hook (invlpg handled natively); runtime/_isolation.c guards
the hypervisor area (a native Unicorn protection hook) and keeps the slot view
(runtime/slotview.h, which the interrupt hook shares); runtime/_iofast.c
answers the port reads and writes devices publish (native in/out hooks).  They need only a C compiler
and Python's headers (capstone's and Unicorn's functions reach them as
addresses at run time, so no other header or library is linked).
`pip install -e .` compiles them in place.
`BT_SANITIZE=1` builds them with AddressSanitizer and UBSan instead (for
benchmarks/sanitized_runs.py, which builds a copy of the tree that way).
"""
import os

from setuptools import Extension, setup

FLAGS = ["-O2", "-std=c11", "-Wall"]
LINK: list[str] = []
if os.environ.get("BT_SANITIZE") == "1":
    SAN = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
    FLAGS = ["-O1", "-g", "-std=c11", "-Wall", *SAN]
    LINK = SAN


def ext(name: str, src: str, depends: tuple[str, ...] = ()) -> Extension:
    return Extension(name, [src], extra_compile_args=FLAGS, extra_link_args=LINK, depends=list(depends))


setup(ext_modules=[ext("scanner._walk", "scanner/_walk.c"),
                   ext("runtime._clock", "runtime/_clock.c", ("runtime/pagewalk.h", "runtime/faststores.h")),
                   ext("runtime._walk", "runtime/_walk.c", ("runtime/pagewalk.h",)),
                   ext("runtime._exits", "runtime/_exits.c", ("runtime/pagewalk.h", "runtime/slotview.h")),
                   ext("runtime._isolation", "runtime/_isolation.c", ("runtime/slotview.h",)),
                   ext("runtime._iofast", "runtime/_iofast.c")])
