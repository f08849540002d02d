"""newc cpio archives, read back with an independent parser."""
import stat

import pytest

from bt.errors import BadInput
from bt.images.initramfs import DEFAULT_INIT, Entry, build_initramfs, chardev, directory, file, symlink, write_newc


def parse_newc(data):
    """name -> dict of the header fields and data; checks magic, alignment and the trailer."""
    out, pos = {}, 0
    while True:
        assert pos % 4 == 0
        assert data[pos:pos + 6] == b"070701"
        f = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        ino, mode, uid, gid, nlink, mtime, size, _, _, rmaj, rmin, namesize, check = f
        name_start = pos + 110
        name = data[name_start:name_start + namesize - 1].decode()
        assert data[name_start + namesize - 1] == 0
        body = name_start + namesize + (-(110 + namesize) % 4)
        content = data[body:body + size]
        pos = body + size + (-size % 4)
        if name == "TRAILER!!!":
            assert pos == len(data)
            return out
        assert name not in out
        out[name] = dict(ino=ino, mode=mode, uid=uid, gid=gid, nlink=nlink, mtime=mtime,
                         data=content, rdev=(rmaj, rmin), check=check)


def test_round_trip_of_every_entry_kind():
    entries = [directory("etc"), file("etc/motd", b"hi\n", 0o640), symlink("etc/link", "motd"),
               chardev("dev/ttyS0", 4, 64, 0o660), file("odd", b"12345")]
    parsed = parse_newc(write_newc(entries))
    assert list(parsed) == ["etc", "etc/motd", "etc/link", "dev/ttyS0", "odd"]
    assert stat.S_ISDIR(parsed["etc"]["mode"]) and parsed["etc"]["nlink"] == 2
    assert parsed["etc/motd"]["mode"] == stat.S_IFREG | 0o640 and parsed["etc/motd"]["data"] == b"hi\n"
    assert stat.S_ISLNK(parsed["etc/link"]["mode"]) and parsed["etc/link"]["data"] == b"motd"
    assert parsed["dev/ttyS0"]["mode"] == stat.S_IFCHR | 0o660 and parsed["dev/ttyS0"]["rdev"] == (4, 64)
    assert parsed["odd"]["data"] == b"12345"
    assert len({e["ino"] for e in parsed.values()}) == 5
    assert all(e["uid"] == e["gid"] == e["mtime"] == 0 for e in parsed.values())


def test_leading_slash_is_dropped():
    assert list(parse_newc(write_newc([Entry("/abs", stat.S_IFDIR | 0o755)]))) == ["abs"]


def test_busybox_initramfs(tmp_path):
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF fake busybox")
    parsed = parse_newc(build_initramfs(busybox))
    assert parsed["init"]["mode"] == stat.S_IFREG | 0o755 and parsed["init"]["data"] == DEFAULT_INIT
    assert parsed["bin/busybox"]["data"] == b"\x7fELF fake busybox"
    assert parsed["bin/busybox"]["mode"] & 0o777 == 0o755
    assert parsed["bin/sh"]["data"] == b"busybox" and stat.S_ISLNK(parsed["bin/sh"]["mode"])
    for d in ("proc", "sys", "dev", "tmp"):
        assert stat.S_ISDIR(parsed[d]["mode"]), d
    console = parsed["dev/console"]
    assert stat.S_ISCHR(console["mode"]) and console["rdev"] == (5, 1)


def test_default_init_does_what_the_docs_say():
    text = DEFAULT_INIT.decode()
    assert text.startswith("#!/bin/busybox sh\n")
    assert "mount -t proc proc /proc" in text and "mount -t sysfs sysfs /sys" in text
    assert 'echo "bt: init started"' in text and "uname -a" in text
    assert text.rstrip().endswith("exec setsid cttyhack sh")


def test_custom_init_and_determinism(tmp_path):
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"bb")
    script = b"#!/bin/busybox sh\necho marker\n/bin/busybox reboot -f\n"
    a, b = build_initramfs(busybox, script), build_initramfs(str(busybox), script)
    assert a == b
    assert parse_newc(a)["init"]["data"] == script


def test_missing_busybox_and_empty_init(tmp_path):
    with pytest.raises(BadInput, match="busybox file .* does not exist"):
        build_initramfs(tmp_path / "nope")
    (tmp_path / "bb").write_bytes(b"bb")
    with pytest.raises(BadInput, match="/init script is empty"):
        build_initramfs(tmp_path / "bb", b"")
