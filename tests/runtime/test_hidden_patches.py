"""Guest loads of patched code see the guest's own bytes on every page (issue 15,
cause 14): native read hooks swap the guest's bytes in for one load
(runtime/_clock.c, "Patches hidden from guest loads").  The Unicorn facts the
mechanism rests on come first."""
import ctypes

from unicorn import UC_ARCH_X86, UC_HOOK_MEM_READ, UC_HOOK_MEM_READ_AFTER, UC_MODE_32, Uc
from unicorn import x86_const as X

from bt.fuzz.generator import from_body
from bt.fuzz.differential import run_program
from bt.machine import MachineConfig
from conftest import assemble
from runtime.fastuc import hook_add
from runtime.vm import VM

HOOK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64, ctypes.c_int,
                        ctypes.c_int64, ctypes.c_void_p)


def _swap_engine(asm: str, lo: int, hi: int):
    """An engine whose READ hook on [lo, hi] puts 11 22 33 44 at 0x3000 and whose
    READ_AFTER hook puts the CC bytes back; returns (uc, log, keep-alive)."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x10000)
    code = assemble(asm, 0x1000)
    uc.mem_write(0x1000, code)
    uc.mem_write(0x2FFC, b"\x01\x02\x03\x04\xcc\xcc\xcc\xcc")
    log = []

    def before(_h, _t, a, s, _v, _u):
        log.append(("before", a, s))
        uc.mem_write(0x3000, b"\x11\x22\x33\x44")

    def after(_h, _t, a, s, v, _u):
        log.append(("after", a, s, v & 0xFFFFFFFF))
        uc.mem_write(0x3000, b"\xcc\xcc\xcc\xcc")
    cbs = (HOOK(before), HOOK(after))
    hook_add(uc, UC_HOOK_MEM_READ, ctypes.cast(cbs[0], ctypes.c_void_p).value, None, lo, hi)
    hook_add(uc, UC_HOOK_MEM_READ_AFTER, ctypes.cast(cbs[1], ctypes.c_void_p).value, None, lo, hi)
    uc.emu_start(0x1000, 0x1000 + len(code))
    return uc, log, cbs


def test_fact_a_load_sees_what_the_read_hook_wrote_and_the_after_hook_restores():
    uc, log, _ = _swap_engine("mov eax, dword ptr [0x3000]\nmov ebx, dword ptr [0x3000]", 0x3000, 0x3FFF)
    assert uc.reg_read(X.UC_X86_REG_EAX) == uc.reg_read(X.UC_X86_REG_EBX) == 0x44332211
    assert bytes(uc.mem_read(0x3000, 4)) == b"\xcc" * 4
    assert log == [("before", 0x3000, 4), ("after", 0x3000, 4, 0x44332211)] * 2


def test_fact_string_instructions_load_through_the_hooks_each_element():
    uc, log, _ = _swap_engine("mov esi, 0x3000\nmov edi, 0x5000\nmov ecx, 4\n.byte 0xf3, 0xa4", 0x3000, 0x3FFF)
    assert bytes(uc.mem_read(0x5000, 4)) == b"\x11\x22\x33\x44"
    assert [e[:3] for e in log if e[0] == "before"] == [("before", 0x3000 + i, 1) for i in range(4)]


def test_fact_a_page_crossing_load_matches_a_hook_range_by_its_first_byte():
    """Why each page's hooks start 15 bytes before the page (runtime/csam.py HIDE_BEFORE)."""
    uc, log, _ = _swap_engine("mov eax, dword ptr [0x2FFE]", 0x3000, 0x3FFF)
    assert log == [] and uc.reg_read(X.UC_X86_REG_EAX) == 0xCCCC0403
    uc, log, _ = _swap_engine("mov eax, dword ptr [0x2FFE]", 0x3000 - 15, 0x3FFF)
    assert log == [("before", 0x2FFE, 4), ("after", 0x2FFE, 4, 0x22110403)]
    assert uc.reg_read(X.UC_X86_REG_EAX) == 0x22110403 and bytes(uc.mem_read(0x3000, 4)) == b"\xcc" * 4


def _vm(body: str, mode: str = "bt"):
    cfg = MachineConfig()
    cfg.mode = mode
    cfg.max_instructions = 5_000_000
    vm = VM(from_body(body).image(), cfg, stdout=None)
    return vm, vm.run()


def _csam(vm) -> dict:
    return vm.mode.extra_report()["csam"]


# `s_p: pushfd` is patched with a jump at scan time; the program then reads it.
READ_SITE = "mov eax, dword ptr [s_p]\nmov ebx, dword ptr [s_p + 1]\njmp s_p\ns_p:\npushfd\npop ecx\nnop\nnop"


def test_loads_of_a_patch_on_a_page_the_guest_never_wrote_see_its_bytes():
    assert run_program(from_body(READ_SITE)).kinds == ()
    vm, res = _vm(READ_SITE)
    assert res.reason == "debug-exit"
    assert vm.mode.patcher.patches and _csam(vm)["hidden_reads"] >= 2
    assert _csam(vm)["smc_invalidations"] == 0          # reading is not writing


def test_a_load_crossing_into_a_patched_page_sees_the_guest_bytes():
    body = ("mov eax, dword ptr [s_p - 2]\njmp s_p\n.align 0x1000\ns_p:\npushfd\npop ecx\nnop\nnop\nnop")
    assert run_program(from_body(body)).kinds == ()


def test_a_store_over_a_patch_byte_is_read_back_as_stored():
    body = ("mov byte ptr [s_p + 1], 0x90\nmov al, byte ptr [s_p + 1]\nmov ebx, dword ptr [s_p]\n"
            "jmp s_p\ns_p:\npushfd\nnop\nnop\nnop\npop ecx")
    assert run_program(from_body(body)).kinds == ()


def test_reading_patched_code_in_a_loop_costs_no_exits():
    """No churn: the hooks answer in C, the patch stays installed, no exit per read."""
    loop = "mov ecx, {n}\ns_l:\nadd edx, dword ptr [s_p]\ndec ecx\njnz s_l\njmp s_p\ns_p:\npushfd\npop esi\nnop\nnop"
    (vm1, r1), (vm2, r2) = _vm(loop.format(n=1)), _vm(loop.format(n=2000))
    assert r1.reason == r2.reason == "debug-exit"
    assert _csam(vm2)["hidden_reads"] - _csam(vm1)["hidden_reads"] == 1999
    assert vm2.counters.get("exits") == vm1.counters.get("exits")


def test_data_sharing_a_page_with_patched_code_is_read_without_hiding():
    body = ("mov ecx, 500\ns_l:\nadd edx, dword ptr [s_d]\ndec ecx\njnz s_l\njmp s_p\n"
            "s_d:\n.long 0x12345678\ns_p:\npushfd\npop esi\nnop\nnop")
    assert run_program(from_body(body)).kinds == ()
    vm, _ = _vm(body)
    assert _csam(vm)["hidden_reads"] == 0 and _csam(vm)["read_hidden_pages"] >= 1


def test_an_emulated_load_of_patched_code_sees_the_guest_bytes(monkeypatch):
    """lidt traps under bt and its routine reads the operand for the guest
    (BTMode.guest_read): it must see what the guest's own load would."""
    body = (".byte 0x0f, 0x01, 0x1d\n.long s_p\n"                       # lidt [s_p] (patched bytes)
            ".byte 0x0f, 0x01, 0x0d\n.long 0x180400\n"                   # sidt [0x180400]
            "mov word ptr [0x180410], 0x7ff\nmov dword ptr [0x180412], 0x11000\n"
            ".byte 0x0f, 0x01, 0x1d\n.long 0x180410\n"                   # the guest's IDT back
            "mov ebx, dword ptr [0x180402]\njmp s_p\ns_p:\npushfd\npop eax\nnop\nnop")
    assert run_program(from_body(body)).kinds == ()
    from runtime.bt import BTMode
    from runtime.trap import TrapMode
    monkeypatch.setattr(BTMode, "guest_read", TrapMode.guest_read)      # the raw bytes: a jmp's
    assert "ebx" in run_program(from_body(body)).details["regs"]


def test_one_hook_pair_spans_every_hidden_page():
    """Unicorn checks every slow-path load against every read hook's range, so
    there is one pair whose range grows (read_hook_spans) instead of one per page;
    a checksum over five pages, each with a patch, still sees the guest's bytes."""
    pages = "".join(f"jmp s_n{i}\n.align 0x1000\ns_n{i}:\npushfd\npop eax\nnop\nnop\n" for i in range(5))
    body = pages + ("mov esi, 0x100000\nmov ecx, fz_end\nsub ecx, 0x100000\nshr ecx, 2\ns_loop:\n"
                    "add edx, dword ptr [esi]\nrol edx, 1\nadd esi, 4\ndec ecx\njnz s_loop")
    assert run_program(from_body(body)).kinds == ()
    vm, _ = _vm(body)
    csam = _csam(vm)
    assert csam["read_hidden_pages"] >= 5 and 1 <= csam["read_hook_spans"] <= csam["read_hidden_pages"]
    assert csam["hidden_reads"] >= 5
    assert len(vm.clock._read_hooks) == 2
