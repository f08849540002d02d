"""bt-images fetch: apt driven through fake tools on PATH (offline), the cache,
the CLI's error lines and exit statuses; one slow test uses the real apt."""
import io
import json
import os
import re
import stat
import tarfile

import pytest

from bt.cli import images as cli
from bt.errors import BadInput
from bt.images import fetch, load_image
from bt.images.initramfs import DEFAULT_INIT
from images_testkit import bzimage, tiny_kernel
from test_images_initramfs import parse_newc


def tar_with(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def fake_tools(tmp_path, kernels=("linux-image-6.1.0-9-686-unsigned", "linux-image-6.1.0-50-686-unsigned",
                                  "linux-image-6.1.0-47-686-unsigned"),
               foreign="i386", download_error=None, busybox=True, update_error=None,
               download_fails_once=None):
    """A bin directory with apt-get, apt-cache, dpkg and dpkg-deb stand-ins that log their calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    (tmp_path / "kernel.tar").write_bytes(tar_with({"./boot/vmlinuz-6.1.0-50-686": bzimage(tiny_kernel()),
                                                    "./lib/modules/x.ko": b"module"}))
    (tmp_path / "busybox.tar").write_bytes(tar_with({"./usr/share/doc/busybox": b"doc",
                                                     "./bin/busybox": b"\x7fELF busybox"}))
    names = "\n".join(kernels)
    busybox_show = 'echo "Package: busybox-static"; echo "Version: 1:1.35.0-4"' if busybox else "exit 100"
    download = (f'echo "{download_error}" >&2; exit 100' if download_error else
                '[ "$1" = download ] || exit 0; shift; for p in "$@"; do : > "${p%:i386}_1.0_i386.deb"; done')
    if download_fails_once:     # the first download gets only the first package, then exit 100
        once = tmp_path / "download-failed"
        download = (f'if [ "$1" = download ] && [ ! -e {once} ]; then : > {once}; '
                    f': > "${{2%:i386}}_1.0_i386.deb"; echo "{download_fails_once}" >&2; exit 100; fi\n'
                    + download)
    if update_error:            # apt-get update always exits 100 (one index failed)
        download = f'if [ "$1" = update ]; then echo "{update_error}" >&2; exit 100; fi\n' + download
    scripts = {
        "apt-get": download,
        "apt-cache": f'''case "$1" in
  pkgnames) printf '%s\\n' "{names}" ;;
  show) case "$3" in busybox-static*) {busybox_show} ;; *) echo "Package: x"; echo "Version: 6.1.176-1" ;; esac ;;
esac''',
        "dpkg": f'case "$1" in --print-architecture) echo amd64 ;; --print-foreign-architectures) echo "{foreign}" ;; esac',
        "dpkg-deb": f'case "$2" in *linux-image*) exec /bin/cat {tmp_path}/kernel.tar ;; '
                    f'*) exec /bin/cat {tmp_path}/busybox.tar ;; esac',
    }
    for name, body in scripts.items():
        p = bin_dir / name
        p.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n{body}\n')
        p.chmod(0o755)
    return bin_dir, log


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BT_IMAGE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "linux"


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("BT_IMAGE_DIR", str(tmp_path))
    assert fetch.linux_dir() == tmp_path / "linux"
    monkeypatch.delenv("BT_IMAGE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fetch.linux_dir() == tmp_path / "xdg" / "bt" / "images" / "linux"


def test_fetch_with_fake_apt_picks_newest_and_caches(tmp_path, monkeypatch, cache):
    bin_dir, log = fake_tools(tmp_path)
    monkeypatch.setenv("PATH", str(bin_dir))
    paths = fetch.ensure_linux_images(log=lambda m: None)
    assert paths["kernel"] == cache / "vmlinuz" and paths["initrd"] == cache / "initramfs.cpio"
    assert "apt-get download linux-image-6.1.0-50-686-unsigned:i386 busybox-static:i386" in log.read_text()
    assert paths["kernel"].read_bytes() == bzimage(tiny_kernel())
    assert paths["busybox"].read_bytes() == b"\x7fELF busybox"
    assert os.stat(paths["busybox"]).st_mode & stat.S_IXUSR
    manifest = json.loads(paths["manifest"].read_text())
    assert manifest["kernel"]["package"] == "linux-image-6.1.0-50-686-unsigned"
    assert manifest["kernel"]["version"] == "6.1.176-1"
    assert manifest["busybox"]["version"] == "1:1.35.0-4"
    assert manifest["initramfs"]["init"] == "default"
    assert parse_newc(paths["initrd"].read_bytes())["init"]["data"] == DEFAULT_INIT
    assert load_image(str(paths["kernel"]), initrd=str(paths["initrd"])).format == "linux"

    # second call: reused, apt not consulted at all
    log.write_text("")
    fetch.ensure_linux_images(log=lambda m: None)
    assert log.read_text() == ""
    fetch.ensure_linux_images(refresh=True, log=lambda m: None)
    assert "apt-get download" in log.read_text()


def test_init_script_replaces_and_none_keeps(tmp_path, monkeypatch, cache):
    bin_dir, log = fake_tools(tmp_path)
    monkeypatch.setenv("PATH", str(bin_dir))
    script = b"#!/bin/busybox sh\necho custom\n"
    paths = fetch.ensure_linux_images(init_script=script, log=lambda m: None)
    assert parse_newc(paths["initrd"].read_bytes())["init"]["data"] == script
    fetch.ensure_linux_images(log=lambda m: None)            # None: keep the user's choice
    assert parse_newc(paths["initrd"].read_bytes())["init"]["data"] == script
    assert json.loads(paths["manifest"].read_text())["initramfs"]["init"] == "custom"
    assert cli.main(["fetch", "linux"]) == 0                 # the command without --init: default again
    assert parse_newc(paths["initrd"].read_bytes())["init"]["data"] == DEFAULT_INIT


def test_missing_apt(tmp_path, monkeypatch, cache, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(fetch.FetchError, match="apt-get not found"):
        fetch.ensure_linux_images(log=lambda m: None)
    assert cli.main(["fetch", "linux"]) == 69
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bt-images: error: apt-get not found")


def test_no_kernel_package(tmp_path, monkeypatch, cache):
    bin_dir, log = fake_tools(tmp_path, kernels=("linux-image-6.1.0-50-amd64",))
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(fetch.FetchError, match=r"no linux-image-6\.1\.0-N-686-unsigned package found"):
        fetch.ensure_linux_images(log=lambda m: None)
    assert "apt-get update" in log.read_text()     # it refreshed the lists before giving up


def test_no_busybox_package(tmp_path, monkeypatch, cache):
    bin_dir, _ = fake_tools(tmp_path, busybox=False)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(fetch.FetchError, match="busybox-static:i386 not found"):
        fetch.ensure_linux_images(log=lambda m: None)


def test_no_network(tmp_path, monkeypatch, cache, capsys):
    error = "E: Failed to fetch http://deb.debian.org/x.deb  Temporary failure resolving 'deb.debian.org'"
    bin_dir, _ = fake_tools(tmp_path, download_error=error)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert cli.main(["fetch", "linux"]) == 69
    last = capsys.readouterr().err.splitlines()[-1]        # after the "downloading ..." progress line
    assert last.startswith("bt-images: error: apt-get download failed") and "Temporary failure resolving" in last
    assert not (cache / "manifest.json").exists()


def test_missing_i386_arch_without_root(tmp_path, monkeypatch, cache):
    bin_dir, _ = fake_tools(tmp_path, foreign="")
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(fetch.FetchError, match=r"sudo dpkg --add-architecture i386 && sudo apt-get update"):
        fetch.ensure_linux_images(log=lambda m: None)


def test_missing_i386_arch_as_root_adds_it(tmp_path, monkeypatch, cache):
    bin_dir, log = fake_tools(tmp_path, foreign="")
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    fetch.ensure_linux_images(log=lambda m: None)
    calls = log.read_text()
    assert "dpkg --add-architecture i386" in calls and "apt-get update" in calls


def test_cli_bad_init_file_and_paths(tmp_path, monkeypatch, cache, capsys):
    assert cli.main(["fetch", "linux", "--init", str(tmp_path / "nope.sh")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["path", "linux"]) == 69
    assert "not fetched yet" in capsys.readouterr().err
    assert cli.main(["list"]) == 0
    assert "linux: not fetched" in capsys.readouterr().out
    bin_dir, _ = fake_tools(tmp_path)
    monkeypatch.setenv("PATH", str(bin_dir))
    init = tmp_path / "init.sh"
    init.write_bytes(b"#!/bin/busybox sh\necho hi\n")
    assert cli.main(["fetch", "linux", "--init", str(init)]) == 0
    capsys.readouterr()
    assert cli.main(["path", "linux", "kernel"]) == 0
    assert capsys.readouterr().out == f"{cache / 'vmlinuz'}\n"
    assert cli.main(["list"]) == 0
    assert "linux-image-6.1.0-50-686-unsigned 6.1.176-1" in capsys.readouterr().out


def test_cached_linux_images(tmp_path, monkeypatch, cache):
    with pytest.raises(BadInput, match="not fetched yet.*bt-images fetch linux"):
        fetch.cached_linux_images()
    bin_dir, log = fake_tools(tmp_path)
    monkeypatch.setenv("PATH", str(bin_dir))
    fetched = fetch.ensure_linux_images(log=lambda m: None)
    log.write_text("")
    assert fetch.cached_linux_images() == fetched and log.read_text() == ""


def test_default_cmdline():
    line = fetch.default_linux_cmdline(64)
    assert line.startswith("console=ttyS0 ") and line.endswith(" rdinit=/init")
    assert "dis_ucode_ldr" in line and "nokaslr" in line and "clocksource=pit" in line
    assert "lpj=400000" in line                       # 100 MHz virtual CPU, HZ=250
    assert "lpj=800000" in fetch.default_linux_cmdline(64, cpu_mhz=200)
    with pytest.raises(BadInput, match="at least 48 MiB"):
        fetch.default_linux_cmdline(16)


@pytest.mark.slow
def test_real_fetch_through_apt():
    """Uses the real apt and the real cache (so later runs reuse it)."""
    paths = fetch.ensure_linux_images()
    manifest = json.loads(paths["manifest"].read_text())
    assert re.fullmatch(r"linux-image-6\.1\.0-\d+-686-unsigned", manifest["kernel"]["package"])
    assert paths["busybox"].read_bytes()[:4] == b"\x7fELF"
    img = load_image(str(paths["kernel"]), initrd=str(paths["initrd"]), cmdline=fetch.default_linux_cmdline())
    assert img.format == "linux" and img.entry == 0x1000000
    assert img.info["kernel_version"].startswith("6.1.0-")
    entries = parse_newc(paths["initrd"].read_bytes())
    assert entries["dev/console"]["rdev"] == (5, 1) and entries["bin/busybox"]["data"] == paths["busybox"].read_bytes()


# -- apt hiccups: a partial failure is a warning when what is needed resolves ----------
MIRROR_SYNC = ("E: Failed to fetch http://security.debian.org/dists/bookworm-security/main/"
               "binary-i386/Packages.xz  File has unexpected size (mirror sync in progress?)")


def test_a_failed_apt_update_is_a_warning_when_the_packages_resolve(tmp_path, monkeypatch, cache, capsys):
    # The i386 architecture is new, so the update is needed; it fails (exit 100) both times.
    bin_dir, log = fake_tools(tmp_path, foreign="", update_error=MIRROR_SYNC)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert cli.main(["fetch", "linux"]) == 0
    assert log.read_text().count("apt-get update") == 2           # retried once
    err = capsys.readouterr().err
    assert "bt-images: warning: apt-get update failed (exit 100): E: Failed to fetch" in err
    assert "error" not in err
    assert (cache / "manifest.json").exists()


def test_a_failed_apt_update_is_fatal_when_the_packages_do_not_resolve(tmp_path, monkeypatch, cache,
                                                                      capsys):
    bin_dir, log = fake_tools(tmp_path, busybox=False, update_error=MIRROR_SYNC)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert cli.main(["fetch", "linux"]) == 69
    assert log.read_text().count("apt-get update") == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("bt-images: error: package busybox-static:i386 not found by apt-cache")
    assert "apt-get update failed (exit 100)" in last and "mirror sync" in last


def test_a_failed_apt_get_download_is_retried_once(tmp_path, monkeypatch, cache, capsys):
    bin_dir, log = fake_tools(tmp_path, download_fails_once="E: Failed to fetch x.deb  Connection reset")
    monkeypatch.setenv("PATH", str(bin_dir))
    assert cli.main(["fetch", "linux"]) == 0
    calls = [ln for ln in log.read_text().splitlines() if ln.startswith("apt-get download")]
    # the first call got only the kernel; the retry asks for what is missing
    assert calls == ["apt-get download linux-image-6.1.0-50-686-unsigned:i386 busybox-static:i386",
                     "apt-get download busybox-static:i386"]
    assert "bt-images: warning: apt-get download failed (exit 100)" in capsys.readouterr().err
    assert (cache / "vmlinuz").exists()


def _status(argv) -> int:
    try:
        return cli.main(argv)
    except SystemExit as e:          # argparse's usage errors
        return e.code


def test_usage_errors_are_one_line_and_take_no_abbreviations(capsys):
    assert _status(["fetch", "nothing"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bt-images fetch: error: argument target")
    assert _status(["fetch", "linux", "--init"]) == 2        # --init needs a file
    assert _status(["fetch", "linux", "--ref"]) == 2         # not --refresh
    assert capsys.readouterr().err.count("\n") == 2
