"""GDB remote protocol framing (bt/gdb/protocol.py), without sockets."""
from bt.gdb.protocol import Decoder, checksum, frame, le32, parse_le, unescape
from bt.gdb.server import parse_address

import pytest


def test_frame_carries_the_modulo_256_checksum():
    assert frame("OK") == b"$OK#9a"
    assert frame("") == b"$#00"
    assert checksum(b"g") == 0x67


def test_reserved_characters_are_escaped_and_unescaped():
    body = frame(b"a#b$c}d*")
    assert body == b"$a}\x03b}\x04c}]d}\x0a#" + b"%02x" % checksum(body[1:-3])
    assert unescape(body[1:-3]) == b"a#b$c}d*"


def test_decoder_splits_a_stream_and_checks_every_packet():
    d = Decoder()
    first = d.feed(b"+$g#6")            # the packet's last checksum digit is still missing
    assert [(e.kind, e.data) for e in first] == [("ack", b"")]
    events = d.feed(b"7$m10,4#2e\x03-$bad#00")
    kinds = [(e.kind, e.data) for e in events]
    assert kinds == [("packet", b"g"), ("packet", b"m10,4"), ("interrupt", b""),
                     ("nack", b""), ("bad", b"bad")]


def test_decoder_reports_the_ack_before_a_packet():
    d = Decoder()
    events = d.feed(b"+$?#3f")
    assert [(e.kind, e.data) for e in events] == [("ack", b""), ("packet", b"?")]


def test_little_endian_register_text():
    assert le32(0x100022) == "22001000"
    assert parse_le("22001000") == 0x100022
    assert le32(-1) == "ffffffff"


def test_gdb_address_forms():
    assert parse_address("1234") == ("127.0.0.1", 1234)
    assert parse_address(":1234") == ("127.0.0.1", 1234)
    assert parse_address("0.0.0.0:77") == ("0.0.0.0", 77)
    for bad in ("x", "host:", "70000"):
        with pytest.raises(ValueError):
            parse_address(bad)
