"""initramfs images: uncompressed `newc` cpio archives written in pure Python.

Deterministic by construction (inode numbers in order, mtime 0, owner root),
so the same busybox and /init always give the same bytes.
"""
from __future__ import annotations

import stat
from dataclasses import dataclass

from bt.errors import BadInput
from bt.images.files import read_file

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"

# The /init `bt-images fetch linux` puts in the initramfs.  busybox --install
# makes every applet a command (mount, uname, setsid, ...); cttyhack gives the
# shell a controlling terminal so job control and Ctrl-C work on ttyS0; it needs
# /dev/ttyS0, which the kernel's devtmpfs provides once mounted.
DEFAULT_INIT = b"""#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "bt: init started"
uname -a
exec setsid cttyhack sh
"""


@dataclass(frozen=True)
class Entry:
    name: str                 # path inside the archive, no leading '/'
    mode: int                 # full st_mode (type bits and permissions)
    data: bytes = b""         # file contents, or the symlink target
    rdev: tuple[int, int] = (0, 0)


def directory(name: str, perm: int = 0o755) -> Entry:
    return Entry(name, stat.S_IFDIR | perm)


def file(name: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(name, stat.S_IFREG | perm, data)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, stat.S_IFLNK | 0o777, target.encode())


def chardev(name: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(name, stat.S_IFCHR | perm, rdev=(major, minor))


def write_newc(entries: list[Entry]) -> bytes:
    """The archive: each entry, then the trailer; header+name and data 4-byte aligned."""
    out = bytearray()
    for ino, entry in enumerate(entries, start=1):
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        _append(out, entry.name.lstrip("/"), ino, entry.mode, nlink, entry.data, entry.rdev)
    _append(out, TRAILER, 0, 0, 1, b"", (0, 0))
    return bytes(out)


def _append(out: bytearray, name: str, ino: int, mode: int, nlink: int, data: bytes,
            rdev: tuple[int, int]) -> None:
    raw_name = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(raw_name), 0)
    out += NEWC_MAGIC + b"".join(b"%08X" % f for f in fields) + raw_name
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)


def build_initramfs(busybox_path: str, init_script: bytes | None = None) -> bytes:
    """A busybox initramfs: /init (0755), /bin/busybox, /bin/sh -> busybox,
    empty /proc /sys /dev /tmp (and the applet directories), /dev/console (5, 1)."""
    busybox = read_file(str(busybox_path), "busybox")
    script = DEFAULT_INIT if init_script is None else init_script
    if not script:
        raise BadInput("the /init script is empty")
    entries = [directory(d) for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "root")]
    entries += [
        Entry("tmp", stat.S_IFDIR | stat.S_ISVTX | 0o777),
        chardev("dev/console", 5, 1),
        file("bin/busybox", busybox, 0o755),
        symlink("bin/sh", "busybox"),
        file("init", script, 0o755),
    ]
    return write_newc(entries)
