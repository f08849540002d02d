"""The stub in-process (bt/gdb/server.py, target.py): the VM runs in this thread,
a scripted client in another speaks the protocol over a real socket."""
from __future__ import annotations

import threading

import pytest

from bt.demos import load_demo
from bt.gdb.server import GdbServer
from bt.machine import MachineConfig
from gdbclient import Client, demo_instruction, demo_symbol

MODES = ("emulate", "trap", "bt")


def _vm(demo: str, mode: str):
    from runtime.vm import VM
    cfg = MachineConfig(mode=mode)
    return VM(load_demo(demo, cfg.mem_bytes), cfg, stdout=None)


def debug(demo: str, mode: str, script, wait: bool = True):
    """Run `demo` under gdb's control; `script(client)` runs in a thread and
    returns what it saw.  -> (RunResult, the script's result, the server)."""
    vm = _vm(demo, mode)
    server = GdbServer(vm, "127.0.0.1:0", wait=wait)
    out: dict = {}

    def client():
        c = Client(server.port)
        c.vm = vm           # the script may look at the VM while gdb holds it stopped
        try:
            out["seen"] = script(c)
        except BaseException as e:          # reported by the main thread
            out["error"] = e
        finally:
            c.close()

    t = threading.Thread(target=client)
    t.start()
    result = vm.run()
    server.finish(result)
    t.join(60)
    if "error" in out:
        raise out["error"]
    return result, out.get("seen"), server


def plain(demo: str, mode: str):
    return _vm(demo, mode).run()


def regs(c: Client) -> dict:
    from bt.gdb.target import REGISTERS
    g = c.cmd("g")
    return {r: int.from_bytes(bytes.fromhex(g[8 * i:8 * i + 8]), "little")
            for i, r in enumerate(REGISTERS)}


def same_run(a, b) -> None:
    assert (a.exit_status, a.reason, a.retired, a.vtime, a.serial, a.regs) == \
           (b.exit_status, b.reason, b.retired, b.vtime, b.serial, b.regs)


@pytest.mark.parametrize("mode", MODES)
def test_attach_query_and_continue_to_the_end_changes_nothing(mode):
    def script(c):
        seen = {"supported": c.cmd("qSupported:multiprocess+;swbreak+"),
                "stop": c.cmd("?"), "vcont": c.cmd("vCont?"),
                "regs": regs(c), "unknown": c.cmd("qXfer:features:read:target.xml:0,ffb"),
                "malformed": [c.cmd("mzz,4"), c.cmd("Z0,qq,1"), c.cmd("M100000,2:41")],
                "watch": c.cmd("Z2,100000,4")}
        seen["end"] = c.cmd("c")
        return seen

    result, seen, _ = debug("hello", mode, script)
    assert "PacketSize=" in seen["supported"]
    assert seen["stop"] == "S05" and seen["vcont"] == "vCont;c;C;s;S"
    assert seen["unknown"] == "" and seen["watch"] == ""      # not supported: empty replies
    assert seen["malformed"] == ["E16"] * 3
    r = seen["regs"]
    assert r["eip"] == 0x100000 and r["cs"] == 0x08 and r["ss"] == 0x10
    assert r["eflags"] & 0x3200 == 0     # the guest's IF and IOPL (0), not the host's
    assert seen["end"] == "W00"
    same_run(result, plain("hello", mode))


@pytest.mark.parametrize("mode", MODES)
def test_breakpoint_step_and_continue_keep_virtual_time_exact(mode):
    tick = demo_symbol("timer", "tm_tick")

    def script(c):
        c.cmd("?")
        seen = {"z0": c.cmd(f"Z0,{tick:x},1"), "stop": c.cmd("c"), "at": regs(c)}
        steps = []
        for _ in range(3):
            assert c.cmd("s") == "S05"
            steps.append(regs(c)["eip"])
        seen["steps"] = steps
        seen["again"] = c.cmd("vCont;c")
        seen["again_eip"] = regs(c)["eip"]
        seen["unset"] = c.cmd(f"z0,{tick:x},1")
        seen["end"] = c.cmd("c")
        return seen

    result, seen, _ = debug("timer", mode, script)
    assert seen["z0"] == "OK" and seen["stop"] == "S05" and seen["unset"] == "OK"
    assert seen["at"]["eip"] == tick and seen["again_eip"] == tick
    # push eax (1), cmp [mem], imm8 (7), je (2)
    assert seen["steps"][:2] == [tick + 1, tick + 8]
    # The handler runs with the guest's IF clear (an interrupt gate), whatever the host's is.
    assert seen["at"]["eflags"] & 0x200 == 0
    assert seen["end"] == "W00"
    same_run(result, plain("timer", mode))


@pytest.mark.parametrize("mode", MODES)
def test_memory_and_registers(mode):
    main = demo_symbol("hello", "main")

    def script(c):
        c.cmd("?")
        c.cmd(f"Z1,{main:x},1")
        c.cmd("c")
        seen = {"m": c.cmd(f"m{main:x},5"), "outside": c.cmd("mfffff000,4"),
                "P": c.cmd("P0=78563412"), "p": c.cmd("p0"), "bad_p": c.cmd("p40")}
        # Write the greeting's first byte as the guest would, read it back.
        msg = demo_symbol("hello", "hello_msg")
        seen["M"] = c.cmd(f"M{msg:x},1:4a")
        seen["m2"] = c.cmd(f"m{msg:x},5")
        g = c.cmd("g")
        seen["G"] = c.cmd("G" + g)           # writing back what was read changes nothing
        seen["g2"] = c.cmd("g") == g
        c.cmd(f"z1,{main:x},1")
        seen["end"] = c.cmd("c")
        return seen

    result, seen, _ = debug("hello", mode, script)
    assert seen["m"] == "be" + (demo_symbol("hello", "hello_msg")).to_bytes(4, "little").hex()
    assert seen["outside"].startswith("E")
    assert seen["P"] == "OK" and seen["p"] == "78563412" and seen["bad_p"].startswith("E")
    assert seen["M"] == "OK" and seen["m2"] == b"Jello".hex()
    assert seen["G"] == "OK" and seen["g2"]
    assert result.serial.startswith(b"Jello from the pc32 demo guest!")
    assert seen["end"] == "W00"


def test_kill_ends_the_run_and_detach_lets_it_finish():
    def kill(c):
        c.cmd("?")
        c.send("k")
        return None

    result, _, _ = debug("hello", "bt", kill)
    assert result.reason == "quit" and result.message == "killed by gdb"
    assert result.retired == 0

    def detach(c):
        c.cmd("?")
        c.cmd(f"Z0,{demo_symbol('hello', 'main'):x},1")
        return c.cmd("D")

    result, seen, server = debug("hello", "bt", detach)
    assert seen == "OK"
    assert server.target.breakpoints == {}       # the guest runs on, free
    same_run(result, plain("hello", "bt"))


def test_ctrl_c_stops_a_running_guest_at_a_slice_boundary():
    def script(c):
        c.cmd("?")
        c.send("c")
        import time
        time.sleep(0.3)
        c.sock.sendall(b"\x03")
        seen = {"stop": c.reply(), "eip": regs(c)["eip"]}
        seen["end"] = c.cmd("c")
        return seen

    result, seen, _ = debug("cpuloop", "emulate", script)
    assert seen["stop"] == "S02"
    assert seen["end"] == "W00"
    same_run(result, plain("cpuloop", "emulate"))


def test_bt_breakpoint_on_a_patched_instruction_stops_there_and_shows_guest_bytes():
    # hotflags' `cli; pushfd; pop eax; and ...`: cli runs natively, the patch is
    # at the pushfd (docs/fidelity.md, "IF in the real EFLAGS")
    cli = demo_instruction("hotflags", "hf_loop", "cli") + 1

    def script(c):
        c.cmd("?")
        c.cmd(f"Z0,{cli:x},1")
        seen = {"first": c.cmd("c"), "second": c.cmd("c")}
        patch = c.vm.mode.patcher.covering(cli)     # the VM is stopped: safe to look
        seen["patched"] = patch is not None and patch.kind == "jump" and patch.site == cli
        seen["raw"] = bytes(c.vm.fast.mem_read(cli, 4)).hex()
        seen["eip"] = regs(c)["eip"]
        seen["m"] = c.cmd(f"m{cli:x},4")
        steps = []
        for _ in range(4):
            c.cmd("s")
            steps.append(regs(c)["eip"])
        seen["steps"] = steps
        c.cmd(f"z0,{cli:x},1")
        seen["end"] = c.cmd("c")
        return seen

    result, seen, _ = debug("hotflags", "bt", script)
    assert seen["first"] == seen["second"] == "S05"
    assert seen["patched"] and seen["raw"].startswith("e9")     # the guest's bytes are a jmp now ...
    assert seen["m"].startswith("9c5825")                       # ... gdb sees the guest's own
    assert seen["eip"] == cli
    # pushfd, pop eax, and, add: guest addresses, never the stub's
    assert seen["steps"] == [cli + 1, cli + 2, cli + 7, cli + 9]
    assert seen["end"] == "W00"
    same_run(result, plain("hotflags", "bt"))


def test_bt_memory_reads_hide_csam_guards():
    loop = demo_symbol("fnptr", "fp_loop")

    def script(c):
        c.cmd("?")
        c.cmd(f"Z0,{loop:x},1")
        c.cmd("c")
        guards = dict(c.vm.mode.csam.guards)
        seen = {"guards": [(g, bytes(c.vm.fast.mem_read(g, 1)), ins.data[:1],
                            bytes.fromhex(c.cmd(f"m{g:x},1"))) for g, ins in guards.items()]}
        c.cmd(f"z0,{loop:x},1")
        seen["end"] = c.cmd("c")
        return seen

    result, seen, _ = debug("fnptr", "bt", script)
    assert seen["guards"], "fnptr's indirect calls are guarded after the first scan"
    for g, raw, orig, shown in seen["guards"]:
        assert raw == b"\xcc" and shown == orig != b"\xcc", hex(g)
    assert seen["end"] == "W00"
    same_run(result, plain("fnptr", "bt"))


def test_no_wait_runs_until_gdb_attaches_then_stops_there():
    def script(c):
        seen = {"stop": c.cmd("?"), "eip": regs(c)["eip"], "retired": c.vm.retired}
        seen["end"] = c.cmd("c")
        return seen

    import time
    vm = _vm("cpuloop", "emulate")
    server = GdbServer(vm, "127.0.0.1:0", wait=False)
    out = {}

    def client():
        # Attach once the guest has run (the VM publishes `retired` between its
        # 50 M-instruction slices): a fixed sleep raced the run's end once
        # emulate got faster (cpuloop's whole run is ~0.5 s).
        t0 = time.monotonic()
        while vm.retired == 0 and time.monotonic() - t0 < 60:
            time.sleep(0.001)
        c = Client(server.port)
        c.vm = vm
        out["seen"] = script(c)
        c.close()

    t = threading.Thread(target=client)
    t.start()
    result = vm.run()
    server.finish(result)
    t.join(60)
    seen = out["seen"]
    assert seen["stop"] == "S05" and seen["retired"] > 0 and seen["end"] == "W00"
    same_run(result, plain("cpuloop", "emulate"))


PAGING = """
mov edi, 0x80000
mov dword ptr [edi], 0x83
mov dword ptr [edi + 4], 0x83
mov eax, cr4
or eax, 0x10
mov cr4, eax
mov eax, 0x80000
mov cr3, eax
mov eax, cr0
or eax, 0x80000000
mov cr0, eax
"""


def test_memory_is_read_at_linear_addresses_through_the_guest_page_tables():
    """emulate (trap and bt refuse paging guests today): PDE 0 and PDE 1 both map
    physical 0-4 MiB with 4 MiB pages, so linear 4 MiB + x shows physical x."""
    from conftest import EXIT, LOAD, assemble, raw_guest
    from runtime.vm import VM
    paged = LOAD + len(assemble(PAGING))
    vm = VM(raw_guest(PAGING + "nop\n" + EXIT), MachineConfig(mode="emulate"), stdout=None)
    server = GdbServer(vm, "127.0.0.1:0")
    out = {}

    def client():
        c = Client(server.port)
        c.cmd("?")
        out["before"] = c.cmd(f"m{(4 << 20) + LOAD:x},4")      # paging off: physical, zeros
        c.cmd(f"Z0,{paged:x},1")
        c.cmd("c")
        out["low"] = c.cmd(f"m{LOAD:x},8")
        out["high"] = c.cmd(f"m{(4 << 20) + LOAD:x},8")
        out["unmapped"] = c.cmd(f"m{8 << 20:x},4")
        out["M"] = c.cmd(f"M{(4 << 20) + paged:x},1:90")     # nop over nop, through the alias
        out["end"] = c.cmd("c")
        c.close()

    t = threading.Thread(target=client)
    t.start()
    result = vm.run()
    server.finish(result)
    t.join(60)
    assert out["before"] == "00000000"
    assert out["low"] == out["high"] == assemble(PAGING)[:8].hex()
    assert out["unmapped"] == "E0e" and out["M"] == "OK" and out["end"] == "W00"


def test_bt_breakpoint_inside_a_patch_stops_in_the_stub_at_the_guest_address():
    """hotflags' `pushfd; pop eax; and ...` become one jump patch at the pushfd:
    the pop's byte is under the jmp, it runs only as the stub's copy.  A
    breakpoint on it is set before the patch exists (installed at the scan)."""
    cli = demo_instruction("hotflags", "hf_loop", "cli") + 1       # the patch's site: the pushfd
    pushfd = cli + 1                                                # the pop eax inside it

    def script(c):
        c.cmd("?")
        c.cmd(f"Z0,{pushfd:x},1")
        seen = {"stops": []}
        for _ in range(3):
            reply = c.cmd("c")
            r = regs(c)
            real = c.vm.uc.reg_read(__import__("unicorn").x86_const.UC_X86_REG_EIP)
            seen["stops"].append((reply, r["eip"], c.vm.mode.cache.contains(real)))
        patch = c.vm.mode.patcher.covering(pushfd)
        seen["patch"] = (patch.site, patch.kind) if patch else None
        c.cmd(f"z0,{pushfd:x},1")
        seen["end"] = c.cmd("c")
        return seen

    result, seen, _ = debug("hotflags", "bt", script)
    assert seen["patch"] == (cli, "jump")
    assert [s[:2] for s in seen["stops"]] == [("S05", pushfd)] * 3
    assert all(in_stub for _r, _e, in_stub in seen["stops"])     # stopped in the stub ...
    assert seen["end"] == "W00"                                    # ... showing pushfd's address
    same_run(result, plain("hotflags", "bt"))
