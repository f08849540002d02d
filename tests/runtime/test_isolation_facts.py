"""Unicorn facts runtime/isolation.py builds on (Unicorn 2.1.4)."""
import pytest
from unicorn import (UC_HOOK_MEM_FETCH_PROT, UC_HOOK_MEM_READ, UC_HOOK_MEM_READ_PROT, UC_HOOK_MEM_WRITE,
                     UC_HOOK_MEM_WRITE_PROT, UC_PROT_ALL, UC_PROT_NONE, UcError)
from unicorn import x86_const as X

from conftest import assemble
from runtime.quirks import scratch_engine

AREA = 0xFF000000
PROT = UC_HOOK_MEM_READ_PROT | UC_HOOK_MEM_WRITE_PROT | UC_HOOK_MEM_FETCH_PROT
REGS = ("EAX", "EBX", "ECX", "ESI", "EDI", "EIP")


def _run(src, prot=None, kinds=PROT, handled=False, stop=False):
    uc = scratch_engine()
    if prot is not None:
        uc.mem_map(AREA, 0x10000, prot)
    code = assemble(src, 0x1000)
    uc.mem_write(0x1000, code + b"\xf4")
    uc.mem_write(0x3000, b"\x11" * 64)
    seen = []

    def hook(uc, access, addr, size, value, _):
        seen.append((addr, uc.reg_read(X.UC_X86_REG_EIP)))
        if stop:
            uc.emu_stop()
        return handled
    if prot is not None:
        uc.hook_add(kinds, hook, None, AREA, AREA + 0xFFFF)
    err = None
    try:
        uc.emu_start(0x1000, 0x1000 + len(code) + 1)
    except UcError as e:
        err = e.errno
    return err, seen, {r: uc.reg_read(getattr(X, "UC_X86_REG_" + r)) for r in REGS}, \
        (bytes(uc.mem_read(AREA, 0x20)) if prot is not None else None)


PROGRAMS = {
    "store": "mov eax, 1\nmov dword ptr [0xff000010], 0x12345678\nmov ebx, 2",
    "load": "mov eax, 1\nmov esi, dword ptr [0xff000010]\nmov ebx, 2",
    "movsd": "mov eax, 1\nmov esi, 0x3000\nmov edi, 0xff000008\nmov ecx, 4\n.byte 0xf3, 0xa5\nmov ebx, 2",
    "jump": "mov eax, 1\nmov ebx, 0xff000010\njmp ebx",
}


@pytest.mark.parametrize("name", PROGRAMS)
def test_a_refused_protection_event_ends_like_unmapped_memory(name):
    err_u, _, regs_u, _ = _run(PROGRAMS[name])
    err_p, seen, regs_p, mem = _run(PROGRAMS[name], UC_PROT_NONE)
    assert err_u is not None and err_p is not None
    assert regs_p == regs_u                      # same instruction abandoned, same registers
    assert mem == bytes(0x20)                    # nothing landed
    # EIP in the hook is the accessing instruction's (after other work in the block)
    assert seen[0][1] == regs_u["EIP"]


def test_eip_is_the_string_instructions_on_every_iteration():
    _, seen, regs, _ = _run(PROGRAMS["movsd"], UC_PROT_NONE, handled=True)
    movsd = 0x1000 + len(assemble("mov eax, 1\nmov esi, 0x3000\nmov edi, 0xff000008\nmov ecx, 4", 0x1000))
    assert [a for a, _ in seen] == [AREA + 8, AREA + 12, AREA + 16, AREA + 20]
    assert {e for _, e in seen} == {movsd} and regs["ECX"] == 0


def test_a_handled_write_prot_event_drops_the_store():
    # So the guard performs an allowed store itself (runtime/_isolation.c).
    err, _, regs, mem = _run(PROGRAMS["store"], UC_PROT_NONE, handled=True)
    assert err is None and regs["EBX"] == 2 and mem == bytes(0x20)


def test_emu_stop_in_a_write_hook_lets_the_store_land():
    # Why the guard uses protections, not UC_HOOK_MEM_WRITE + uc_emu_stop.
    _, _, regs, mem = _run(PROGRAMS["store"], UC_PROT_ALL, UC_HOOK_MEM_WRITE, True, stop=True)
    assert mem[0x10:0x14] == bytes.fromhex("78563412") and regs["EBX"] == 0


def test_emu_stop_in_a_read_hook_abandons_the_load():
    _, _, regs, _ = _run(PROGRAMS["load"], UC_PROT_ALL, UC_HOOK_MEM_READ, True, stop=True)
    assert regs["ESI"] == 0 and regs["EIP"] == 0x1005


def test_a_read_after_a_handled_read_prot_event_gets_no_event():
    # The residual in docs/machine.md: the TLB entry filled for an allowed read
    # lets the next read of the page through without a protection event.
    _, seen, _, _ = _run("mov esi, dword ptr [0xff000010]\nmov edi, dword ptr [0xff000020]",
                         UC_PROT_NONE, handled=True)
    assert len(seen) == 1


def test_an_allowed_protected_read_is_cached_unless_a_write_hook_exists():
    """Unicorn 2.1.4: after a UC_HOOK_MEM_READ_PROT callback allows a read of an
    unreadable page, later reads of that page raise no event -- unless some
    UC_HOOK_MEM_WRITE is registered (anywhere), in which case every read raises it
    again.  runtime/isolation.py registers an empty native write hook for this."""
    from keystone import Ks, KS_ARCH_X86, KS_MODE_32
    from unicorn import (Uc, UcError, UC_ARCH_X86, UC_MODE_32, UC_PROT_ALL, UC_PROT_NONE,
                         UC_HOOK_MEM_READ_PROT, UC_HOOK_MEM_WRITE)
    code = bytes(Ks(KS_ARCH_X86, KS_MODE_32).asm(
        "mov eax, [0x10000]; mov ebx, [0x10004]; mov ecx, [0x10008]", 0x1000)[0])

    def events(write_hook_range):
        uc = Uc(UC_ARCH_X86, UC_MODE_32)
        uc.mem_map(0x1000, 0x1000, UC_PROT_ALL)
        uc.mem_map(0x10000, 0x1000, UC_PROT_NONE)
        uc.mem_write(0x1000, code)
        seen = []
        uc.hook_add(UC_HOOK_MEM_READ_PROT, lambda u, acc, addr, size, v, d: seen.append(addr) or True)
        if write_hook_range:
            uc.hook_add(UC_HOOK_MEM_WRITE, lambda *a: None, None, *write_hook_range)
        try:
            uc.emu_start(0x1000, 0x1000 + len(code))
        except UcError:
            seen.append("error")
        return seen

    assert events(None) == [0x10000]
    assert events((0x10000, 0x10FFF)) == [0x10000, 0x10004, 0x10008]
    assert events((0x20000, 0x20FFF)) == [0x10000, 0x10004, 0x10008]
    # ... even one whose range no 32-bit access can reach (the keeper's: runtime/isolation.py)
    assert events((1 << 40, (1 << 40) + 0xFFF)) == [0x10000, 0x10004, 0x10008]
