"""Recursive-descent code discovery (CSAM style) into a CFG.

Rules (issue 3):
  * follow fall-through, direct jumps, conditional jumps (both ways), direct
    calls and their return fall-through, and `call/jmp dword ptr [disp32]`
    through memory that can be read (edge kind "indirect");
  * a path stops at ret/retf/iret, int3, ud0/1/2, sysenter/sysexit and
    unconditional jumps; `hlt` does not stop it (execution resumes after an
    interrupt), so a `hlt; jmp $-1` loop ends at its jump, where the code says so;
  * every other indirect branch gets an edge to the "unresolved" node, with the
    branch's address as `site`: the runtime must expect unscanned code there;
  * far jumps/calls with an immediate pointer are followed at their offset
    (flat code segments assumed), with far=True on the edge;
  * bytes that cannot be decoded, that overlap an instruction already scanned,
    or that are not readable become "bad" nodes with a reason; nothing raises.

The traversal is a worklist, never recursion, and each byte is decoded into at
most one instruction, so it terminates on any input; `max_insns` bounds the
work further (targets left over are listed in `cfg.pending`).
"""
from __future__ import annotations

import contextlib
import gc
import re
import struct
import time
from collections import deque
from typing import Callable, Iterable

from bt.catalog import MAYBE_SENSITIVE_FIRST_BYTE, classify_bytes
from scanner.cfg import CFG, UNRESOLVED
from scanner.decode import ADDR_MASK, Decoder
from scanner.pages import CONT, PAGE, PAGE_MASK, START, UNSCANNED

ReadMem = Callable[[int, int], "bytes | None"]

JCC = frozenset("ja jae jb jbe je jne jg jge jl jle jo jno jp jnp js jns "
                "jcxz jecxz loop loope loopne".split())
STOP = frozenset("ret retf iret iretd int3 ud0 ud1 ud2 sysenter sysexit".split())

# Control-flow action per capstone mnemonic (prefixed spellings included).
FLOW: dict[str, str] = {}
for _m in JCC:
    FLOW[_m] = "jcc"
for _m in STOP:
    FLOW[_m] = "stop"
FLOW.update({"jmp": "jmp", "call": "call", "ljmp": "ljmp", "lcall": "lcall"})
for _p in ("bnd ", "notrack ", "bnd notrack ", "rep ", "repz ", "repne ", "repnz "):
    for _m in list(JCC) + ["ret", "jmp", "call"]:
        FLOW.setdefault(_p + _m, FLOW[_m])

_ABS_MEM = re.compile(r"^dword ptr (?:ds:)?\[(0x[0-9a-f]+|\d+)\]$")
_FAR_IMM = re.compile(r"^(0x[0-9a-f]+|\d+)\s*[:,]\s*(0x[0-9a-f]+|\d+)$")


ZERO_RUN_LIMIT = 8


def _int(s: str) -> int:
    return int(s, 0)


class Scanner:
    def __init__(self, read_mem: ReadMem, cfg: CFG | None = None, *,
                 max_insns: int = 20_000_000, max_block_insns: int = 8192,
                 chunk: int = 64):
        self.read_mem = read_mem
        self.cfg = cfg if cfg is not None else CFG()
        self.dec = Decoder(read_mem, chunk=chunk)
        self.max_insns = max_insns
        self.max_block_insns = max_block_insns
        self.insns_scanned = 0
        self.scan_seconds = 0.0
        self.insn_block: dict[int, int] = {}     # instruction address -> block start
        for b in self.cfg.blocks():
            for ins in self.cfg.graph.nodes[b]["insns"]:
                self.insn_block[ins[0]] = b
        self._work: deque = deque()

    # --- public entry points ----------------------------------------------------
    def scan(self, entries: Iterable[int], label: str = "entry") -> CFG:
        """Scan from every address in `entries`; returns the (shared) CFG."""
        with _no_gc():
            for a in entries:
                a &= ADDR_MASK
                self.cfg.add_entry(a, label)
                self._work.append((None, a, None, None))
            return self._run()

    def scan_from(self, addr: int, label: str = "from") -> CFG:
        """Incremental scan (first execution of unscanned code, a fault site)."""
        return self.scan([addr], label)

    def scan_idt(self, idt_base: int, idt_limit: int) -> CFG:
        """Scan from the handler of every present interrupt/trap gate of an IDT."""
        return self.scan_gates(idt_gates(self.read_mem, idt_base, idt_limit))

    def scan_gates(self, gates: Iterable[tuple[int, int]]) -> CFG:
        for vec, off in gates:
            self.cfg.add_entry(off, f"idt:{vec:#04x}")
            self._work.append((None, off, None, None))
        return self._run()

    def invalidate_page(self, base: int) -> list[int]:
        """Forget every block with bytes on page `base` (its code changed).
        Returns their start addresses, which the caller may rescan."""
        base &= PAGE_MASK
        g = self.cfg.graph
        hit = []
        for n, d in list(g.nodes(data=True)):
            if d["kind"] == "block" and d["start"] < base + PAGE and d["end"] > base:
                hit.append(n)
            elif d["kind"] == "bad" and base <= n < base + PAGE:
                hit.append(n)
        for n in hit:
            for ins in g.nodes[n]["insns"]:
                self.cfg.pages.unmark(ins[0], ins[1])
                self.insn_block.pop(ins[0], None)
            g.remove_node(n)
        self.dec.invalidate(base, base + PAGE)
        return sorted(hit)

    def rescan_dirty(self) -> list[int]:
        """Rescan every dirty page: drop its blocks, scan again from the blocks'
        former starts that were entries or targets.  Returns the pages redone."""
        pages = self.cfg.pages.dirty_pages()
        for base in pages:
            starts = self.invalidate_page(base)
            self.cfg.pages.drop(base)
            targets = [s for s in starts if s in self.cfg.entries] or starts
            for s in targets:
                self._work.append((None, s, None, None))
        self._run()
        return pages

    # --- the traversal -------------------------------------------------------
    def _run(self) -> CFG:
        with _no_gc():
            return self._run_worklist()

    def _run_worklist(self) -> CFG:
        t0 = time.perf_counter()
        cfg = self.cfg
        touched: set[int] = set()
        work = self._work
        while work:
            site, target, kind, attrs = work.popleft()
            if target is None:
                cfg.add_edge(self.insn_block[site], UNRESOLVED, "unresolved", site=site)
                continue
            if self.insns_scanned >= self.max_insns and target not in cfg.graph:
                cfg.pending.append(target)
                if site is not None:
                    cfg.add_edge(self.insn_block[site], UNRESOLVED, "unresolved", site=site)
                continue
            node = self._ensure(target, touched)
            if site is not None:
                attrs = attrs or {}
                cfg.add_edge(self.insn_block[site], node, kind, site=site, **attrs)
        cfg.pending = sorted(set(cfg.pending))
        cfg.pages.update_hashes(self.read_mem, touched)
        self.scan_seconds += time.perf_counter() - t0
        cfg.info["scan_seconds"] = self.scan_seconds
        cfg.info["decoded"] = self.dec.decoded
        return cfg

    def _ensure(self, addr: int, touched: set[int]) -> int:
        """The node at `addr`: existing, split out of a block, bad, or newly decoded."""
        g = self.cfg.graph
        if addr in g:
            return addr
        st = self.cfg.pages.state(addr)
        if st == START:
            self.cfg.split_block(self.insn_block[addr], addr)
            for ins in g.nodes[addr]["insns"]:
                self.insn_block[ins[0]] = addr
            return addr
        if st == CONT:
            self.cfg.add_bad(addr, "overlap: inside an instruction already scanned")
            return addr
        self._decode_block(addr, touched)
        return addr

    def _decode_block(self, start: int, touched: set[int]) -> None:
        cfg = self.cfg
        g = cfg.graph
        pages = cfg.pages.pages
        dec_at = self.dec.at
        maybe = MAYBE_SENSITIVE_FIRST_BYTE
        insn_block = self.insn_block
        flow_of = FLOW.get
        insns: list = []
        sens: list = []
        work = self._work
        a = start
        cur_base = -1
        flags = None
        follow = None           # (site, target, kind) successors of the block
        bad = None              # reason, when the block ends at undecodable/overlapping bytes
        zeros = 0               # consecutive `00 00` (add [eax], al): zero-filled memory
        while True:
            if a != start:
                # Ran into code already scanned (or into the middle of it)?
                if a in g:
                    follow = "fall"
                    break
                st = flags[a & 0xFFF] if a & PAGE_MASK == cur_base else cfg.pages.state(a)
                if st:
                    follow = "fall"
                    break
            if len(insns) >= self.max_block_insns:
                follow = "fall"
                break
            rec = dec_at(a)
            if rec is None:
                bad = self.dec.why_not(a)
                break
            size, mnem, op, buf, base = rec
            if a + size > ADDR_MASK + 1:
                bad = "truncated: runs past 4 GiB"
                break
            off = a & 0xFFF
            if a & PAGE_MASK != cur_base:
                cur_base = a & PAGE_MASK
                rec_p = pages.get(cur_base)
                if rec_p is None:
                    rec_p = cfg.pages.record(cur_base)
                    touched.add(cur_base)
                flags = rec_p.flags
            if off + size <= PAGE:
                if flags.count(UNSCANNED, off, off + size) != size:
                    bad = "overlap: bytes of an instruction already scanned"
                    break
                flags[off] = START
                if size > 1:
                    flags[off + 1:off + size] = _CONT[size]
            else:
                if not cfg.pages.is_free(a, size):
                    bad = "overlap: bytes of an instruction already scanned"
                    break
                cfg.pages.mark(a, size)
                touched.add((a + size - 1) & PAGE_MASK)
            o = a - base
            data = buf[o:o + size]
            if data == b"\x00\x00":
                zeros += 1
                if zeros > ZERO_RUN_LIMIT:
                    # Code never repeats `add [eax], al`; this is empty RAM
                    # after the code (e.g. behind an `out` that ends the run).
                    bad = f"zero fill: more than {ZERO_RUN_LIMIT} consecutive 00 00"
                    break
            else:
                zeros = 0
            insns.append((a, size, mnem, op, data))
            insn_block[a] = start
            if maybe[buf[o]]:
                e = classify_bytes(data)
                if e is not None:
                    sens.append((a, e.name, e.klass.value))
            f = flow_of(mnem)
            if f is not None:
                follow = self._branch(f, a, size, op)
                break
            a += size
        self.insns_scanned += len(insns)
        if not insns:
            # Nothing decodable at the start: the node itself is bad.
            cfg.add_bad(start, bad or "undecodable")
            return
        end = insns[-1][0] + insns[-1][1]
        cfg.add_block(start, end, insns, sens)
        last = insns[-1][0]
        if bad is not None:
            if a not in g:
                cfg.add_bad(a, bad)
            cfg.add_edge(start, a, "fallthrough", site=last)
        elif follow == "fall":
            work.append((last, a & ADDR_MASK, "fallthrough", None))
        elif follow:
            for item in follow:
                work.append(item)

    def _branch(self, f: str, a: int, size: int, op: str) -> list:
        """Successor work items of a control-flow instruction at `a`."""
        nxt = (a + size) & ADDR_MASK
        if f == "stop":
            return []
        if f == "jcc":
            return [(a, _int(op) & ADDR_MASK, "cond-jump", None), (a, nxt, "fallthrough", None)]
        if f in ("ljmp", "lcall"):
            m = _FAR_IMM.match(op)
            kind = "jump" if f == "ljmp" else "call"
            if m:
                items = [(a, _int(m.group(2)) & ADDR_MASK, kind,
                          {"far": True, "selector": _int(m.group(1))})]
            else:
                items = [(a, None, "unresolved", None)]
            if f == "lcall":
                items.append((a, nxt, "return", None))
            return items
        # jmp / call
        kind = "jump" if f == "jmp" else "call"
        if op.startswith("0x") or op.isdigit():
            items = [(a, _int(op) & ADDR_MASK, kind, None)]
        else:
            items = [self._through_memory(a, op)]
        if f == "call":
            items.append((a, nxt, "return", None))
        return items

    def _through_memory(self, a: int, op: str) -> tuple:
        """`jmp/call dword ptr [disp32]`: follow the pointer when it can be read."""
        m = _ABS_MEM.match(op)
        if m:
            ptr = _int(m.group(1))
            raw = self.dec.read(ptr, 4)
            if len(raw) == 4:
                target = struct.unpack("<I", raw)[0]
                if target:
                    return (a, target, "indirect", {"via": ptr})
        return (a, None, "unresolved", None)


@contextlib.contextmanager
def _no_gc():
    """The scan allocates millions of small tuples that all stay alive; the
    cyclic GC would walk them again and again (measured: half the scan time)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


_CONT = [bytes([CONT]) * (n - 1) for n in range(17)]


def idt_gates(read_mem: ReadMem, idt_base: int, idt_limit: int) -> list[tuple[int, int]]:
    """(vector, handler offset) of every present 16/32-bit interrupt or trap gate.
    Task gates carry no offset and are skipped; so are entries that cannot be read."""
    out = []
    count = min((idt_limit + 1) // 8, 256)
    raw = read_mem(idt_base, count * 8) or b""
    for vec in range(count):
        ent = bytes(raw[vec * 8:vec * 8 + 8])
        if len(ent) < 8:
            break
        lo, _sel, _zero, flags, hi = struct.unpack("<HHBBH", ent)
        if not flags & 0x80:
            continue
        if flags & 0x0F not in (0x6, 0x7, 0xE, 0xF):
            continue
        out.append((vec, lo | (hi << 16)))
    return out
