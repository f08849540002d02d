"""`bt-run`: run a guest image under emulate, trap or bt mode.

The options and exit statuses are a contract (docs/cli.md):
    guest debug-exit value v, 124 budget exhausted, 125 hang/triple fault,
    2 bad input, 70 internal VMM error (report still written), 130/143 stopped
    by SIGINT/SIGTERM (report still written), 74 the report could not be written.
With `--compare MODE` it instead runs the image under emulate and MODE and prints the
fidelity report (bt/measure/fidelity.py, docs/fidelity.md): status 0 identical
(or timing-only), 1 divergent, 2 bad input.
"""
from __future__ import annotations

import argparse
import sys

from bt.cli.common import (EX_IOERR, CliParser, add_image_options, check_writable, fail,
                           load_from_args, positive_int, quiet_on_closed_pipe, stops_on_signals)
from bt.errors import BadInput
from bt.machine import DEFAULT_CPU_MHZ, FIRMWARE, MachineConfig
from bt.mode import COMPARED_MODES, MODES, Mode, describe_modes
from bt.outcome import Outcome
from bt.report import build_report, comparison_report, guest_panic, top_sites, write_report


def make_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="bt-run", description="Run an x86-32 guest under the bt VMM.")
    add_image_options(p)
    p.add_argument("--mode", choices=[str(m) for m in MODES], default=str(Mode.EMULATE),
                   help=describe_modes())
    p.add_argument("--max-instructions", type=positive_int, default=None, metavar="N",
                   help="stop with status 124 after N retired instructions")
    p.add_argument("--cpu-mhz", type=positive_int, default=DEFAULT_CPU_MHZ, metavar="N",
                   help="virtual clock: million guest instructions per virtual second")
    p.add_argument("--report", metavar="FILE.json", help="write the JSON run report here")
    p.add_argument("--serial-input", metavar="FILE",
                   help="bytes fed to COM1's receiver (scripted keystrokes)")
    p.add_argument("--rtc", type=int, default=None, metavar="EPOCH",
                   help="wall-clock time the CMOS RTC starts at (seconds since 1970; fixed "
                        "by default so runs stay deterministic)")
    p.add_argument("--pc-testdev", action="store_true",
                   help="add QEMU's pc-testdev (ports 0xE0-0xEB, IRQ lines at 0x2000-0x2017, "
                        "64 KiB of RAM at 0xFF000000), as kvm-unit-tests expect")
    p.add_argument("--firmware", choices=list(FIRMWARE), default="none",
                   help="start state: none (devices at reset, the default) or bios (as a PC BIOS "
                        "leaves a multiboot kernel: PIT at 18.2 Hz, IRQ 0 unmasked, an IVT; "
                        "docs/machine.md)")
    p.add_argument("--compare", choices=[str(m) for m in COMPARED_MODES], metavar="MODE",
                   default=None,
                   help=f"fidelity check: run under {Mode.EMULATE} and MODE "
                        f"({' or '.join(COMPARED_MODES)}), print where guest-visible behaviour "
                        "diverges; status 0 identical, 1 divergent")
    p.add_argument("--gdb", metavar="[HOST:]PORT", default=None,
                   help="serve the GDB remote protocol here (host 127.0.0.1 by default) and "
                        "wait for gdb before the first guest instruction (docs/debugging.md)")
    p.add_argument("--gdb-no-wait", action="store_true",
                   help="with --gdb: run at once; gdb stops the guest when it attaches")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary line on stderr")
    return p


@stops_on_signals("bt-run")
@quiet_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        if args.report:
            check_writable(args.report, "--report")   # before the run, not after it
        image = load_from_args(args)
        config = MachineConfig(mem_mib=args.mem, cpu_mhz=args.cpu_mhz, mode=Mode.parse(args.mode),
                               max_instructions=args.max_instructions, cmdline=args.cmdline or "",
                               pc_testdev=args.pc_testdev, firmware=args.firmware)
        if args.rtc is not None:
            config.rtc_epoch = args.rtc
        if args.serial_input:
            try:
                with open(args.serial_input, "rb") as f:
                    config.serial_input = f.read()
            except OSError as e:
                raise BadInput(f"cannot read --serial-input {args.serial_input}: {e.strerror}")
        if args.gdb_no_wait and not args.gdb:
            raise BadInput("--gdb-no-wait needs --gdb [HOST:]PORT")
        if args.compare and args.gdb:
            raise BadInput("--gdb debugs one run: it does not combine with --compare")
        if args.compare:
            from bt.measure.fidelity import compare  # the fidelity checker (issue 6)
            report = compare(image, config, args.compare)
            print(report.text())
            if args.report and not _write("--report", args.report, comparison_report(report)):
                return EX_IOERR
            return report.status
        from runtime.vm import VM  # imported late: argument errors stay fast
        vm = VM(image, config)
        debugger = _debugger(vm, args) if args.gdb else None
    except BadInput as e:
        return fail("bt-run", str(e))
    result = _run(vm, interactive=args.serial_input is None and _is_tty(sys.stdin))
    if debugger is not None:
        debugger.finish(result)     # gdb hears the exit status (W/X packet)
    written = True
    if args.report:
        written = _write("--report", args.report, build_report(image, config, result))
    if result.message and result.reason is not Outcome.DEBUG_EXIT:
        print(f"bt-run: {result.reason}: {result.message}", file=sys.stderr)
    if not args.quiet:
        _summary(result)
    # The run's own status unless its report is lost: a script must not take
    # a missing report for a finished run (74 = EX_IOERR).
    return result.exit_status if written else EX_IOERR


def _debugger(vm, args):
    from bt.gdb.server import GdbServer
    try:
        server = GdbServer(vm, args.gdb, wait=not args.gdb_no_wait,
                           log=lambda msg: print(f"bt-run: {msg}", file=sys.stderr, flush=True))
    except ValueError as e:
        raise BadInput(str(e)) from None
    except OSError as e:
        raise BadInput(f"--gdb {args.gdb}: cannot listen: {e.strerror or e}") from None
    host = server.listener.getsockname()[0]
    what = "waiting for gdb" if not args.gdb_no_wait else "running; gdb may attach"
    print(f"bt-run: {what} on {host}:{server.port} (gdb: set architecture i386, "
          f"target remote {host}:{server.port})", file=sys.stderr, flush=True)
    return server


def _write(option: str, path: str, report: dict) -> bool:
    """Write a JSON report; a failure (disk full, directory gone since the
    check) is one `error:` line, and False."""
    try:
        write_report(path, report)
    except OSError as e:
        fail("bt-run", f"cannot write {option} {path}: {e.strerror}")
        return False
    return True


def _is_tty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _run(vm, interactive: bool):
    """Run the VM; on a terminal, COM1 is the terminal (raw mode, Ctrl-A x quits)."""
    if not interactive:
        return vm.run()
    from runtime.devices.console import HostConsole, raw_terminal
    fd = sys.stdin.fileno()
    vm.bus.attach(HostConsole(fd, vm.devices["uart"]), vm)
    print("bt-run: COM1 is this terminal; type Ctrl-A x to quit", file=sys.stderr, flush=True)
    with raw_terminal(fd):
        return vm.run()


def _summary(result) -> None:
    exits = result.counters.get("exits", 0)
    per_m = exits * 1e6 / result.retired if result.retired else 0.0
    line = (f"bt-run: {result.reason} (status {result.exit_status}); "
            f"{result.retired:,} instructions, {exits:,} exits ({per_m:.1f}/M), "
            f"{result.wall:.2f} s wall")
    extra = result.extra.get("patches") if result.extra else None
    if extra:
        line += f", {sum(extra.get('installed', {}).values())} patches"
    panic = guest_panic(result.serial)
    if panic:
        line += f"; guest panic: {panic}"
    print(line, file=sys.stderr)
    if result.exit_status not in (0,) and top_sites(result.counters):
        pass


if __name__ == "__main__":
    sys.exit(main())
