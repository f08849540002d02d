"""Command-line behaviour of issue 18: no abbreviations, one-line errors,
outputs checked before the work, 74 when the final write fails, the
comparison report, a guest's kernel panic told apart from a clean reboot."""
import errno
import json
import struct
import sys
from pathlib import Path

import pytest

from bt.cli import bench as bench_cli
from bt.cli import run as run_cli
from bt.cli import scan as scan_cli
from bt.cli.common import EX_IOERR
from bt.errors import BadInput
from bt.images import load_image
from bt.images.linux import PAYLOAD_OFFSET
from bt.report import guest_panic
from conftest import LOAD, assemble

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "images"))
from images_testkit import bzimage, multiboot_header, tiny_kernel  # noqa: E402

PANIC = "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)"


def _status(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:           # argparse's usage errors
        return e.code


@pytest.fixture
def guest(tmp_path):
    def make(src: str) -> list[str]:
        img = tmp_path / "guest.bin"
        img.write_bytes(assemble(src))
        return [str(img), "--format", "raw", "--load", hex(LOAD)]
    return make


def _printing(text: str, then: str) -> str:
    """Guest code printing `text` on COM1, then running `then`."""
    data = ", ".join(str(b) for b in text.encode() + b"\n\0")
    return (f"mov esi, msg; mov dx, 0x3f8\n"
            f"next: lodsb; test al, al; jz done; out dx, al; jmp next\n"
            f"done: {then}\n"
            f"msg: .byte {data}")


# -- 2: no abbreviations --------------------------------------------------------------
@pytest.mark.parametrize("main, argv", [
    (run_cli.main, ["linux", "--init", "x"]),         # would have meant --initrd
    (run_cli.main, ["demo:hello", "--max", "5"]),
    (scan_cli.main, ["demo:hello", "--graph", "x"]),
    (bench_cli.main, ["demo:hello", "--mode", "bt"]),  # would have meant --modes
])
def test_abbreviated_options_are_rejected_in_one_line(main, argv, capsys):
    assert _status(main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ": error: unrecognized arguments: " in err, err


# -- 3: --report checked before the run; 74 when the final write fails ------------------
@pytest.mark.parametrize("where", ["missing/r.json", "dir", "/proc/x.json", "/dev/full"])
def test_an_unwritable_report_is_bad_input_before_the_run(tmp_path, where, guest, capsys):
    (tmp_path / "dir").mkdir()
    target = where if where.startswith("/") else str(tmp_path / where)
    status = _status(run_cli.main, [*guest("mov al, 0; out 0xf4, al"), "--report", target])
    out, err = capsys.readouterr()
    assert status == 2
    assert err == err.splitlines()[0] + "\n" and err.startswith(f"bt-run: error: cannot write --report {target}: ")
    assert "instructions" not in err                   # no run happened
    assert not Path(tmp_path / "missing").exists()


def test_the_report_check_leaves_no_file_behind(tmp_path, guest, capsys):
    report = tmp_path / "r.json"
    assert run_cli.main([*guest("mov dx, 0x3f8; mov al, 0x41; out dx, al; mov al, 0; out 0xf4, al"),
                         "--report", str(report)]) == 0
    assert json.loads(report.read_text())["serial_output"] == "A"
    assert _status(run_cli.main, ["nosuchimage", "--report", str(tmp_path / "s.json")]) == 2
    assert not (tmp_path / "s.json").exists()            # the probe file was removed again


def test_a_report_that_cannot_be_written_after_the_run_is_74(tmp_path, guest, monkeypatch, capsys):
    def full(path, report):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(run_cli, "write_report", full)
    report = tmp_path / "r.json"
    assert run_cli.main([*guest("mov al, 3; out 0xf4, al"), "--report", str(report)]) == EX_IOERR == 74
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"bt-run: error: cannot write --report {report}: No space left on device"
    assert err[1].startswith("bt-run: debug-exit (status 3);")           # the summary, still


def test_compare_writes_the_comparison_as_json(tmp_path, capsys):
    report = tmp_path / "cmp.json"
    status = run_cli.main(["demo:probe-flags", "--compare", "trap", "--report", str(report)])
    doc = json.loads(report.read_text())
    assert doc["version"] == 1 and doc["kind"] == "comparison"
    assert doc["mode"] == "trap" and doc["image"] == "probe-flags"
    assert doc["status"] == status == (1 if doc["verdict"] == "divergent" else 0)
    assert doc["verdict"] == "divergent"        # trap's Robin & Irvine hole (pushfd) shows
    assert doc["differences"] and doc["divergence"]["headline"]
    assert doc["reference"]["mode"] == "emulate" and doc["other"]["mode"] == "trap"
    assert doc["reference"]["serial_output"] != doc["other"]["serial_output"]
    assert f"fidelity: probe-flags under trap vs emulate: {doc['verdict']}" in capsys.readouterr().out


@pytest.mark.parametrize("opt", ["--plot", "--out"])
def test_bench_outputs_that_cannot_be_written_are_bad_input(opt, capsys):
    assert _status(bench_cli.main, ["demo:hello", opt, "/proc/x", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"bt-bench: error: cannot write {opt} /proc/x: ")


# -- 4: every error names what failed ------------------------------------------------
def test_scan_json_to_a_full_device_names_the_option_and_file(capsys):
    assert _status(scan_cli.main, ["demo:hello", "--json", "/dev/full"]) == 2
    out, err = capsys.readouterr()
    assert err == "bt-scan: error: cannot write --json /dev/full: No space left on device\n"
    assert out == ""                                     # found before the scan


def test_a_truncated_multiboot_header_names_the_file(tmp_path):
    img = tmp_path / "mb.bin"
    img.write_bytes(multiboot_header(flags=1 << 16) + b"\0" * 8)     # address fields cut short
    with pytest.raises(BadInput, match=rf"^{img}: multiboot header at 0x0 is truncated"):
        load_image(str(img))


def test_a_bzimage_without_a_payload_says_so(tmp_path):
    data = bytearray(bzimage(tiny_kernel()))
    struct.pack_into("<II", data, PAYLOAD_OFFSET, 0, 0)
    img = tmp_path / "bzImage"
    img.write_bytes(bytes(data))
    with pytest.raises(BadInput, match=r"gives no compressed kernel \(payload_offset 0x0, payload_length 0\)"):
        load_image(str(img), linux_unpack=True)


# -- 5: a kernel panic is told apart from a clean reboot ---------------------------------
def test_guest_panic_finds_the_kernels_panic_line():
    assert guest_panic(b"[    0.1] boot\n[    2.5] " + PANIC.encode() + b" ]---\r\nrebooting\n") \
        == PANIC + " ]---"
    assert guest_panic(b"reboot: Restarting system\n") is None
    assert guest_panic(PANIC.encode()) == PANIC                      # no newline after it


@pytest.mark.parametrize("mode", ["emulate", "trap", "bt"])
def test_a_guest_that_panics_then_resets_is_reported(tmp_path, guest, mode, capsys):
    report = tmp_path / "r.json"
    reset = "mov al, 0xfe; out 0x64, al; hlt"
    assert run_cli.main([*guest(_printing(PANIC, reset)), "--mode", mode,
                         "--report", str(report)]) == 0
    rep = json.loads(report.read_text())
    assert rep["reason"] == "reset" and rep["guest_panic"] == PANIC
    assert f"; guest panic: {PANIC}" in capsys.readouterr().err

    clean = tmp_path / "clean.json"
    assert run_cli.main([*guest(_printing("reboot: Restarting system", reset)), "--mode", mode,
                         "--report", str(clean)]) == 0
    assert json.loads(clean.read_text())["guest_panic"] is None
    assert "guest panic" not in capsys.readouterr().err
