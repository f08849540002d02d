"""`linux` as an image name: the cached Debian guest (bt-images fetch linux).

One definition of what the name means -- the cached bzImage, its default
initramfs, and `default_linux_cmdline` for the machine's RAM and clock -- for
every command that takes an image (`bt-run linux`, `bt-bench linux`,
bt/cli/common.py) and for the notebooks, so they all boot the same guest.
"""
from __future__ import annotations

from bt.machine import DEFAULT_CPU_MHZ, DEFAULT_MEM_MIB

NAME = "linux"


def is_linux_name(image) -> bool:
    return image == NAME


def cached_linux(mem_mib: int = DEFAULT_MEM_MIB, cpu_mhz: int = DEFAULT_CPU_MHZ,
                 cmdline: str | None = None, initrd: str | None = None) -> tuple[str, str, str]:
    """(kernel path, initrd path, command line) of the cached guest; the given
    `cmdline`/`initrd` win over the defaults.  BadInput when not fetched yet."""
    from bt.images.fetch import cached_linux_images, default_linux_cmdline
    paths = cached_linux_images()
    if cmdline is None:
        cmdline = default_linux_cmdline(mem_mib, cpu_mhz)
    return str(paths["kernel"]), initrd or str(paths["initrd"]), cmdline


def load_cached_linux(mem_mib: int = DEFAULT_MEM_MIB, cpu_mhz: int = DEFAULT_CPU_MHZ,
                      cmdline: str | None = None, initrd: str | None = None,
                      linux_unpack: bool = False):
    """The cached guest as a GuestImage (what `bt-run linux` boots)."""
    from bt.images import load_image
    kernel, initrd, cmdline = cached_linux(mem_mib, cpu_mhz, cmdline, initrd)
    return load_image(kernel, "linux", mem_bytes=mem_mib << 20, cmdline=cmdline, initrd=initrd,
                      linux_unpack=linux_unpack)


def linux_available() -> bool:
    """Whether the cached guest is there (without fetching or raising)."""
    from bt.images.fetch import linux_paths, read_manifest
    return read_manifest() is not None and linux_paths()["initrd"].is_file()
