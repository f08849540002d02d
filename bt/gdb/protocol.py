"""GDB remote serial protocol framing: `$data#cs` packets, `+`/`-` acks, 0x03.

Only what a stub needs: split a byte stream into packets (checking each
checksum), unescape `}`-escaped bytes, and build replies.  No I/O here, so the
framing is tested without sockets (tests/bt/gdb/test_gdb_protocol.py).
"""
from __future__ import annotations

from dataclasses import dataclass

INTERRUPT = 0x03        # Ctrl-C from gdb: sent raw, outside any packet
_ESCAPED = b"#$}*"


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def frame(data: bytes | str) -> bytes:
    """One packet, with the characters the protocol reserves escaped."""
    if isinstance(data, str):
        data = data.encode("latin-1")
    out = bytearray()
    for b in data:
        if b in _ESCAPED:
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return b"$" + bytes(out) + b"#" + b"%02x" % checksum(bytes(out))


def unescape(data: bytes) -> bytes:
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == 0x7D:
            out.append(next(it, 0x20) ^ 0x20)
        else:
            out.append(b)
    return bytes(out)


@dataclass
class Event:
    kind: str               # "packet" | "bad" (checksum mismatch) | "interrupt" | "ack" | "nack"
    data: bytes = b""


class Decoder:
    """Feed it bytes as they arrive; `events()` yields what is complete."""

    def __init__(self):
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Event]:
        self._buf += data
        out: list[Event] = []
        buf = self._buf
        while buf:
            b = buf[0]
            if b == ord("$"):
                end = buf.find(b"#")
                if end < 0 or len(buf) < end + 3:
                    break               # the rest of the packet has not arrived
                body = bytes(buf[1:end])
                try:
                    sent = int(buf[end + 1:end + 3], 16)
                except ValueError:
                    sent = -1
                del buf[:end + 3]
                if sent == checksum(body):
                    out.append(Event("packet", unescape(body)))
                else:
                    out.append(Event("bad", body))
                continue
            del buf[:1]
            if b == INTERRUPT:
                out.append(Event("interrupt"))
            elif b == ord("+"):
                out.append(Event("ack"))
            elif b == ord("-"):
                out.append(Event("nack"))
            # anything else between packets is line noise: dropped
        return out


def hex_bytes(data: bytes) -> str:
    return data.hex()


def le32(value: int) -> str:
    return (value & 0xFFFFFFFF).to_bytes(4, "little").hex()


def parse_le(text: str) -> int:
    return int.from_bytes(bytes.fromhex(text), "little")
