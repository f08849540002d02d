"""What every bt command shares: image options, one-line errors."""
from __future__ import annotations

import argparse
import errno
import functools
import os
import stat
import sys

from bt import interrupt
from bt.errors import BadInput
from bt.machine import DEFAULT_CPU_MHZ, DEFAULT_MEM_MIB


EX_IOERR = 74          # sysexits.h: an output could not be written after the run


class CliParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit status 2, and
    takes no abbreviations: `--init` must not silently mean `--initrd`."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    """argparse type: a positive integer (decimal or 0x hex)."""
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' must be positive")
    return v


def quiet_on_closed_pipe(main):
    """`bt-scan ... | head`: when the reader goes away, stop without a
    traceback and exit 141 (128 + SIGPIPE), as a program killed by SIGPIPE
    would; what is still buffered for stdout is dropped, not printed later."""
    @functools.wraps(main)
    def run(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except BrokenPipeError:
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError, AttributeError):
                pass          # not a real file (tests); nothing will flush into it
            return 141
    return run


def stops_on_signals(prog: str):
    """SIGINT/SIGTERM: during a run they end it cleanly (bt/interrupt.py, the
    run's own outcome and status); anywhere else the command stops with one
    line and 128 + the signal number, never a traceback."""
    def wrap(main):
        @functools.wraps(main)
        def run(*args, **kwargs):
            try:
                with interrupt.handle_stop_signals():
                    return main(*args, **kwargs)
            except interrupt.Interrupted as e:
                print(f"{prog}: {e}", file=sys.stderr)
                return e.exit_status
            except KeyboardInterrupt:     # arrived before the handler was installed
                print(f"{prog}: interrupted by SIGINT", file=sys.stderr)
                return interrupt.status_for(2)
        return run
    return wrap


def check_writable(path: str, option: str) -> None:
    """Fail before the work starts (BadInput) when `path` cannot take an output
    file: a directory, a missing directory, a read-only place, /dev/full.
    Nothing is left behind: a file created to try is removed again."""
    what = f"cannot write {option} {path}"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise BadInput(f"{what}: {e.strerror}") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise BadInput(f"{what}: it is a directory")
    try:
        if st is None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            os.close(fd)
            os.unlink(path)
            return
        fd = os.open(path, os.O_WRONLY)          # no O_TRUNC: the file is kept as it is
        try:
            if not stat.S_ISREG(st.st_mode):
                os.write(fd, b"")                # /dev/full refuses even an empty write
        finally:
            os.close(fd)
    except OSError as e:
        reason = e.strerror
        if e.errno == errno.ENOENT:           # e.g. a new file in /proc: it takes no new files
            parent = os.path.dirname(os.path.abspath(path))
            reason = ("no such directory" if not os.path.isdir(parent)
                      else "the directory does not take new files")
        raise BadInput(f"{what}: {reason}") from None


def check_writable_dir(path, option: str) -> None:
    """Create the output directory `path` now (BadInput if that or writing in it fails)."""
    import tempfile
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as e:
        raise BadInput(f"cannot write {option} {path}: {e.strerror}") from None


def fail(prog: str, message: str, status: int = 2) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return status


def add_image_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE",
                   help="image file, demo:NAME for a built-in demo guest, or 'linux' for the "
                        "cached Debian kernel (bt-images fetch linux)")
    p.add_argument("--format", default="auto",
                   choices=("auto", "raw", "elf", "multiboot", "linux"))
    p.add_argument("--load", metavar="ADDR", help="load address of a raw image")
    p.add_argument("--entry", metavar="ADDR", help="entry point (raw images; overrides others)")
    p.add_argument("--mem", type=int, default=DEFAULT_MEM_MIB, metavar="MIB",
                   help=f"guest RAM in MiB (default {DEFAULT_MEM_MIB})")
    p.add_argument("--cmdline", default=None, metavar="STR", help="kernel command line")
    p.add_argument("--initrd", metavar="FILE", help="initial ramdisk (Linux images)")
    p.add_argument("--module", metavar="FILE", action="append", default=None,
                   help="a boot module for a multiboot kernel (repeatable, in order; its "
                        "command line is the file name)")
    p.add_argument("--linux-unpack", action="store_true",
                   help="unpack a bzImage's kernel on the host (xz or gzip) instead of "
                        "running its own decompressor in the guest (docs/images.md)")


def load_from_args(args):
    """Load the image named on the command line (raises BadInput)."""
    from bt.images import load_image, parse_address
    from bt.images.linux_guest import cached_linux, is_linux_name
    if not 1 <= args.mem <= 3072:
        raise BadInput(f"--mem {args.mem} must be between 1 and 3072 MiB")
    load = parse_address(args.load) if args.load is not None else None
    entry = parse_address(args.entry) if args.entry is not None else None
    image = args.image
    initrd = args.initrd
    cmdline = args.cmdline
    fmt = args.format
    if is_linux_name(image):
        image, initrd, cmdline = cached_linux(args.mem, getattr(args, "cpu_mhz", DEFAULT_CPU_MHZ),
                                              cmdline, initrd)
        fmt = "linux"
    args.cmdline = cmdline or ""
    return load_image(image, fmt, load=load, entry=entry, mem_bytes=args.mem << 20,
                      cmdline=args.cmdline, initrd=initrd,
                      linux_unpack=getattr(args, "linux_unpack", False),
                      modules=getattr(args, "module", None))
