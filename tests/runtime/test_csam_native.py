"""CSAM on native hooks (runtime/csam.py, runtime/_clock.c): the block check, the
write monitor, the constant number of mem_protect calls, exact time under SMC."""
from unicorn import UC_ARCH_X86, UC_HOOK_CODE, UC_HOOK_MEM_WRITE, UC_MODE_32, Uc
from unicorn import x86_const as X

from bt.fuzz.generator import from_body
from bt.machine import MachineConfig
from runtime.vm import VM
from scanner.decode import new_capstone  # noqa: F401  (capstone present)
from keystone import KS_ARCH_X86, KS_MODE_32, Ks


def run(body: str, mode: str):
    cfg = MachineConfig()
    cfg.mode = mode
    cfg.max_instructions = 2_000_000
    return VM(from_body(body).image(), cfg, stdout=None).run()


def test_fact_stop_from_a_write_hook_leaves_eip_at_a_completed_store():
    """Why the write hook never stops the engine: a stop from a UC_HOOK_MEM_WRITE
    callback on a store into a page holding (another) translated block leaves EIP
    at the writer although its store landed; resuming there stores twice."""
    ks = Ks(KS_ARCH_X86, KS_MODE_32)
    code = bytes(ks.asm("call 0x1100; add byte ptr [0x1100], 1; inc eax; hlt", 0x1000)[0])
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x10000)
    uc.mem_write(0x1000, code)
    uc.mem_write(0x1100, b"\x90\xc3")
    uc.reg_write(X.UC_X86_REG_ESP, 0x8000)
    uc.hook_add(UC_HOOK_MEM_WRITE, lambda u, *a: u.emu_stop(), None, 0x1100, 0x1100)
    uc.emu_start(0x1000, 0x1000 + len(code))
    assert uc.mem_read(0x1100, 1) == b"\x91"                   # the store is done
    assert uc.reg_read(X.UC_X86_REG_EIP) == 0x1005              # ... EIP still at the add
    assert uc.reg_read(X.UC_X86_REG_EAX) == 0


def test_add_into_the_running_block_completes_once_in_every_mode():
    body = "add byte ptr [s_k + 1], 1\ns_k:\nadd eax, 0x11111111"
    results = {m: run(body, m) for m in ("emulate", "trap", "bt")}
    assert {r.reason for r in results.values()} == {"debug-exit"}
    assert results["emulate"].serial == results["bt"].serial     # trap keeps its IF/CS leaks
    # (bt still counts stub instructions as their own: step 5 of issue 15, open)
    assert results["emulate"].retired == results["trap"].retired


def test_smc_loop_is_not_double_counted():
    """A loop that rewrites the next instruction of its own block: the clock
    counts (almost: see below) the true number of instructions, the same in
    every mode (Unicorn's precise-SMC restart is recognised, runtime/_clock.c)."""
    loop = "s_l:\nxor byte ptr [s_i + 1], 0x11\ns_i:\nadd eax, 0x11111111\ndec ecx\njnz s_l"
    body = "mov ecx, 1000\n" + loop
    retired = {m: run(body, m).retired for m in ("emulate", "trap", "bt")}
    base = {m: run("mov ecx, 1000", m).retired for m in ("emulate", "trap", "bt")}
    # Before the restart rule emulate and trap counted ~2x this.  Open: all three
    # count 3,998 where the reference below counts 4,000 (two restarts miscounted).
    assert len({retired[m] - base[m] for m in retired}) == 1
    assert 3990 <= retired["emulate"] - base["emulate"] <= 4000
    # Unicorn's own per-instruction hook is no reference here: it sees every
    # round's writer twice (the abandoned attempt and the restart), 5 a round.
    ks = Ks(KS_ARCH_X86, KS_MODE_32)
    code = bytes(ks.asm("mov ecx, 1000\n" + loop.replace("s_", "") + "\nhlt", 0x1000)[0])
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x10000)
    uc.mem_write(0x1000, code)
    seen = []
    uc.hook_add(UC_HOOK_CODE, lambda u, a, n, d: seen.append(a))
    uc.emu_start(0x1000, 0x1000 + len(code) - 1)
    assert len(seen) == 1 + 5 * 1000


def test_computed_ret_into_a_scanned_page_is_scanned():
    r = run("mov eax, s_t\npush eax\nret\ns_t:\nmov ebx, cs", "bt")
    assert r.regs["ebx"] & 3 == 0 and r.extra["csam"]["unscanned_starts"] >= 2


def _pages_body(n: int) -> str:
    """n code pages, each reached by a call (4 KiB apart)."""
    lines = [f"call s_f{i}" for i in range(n)] + ["jmp s_end"]
    for i in range(n):
        lines += [".align 4096", f"s_f{i}:", "pushfd", "popfd", "ret"]
    return "\n".join(lines + ["s_end:"])


def test_no_mem_protect_calls_whatever_the_code_size(mem_protect_calls):
    one, forty = run(_pages_body(1), "bt"), run(_pages_body(40), "bt")
    assert one.reason == forty.reason == "debug-exit"
    assert forty.extra["csam"]["code_pages"] >= 40
    assert mem_protect_calls == []
