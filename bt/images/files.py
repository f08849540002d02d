"""Reading image files and parsing user-given numbers, with one-line errors."""
from __future__ import annotations

import re

from bt.errors import BadInput

_ADDR = re.compile(r"(?:0x(?P<hex>[0-9a-f]+)|(?P<dec>[0-9]+))(?P<suffix>k|kib|m|mib|g|gib)?", re.I)
_SCALE = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30}


def parse_address(text: str | int) -> int:
    """'0x100000', '1048576', '1M', '1MiB', '64k' -> int (a 32-bit physical address)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = _ADDR.fullmatch(str(text).strip())
        if m is None:
            raise BadInput(f"bad address '{text}' (expected 0x hex, decimal, or a k/M/G suffix)")
        digits = m["hex"] if m["hex"] is not None else m["dec"]
        value = int(digits, 16 if m["hex"] is not None else 10)
        value *= _SCALE[(m["suffix"] or "").lower()]
    if not 0 <= value <= 0xFFFF_FFFF:
        raise BadInput(f"bad address '{text}' (outside the 32-bit address space)")
    return value


def read_file(path: str, what: str = "image") -> bytes:
    """The whole file, or BadInput naming why it cannot be used."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise BadInput(f"{what} file {path} does not exist") from None
    except IsADirectoryError:
        raise BadInput(f"{what} file {path} is a directory") from None
    except OSError as e:
        raise BadInput(f"cannot read {what} file {path}: {e.strerror or e}") from None
    if not data:
        raise BadInput(f"{what} file {path} is empty")
    return data
