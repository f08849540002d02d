"""The scanner: traversal rules, sensitive sites, bad blocks, IDT, incremental scans, pages."""
import struct

from scanhelp import BASE, PROGRAM, Mem, asm

from bt.x86 import PAGE
from scanner.cfg import UNRESOLVED
from scanner.scan import Scanner, idt_gates


def _program():
    ptr = BASE + 0x100
    code = asm(PROGRAM.format(ptr=ptr))
    mem = Mem(code, size=0x200)
    mem.write(ptr, struct.pack("<I", BASE + 0x80))
    mem.write(BASE + 0x80, b"\xfb\xff\xe0")          # sti; jmp eax
    return mem


def _edges(cfg):
    return {(u, v, d["kind"]) for u, v, d in cfg.graph.edges(data=True)}


def test_recursive_descent_edges_and_sites():
    mem = _program()
    cfg = Scanner(mem.read).scan([BASE])
    sites = {(s.addr - BASE, s.name, s.klass) for s in cfg.sensitive_sites()}
    assert sites == {(0, "cli", "interrupt"), (1, "mov_from_cr", "privileged"),
                     (0xD, "pushfd", "sensitive-unprivileged"), (0x10, "in", "io"),
                     (0x80, "sti", "interrupt")}
    e = _edges(cfg)
    B = BASE
    assert (B, B + 0x10, "cond-jump") in e and (B, B + 8, "fallthrough") in e
    assert (B + 8, B + 0x17, "call") in e and (B + 8, B + 0xD, "return") in e
    assert (B + 0xD, B, "jump") in e
    assert (B + 0x10, B + 0x80, "indirect") in e            # jmp [disp32] followed
    assert (B + 0x80, UNRESOLVED, "unresolved") in e        # jmp eax
    assert cfg.unresolved_sites() == [B + 0x81]
    assert cfg.graph.edges[B + 0x10, B + 0x80]["via"] == B + 0x100
    assert cfg.stats()["instructions"] == 12
    assert cfg.code_pages() == [BASE]


def test_code_behind_computed_pointers_is_not_scanned():
    code = asm("""
        mov eax, 0x10040
        add eax, 0x10
        call eax
        mov ebx, dword ptr [esi]
        jmp ebx
    """)
    mem = Mem(code, size=0x100)
    mem.write(BASE + 0x50, b"\xfa\x9c\xc3")                 # cli; pushfd; ret (hidden)
    cfg = Scanner(mem.read).scan([BASE])
    for a in range(BASE + 0x50, BASE + 0x53):
        assert not cfg.is_scanned(a)
        assert cfg.block_containing(a) is None
    assert [s.name for s in cfg.sensitive_sites()] == []
    assert len(cfg.unresolved_sites()) == 2


def test_stop_rules_and_hlt_loop():
    code = asm("""
        hlt
    idle: hlt
        jmp idle
    """) + asm("ret", BASE + 4)
    cfg = Scanner(Mem(code).read).scan([BASE])
    # hlt does not end a path; the jmp back does, and nothing after it is scanned.
    assert cfg.is_scanned(BASE) and cfg.is_scanned(BASE + 1)
    assert not cfg.is_scanned(BASE + 4)
    assert (BASE, BASE + 1, "fallthrough") in _edges(cfg)       # split at the loop head
    assert (BASE + 1, BASE + 1, "jump") in _edges(cfg)
    for stop in ("ret", "iretd", "int3", "ud2", "retf"):
        c = asm(stop) + b"\xfa"
        cfg = Scanner(Mem(c).read).scan([BASE])
        assert not cfg.is_scanned(BASE + len(c) - 1), stop


def test_self_loop_and_split_into_block():
    code = asm("""
        nop
    top:
        inc eax
        dec ebx
        jnz top
    spin:
        jmp spin
    """)
    cfg = Scanner(Mem(code).read).scan([BASE])
    assert cfg.blocks() == [BASE, BASE + 1, BASE + 5]
    assert cfg.branch_targets_in(BASE, BASE + 0x10) == [BASE, BASE + 1, BASE + 5]
    assert cfg.branch_targets_in(BASE + 2, BASE + 5) == []


def test_bad_blocks_never_raise():
    # jump into the middle of an instruction already scanned: overlap
    code = asm("mov eax, 0x90909090") + asm("jmp 0x10001", BASE + 5)
    cfg = Scanner(Mem(code).read).scan([BASE])
    assert cfg.bad_blocks() == [(BASE + 1, "overlap: inside an instruction already scanned")]
    # run off the end of readable memory
    cfg = Scanner(Mem(b"\x90\x90\xb8\x01").read).scan([BASE])
    assert cfg.bad_blocks() == [(BASE + 2, "truncated: runs off readable memory")]
    # jump to unmapped memory
    cfg = Scanner(Mem(asm("jmp 0x500000")).read).scan([BASE])
    assert cfg.bad_blocks() == [(0x500000, "unmapped")]
    # bytes capstone cannot decode
    cfg = Scanner(Mem(b"\x90" + b"\x0f\x04" * 10).read).scan([BASE])
    assert cfg.bad_blocks() == [(BASE + 1, "undecodable")]
    # a null function pointer in memory is unresolved, not a scan of address 0
    cfg = Scanner(Mem(asm("call dword ptr [0x10100]"), size=0x200).read).scan([BASE])
    assert cfg.unresolved_sites() == [BASE]


def test_scan_idt_present_gates():
    handlers = asm("cli\n iretd")
    mem = Mem(handlers, size=0x1000)
    idt = BASE + 0x800

    def gate(off, flags):
        return struct.pack("<HHBBH", off & 0xFFFF, 8, 0, flags, off >> 16)
    mem.write(idt, gate(BASE, 0x8E) + gate(BASE + 0x40, 0x0E) + gate(BASE + 1, 0x8F)
              + gate(0, 0x85))
    assert idt_gates(mem.read, idt, 4 * 8 - 1) == [(0, BASE), (2, BASE + 1)]
    cfg = Scanner(mem.read).scan_idt(idt, 4 * 8 - 1)
    assert cfg.entries == {BASE: ["idt:0x00"], BASE + 1: ["idt:0x02"]}
    assert not cfg.is_scanned(BASE + 0x40)
    assert [s.name for s in cfg.sensitive_sites()] == ["cli", "iretd"]


def test_incremental_scan_merges_and_splits():
    code = asm("""
        xor eax, eax
        inc eax
        sti
        ret
    """)
    sc = Scanner(Mem(code).read)
    sc.scan([BASE + 2])
    assert sc.cfg.blocks() == [BASE + 2]
    sc.scan_from(BASE)                      # runs into the block scanned before
    assert sc.cfg.blocks() == [BASE, BASE + 2]
    assert (BASE, BASE + 2, "fallthrough") in _edges(sc.cfg)
    sc.scan_from(BASE + 3)                  # a fault site inside a block: split
    assert sc.cfg.blocks() == [BASE, BASE + 2, BASE + 3]
    assert [s.addr for s in sc.cfg.sensitive_sites()] == [BASE + 3]
    assert sc.cfg.entries[BASE + 3] == ["from"]


def test_page_bookkeeping_and_rescan():
    code = asm("nop\n nop\n ret")
    mem = Mem(code, size=2 * PAGE)
    sc = Scanner(mem.read)
    cfg = sc.scan([BASE])
    rec = cfg.pages.pages[BASE]
    assert rec.scanned_offsets() == [0, 1, 2] and rec.scanned_bytes() == 3
    assert cfg.pages.changed_pages(mem.read) == []
    mem.write(BASE + 1, b"\xfa")            # nop -> cli
    assert cfg.pages.changed_pages(mem.read) == [BASE]
    assert cfg.pages.dirty_pages() == [BASE]
    sc.rescan_dirty()
    assert [s.name for s in cfg.sensitive_sites()] == ["cli"]
    assert cfg.pages.dirty_pages() == [] and cfg.pages.changed_pages(mem.read) == []
    assert cfg.pages.mark_dirty(BASE + PAGE + 5) is None     # not a code page


def test_instruction_crossing_a_page():
    code = b"\x90" * (PAGE - 2) + asm("mov eax, 0x12345678") + b"\xc3"
    cfg = Scanner(Mem(code).read).scan([BASE + PAGE - 2])
    assert cfg.code_pages() == [BASE, BASE + PAGE]
    assert cfg.pages.pages[BASE + PAGE].flags[:4] == b"\x02\x02\x02\x01"


def test_instruction_cap_leaves_pending_targets():
    code = asm("call 0x10010\n call 0x10020\n ret").ljust(0x30, b"\x90")
    sc = Scanner(Mem(code).read, max_insns=1)
    cfg = sc.scan([BASE])
    assert cfg.instruction_count() == 1
    assert cfg.pending                      # what was not scanned is said so


def test_new_sites_are_what_the_last_scan_decoded_and_site_at_finds_them():
    # The runtime patches what a lazy scan found without walking the CFG:
    # new_sites is exactly the sensitive instructions the last scan call decoded.
    from scanhelp import asm as _asm
    code = _asm("cli\n nop\n jmp l2\n l1: sti\n ret\n l2: pushfd\n jmp l1")
    mem = Mem(code, size=0x100)
    sc = Scanner(mem.read)
    sc.scan([BASE])
    assert [(a - BASE, name) for a, name, _k in sorted(sc.new_sites)] == [
        (0, "cli"), (4, "sti"), (6, "pushfd")]
    assert sorted(sc.new_sites) == sorted((s.addr, s.name, s.klass) for s in sc.cfg.sensitive_sites())
    for a, name, klass in sc.new_sites:
        s = sc.cfg.site_at(a)
        assert (s.addr, s.name, s.klass) == (a, name, klass) and s.data == mem.read(a, s.size)
    assert sc.cfg.site_at(BASE + 1) is None              # nop: scanned, not sensitive
    sc.scan_from(BASE + 1)                               # a split: nothing new decoded
    assert sc.new_sites == []
