"""Demo guests under the scanner, and the bt-scan command."""
import json

import pytest

from bt.catalog import by_name, classify_bytes
from bt.cli.scan import main as bt_scan
from bt.demos import list_demos
from bt.images import load_image
from scanner.memory import SegmentMemory
from scanner.scan import Scanner

MEM = 64 << 20


def _scan(name):
    image = load_image(f"demo:{name}", mem_bytes=MEM)
    mem = SegmentMemory.from_image(image, limit=MEM)
    return image, mem, Scanner(mem.read).scan([image.entry])


@pytest.mark.parametrize("name", list_demos())
def test_demo_sites_have_catalog_classes(name):
    _image, mem, cfg = _scan(name)
    sites = cfg.sensitive_sites()
    assert sites, f"{name}: every demo guest does port I/O at least"
    for s in sites:
        row = classify_bytes(mem.read(s.addr, 15))
        assert row is not None and row.name == s.name and row.klass.value == s.klass
    # No catalogued instruction inside scanned blocks is missed.
    found = {s.addr for s in sites}
    for a, size, _m, _o, data in cfg.instructions():
        if classify_bytes(data) is not None:
            assert a in found


def test_fnptr_hidden_functions_are_not_claimed():
    image, mem, cfg = _scan("fnptr")
    blob = b"".join(s.data for s in image.segments)
    base = image.segments[0].addr
    # Each hidden function is preceded by marker bytes in the demo source.
    hidden = {"cli": b"\xe8\xff\x0f\xfa\x9c", "sti": b"\x0f\xe9\xfb\x9c",
              "smsw": b"\xb8\x66\x0f\x01\xe0", "popfd": b"\xc7\x9c\x58"}
    for what, marker in hidden.items():
        i = blob.find(marker)
        assert i >= 0, what
        start = base + i + (marker.index(b"\xfa") if what == "cli" else
                            2 if what in ("sti", "smsw") else 1)
        assert not cfg.is_scanned(start), what
        assert cfg.block_containing(start) is None, what
    assert len(cfg.unresolved_sites()) >= 4     # call eax, call [table+ecx*4] x2, jmp ebx


def test_probe_flags_classes():
    _image, _mem, cfg = _scan("probe-flags")
    names = {s.name for s in cfg.sensitive_sites()}
    assert {"cli", "sti", "pushfd", "popfd", "lgdt", "lidt", "jmp_far", "mov_to_ss",
            "out", "in", "hlt"} <= names
    assert {s.klass for s in cfg.sensitive_sites() if s.name == "jmp_far"} == {"control-flow"}
    assert by_name("mov_to_ss").faults_at_cpl1


def test_bt_scan_summary_and_outputs(tmp_path, capsys):
    rc = bt_scan(["demo:fnptr", "--json", str(tmp_path / "c.json"), "--graphml",
                  str(tmp_path / "c.graphml"), "--dot", str(tmp_path / "c.dot"), "--sites"])
    out = capsys.readouterr().out
    assert rc == 0
    for word in ("blocks:", "instructions:", "sensitive:", "unresolved:", "bad blocks:",
                 "pages:", "scan time:"):
        assert word in out
    d = json.loads((tmp_path / "c.json").read_text())
    assert d["format"] == "bt-cfg" and d["nodes"]
    assert (tmp_path / "c.graphml").stat().st_size > 0
    assert (tmp_path / "c.dot").read_text().startswith("digraph")


@pytest.mark.parametrize("argv,msg", [
    (["/nonexistent/image"], "does not exist"),
    (["demo:hello", "--idt", "zz"], "bad address"),
    (["demo:hello", "--from", "nope"], "bad address"),
    (["demo:hello", "--idt", "0x90000000"], "not inside the loaded image"),
    (["demo:nosuchdemo"], ""),
])
def test_bt_scan_bad_input(argv, msg, capsys):
    rc = bt_scan(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("bt-scan: error:") and msg in err


def test_bt_scan_from_and_idt(tmp_path, capsys):
    # A raw image with an IDT whose gate points at a cli; iretd handler.
    import struct
    handler = b"\xfa\xcf"
    idt = struct.pack("<HHBBH", 0x1040 & 0xFFFF, 8, 0, 0x8E, 0x1040 >> 16)
    img = bytearray(0x100)
    img[0:2] = b"\xeb\xfe"
    img[0x40:0x42] = handler
    img[0x80:0x88] = idt
    p = tmp_path / "tiny.bin"
    p.write_bytes(bytes(img))
    rc = bt_scan([str(p), "--format", "raw", "--load", "0x1000", "--idt", "0x1080:7",
                  "--sites"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "IDT gates: 1" in out and "cli" in out and "iretd" in out
