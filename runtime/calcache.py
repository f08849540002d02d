"""Calibration results kept across processes (issue 19: start-up time).

Calibration (runtime/quirks.py, runtime/tbgen.py, runtime/softtlb.py) runs
experiments in scratch engines to find Unicorn's private offsets: ~0.35 s of
CPU on every process start, more than half of a trivial guest's run
(docs/benchmarks.md "Start-up time").  The offsets are layout facts of one
compiled libunicorn, so they are kept in a file under the user's cache dir
($XDG_CACHE_HOME/bt, else ~/.cache/bt, where guest images live too) and reused
when

* the key matches: the loaded libunicorn's path, size, mtime and inode, the
  binding's version, the Python version, the machine, and the length and CRC-32
  of the source of every module whose code runs during calibration (so an edit to a
  calibration invalidates every cached result), and
* the part's own cheap check passes: each module replays its experiments in one
  or two scratch engines and confirms that every cached offset behaves as
  calibration found it (a few ms; `verify` below).

Anything else -- no file, another key, unreadable JSON, wrong fields, a failed
check, an exception in the check -- falls back to full calibration, whose
result is then written back.  Writes go to a temporary file renamed into place
(parallel test processes share the file); two processes adding different parts
at once may lose one part, which is calibrated again next time.
BT_CALIBRATION_CACHE=off turns the cache off (every process calibrates).
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")

# The modules whose code decides a calibration's result (runtime/fastuc.py's
# hook_add and bt/machine.py's GDT run inside the scratch engines).
CODE = ("runtime/quirks.py", "runtime/tbgen.py", "runtime/softtlb.py", "runtime/fastuc.py",
        "runtime/calcache.py", "bt/machine.py")
_ROOT = Path(__file__).resolve().parent.parent

# Where each part came from in this process: "cache" or "calibrated" (tests, reports of start-up).
SOURCE: dict[str, str] = {}


def enabled() -> bool:
    return os.environ.get("BT_CALIBRATION_CACHE", "").lower() not in ("off", "0", "no")


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/bt, else ~/.cache/bt (bt/images/fetch.py keeps images beside it)."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "bt"


@lru_cache(maxsize=1)
def key() -> dict:
    """Everything a calibration's result depends on (read once per process)."""
    from unicorn import __version__ as binding
    from unicorn.unicorn_py3.unicorn import uclib
    lib = os.path.realpath(uclib._name)
    st = os.stat(lib)
    # CRC-32 and length of each file, not a cryptographic hash: it detects an
    # edit (not an attack), and hashlib's import alone costs ~9 ms of start-up.
    code = {rel: [len(data), zlib.crc32(data)] for rel in CODE for data in [(_ROOT / rel).read_bytes()]}
    return {"libunicorn": lib, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino,
            "binding": binding, "python": sys.version, "machine": os.uname().machine, "code": code}


def cache_file(k: dict | None = None) -> Path:
    k = key() if k is None else k
    # The name only spreads keys over files; the key inside is compared in full.
    digest = zlib.crc32(json.dumps(k, sort_keys=True).encode())
    return cache_dir() / f"calibration-{digest:08x}.json"


def _tuples(v):
    """JSON gives lists where the dataclasses hold tuples."""
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def _read(path: Path, k: dict) -> dict:
    """The file's parts when it exists, parses and carries exactly this key; else {}."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("key") != k or not isinstance(data.get("parts"), dict):
        return {}
    return data["parts"]


def _write(path: Path, k: dict, part: str, value) -> None:
    parts = _read(path, k)
    parts[part] = dataclasses.asdict(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".calibration-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"key": k, "parts": parts}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)            # atomic: a reader sees the old file or the new
    except BaseException:
        os.unlink(tmp)
        raise


def cached(part: str, calibrate: Callable[[], T], cls: type[T], verify: Callable[[T], bool]) -> T:
    """`part`'s calibration result: the cached one when its key matches and
    `verify` accepts it, else `calibrate()`'s (then stored).  Errors of the
    cache itself never escape; `calibrate`'s do, as without a cache."""
    if not enabled():
        SOURCE[part] = "calibrated"
        return calibrate()
    k = path = None
    try:
        k = key()
        path = cache_file(k)
        entry = _read(path, k).get(part)
        if isinstance(entry, dict):
            value = cls(**{name: _tuples(v) for name, v in entry.items()})
            if verify(value):
                SOURCE[part] = "cache"
                return value
    except Exception:                    # a corrupt entry or a check that could not run
        pass
    value = calibrate()
    SOURCE[part] = "calibrated"
    try:
        _write(path, k, part, value)
    except Exception:                    # read-only home, full disk: calibrate next time too
        pass
    return value
