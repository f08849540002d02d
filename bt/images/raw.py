"""Raw binaries: the file's bytes at --load, entered at --entry (default: --load)."""
from __future__ import annotations

from bt.errors import BadInput
from bt.images.image import GuestImage, Segment
from bt.images.layout import check_layout
from bt.machine import BOOT_CS, BOOT_DS


def load_raw(path: str, data: bytes, load: int | None, entry: int | None, mem_bytes: int) -> GuestImage:
    if load is None:
        raise BadInput(f"raw image {path} needs --load ADDR (and optionally --entry ADDR)")
    entry = load if entry is None else entry
    segments = [Segment(load, data)]
    check_layout(path, segments, [], entry, mem_bytes, (BOOT_CS, BOOT_DS))
    return GuestImage(path=path, format="raw", entry=entry, segments=segments,
                      info={"load": load, "size": len(data)})
