"""`bt-scan`: discover a guest image's code (CSAM-style) and summarise the CFG.

    bt-scan IMAGE [image options as bt-run] [--idt ADDR[:LIMIT]] [--from ADDR ...]
            [--no-entry] [--kernel-exports] [--engine auto|c|python]
            [--json FILE] [--graphml FILE] [--dot FILE]

Memory is what the image loads (segments; nothing else is readable), so a scan
that runs off the image ends in a bad block rather than decoding empty RAM.
With --kernel-exports a Linux kernel is scanned at its link (virtual)
addresses instead, from its entry and every function it exports
(bt/images/kernel_view.py): the whole kernel's code, where its own pointers
point, rather than what startup_32 reaches at physical addresses.
Exit status: 0, 2 for bad input (one line on stderr; an output file that cannot
be written is found before the scan), 74 when writing an output still fails.
"""
from __future__ import annotations

import sys
import time

from bt.cli.common import (EX_IOERR, CliParser, add_image_options, check_writable, fail,
                           load_from_args, quiet_on_closed_pipe, stops_on_signals)
from bt.errors import BadInput


def make_parser() -> CliParser:
    p = CliParser(prog="bt-scan", description="Scan a guest image's code into a CFG.")
    add_image_options(p)
    p.add_argument("--idt", metavar="ADDR[:LIMIT]",
                   help="also scan every present gate of the IDT at ADDR (limit default 0x7ff)")
    p.add_argument("--from", dest="starts", action="append", default=[], metavar="ADDR",
                   help="also scan from ADDR (repeatable)")
    p.add_argument("--no-entry", action="store_true", help="do not scan from the image entry")
    p.add_argument("--kernel-exports", action="store_true",
                   help="Linux kernels: scan at the link (virtual) addresses, from the entry and every "
                        "function in __ksymtab/__ksymtab_gpl (addresses given to --from/--idt are virtual)")
    p.add_argument("--json", metavar="FILE", help="write the CFG as JSON (loads back)")
    p.add_argument("--graphml", metavar="FILE", help="write the CFG as GraphML (Gephi, yEd)")
    p.add_argument("--dot", metavar="FILE", help="write the CFG as Graphviz DOT")
    p.add_argument("--sites", action="store_true", help="list every sensitive site")
    p.add_argument("--engine", choices=("auto", "c", "python"), default="auto",
                   help="scanner walk: c (scanner/_walk.c, the default when built) or python "
                        "(the reference walk; same CFG, ~6x slower)")
    return p


def _idt_arg(text: str, parse_address) -> tuple[int, int]:
    base, _, limit = text.partition(":")
    return parse_address(base), (parse_address(limit) if limit else 0x7FF)


def _kernel_view(image):
    from bt.images.files import read_file
    from bt.images.kernel_view import kernel_view
    if image.format != "linux":
        raise BadInput(f"--kernel-exports needs a Linux kernel (bzImage or vmlinux); "
                       f"{image.path} is a {image.format} image")
    return kernel_view(image.path, read_file(image.path, "kernel"))


OUTPUTS = ("json", "graphml", "dot")


@stops_on_signals("bt-scan")
@quiet_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        for opt in OUTPUTS:                 # before the scan, not after it
            if getattr(args, opt):
                check_writable(getattr(args, opt), f"--{opt}")
        from bt.images import parse_address
        image = load_from_args(args)
        starts = [parse_address(s) for s in args.starts]
        idt = _idt_arg(args.idt, parse_address) if args.idt else None
        view = _kernel_view(image) if args.kernel_exports else None
    except BadInput as e:
        return fail("bt-scan", str(e))

    from scanner.memory import SegmentMemory
    from scanner.scan import Scanner, idt_gates
    if view is not None:
        mem = SegmentMemory(view.segments)
        entry, exports = view.entry, view.exports
    else:
        mem = SegmentMemory.from_image(image, limit=args.mem << 20)
        entry, exports = image.entry, []
    if idt is not None and mem.read(idt[0], 8) is None:
        return fail("bt-scan", f"--idt {idt[0]:#x} is not inside the loaded image")
    try:
        sc = Scanner(mem.read, engine=args.engine)
    except RuntimeError as e:         # --engine c without a usable build
        return fail("bt-scan", str(e))
    t = time.perf_counter()
    if not args.no_entry:
        sc.scan([entry], "entry")
    if exports:
        sc.scan(exports, "export")
    if starts:
        sc.scan(starts, "from")
    gates = []
    if idt is not None:
        gates = idt_gates(mem.read, *idt)
        sc.scan_gates(gates)
    cfg = sc.cfg
    dt = time.perf_counter() - t

    st = cfg.stats()
    name = image.name or image.path
    print(f"image:        {name} ({image.format}), entry {entry:#x}"
          + (" (link address)" if view is not None else ""))
    print(f"entries:      {st['entries']}" + (f" (IDT gates: {len(gates)})" if idt else "")
          + (f" (exported functions: {len(exports)}, table entries {view.export_layout})"
             if view is not None else ""))
    print(f"blocks:       {st['blocks']}")
    print(f"instructions: {st['instructions']}")
    sens = st["sensitive"]
    total = sum(sens.values())
    detail = ", ".join(f"{k} {v}" for k, v in sens.items())
    print(f"sensitive:    {total}" + (f" ({detail})" if detail else ""))
    print(f"unresolved:   {st['unresolved']} indirect branches"
          + (": " + " ".join(f"{a:#x}" for a in cfg.unresolved_sites()[:8])
             + (" ..." if st["unresolved"] > 8 else "") if st["unresolved"] else ""))
    bad = cfg.bad_blocks()
    print(f"bad blocks:   {len(bad)}"
          + ("".join(f"\n  {a:#x}: {r}" for a, r in bad[:8]) + ("\n  ..." if len(bad) > 8 else "")
             if bad else ""))
    print(f"pages:        {st['pages']}")
    if cfg.pending:
        print(f"pending:      {len(cfg.pending)} targets left unscanned (instruction cap)")
    rate = st["instructions"] / dt if dt > 0 else 0.0
    print(f"scan time:    {dt * 1000:.1f} ms ({rate:,.0f} instructions/s, {sc.engine} walk)")
    if args.sites:
        for s in cfg.sensitive_sites():
            print(f"  {s.addr:#010x}  {s.klass:<23} {s.name:<14} {s.mnemonic} {s.op_str}".rstrip())
    from scanner import serialize as ser
    writers = {"json": ser.save_json, "graphml": ser.write_graphml, "dot": ser.write_dot}
    for opt in OUTPUTS:
        path = getattr(args, opt)
        if not path:
            continue
        try:
            writers[opt](cfg, path)
        except OSError as e:    # the file passed the check, the write did not (disk full)
            return fail("bt-scan", f"cannot write --{opt} {path}: {e.strerror}", EX_IOERR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
