"""The scanner's C walk (scanner/_walk.c): loading it and checking it fits.

`_walk.run` is the worklist loop of `Scanner._run_worklist` in C.  It calls
capstone's `cs_disasm_iter` directly, through the function addresses of the
capstone package Python has already loaded, and reads `cs_insn` with a
layout compiled into the extension; `NativeWalk` refuses to start when that
layout differs from the one capstone's own ctypes binding declares (a
capstone release that changed the structure), so a mismatch is a clear
error, never a misread.
"""
from __future__ import annotations

import ctypes
from typing import Callable, NamedTuple

import capstone

from bt.catalog import MAYBE_SENSITIVE_OPCODE, PREFIX_BYTE, classify_bytes
from scanner.cfg import CFG, TARGET_KINDS
from scanner.decode import new_capstone
from scanner.flow import FLOW
from scanner.insns import Insns

try:
    from scanner import _walk
    IMPORT_ERROR = None
except ImportError as exc:       # not built: `pip install -e .` compiles it
    _walk = None
    IMPORT_ERROR = str(exc)


def layout_mismatch() -> str | None:
    """None when the compiled cs_insn layout equals capstone's; else what differs."""
    if _walk is None:
        return f"scanner._walk is not built ({IMPORT_ERROR})"
    mine = _walk.layout()
    ref = {name: getattr(capstone._cs_insn, name).offset for name, _t in capstone._cs_insn._fields_}
    ref["sizeof"] = ctypes.sizeof(capstone._cs_insn)
    bad = [f"{k}: {mine.get(k)} here, {v} in capstone {capstone.__version__}"
           for k, v in ref.items() if mine.get(k) != v]
    return "; ".join(bad) or None


def available() -> bool:
    return layout_mismatch() is None


def _classify(data: bytes):
    e = classify_bytes(data)
    return None if e is None else (e.name, e.klass.value)


def _no_defer(item) -> None:
    raise RuntimeError("a walk without a bound deferred a branch")


def _fn(f) -> int:
    return ctypes.cast(f, ctypes.c_void_p).value


class WalkJob(NamedTuple):
    """What one C walk takes from the scanner: the state it works on and the
    Python rules it calls back for the rare cases (one definition of each)."""

    work: list                  # the worklist of (site, target, kind, attrs); emptied
    cfg: CFG                    # grown in place: nodes, edges, page and node marks, targets
    new_sites: list             # sensitive sites found by this walk are appended here
    touched: set[int]           # pages whose records the walk changed are added here
    read_mem: Callable          # (addr, size) -> bytes | None: the guest's code bytes
    branch: Callable            # Scanner._branch: the edges of a far/indirect branch
    why_not: Callable           # Decoder.why_not: why an address does not decode
    max_insns: int              # instruction cap of the whole scan
    insns_scanned: int          # instructions scanned before this walk
    max_block_insns: int        # longest block before it is cut
    bound: int = -1             # scanned-instruction count past which branches are deferred (-1: never)
    defer: Callable = None      # Scanner._defer: keeps a deferred branch


class NativeWalk:
    """One capstone handle and the function addresses `_walk.run` needs."""

    def __init__(self):
        why = layout_mismatch()
        if why is not None:
            raise RuntimeError(f"the scanner's C walk cannot be used: {why}")
        self.md = new_capstone()          # kept alive: the walk uses its handle
        cs = capstone._cs
        self._capstone = (self.md.csh.value, _fn(cs.cs_disasm_iter), _fn(cs.cs_malloc),
                          _fn(cs.cs_free))
        self.decoded = 0        # instructions capstone decoded for the walk
        self.reads = 0          # read_mem calls (one per page window and run)

    def run(self, job: WalkJob) -> int:
        """Empty `job.work` exactly as the Python loop in `Scanner._run_worklist`
        would; returns the scan's instruction count after the walk."""
        cfg = job.cfg
        g = cfg.graph
        pm = cfg.pages
        # `_walk.run` takes positional arguments (the C side parses them with one
        # PyArg_ParseTuple); this call is the one place that knows their order.
        insns, decoded, reads = _walk.run(
            job.work, g._node, g._succ, g._pred, pm.pages, pm.record, pm.is_free, pm.mark,
            cfg.marks.pages, Insns, job.new_sites, cfg._tset, cfg._tnew, cfg.pending, job.touched,
            job.read_mem, _classify, MAYBE_SENSITIVE_OPCODE, PREFIX_BYTE, FLOW, TARGET_KINDS,
            cfg.add_bad, cfg.split_block, job.branch, job.why_not,
            job.max_insns, job.insns_scanned, job.max_block_insns,
            job.bound, job.defer or _no_defer, cfg.deferred, cfg.new_unresolved, *self._capstone)
        self.decoded += decoded
        self.reads += reads
        return insns
