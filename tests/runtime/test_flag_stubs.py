"""bt's pushf(d)/popf(d) stubs without state-page accesses (patcher/templates.py,
"the flags"): assembled for the guest's IOPL, rewritten in place when it
changes (patcher/patches.py `Patcher.set_iopl`).

* the IOPL-dependent bytes: a stub assembled for one IOPL and rewritten for
  another is byte for byte the stub assembled for the other;
* the pushf(d) stub at CPL 1 (real IOPL 1), plain or with its entry switched
  to the ring-3 tail, and at CPL 3 with the tail (real IOPL = the guest's:
  ring-3 code is patched when the guest does not page) pushes the guest's
  flags, every IOPL, both operand sizes; a guest that enters ring 3 with
  another IOPL than 1 switches bt's stubs to the tail for good; popf(d) runs natively when the
  popped IOPL is the guest's and exits before touching anything otherwise;
* a guest that changes its IOPL with popfd between pushfd's in a loop gets
  emulate's registers and instruction count under bt, and the stubs are
  rewritten at each change.
"""
import random

import pytest

from conftest import EXIT, raw_guest
from conftest import run as run_guest
from patcher.patches import _iopl_variants
from patcher.stubcache import assemble
from patcher.templates import RING3_ENTRY, RING3_TAILS, TEMPLATES, Insn, StubContext
from test_flagstub_facts import CODE, STACK, reg, run, word

STATE = 0xFF000000
FORMS = {"pushfd": ("pushfd", b"\x9c"), "pushf": ("pushfd", b"\x66\x9c"),
         "popfd": ("popfd", b"\x9d"), "popf": ("popfd", b"\x66\x9d"), "iretd": ("iretd", b"\xcf")}


def _insn(form: str) -> Insn:
    row, data = FORMS[form]
    return Insn(0x1000, len(data), form, "", data)


def _text(form: str, iopl: int) -> str:
    return TEMPLATES[FORMS[form][0]](StubContext(STATE, "t", iopl), _insn(form))


def _tested(form: str, iopl: int) -> str:
    """The pushf(d) stub with its entry switched to the ring-3 tail (as the
    patcher lays it out: the tail after the stub's end)."""
    ctx = StubContext(STATE, "t", iopl)
    body = _text(form, iopl)
    assert body.startswith(RING3_ENTRY)
    tail = RING3_TAILS[FORMS[form][0]](ctx, _insn(form), "back", "done")
    return f"jmp tail; back: {body[len(RING3_ENTRY) + 2:]}; jmp done; tail: {tail}; done: nop"


@pytest.mark.parametrize("form", FORMS)
def test_rewriting_the_iopl_bytes_gives_the_stub_assembled_for_the_new_iopl(form):
    at = 0xFF040000
    for old in range(4):
        code = bytearray(assemble(_text(form, old), at))
        variants = _iopl_variants(bytes(code), at, old, tuple(_text(form, v) for v in range(4)))
        assert variants, form
        for new in range(4):
            for addr, values in variants:
                code[addr - at] = values[new]
            assert bytes(code) == assemble(_text(form, new), at), (form, old, new)


@pytest.mark.parametrize("ring, tested", [(1, False), (1, True), (3, True)])
@pytest.mark.parametrize("form", ("pushfd", "pushf"))
def test_the_pushf_stub_pushes_the_guest_flags_at_cpl1_and_cpl3(form, ring, tested):
    """Plain (the entry a nop: CPL 1 only) and tested (the entry jumps to the
    ring-3 tail) at CPL 1 with the real IOPL 1, tested at CPL 3 with the real
    IOPL the guest's."""
    rng = random.Random(f"{form}{ring}{tested}")
    size = 4 if form == "pushfd" else 2
    for iopl in range(4):
        real_iopl = 1 if ring == 1 else iopl
        for _ in range(6):
            guest = 0x2 | rng.choice((0, 0x200)) | (rng.getrandbits(12) & 0xCD5) | rng.choice((0, 1 << 18))
            ecx, eax = rng.getrandbits(32), rng.getrandbits(32)
            stub = _tested(form, iopl) if tested else _text(form, iopl)
            uc = run(f"mov ecx, {ecx:#x}\nmov eax, {eax:#x}\n{stub.replace('; ', chr(10))}",
                     guest | real_iopl << 12, ring)
            assert reg(uc, "esp") == STACK - size and (reg(uc, "ecx"), reg(uc, "eax")) == (ecx, eax)
            want = (guest | iopl << 12) & (0xFFFFFFFF if size == 4 else 0xFFFF)
            assert hex(word(uc, STACK - size, size)) == hex(want), (iopl, ring)
            assert reg(uc, "eflags") & ~0x3000 == guest & ~0x3000       # flags untouched


@pytest.mark.parametrize("form", ("popfd", "popf"))
def test_the_popf_stub_exits_exactly_when_the_popped_iopl_is_not_the_guests(form):
    size = 4 if form == "popfd" else 2
    for iopl in range(4):
        for popped_iopl in range(4):
            popped = 0x2 | 0x200 | 0x8D5 | popped_iopl << 12
            push = f"push {popped:#x}" if size == 4 else f"push {popped << 16:#x}\nadd esp, 2"
            uc = run(f"{push}\n{_text(form, iopl).replace('; ', chr(10))}\nmov esi, 1", 0x2 | 1 << 12, 1,
                     any_hlt=True)
            exited = reg(uc, "esi") != 1
            assert exited == (popped_iopl != iopl), (iopl, popped_iopl)
            if not exited:   # the native popf loaded the flags, kept the real IOPL 1
                assert reg(uc, "eflags") & 0xFFFF == (popped & ~0x3000 | 1 << 12) & 0xFFFF
                assert reg(uc, "esp") == STACK
            else:            # nothing popped yet: the VMM emulates it from here
                assert reg(uc, "esp") == STACK - size


LOOP = """
mov esp, 0x90000
xor ebx, ebx
mov ecx, 9
top:
pushfd
pop eax
add ebx, eax
mov edx, ecx
and edx, 3
shl edx, 12
or edx, 0x246
push edx
popfd
pushfd
pop eax
rol ebx, 3
add ebx, eax
pushf
pop ax
add ebx, eax
dec ecx
jnz top
push 0x2
popfd
""" + EXIT


def test_a_guest_changing_its_iopl_gets_emulates_result_and_the_stubs_follow():
    img = raw_guest(LOOP)
    ref = run_guest(img, "emulate")[1]
    vm, got = run_guest(img, "bt")
    assert got.regs["ebx"] == ref.regs["ebx"] and got.regs["eflags"] == ref.regs["eflags"]
    assert (got.exit_status, got.retired) == (ref.exit_status, ref.retired)
    stats = vm.mode.patcher.stats()
    assert stats["iopl_changes"] >= 8 and stats["iopl_rewrites"] >= stats["iopl_changes"]
    assert vm.mode.patcher.iopl == 0 and vm.mode.vcpu.vflags == 0


@pytest.mark.parametrize("iopl", (0, 1, 3))
def test_ring3_pushf_under_bt_switches_the_stubs_to_the_cpl_test(iopl):
    """The fuzzer frame's ring 3 (no paging): pushfd in ring 3 on the kernel's
    patched page, then in the kernel after the return; emulate's values."""
    from bt.fuzz.generator import from_body
    from bt.machine import MachineConfig
    from runtime.vm import VM
    from test_emulation_causes import dump, ring3
    body = ring3("", "pushfd", "pop esi", False).replace("push 0x2\npush 0x1b", f"push {iopl << 12 | 2:#x}\npush 0x1b")
    body += "\npushfd\npop edi"
    got = {mode: dump(body, mode) for mode in ("emulate", "bt")}
    assert (got["bt"]["esi"], got["bt"]["edi"], got["bt"]["end"]) == \
        (got["emulate"]["esi"], got["emulate"]["edi"], got["emulate"]["end"])
    assert got["emulate"]["esi"] >> 12 & 3 == iopl and got["emulate"]["esi"] & 0x2
    vm = VM(from_body(body).image(), MachineConfig(mode="bt", mem_mib=8, max_instructions=200_000), stdout=None)
    vm.run()
    assert vm.mode.patcher.stats()["ring3_tests"] == (iopl != 1)


def test_the_lea_constant_is_no_fixup_even_where_it_looks_like_an_area_address():
    """IOPL 0's constant, 0xFFFFF000, lies inside an area based at 0xFFC00000:
    recorded as a fixup it would be "moved" with the area.  The patcher hands
    the stub cache its IOPL-dependent bytes to leave out."""
    from unicorn import UC_ARCH_X86, UC_MODE_32, Uc

    from bt.hyper_layout import HYPER_SIZE, STUBS
    from patcher.stubcache import StubCache
    base = 0xFFC00000
    at = base + STUBS
    code = assemble(_text("pushfd", 0), at)
    variants = _iopl_variants(code, at, 0, tuple(_text("pushfd", v) for v in range(4)))
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(base, HYPER_SIZE)
    naive = StubCache(uc, base)
    naive.write(at, code)
    assert naive.fixups                     # the hazard: without the exclusion it is taken for one
    cache = StubCache(uc, base)
    cache.write(at, code, exclude={a for a, _ in variants})
    assert cache.fixups == []
